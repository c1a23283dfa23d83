"""The reference's ``.npy`` files for the charged N-body data sets.

The reference (vgsatorras/egnn ``generate_dataset.py``) writes, for each split in train/valid/test,
``{loc,vel,edges,charges}_{split}_charged{M}_initvel{0|1}{suffix}.npy``; e.g. the paper's ``nbody_small`` set is
``loc_train_charged5_initvel1small.npy`` and the larger ``nbody`` set has an empty suffix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["FIELDS", "SPLITS", "dataset_suffix", "load_split", "save_split_files", "split_file_names"]

FIELDS = ("loc", "vel", "edges", "charges")
SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
GENERATE_HINT = "generate it with `egnn nbody generate --out DIR`"


def dataset_suffix(n_particles: int = 5, suffix: str = "small", initial_vel: bool = True) -> str:
    """The reference's file-name suffix, e.g. ``_charged5_initvel1small``."""
    return f"_charged{int(n_particles)}_initvel{int(bool(initial_vel))}{suffix}"


def _split_name(split: str) -> str:
    try:
        return _SPLIT_ALIASES[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}") from None


def split_file_names(
    split: str, n_particles: int = 5, suffix: str = "small", initial_vel: bool = True
) -> dict[str, str]:
    """``{field: file name}`` of one split, e.g. ``{"loc": "loc_train_charged5_initvel1small.npy", ...}``."""
    tail = dataset_suffix(n_particles, suffix, initial_vel)
    split = _split_name(split)
    return {field: f"{field}_{split}{tail}.npy" for field in FIELDS}


def _validate(arrays: dict[str, np.ndarray], n_particles: int, where: str) -> None:
    """Raise ``ValueError`` unless the arrays have the reference's mutually consistent shapes."""
    loc, vel, edges, charges = (np.shape(arrays[f]) for f in FIELDS)
    problems = []
    if len(loc) != 4:
        problems.append(f"loc must be [S, frames, dim, {n_particles}], got {loc}")
    else:
        S, _, _, M = loc
        if M != n_particles:
            problems.append(f"loc has {M} particles, expected {n_particles}: {loc}")
        if vel != loc:
            problems.append(f"vel shape {vel} differs from loc shape {loc}")
        if edges != (S, n_particles, n_particles):
            problems.append(f"edges must be [{S}, {n_particles}, {n_particles}], got {edges}")
        if charges != (S, n_particles, 1):
            problems.append(f"charges must be [{S}, {n_particles}, 1], got {charges}")
    if problems:
        raise ValueError(f"malformed N-body data ({where}): " + "; ".join(problems))


def save_split_files(
    out_dir: str | Path,
    data: dict[str, dict[str, np.ndarray]],
    n_particles: int = 5,
    suffix: str = "small",
    initial_vel: bool = True,
) -> list[Path]:
    """Write ``data[split][field]`` for every split present to ``out_dir`` under the reference's names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, arrays in data.items():
        missing = [f for f in FIELDS if f not in arrays]
        if missing:
            raise ValueError(f"split {split!r} lacks {missing}; expected the fields {FIELDS}")
        _validate(arrays, n_particles, f"split {split!r} to save")
        for field, name in split_file_names(split, n_particles, suffix, initial_vel).items():
            path = out / name
            np.save(path, np.asarray(arrays[field], dtype=np.float64))
            paths.append(path)
    return paths


def load_split(
    data_dir: str | Path,
    split: str,
    suffix: str = "small",
    n_particles: int = 5,
    initial_vel: bool = True,
    mmap: bool = False,
) -> dict[str, np.ndarray]:
    """Load one split (``train``, ``valid``/``val`` or ``test``) as ``dict(loc, vel, edges, charges)``.

    Raises:
        FileNotFoundError: the directory or one of the four files is missing (the message names it).
        ValueError: the arrays' shapes do not fit together or the particle count differs.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"N-body data directory {str(root)!r} does not exist; {GENERATE_HINT}")
    names = split_file_names(split, n_particles, suffix, initial_vel)
    missing = [name for name in names.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"missing N-body file(s) in {str(root)!r}: {', '.join(missing)}; {GENERATE_HINT}")
    arrays = {f: _load_array(root / name, mmap) for f, name in names.items()}
    _validate(arrays, n_particles, f"{_split_name(split)} in {root}")
    return arrays


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    """One ``.npy`` file as a finite float array; a bad file is named with what is wrong with it."""
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        reason = "it holds pickled objects" if "pickle" in str(err) else f"{type(err).__name__}: {err}"
        raise ValueError(f"{path} is not a readable .npy array file ({reason})") from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path} does not hold a numeric array (dtype {getattr(arr, 'dtype', type(arr))})")
    # found now rather than when a split is first evaluated (one pass over the file)
    finite = np.isfinite(arr).all() if np.issubdtype(arr.dtype, np.floating) else True
    if not finite:
        bad = np.argwhere(~np.isfinite(np.asarray(arr)))[0].tolist()
        raise ValueError(f"{path} holds NaN or Inf values (first at index {bad})")
    return arr
