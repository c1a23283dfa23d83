"""Pretrained energy/property models shipped with the package, each with a card saying how it was made.

This package is also the data folder: beside this module lie ``index.json`` and one ``NAME.safetensors`` per
model (an ordinary :func:`egnn.atoms.model.save_model` checkpoint, float32 weights). The index reads::

    {"format": "egnn-pretrained/1",
     "models": {NAME: {"file": "NAME.safetensors", "sha256": HEX, "card": {...}}}}

with ``sha256`` the SHA-256 of the whole file, checked by :func:`load_pretrained` before the file is read, and
``card`` free JSON (target, unit, data split, recipe, test MAE, command, commit ...). A card's ``domain``, when
present, says what the model was trained on (:data:`QM9_DOMAIN` for the shipped QM9 models); :func:`domain_note`
checks structures against it (``egnn predict --model NAME`` prints its note on stderr).

Every function takes ``folder=`` to use another folder than the shipped one. Without it the folder is
``$EGNN_PRETRAINED_DIR`` when that environment variable is set (tests, private model collections, the
``egnn predict --model NAME`` of a checkout), else this package's folder.

New entries are written by :func:`export_pretrained`, which never replaces an entry or file unless asked to.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from egnn.atoms.data import file_sha256
from egnn.checkpoint import CheckpointError, atomic_write

if TYPE_CHECKING:
    import torch

    from egnn.atoms.model import AtomsModel

FORMAT = "egnn-pretrained/1"
INDEX = "index.json"
SUFFIX = ".safetensors"
ENV_DIR = "EGNN_PRETRAINED_DIR"
PACKAGE_DIR = Path(__file__).resolve().parent
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # "qm9-U0": target names keep their case
# a name ending like a checkpoint's own suffix would be stripped by egnn.checkpoint.checkpoint_path
_RESERVED_ENDINGS = (".json", SUFFIX)
_MAX_NAME = 100


# ------------------------------------------------------------------------------------------------ the index


def default_folder() -> Path:
    """``$EGNN_PRETRAINED_DIR`` when set (and not empty), else the package's own folder."""
    env = os.environ.get(ENV_DIR, "").strip()
    return Path(env) if env else PACKAGE_DIR


def _folder(folder: str | os.PathLike | None) -> Path:
    return default_folder() if folder is None else Path(folder)


def is_valid_name(name: Any) -> bool:
    """Whether ``name`` can name a pretrained model (``[A-Za-z0-9][A-Za-z0-9_.-]*``, not ending in ``.json`` or
    ``.safetensors``, at most 100 characters)."""
    return (isinstance(name, str) and len(name) <= _MAX_NAME and NAME_PATTERN.fullmatch(name) is not None
            and not name.endswith(_RESERVED_ENDINGS))


def _check_entry(name: Any, entry: Any, where: Path) -> None:
    if not is_valid_name(name):
        raise CheckpointError(f"{where}: invalid model name {name!r}")
    if not isinstance(entry, dict) or not isinstance(entry.get("card"), dict):
        raise CheckpointError(f"{where}: entry {name!r} needs 'file', 'sha256' and a 'card' object")
    file, digest = entry.get("file"), entry.get("sha256")
    # only a plain file name beside the index: an index must not point anywhere else on the disk
    if not (isinstance(file, str) and file.endswith(SUFFIX) and Path(file).name == file
            and not file.startswith(".")):
        raise CheckpointError(f"{where}: entry {name!r} has an invalid file name {file!r}")
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise CheckpointError(f"{where}: entry {name!r} has an invalid sha256 {digest!r}")


def read_index(folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The validated index of ``folder`` (see the module docstring); a folder without ``index.json`` has no models.

    Raises:
        CheckpointError: the index is not valid JSON, has another format tag or a malformed entry.
    """
    path = _folder(folder) / INDEX
    if not path.is_file():
        return {"format": FORMAT, "models": {}}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not valid JSON (corrupt index?)") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("models"), dict):
        raise CheckpointError(f"{path}: not a pretrained-model index (expected format {FORMAT!r} and 'models')")
    for name, entry in index["models"].items():
        _check_entry(name, entry, path)
    return index


def available(folder: str | os.PathLike | None = None) -> list[str]:
    """Names of the pretrained models in ``folder`` (default: see :func:`default_folder`), sorted.

    >>> import egnn
    >>> egnn.pretrained.available(egnn.pretrained.PACKAGE_DIR)[:4]
    ['qm9-Cv', 'qm9-G', 'qm9-H', 'qm9-U']
    >>> egnn.pretrained.card("qm9-U0", egnn.pretrained.PACKAGE_DIR)["unit"]
    'meV'
    """
    return sorted(read_index(folder)["models"])


def _entry(name: str, folder: str | os.PathLike | None) -> dict[str, Any]:
    models = read_index(folder)["models"]
    if name not in models:
        names = ", ".join(sorted(models)) or "none shipped"
        raise ValueError(f"unknown pretrained model {name!r}; available: {names}")
    return models[name]


def card(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The card of model ``name`` (a copy: editing it changes nothing on disk).

    Raises:
        ValueError: no model of that name (the message lists the available ones).
    """
    return copy.deepcopy(_entry(name, folder)["card"])


def model_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The checkpoint file of model ``name`` (not checked; :func:`load_pretrained` checks it).

    Raises:
        ValueError: no model of that name.
    """
    return _folder(folder) / _entry(name, folder)["file"]


def verify(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The file of model ``name`` after checking its SHA-256 against the index.

    Raises:
        ValueError: no model of that name.
        CheckpointError: the file is missing or its SHA-256 differs from the index's.
    """
    entry = _entry(name, folder)
    path = _folder(folder) / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path}: file of pretrained model {name!r} not found")
    actual = file_sha256(path)
    if actual != entry["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 mismatch (index: {entry['sha256']}, file: {actual}); "
                              "the file is corrupt or was replaced")
    return path


def load_pretrained(name: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                    folder: str | os.PathLike | None = None) -> AtomsModel:
    """The pretrained :class:`~egnn.atoms.model.AtomsModel` ``name``, in eval mode, its file checked first.

    Args:
        name: one of :func:`available`.
        device: where the model goes.
        dtype: ``None`` keeps the stored float32; ``torch.float64`` for double precision.
        folder: the models' folder (default: see :func:`default_folder`).

    Returns:
        The model; ``model.meta["pretrained"]`` holds its name and the card it was exported with.

    Raises:
        ValueError: no model of that name (the message lists the available ones).
        CheckpointError: the file is missing, its SHA-256 differs from the index's, or it is not a valid model.
    """
    from egnn.atoms.model import load_model

    return load_model(verify(name, folder), device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------ training domain

#: The training domain of the shipped QM9 models, the molecules of QM9 (GDB-9, up to 9 heavy atoms C, N, O, F
#: and up to 29 atoms with hydrogens) with properties computed by DFT at the B3LYP/6-31G(2df,p) level.
QM9_DOMAIN: dict[str, Any] = {
    "data": "QM9 (134k small organic molecules of GDB-9, 130,831 after the standard exclusions)",
    "elements": ["H", "C", "N", "O", "F"],
    "max_atoms": 29,
    "max_heavy_atoms": 9,
    "level_of_theory": "B3LYP/6-31G(2df,p)",
}

_SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


def domain(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The training domain on model ``name``'s card (``elements``, ``max_atoms``, ``max_heavy_atoms``,
    ``level_of_theory``, ``data``), or ``None`` when its card does not state one.

    Raises:
        ValueError: no model of that name.
    """
    found = _entry(name, folder)["card"].get("domain")
    return copy.deepcopy(found) if isinstance(found, dict) else None


def describe_domain(d: dict[str, Any] | None) -> str:
    """One line for people: ``QM9 (...): elements H, C, N, O, F; at most 29 atoms, 9 heavy atoms; B3LYP/...``."""
    if not d:
        return "not stated"
    parts = [str(d.get("data", "unnamed data"))]
    if d.get("elements"):
        parts.append("elements " + ", ".join(d["elements"]))
    sizes = [f"at most {d['max_atoms']} atoms" if d.get("max_atoms") else "",
             f"{d['max_heavy_atoms']} heavy atoms" if d.get("max_heavy_atoms") else ""]
    if any(sizes):
        parts.append(", ".join(s for s in sizes if s))
    if d.get("level_of_theory"):
        parts.append(f"labels at the {d['level_of_theory']} level")
    return "; ".join(parts)


def domain_note(name: str, numbers: Any, folder: str | os.PathLike | None = None) -> str | None:
    """One line saying which structures lie outside model ``name``'s training domain, or ``None``.

    Args:
        name: a pretrained model (one of :func:`available`).
        numbers: the atomic numbers of each structure (an iterable of integer sequences).
        folder: the models' folder (default: see :func:`default_folder`).

    A structure is outside when it holds an element the model was not trained on, more atoms than
    ``max_atoms`` or more heavy (non-hydrogen) atoms than ``max_heavy_atoms``. The model still predicts it: the
    number is an extrapolation.

    >>> from egnn import pretrained
    >>> print(pretrained.domain_note("qm9-U0", [[6, 1, 1, 1, 1]]))  # methane
    None
    >>> note = pretrained.domain_note("qm9-U0", [[6] * 60])  # C60
    >>> note.startswith("egnn: note: 1 of 1 structures lie outside the training domain of qm9-U0")
    True
    >>> note.split(": ")[-1]
    'structure 0 has 60 atoms (60 heavy); its prediction is an extrapolation'
    """
    d = domain(name, folder)
    if not d:
        return None
    allowed = set(d.get("elements") or [])
    max_atoms, max_heavy = d.get("max_atoms"), d.get("max_heavy_atoms")
    outside: list[str] = []
    total = 0
    for i, z in enumerate(numbers):
        total += 1
        z = [int(v) for v in z]
        why = []
        other = sorted({v for v in z if _SYMBOLS.get(v) not in allowed}) if allowed else []
        if other:
            why.append("atomic numbers " + ", ".join(map(str, other)))
        heavy = sum(1 for v in z if v != 1)
        if (max_atoms and len(z) > max_atoms) or (max_heavy and heavy > max_heavy):
            why.append(f"{len(z)} atoms ({heavy} heavy)")
        if why:
            outside.append(f"structure {i} has {' and '.join(why)}")
    if not outside:
        return None
    more = f" and {len(outside) - 1} more" if len(outside) > 1 else ""
    return (f"egnn: note: {len(outside)} of {total} structures lie outside the training domain of {name} "
            f"({describe_domain(d)}): {outside[0]}{more}; its prediction is an extrapolation")


def file_domain_note(name: str, path: str | os.PathLike, folder: str | os.PathLike | None = None) -> str | None:
    """:func:`domain_note` for the structures of an ASE-readable file or a store (``egnn data pack``); ``None``
    also when model ``name``'s card states no domain (then the file is not read)."""
    if domain(name, folder) is None:
        return None
    from egnn.atoms.data import read_frames
    from egnn.atoms.store import is_store, open_store

    if is_store(path):
        with open_store(path, verify=False) as store:
            numbers = [d.z[d.offsets[i] : d.offsets[i + 1]] for _, d in store.chunks()
                       for i in range(len(d.offsets) - 1)]
    else:
        numbers = [atoms.numbers for atoms in read_frames(path)]
    return domain_note(name, numbers, folder)


# ------------------------------------------------------------------------------------------------ exporting


def _check_card(card: Any) -> dict[str, Any]:
    if not isinstance(card, dict):
        raise TypeError(f"card must be a dict, got {type(card).__name__}")
    try:
        return json.loads(json.dumps(card, allow_nan=False))  # a copy that is sure to be plain JSON
    except (TypeError, ValueError) as err:
        raise ValueError(f"card must be plain JSON with finite numbers: {err}") from None


def export_pretrained(model_or_checkpoint_path: AtomsModel | str | os.PathLike, name: str, card: dict[str, Any],
                      folder: str | os.PathLike | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write ``NAME.safetensors`` (float32 weights) into ``folder`` and add its entry to the index.

    The checkpoint is written by :func:`egnn.atoms.model.save_model` with the name and card in its metadata, then
    the index is rewritten with :func:`egnn.checkpoint.atomic_write`; each file is replaced in one rename. A crash
    between the two leaves either no entry (an ``overwrite=True`` export finishes it) or, when replacing, the
    old entry's hash, which :func:`load_pretrained` then reports as a mismatch: never a silently wrong model.

    Args:
        model_or_checkpoint_path: an :class:`~egnn.atoms.model.AtomsModel` (not modified) or a checkpoint path
            / run folder accepted by :func:`~egnn.atoms.model.load_model`.
        name: the model's name, ``[A-Za-z0-9][A-Za-z0-9_.-]*``.
        card: free JSON about the model (target, unit, split, recipe, errors, command, commit ...).
        folder: where to write (default: see :func:`default_folder`); created if absent.
        overwrite: replace an existing entry or file of that name.

    Returns:
        The index entry ``{"file", "sha256", "card"}``.

    Raises:
        ValueError: invalid name, a card that is not plain JSON, or non-finite weights.
        FileExistsError: the name or its file exists already and ``overwrite`` is false.
        CheckpointError: the checkpoint path cannot be loaded, or the folder's index is corrupt.
    """
    import torch

    from egnn.atoms.model import AtomsModel, load_model, save_model

    if not is_valid_name(name):
        raise ValueError(f"invalid pretrained model name {name!r}: use lower-case letters, digits, '_', '.' and "
                         f"'-', starting with a letter or digit, at most {_MAX_NAME} characters, not ending in "
                         f"{' or '.join(_RESERVED_ENDINGS)}")
    card = _check_card(card)
    if isinstance(model_or_checkpoint_path, AtomsModel):
        # a copy: the caller's model keeps its dtype and device
        model = copy.deepcopy(model_or_checkpoint_path).to(device="cpu", dtype=torch.float32)
    elif isinstance(model_or_checkpoint_path, (str, os.PathLike)):
        model = load_model(model_or_checkpoint_path, dtype=torch.float32)
    else:
        raise TypeError(f"expected an AtomsModel or a checkpoint path, got {type(model_or_checkpoint_path).__name__}")
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # load_model would refuse the file
        raise ValueError(f"model {name!r} has non-finite weights ({', '.join(bad[:3])})")

    root = _folder(folder)
    index = read_index(root)  # a corrupt index stops the export before anything is written
    file = root / f"{name}{SUFFIX}"
    if not overwrite and (name in index["models"] or file.exists()):
        raise FileExistsError(f"pretrained model {name!r} already exists in {root} "
                              f"({'index entry' if name in index['models'] else 'file'} {file.name}); "
                              "pass overwrite=True to replace it")
    root.mkdir(parents=True, exist_ok=True)
    save_model(model, file, meta={"pretrained": {"name": name, "card": card}})
    entry = {"file": file.name, "sha256": file_sha256(file), "card": card}
    models = {**index["models"], name: entry}
    # models in name order (small diffs when one is added); each card keeps its own key order
    index = {"format": FORMAT, "models": dict(sorted(models.items()))}
    atomic_write(root / INDEX, json.dumps(index, indent=1, allow_nan=False) + "\n")
    return copy.deepcopy(entry)


__all__ = ["ENV_DIR", "FORMAT", "PACKAGE_DIR", "QM9_DOMAIN", "available", "card", "default_folder", "describe_domain",
           "domain", "domain_note", "export_pretrained", "file_domain_note", "is_valid_name", "load_pretrained",
           "model_path", "read_index", "verify"]
