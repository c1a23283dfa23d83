"""Atomistic data sets from any file ASE reads (extxyz, ASE ``.db``, ``.traj`` ...), validated, with a verified cache.

A data set is held as flat arrays (no per-frame Python objects): atomic numbers ``z`` ``[N]``, positions ``pos``
``[N, 3]`` (Angstrom), frame offsets ``offsets`` ``[F + 1]``, cells ``cell`` ``[F, 3, 3]`` (rows are the lattice
vectors), periodicity ``pbc`` ``[F, 3]``, a graph-level target ``energy`` ``[F]`` and optional per-atom
``forces`` ``[N, 3]``.

Targets are looked up by key, in this order: ``atoms.info`` (graph-level values), ``atoms.arrays`` (per-atom
values), then the results of the attached calculator (ASE's extxyz reader stores ``energy``, ``forces`` and
``stress`` there). Every problem is reported as one :class:`AtomsDataError` line naming the file, the frame and
the key.

The cache (:func:`load_dataset`) is one uncompressed ``.npz`` per (file content, keys) holding the arrays and a
JSON header with the SHA-256 of the source file and of every array; a cache whose checks fail is rebuilt, never
used. ``ase`` is imported only when a file has to be parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CACHE_FORMAT = "egnn-atoms-cache"
CACHE_VERSION = 1
DEFAULT_CACHE_DIR = "data/cache"


class AtomsDataError(ValueError):
    """A data file cannot be used: printed as one line naming the file, the frame index and the key."""


@dataclass
class AtomsData:
    """Frames of atoms as flat arrays (see the module docstring for shapes and units).

    Attributes:
        z: atomic numbers ``[N]`` (int64).
        pos: positions ``[N, 3]`` (float64).
        offsets: start of each frame in the atom arrays, ``[F + 1]`` (int64).
        cell: lattice vectors as rows, ``[F, 3, 3]`` (float64; zeros where a frame has no cell).
        pbc: periodic directions ``[F, 3]`` (bool).
        energy: graph-level target ``[F]`` (float64) or ``None`` (prediction-only data).
        forces: per-atom forces ``[N, 3]`` (float64) or ``None``.
        source: where the frames came from (for messages).
        energy_key, forces_key: the keys the targets were read from.
    """

    z: np.ndarray
    pos: np.ndarray
    offsets: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: np.ndarray | None = None
    forces: np.ndarray | None = None
    source: str = "<memory>"
    energy_key: str | None = None
    forces_key: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = len(self.offsets) - 1
        n = int(self.offsets[-1]) if f >= 0 else 0
        problems = []
        if self.z.shape != (n,) or self.pos.shape != (n, 3):
            problems.append(f"z {self.z.shape} / pos {self.pos.shape} for {n} atoms")
        if self.cell.shape != (f, 3, 3) or self.pbc.shape != (f, 3):
            problems.append(f"cell {self.cell.shape} / pbc {self.pbc.shape} for {f} frames")
        if self.energy is not None and self.energy.shape != (f,):
            problems.append(f"energy {self.energy.shape} for {f} frames")
        if self.forces is not None and self.forces.shape != (n, 3):
            problems.append(f"forces {self.forces.shape} for {n} atoms")
        if problems:
            raise AtomsDataError(f"{self.source}: inconsistent arrays: " + "; ".join(problems))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __repr__(self) -> str:
        return (f"AtomsData({len(self)} frames, {len(self.z)} atoms, elements {self.elements()}, "
                f"energy={self.energy_key!r}, forces={self.forces_key!r}, source={self.source!r})")

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per frame ``[F]``."""
        return np.diff(self.offsets)

    def elements(self) -> list[int]:
        """Sorted atomic numbers present."""
        return sorted(int(v) for v in np.unique(self.z))

    def frame(self, i: int) -> dict[str, np.ndarray]:
        """The arrays of frame ``i`` (views)."""
        sl = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
        out = {"z": self.z[sl], "pos": self.pos[sl], "cell": self.cell[i], "pbc": self.pbc[i]}
        if self.energy is not None:
            out["energy"] = self.energy[i : i + 1]
        if self.forces is not None:
            out["forces"] = self.forces[sl]
        return out

    def subset(self, rows: np.ndarray | list[int]) -> AtomsData:
        """The frames ``rows`` (in that order) as a new data set."""
        rows = np.asarray(rows, dtype=np.int64)
        sizes = self.n_atoms[rows]
        starts = self.offsets[:-1][rows]
        atoms = (np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
                 + np.arange(int(sizes.sum()))) if rows.size else np.zeros(0, np.int64)
        return AtomsData(
            z=self.z[atoms], pos=self.pos[atoms], offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            cell=self.cell[rows], pbc=self.pbc[rows],
            energy=None if self.energy is None else self.energy[rows],
            forces=None if self.forces is None else self.forces[atoms],
            source=self.source, energy_key=self.energy_key, forces_key=self.forces_key, meta=dict(self.meta),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by name (``z``, ``pos``, ``offsets``, ``cell``, ``pbc`` and the targets that exist)."""
        out = {"z": self.z, "pos": self.pos, "offsets": self.offsets, "cell": self.cell, "pbc": self.pbc}
        if self.energy is not None:
            out["energy"] = self.energy
        if self.forces is not None:
            out["forces"] = self.forces
        return {k: np.ascontiguousarray(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------- validation


def _where(source: str, frame: int, key: str | None = None) -> str:
    return f"{source}: frame {frame}" + (f": key {key!r}" if key is not None else "")


def _lookup(atoms: Any, key: str, per_atom: bool) -> tuple[Any, str] | None:
    """``(value, place)`` of ``key`` in info, arrays or the calculator's results, or ``None``."""
    if not per_atom and key in atoms.info:
        return atoms.info[key], "atoms.info"
    if per_atom and key in atoms.arrays:
        return atoms.arrays[key], "atoms.arrays"
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) if calc is not None else None
    if isinstance(results, dict) and key in results:
        return results[key], "calculator results"
    # a per-atom key stored as graph-level (or the other way round) is reported as a shape error below
    if key in atoms.info:
        return atoms.info[key], "atoms.info"
    if key in atoms.arrays:
        return atoms.arrays[key], "atoms.arrays"
    return None


def _available_keys(atoms: Any) -> list[str]:
    keys = set(atoms.info) | (set(atoms.arrays) - {"numbers", "positions"})
    calc = getattr(atoms, "calc", None)
    if calc is not None and isinstance(getattr(calc, "results", None), dict):
        keys |= set(calc.results)
    return sorted(keys)


def check_cell(cell: np.ndarray, pbc: np.ndarray, where: str) -> None:
    """Raise :class:`AtomsDataError` if the periodic lattice vectors span no volume (or area, or length)."""
    if not pbc.any():
        return
    if not np.isfinite(cell).all():
        raise AtomsDataError(f"{where}: cell contains NaN/Inf")
    vecs = cell[pbc]
    gram = vecs @ vecs.T
    scale = max(float(np.abs(cell).max()), 1e-300)
    if abs(float(np.linalg.det(gram))) <= (1e-10 * scale * scale) ** len(vecs):
        kind = {3: "volume", 2: "area", 1: "length"}[len(vecs)]
        raise AtomsDataError(f"{where}: cell has zero {kind} along its periodic directions (pbc={pbc.tolist()}); "
                             "give lattice vectors for every periodic direction or set pbc=False")


def frame_arrays(
    atoms: Any, index: int, source: str, energy_key: str | None = None, forces_key: str | None = None,
    require_targets: bool = True,
) -> dict[str, np.ndarray | None]:
    """Validated arrays of one ``ase.Atoms``: ``z``, ``pos``, ``cell``, ``pbc``, ``energy`` (``[1]``), ``forces``.

    With ``require_targets=False`` a missing key gives ``None`` instead of an error (prediction inputs).
    """
    n = len(atoms)
    if n == 0:
        raise AtomsDataError(f"{_where(source, index, 'numbers')}: the frame has no atoms")
    z = np.asarray(atoms.numbers, dtype=np.int64)
    pos = np.asarray(atoms.positions, dtype=np.float64)
    cell = np.asarray(atoms.cell.array if hasattr(atoms.cell, "array") else atoms.cell, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool).reshape(3)
    if (z < 1).any() or (z > 118).any():
        raise AtomsDataError(f"{_where(source, index, 'numbers')}: atomic numbers must be in 1..118, "
                             f"got {sorted(set(z.tolist()))}")
    if not np.isfinite(pos).all():
        raise AtomsDataError(f"{_where(source, index, 'positions')}: contains NaN/Inf")
    check_cell(cell, pbc, _where(source, index, 'cell'))
    out: dict[str, np.ndarray | None] = {"z": z, "pos": pos, "cell": cell, "pbc": pbc, "energy": None, "forces": None}
    for key, per_atom in ((energy_key, False), (forces_key, True)):
        if key is None:
            continue
        found = _lookup(atoms, key, per_atom)
        if found is None:
            if not require_targets:
                continue
            raise AtomsDataError(f"{_where(source, index, key)}: not found in atoms.info, atoms.arrays or the "
                                 f"calculator results (available: {', '.join(_available_keys(atoms)) or 'none'})")
        value, place = found
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise AtomsDataError(f"{_where(source, index, key)}: {place} value is not numeric") from None
        expected = (n, 3) if per_atom else ()
        if per_atom and arr.shape != expected:
            raise AtomsDataError(f"{_where(source, index, key)}: expected per-atom vectors of shape {expected}, "
                                 f"got {arr.shape} from {place}")
        if not per_atom:
            if arr.size != 1:
                raise AtomsDataError(f"{_where(source, index, key)}: expected one number per frame, got shape "
                                     f"{arr.shape} from {place}")
            arr = arr.reshape(1)
        if not np.isfinite(arr).all():
            raise AtomsDataError(f"{_where(source, index, key)}: contains NaN/Inf")
        out["energy" if not per_atom else "forces"] = arr
    return out


def from_atoms_list(
    frames: list[Any], source: str = "<memory>", energy_key: str | None = "energy", forces_key: str | None = None,
    require_targets: bool = True, progress: bool = False,
) -> AtomsData:
    """Validate ``ase.Atoms`` frames and pack them into an :class:`AtomsData`.

    Args:
        frames: the structures.
        source: file name used in error messages.
        energy_key: graph-level target key (``None``: no target).
        forces_key: per-atom forces key (``None``: no forces).
        require_targets: a missing key is an error (training/evaluation data); else every frame must lack it
            or every frame must have it.
        progress: tqdm bar over the frames.
    """
    if len(frames) == 0:
        raise AtomsDataError(f"{source}: no frames")
    zs, poss, cells, pbcs, energies, forces = [], [], [], [], [], []
    from tqdm.auto import tqdm

    first_has: dict[str, tuple[bool, int]] = {}
    for i, atoms in enumerate(tqdm(frames, desc="check", unit="frame", disable=not progress, leave=False)):
        a = frame_arrays(atoms, i, source, energy_key, forces_key, require_targets)
        for name, key in (("energy", energy_key), ("forces", forces_key)):
            if key is None:
                continue
            has = a[name] is not None
            if name not in first_has:
                first_has[name] = (has, i)
            elif first_has[name][0] != has:
                with_, without = (first_has[name][1], i) if first_has[name][0] else (i, first_has[name][1])
                raise AtomsDataError(f"{_where(source, without, key)}: missing, but frame {with_} has it; "
                                     f"{key!r} must be given in every frame or in none")
        zs.append(a["z"])
        poss.append(a["pos"])
        cells.append(a["cell"])
        pbcs.append(a["pbc"])
        energies.append(a["energy"])
        forces.append(a["forces"])
    sizes = np.array([len(z) for z in zs], dtype=np.int64)
    has_e = energy_key is not None and energies[0] is not None
    has_f = forces_key is not None and forces[0] is not None
    return AtomsData(
        z=np.concatenate(zs), pos=np.concatenate(poss), offsets=np.concatenate([[0], np.cumsum(sizes)]),
        cell=np.stack(cells), pbc=np.stack(pbcs),
        energy=np.concatenate(energies) if has_e else None, forces=np.concatenate(forces) if has_f else None,
        source=source, energy_key=energy_key if has_e else None, forces_key=forces_key if has_f else None,
    )


def require_ase() -> None:
    """Raise a one-line :class:`AtomsDataError` with the install command if ASE is missing."""
    try:
        import ase  # noqa: F401
    except ModuleNotFoundError:
        raise AtomsDataError("this needs ASE: pip install 'egnn[ase]' (ase==3.29.0)") from None


def read_frames(path: str | os.PathLike, index: str = ":", format: str | None = None) -> list[Any]:
    """``ase.io.read(path, index)`` as a list, with read failures as one-line :class:`AtomsDataError`."""
    require_ase()
    import ase.io

    path = Path(path)
    if not path.exists():
        raise AtomsDataError(f"{path}: file not found")
    if path.is_file() and path.stat().st_size == 0:  # ASE would say "UnknownFileTypeError: Empty file"
        raise AtomsDataError(f"{path}: the file is empty (0 frames)")
    try:
        frames = ase.io.read(str(path), index=index, format=format)
    except Exception as err:  # ASE raises many kinds (ValueError, KeyError, StopIteration, UnknownFileTypeError)
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AtomsDataError(f"{path}: ASE cannot read it ({type(err).__name__}: {msg})") from None
    return list(frames) if isinstance(frames, list) else [frames]


# ------------------------------------------------------------------------------------------ fast extxyz

# a comment line made only of key=value tokens, values plain or double-quoted without escapes
_TOKEN = re.compile(r'([A-Za-z_][\w\-.:]*)=("[^"\\]*"|[^\s"=\\]+)\s*')
_BOOLS = {"T": True, "True": True, "true": True, "F": False, "False": False, "false": False}
_COLUMN_TYPES = {"R": float, "I": int, "S": str, "L": bool}


class _Frame:
    """The parts of ``ase.Atoms`` that :func:`frame_arrays` reads, filled by the fast extxyz reader."""

    calc = None

    def __init__(self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
                 info: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.numbers, self.positions, self.cell, self.pbc = numbers, positions, cell, pbc
        self.info, self.arrays = info, arrays

    def __len__(self) -> int:
        return len(self.numbers)


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return _BOOLS.get(text, text)


def _parse_comment(line: str) -> dict[str, Any] | None:
    """``key=value`` pairs of an extxyz comment line with ASE's value conversion, or ``None`` when the line
    uses anything else (flags without ``=``, escapes, ...), so that ASE's own parser reads the file."""
    out: dict[str, Any] = {}
    pos, text = 0, line.strip()
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            return None
        pos = m.end()
        key, raw = m.group(1), m.group(2)
        if raw.startswith('"'):
            raw = raw[1:-1]
            parts = raw.split()
            if key == "Properties":
                out[key] = raw
            elif key == "Lattice":
                out[key] = np.array([float(v) for v in parts]).reshape(3, 3)
            elif key == "pbc":
                out[key] = np.array([_BOOLS[v] for v in parts], dtype=bool)
            elif parts and all(isinstance(_scalar(v), (int, float)) and not isinstance(_scalar(v), bool)
                               for v in parts):
                out[key] = np.array([_scalar(v) for v in parts])
            else:
                out[key] = raw
        else:
            out[key] = _scalar(raw)
    if pos != len(text) or "Properties" not in out:
        return None
    return out


def parse_extxyz_frame(comment: str, atom_lines: list[str]) -> _Frame | None:
    """One extxyz frame from its comment line and its atom lines (ASE's value conversion), or ``None`` when it
    uses anything this reader leaves to ASE."""
    from ase.data import atomic_numbers

    n = len(atom_lines)
    info = _parse_comment(comment)
    if info is None:
        return None
    props = info.pop("Properties").split(":")
    if len(props) % 3 or props[:2] != ["species", "S"]:
        return None
    columns = [(props[k], props[k + 1], int(props[k + 2])) for k in range(0, len(props), 3)]
    width = sum(c[2] for c in columns)
    rows = [line.split() for line in atom_lines]
    if any(len(r) != width for r in rows):
        return None
    table = np.array(rows, dtype=str).reshape(n, width)
    arrays: dict[str, np.ndarray] = {}
    col = 0
    for name, kind, count in columns:
        if kind not in _COLUMN_TYPES:
            return None
        block = table[:, col : col + count]
        col += count
        if kind == "R":
            value = block.astype(np.float64)
        elif kind == "I":
            value = block.astype(np.int64)
        elif kind == "L":
            value = np.vectorize(_BOOLS.__getitem__, otypes=[bool])(block) if n else block.astype(bool)
        else:
            value = block
        arrays[name] = value[:, 0] if count == 1 else value
    try:
        numbers = np.array([atomic_numbers[sym] for sym in arrays.pop("species")], dtype=np.int64)
    except KeyError:
        return None
    if "pos" not in arrays:
        return None
    positions = arrays.pop("pos")
    lattice = info.pop("Lattice", None)
    pbc = info.pop("pbc", None)
    if pbc is None:
        pbc = np.full(3, lattice is not None)  # ASE's default: periodic exactly when a lattice is given
    cell = lattice if lattice is not None else np.zeros((3, 3))
    return _Frame(numbers, positions, cell, np.asarray(pbc, dtype=bool).reshape(3), info, arrays)


def read_extxyz_fast(path: str | os.PathLike) -> list[_Frame] | None:
    """Frames of a plain extended-XYZ file without building ``ase.Atoms`` (several times faster than
    ``ase.io.read`` on many small frames), or ``None`` if the file uses a feature this reader leaves to ASE.
    Values match ASE's reader: ``atoms.info`` keys, per-atom columns in ``arrays``, ``Lattice`` rows as the cell,
    ``pbc`` (default: true with a ``Lattice``)."""

    with open(path) as fh:
        lines = fh.read().split("\n")
    frames: list[_Frame] = []
    i, n_lines = 0, len(lines)
    while i < n_lines:
        head = lines[i].strip()
        if not head:
            i += 1
            continue
        try:
            n = int(head)
        except ValueError:
            return None
        if n < 0 or i + 2 + n > n_lines:  # truncated: ASE reports it
            return None
        frame = parse_extxyz_frame(lines[i + 1], lines[i + 2 : i + 2 + n])
        if frame is None:
            return None
        frames.append(frame)
        i += 2 + n
    return frames


def read_dataset(
    path: str | os.PathLike, energy_key: str | None = "energy", forces_key: str | None = None,
    index: str = ":", format: str | None = None, require_targets: bool = True, progress: bool = False,
) -> AtomsData:
    """Parse and validate a file (no cache). See :func:`from_atoms_list` for the arguments."""
    frames = None
    if index == ":" and (format == "extxyz" or (format is None and Path(path).suffix.lower() in (".xyz", ".extxyz"))):
        require_ase()
        if not Path(path).is_file():
            raise AtomsDataError(f"{path}: file not found")
        try:
            frames = read_extxyz_fast(path)
        except (ValueError, UnicodeDecodeError):  # anything unusual: ASE decides (and reports)
            frames = None
    if frames is None:
        frames = read_frames(path, index, format)
    return from_atoms_list(frames, str(path), energy_key, forces_key, require_targets, progress)


# -------------------------------------------------------------------------------------------------- cache


def _sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hexadecimal (read in blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cache_path(cache_dir: str | os.PathLike, path: str | os.PathLike, key: dict[str, Any]) -> Path:
    """Cache file of ``path`` for the reading options ``key`` (content hash included, so edits miss)."""
    digest = _sha256_bytes(json.dumps(key, sort_keys=True).encode())[:20]
    return Path(cache_dir) / f"{Path(path).name}.{digest}.npz"


def save_cache(data: AtomsData, cache_file: str | os.PathLike, key: dict[str, Any]) -> Path:
    """Write ``data`` with a JSON header (reading options ``key``, per-array dtype/shape/sha256); atomic."""
    cache_file = Path(cache_file)
    arrays = data.arrays()
    meta = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key,
        "energy_key": data.energy_key, "forces_key": data.forces_key, "source": data.source,
        "arrays": {k: {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _sha256_bytes(a.data)}
                   for k, a in arrays.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        os.replace(tmp, cache_file)
    finally:
        tmp.unlink(missing_ok=True)
    return cache_file


class CacheMiss(Exception):
    """The cache file is absent, corrupt or made for other data (then it is rebuilt)."""


def read_cache(cache_file: str | os.PathLike, key: dict[str, Any]) -> AtomsData:
    """Load a cache written by :func:`save_cache` for the same ``key``; every array is checksummed."""
    cache_file = Path(cache_file)
    if not cache_file.is_file():
        raise CacheMiss(f"{cache_file}: absent")
    try:
        with np.load(cache_file, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
                raise CacheMiss(f"{cache_file}: other format")
            if meta.get("key") != key:
                raise CacheMiss(f"{cache_file}: made for other data or options")
            arrays = {name: npz[name] for name in meta["arrays"]}
    except CacheMiss:
        raise
    except (OSError, ValueError, KeyError, EOFError, TypeError, UnicodeDecodeError, zipfile.BadZipFile,
            zlib.error) as err:
        raise CacheMiss(f"{cache_file}: corrupt ({type(err).__name__})") from None
    for name, spec in meta["arrays"].items():
        a = np.ascontiguousarray(arrays[name])
        if a.dtype.str != spec["dtype"] or list(a.shape) != spec["shape"] or _sha256_bytes(a.data) != spec["sha256"]:
            raise CacheMiss(f"{cache_file}: array {name!r} fails its checksum")
    try:
        return AtomsData(**arrays, source=meta["source"], energy_key=meta["energy_key"],
                         forces_key=meta["forces_key"], meta={"cache": str(cache_file)})
    except (AtomsDataError, TypeError) as err:
        raise CacheMiss(f"{cache_file}: inconsistent ({err})") from None


def load_dataset(
    path: str | os.PathLike,
    energy_key: str | None = "energy",
    forces_key: str | None = None,
    *,
    index: str = ":",
    format: str | None = None,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    require_targets: bool = True,
    progress: bool = True,
) -> AtomsData:
    """Read ``path`` through a verified cache: parse with ASE and validate the first time, then load the cache.

    The cache key holds the SHA-256 of the file's bytes and the reading options, so an edited file or other keys
    never reuse a stale cache; a corrupt cache is rebuilt. ``cache_dir=None`` disables caching.

    Returns:
        The data set; ``meta["cache"]`` is the cache file, ``meta["cached"]`` whether it was reused and
        ``meta["sha256"]`` the file's SHA-256.
    """
    path = Path(path)
    if not path.is_file():
        raise AtomsDataError(f"{path}: file not found")
    digest = file_sha256(path)
    if cache_dir is None:
        data = read_dataset(path, energy_key, forces_key, index, format, require_targets, progress)
        data.meta.update(cached=False, sha256=digest)
        return data
    key = {"sha256": digest, "energy_key": energy_key, "forces_key": forces_key, "index": index,
           "format": format, "require_targets": require_targets}
    cfile = cache_path(cache_dir, path, key)
    try:
        data = read_cache(cfile, key)
        data.source = str(path)
        data.meta.update(cached=True, sha256=digest)
        return data
    except CacheMiss:
        pass
    data = read_dataset(path, energy_key, forces_key, index, format, require_targets, progress)
    save_cache(data, cfile, key)
    data.meta.update(cache=str(cfile), cached=False, sha256=digest)
    return data
