"""Safe checkpoints: tensors in safetensors, everything else in JSON; loading never unpickles.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` and ``NAME.json``. The JSON holds the caller's
metadata (model kind, config, epoch, ...), the structure of the saved tree with tensors replaced by keys,
and the SHA-256 of the safetensors file, so truncation or a flipped bit is detected (safetensors itself
does not checksum tensor data). Both files are written to temporary names and renamed, so a crash never
leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMAT = "egnn-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match what is being loaded."""


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _flatten(obj: Any, tensors: dict[str, Tensor], prefix: str) -> Any:
    if isinstance(obj, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"dict keys must be str or int at {prefix!r}")
        return {"__dict__": [[k, _flatten(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, tensors, f"{prefix}[{i}]") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"tensor {key!r} named in the JSON is missing from the safetensors file")
            return tensors[key]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        raise CheckpointError("unrecognised structure in checkpoint JSON")
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: str | Path, tree: Any, meta: dict[str, Any]) -> Path:
    """Write ``tree`` (nested dicts/lists/tuples of tensors and plain values) and JSON ``meta``."""
    from safetensors.torch import save_file

    st_path, js_path = _paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    skeleton = _flatten(tree, tensors, "")
    tmp_st, tmp_js = st_path.with_name(st_path.name + ".tmp"), js_path.with_name(js_path.name + ".tmp")
    save_file(tensors, str(tmp_st))
    digest = hashlib.sha256(tmp_st.read_bytes()).hexdigest()
    doc = {"format": FORMAT, "sha256": digest, "meta": meta, "tree": skeleton}
    tmp_js.write_text(json.dumps(doc, indent=1))
    os.replace(tmp_st, st_path)
    os.replace(tmp_js, js_path)
    return js_path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; returns ``(tree, meta)``.

    Raises:
        CheckpointError: a file is missing, the JSON is malformed, the checksum does not match, or the
            safetensors file cannot be parsed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    st_path, js_path = _paths(path)
    for p in (js_path, st_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file not found: {p}")
    try:
        doc = json.loads(js_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{js_path} is not valid JSON (corrupt checkpoint?): {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "tree" not in doc or "meta" not in doc:
        raise CheckpointError(f"{js_path} is not an egnn checkpoint (expected format {FORMAT!r})")
    data = st_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != doc.get("sha256"):
        raise CheckpointError(f"{st_path} does not match the checksum in {js_path.name} (corrupt or truncated)")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{st_path} cannot be read: {err}") from None
    tensors = {k: v.to(map_location) for k, v in tensors.items()}
    return _unflatten(doc["tree"], tensors), doc["meta"]


def load_state_dict_strict(module: nn.Module, state: dict[str, Tensor], what: str = "model") -> None:
    """``module.load_state_dict`` with a clear error listing missing, unexpected and mis-shaped keys."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} state in checkpoint is not a dict")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if not isinstance(state[k], Tensor) or state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise CheckpointError(f"{what} checkpoint does not match the model: " + ", ".join(parts))
    module.load_state_dict(state)
