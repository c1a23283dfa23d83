"""Safe checkpoints: one safetensors file per checkpoint, replaced by one atomic rename; loading never unpickles.

A checkpoint ``NAME`` is the single file ``NAME.safetensors``. Its header's ``__metadata__`` holds the
format tag, a JSON document with the caller's metadata (model kind and config, trainer state, data
fingerprint ...) and the structure of the saved tree with tensors replaced by their names, and the SHA-256
of that document together with the tensor bytes, so truncation, a flipped bit or an edited header is
detected (safetensors itself checksums nothing).

Writing goes to a temporary file in the same folder, which is flushed to disk and then renamed over
``NAME.safetensors``: at every instant the name holds either the previous complete checkpoint or the new one.
The metadata and tensor shapes can be read from the header alone (:func:`read_checkpoint_info`), so a caller
can check them before it builds a model.

Checkpoints of the previous format (``NAME.safetensors`` + ``NAME.json``, ``egnn-checkpoint/1``) still load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMAT = "egnn-checkpoint/2"
FORMAT_V1 = "egnn-checkpoint/1"
SUFFIX = ".safetensors"
# a safetensors header larger than this is not one of ours (and is not worth reading)
_MAX_HEADER = 64 * 1024 * 1024

# Test hook: called with a label before every file operation of an atomic write, so tests can inject a crash
# between any two of them. ``None`` in normal use.
io_hook: Callable[[str], None] | None = None


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match what is being loaded."""


def _step(label: str) -> None:
    if io_hook is not None:
        io_hook(label)


# ------------------------------------------------------------------------------------------- atomic files


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform or file system opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported (e.g. some network file systems): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """The temporary name an atomic write of ``path`` uses (``.NAME.PID.tmp`` beside it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_temp_file(path: Path) -> bool:
    """Whether ``path`` is a leftover of an interrupted :func:`atomic_write` (named by :func:`temp_name`)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` so that a crash at any instant leaves either the old file or the new one."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = temp_name(path)
    _step("open")
    with open(tmp, "wb") as f:
        half = len(raw) // 2
        f.write(raw[:half])
        _step("write")  # a crash here leaves a half-written temporary file, never a half-written ``path``
        f.write(raw[half:])
        f.flush()
        _step("fsync")
        os.fsync(f.fileno())
    _step("rename")
    os.replace(tmp, path)
    _step("dirsync")
    fsync_dir(path.parent)
    return path


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (a log; a crash mid-append is repaired by the caller's resume)."""
    _step("append")
    with open(path, "a", newline="") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------- tree <-> tensors


def _flatten(obj: Any, tensors: dict[str, Tensor], prefix: str) -> Any:
    if isinstance(obj, Tensor):
        key = prefix.lstrip("/") or "tensor"
        if key in tensors:
            key = f"{key}#{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"dict keys must be str or int at {prefix!r}")
        return {"__dict__": [[k, _flatten(v, tensors, f"{prefix}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}  # JSON has no NaN / inf
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"tensor {key!r} named in the metadata is missing from the file")
            return tensors[key]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        raise CheckpointError("unrecognised structure in checkpoint metadata")
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _encode_meta(obj: Any) -> Any:
    """``meta`` with non-finite floats as ``{"__float__": "inf"}`` (JSON cannot hold them)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, dict):
        return {k: _encode_meta(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_meta(v) for v in obj]
    return obj


def _decode_meta(obj: Any) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 1 and "__float__" in obj:
            return float(obj["__float__"])
        return {k: _decode_meta(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_meta(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------- writing


def checkpoint_path(path: str | Path) -> Path:
    """``NAME``, ``NAME.safetensors`` or ``NAME.json`` -> ``NAME.safetensors``."""
    p = Path(path)
    if p.suffix in (SUFFIX, ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + SUFFIX)


def _digest(doc: bytes, body: bytes) -> str:
    h = hashlib.sha256()
    h.update(len(doc).to_bytes(8, "little"))
    h.update(doc)
    h.update(body)
    return h.hexdigest()


def _split(raw: bytes, where: Path) -> tuple[dict[str, Any], bytes]:
    """The parsed safetensors header and the tensor bytes of a whole file."""
    if len(raw) < 8:
        raise CheckpointError(f"{where} is truncated (no safetensors header)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > min(_MAX_HEADER, len(raw) - 8):
        raise CheckpointError(f"{where} is truncated or not a safetensors file (header length {n})")
    try:
        header = json.loads(raw[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{where} has a corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} has a corrupt safetensors header")
    return header, raw[8 + n :]


def save_checkpoint(path: str | Path, tree: Any, meta: dict[str, Any]) -> Path:
    """Write ``tree`` (nested dicts/lists/tuples of tensors and plain values) and JSON-able ``meta`` to
    ``NAME.safetensors`` atomically; returns that path."""
    from safetensors.torch import save

    final = checkpoint_path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    skeleton = _flatten(tree, tensors, "")
    doc = json.dumps({"meta": _encode_meta(meta), "tree": skeleton}, allow_nan=False).encode()
    # the tensor bytes do not depend on the metadata: serialise once to learn them, then with the checksum
    _, body = _split(save(tensors, metadata={"format": FORMAT}), final)
    raw = save(tensors, metadata={"format": FORMAT, "doc": doc.decode(), "sha256": _digest(doc, body)})
    return atomic_write(final, raw)


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class CheckpointInfo:
    """What the header of a checkpoint says, read without loading (or trusting) its tensors.

    Attributes:
        path: the checkpoint file.
        meta: the caller's metadata.
        tree: the saved structure, tensors replaced by ``{"__tensor__": name}``.
        shapes: shape of every stored tensor by name.
        format: ``egnn-checkpoint/2`` or ``/1`` (two files).
    """

    path: Path
    meta: dict[str, Any]
    tree: Any
    shapes: dict[str, tuple[int, ...]]
    format: str

    def state_shapes(self, key: str = "model") -> dict[str, tuple[int, ...]]:
        """``{parameter name: shape}`` of the state dict stored under ``tree[key]``."""
        node = self.tree.get("__dict__") if isinstance(self.tree, dict) else None
        sub = dict(node).get(key) if node else None
        if not isinstance(sub, dict) or "__dict__" not in sub:
            raise CheckpointError(f"{self.path} holds no {key!r} state")
        out = {}
        for name, leaf in sub["__dict__"]:
            if isinstance(leaf, dict) and leaf.get("__tensor__") in self.shapes:
                out[name] = self.shapes[leaf["__tensor__"]]
        return out


def _v1_json(st: Path) -> Path:
    return st.with_suffix(".json")


def _header_of(st: Path) -> dict[str, Any]:
    with open(st, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{st} is truncated (no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, st.stat().st_size - 8):
            raise CheckpointError(f"{st} is truncated or not a safetensors file")
        header, _ = _split(head + f.read(n), st)
    return header


def _shapes(header: dict[str, Any], where: Path) -> dict[str, tuple[int, ...]]:
    try:
        return {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(f"{where} has a corrupt safetensors header") from None


def _parse_doc(text: Any, where: Path) -> dict[str, Any]:
    try:
        doc = json.loads(text) if isinstance(text, (str, bytes)) else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict) or "tree" not in doc:
        raise CheckpointError(f"{where} has corrupt checkpoint metadata (not valid JSON)")
    return doc


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Metadata and tensor shapes from the header alone (cheap: reads no tensor data, builds nothing).

    Raises:
        CheckpointError: no checkpoint at ``path``, or its header is not an egnn checkpoint's.
    """
    st = checkpoint_path(path)
    if st.is_file():
        header = _header_of(st)
        md = header.get("__metadata__") or {}
        if md.get("format") == FORMAT:
            doc = _parse_doc(md.get("doc"), st)
            return CheckpointInfo(st, _decode_meta(doc["meta"]), doc["tree"], _shapes(header, st), FORMAT)
    js = _v1_json(st)
    if js.is_file() and st.is_file():
        try:
            doc = json.loads(js.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{js} is not valid JSON (corrupt checkpoint?)") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_V1 or "tree" not in doc or "meta" not in doc:
            raise CheckpointError(f"{js} is not an egnn checkpoint (expected format {FORMAT_V1!r})")
        return CheckpointInfo(st, doc["meta"], doc["tree"], _shapes(_header_of(st), st), FORMAT_V1)
    if st.is_file():
        raise CheckpointError(f"{st} is not an egnn checkpoint (expected format {FORMAT!r})")
    raise CheckpointError(f"checkpoint file not found: {st}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (or the previous two-file format); returns
    ``(tree, meta)``.

    Raises:
        CheckpointError: the file is missing, its header or metadata is malformed, the checksum does not
            match, or the tensors cannot be parsed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    info = read_checkpoint_info(path)
    st = info.path
    raw = st.read_bytes()
    if info.format == FORMAT:
        header, body = _split(raw, st)
        md = header.get("__metadata__") or {}
        if _digest(str(md.get("doc", "")).encode(), body) != md.get("sha256"):
            raise CheckpointError(f"{st} does not match its checksum (corrupt, truncated or edited)")
        doc = _parse_doc(md.get("doc"), st)
        info.meta, info.tree = _decode_meta(doc["meta"]), doc["tree"]
    else:
        js = json.loads(_v1_json(st).read_text())
        if hashlib.sha256(raw).hexdigest() != js.get("sha256"):
            raise CheckpointError(f"{st} does not match the checksum in {_v1_json(st).name} (corrupt or truncated)")
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{st} cannot be read: {err}") from None
    tensors = {k: v.to(map_location) for k, v in tensors.items()}
    return _unflatten(info.tree, tensors), info.meta


def load_state_dict_strict(module: nn.Module, state: dict[str, Tensor], what: str = "model") -> None:
    """``module.load_state_dict`` with a clear error listing missing, unexpected and mis-shaped keys."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} state in checkpoint is not a dict")
    check_state_shapes(module.state_dict(), {k: tuple(v.shape) if isinstance(v, Tensor) else None
                                             for k, v in state.items()}, what)
    module.load_state_dict(state)


def check_state_shapes(own: dict[str, Tensor], stored: dict[str, tuple[int, ...] | None], what: str = "model") -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys of ``stored`` (shapes)
    against a module's state dict ``own`` (which may live on the ``meta`` device)."""
    missing = sorted(set(own) - set(stored))
    unexpected = sorted(set(stored) - set(own))
    shapes = [
        f"{k}: checkpoint {stored[k]} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(stored))
        if stored[k] is None or tuple(stored[k]) != tuple(own[k].shape)
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
