"""An on-disk, checksummed store of atomistic frames for data sets larger than memory (``egnn data pack``).

A store is a folder of flat ``.npy`` arrays (the standard NumPy header, then little-endian data in C order) and a
JSON manifest ``store.json``:

- per frame: ``offsets.npy`` int64 ``[F + 1]`` (start of each frame in the atom arrays), ``cell.npy`` float64
  ``[F, 3, 3]`` (rows are the lattice vectors, zeros without a cell), ``pbc.npy`` bool ``[F, 3]`` and
  ``energy.npy`` float64 ``[F]`` (only if an energy key was packed);
- per atom: ``numbers.npy`` uint8 ``[N]``, ``positions.npy`` float64 ``[N, 3]`` and ``forces.npy`` float64
  ``[N, 3]`` (only if a forces key was packed).

The manifest names the source files (with their SHA-256) and gives every array's dtype, shape, byte size and the
SHA-256 of its data. A store is written into a hidden sibling folder, the manifest last, and renamed into place
only when complete: a folder without a valid ``store.json`` is not a store, and nothing ever writes to a finished
one.

Why this format: it needs no new dependency; a frame is read by byte offset without touching the rest; any number
of readers (DataLoader workers, ranks) can read a store at once because it is read-only; and its checksums are the
cache's (SHA-256 of each array's bytes). Reads use ``os.pread`` rather than ``np.memmap``: the pages of a memory
map touched during an epoch count towards the process's resident memory, so over an epoch of 10^6 frames a
memory-mapped reader's RSS grows with the store, whereas ``pread`` copies through the page cache and every
process's memory stays flat in the store size. Only the frame offsets (8 bytes per frame) are held in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from egnn.atoms.data import (
    _BOOLS,
    _COLUMN_TYPES,
    AtomsData,
    AtomsDataError,
    _Frame,
    _parse_comment,
    file_sha256,
    frame_arrays,
    require_ase,
)

STORE_FORMAT = "egnn-atoms-store"
STORE_VERSION = 1
MANIFEST = "store.json"
HEADER_BYTES = 128  # fixed .npy header length: a placeholder is written first, the final shape at the end
BLOCK = 1 << 22  # 4 MiB reads when checksumming

__all__ = ["AtomsStore", "StoreWriter", "is_store", "open_store", "pack"]


class _Spec(NamedTuple):
    dtype: str  # little-endian dtype string as in the .npy header
    per: str  # "frame", "atom" or "offsets" (frames + 1)
    tail: tuple[int, ...]  # shape after the first axis


_SPECS: dict[str, _Spec] = {
    "offsets": _Spec("<i8", "offsets", ()),
    "cell": _Spec("<f8", "frame", (3, 3)),
    "pbc": _Spec("|b1", "frame", (3,)),
    "energy": _Spec("<f8", "frame", ()),
    "numbers": _Spec("|u1", "atom", ()),
    "positions": _Spec("<f8", "atom", (3,)),
    "forces": _Spec("<f8", "atom", (3,)),
}


def _expected_shape(name: str, frames: int, atoms: int) -> tuple[int, ...]:
    spec = _SPECS[name]
    first = {"offsets": frames + 1, "frame": frames, "atom": atoms}[spec.per]
    return (first, *spec.tail)


def _array_names(energy_key: str | None, forces_key: str | None) -> list[str]:
    names = ["offsets", "cell", "pbc", "numbers", "positions"]
    return names + (["energy"] if energy_key is not None else []) + (["forces"] if forces_key is not None else [])


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header of exactly :data:`HEADER_BYTES` bytes (padded with spaces)."""
    text = f"{{'descr': {dtype!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    room = HEADER_BYTES - 10 - 1  # magic, version and length field; the closing newline
    if len(text) > room:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", room + 1) + (text.ljust(room) + "\n").encode("latin1")


def _bytes_of(a: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array as a flat memoryview (no copy)."""
    return memoryview(a.reshape(-1).view(np.uint8))


# ----------------------------------------------------------------------------------------------- writing


class _ArrayOut:
    """One array file being written: streamed to disk, hashed as it goes, header written at the end."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.spec = path, _SPECS[name]
        self.dtype = np.dtype(self.spec.dtype)
        self.fh: IO[bytes] | None = open(path, "wb")
        self.fh.write(b"\0" * HEADER_BYTES)
        self.hash = hashlib.sha256()
        self.length = 0  # along the first axis
        self.nbytes = 0

    def write(self, values: np.ndarray) -> None:
        a = np.ascontiguousarray(values, dtype=self.dtype)  # converts to little-endian where needed
        buf = _bytes_of(a)
        self.fh.write(buf)
        self.hash.update(buf)
        self.length += len(a)
        self.nbytes += a.nbytes

    def finish(self) -> dict[str, Any]:
        shape = (self.length, *self.spec.tail)
        self.fh.seek(0)
        self.fh.write(_npy_header(self.spec.dtype, shape))
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        self.fh = None
        return {"dtype": self.spec.dtype, "shape": list(shape), "bytes": self.nbytes, "offset": HEADER_BYTES,
                "sha256": self.hash.hexdigest()}

    def abort(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class StoreWriter:
    """Write a store chunk by chunk with bounded memory: ``with StoreWriter(out) as w: w.append(data)``.

    Everything goes to a hidden sibling folder ``.{name}.partial-{pid}``; a successful exit writes ``store.json``
    last and renames the folder to ``out``, an exception removes it. Nothing that exists is ever overwritten.

    Args:
        out: the store folder to create (must not exist).
        energy_key: the graph-level target key to store (``None``: no energies; every appended chunk must have
            energies otherwise).
        forces_key: the per-atom forces key to store (``None``: no forces).
        sources: ``{"file", "sha256", "frames"}`` records of the input files (:func:`pack` appends to
            ``writer.sources`` as it goes).

    Raises:
        AtomsDataError: ``out`` exists, or an appended chunk cannot be stored (one line).
    """

    def __init__(self, out: str | os.PathLike, energy_key: str | None = "energy", forces_key: str | None = None,
                 sources: Sequence[dict[str, Any]] | None = None) -> None:
        self.out = Path(out)
        self.energy_key, self.forces_key = energy_key, forces_key
        self.sources: list[dict[str, Any]] = list(sources or [])
        self.partial = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        self.frames = self.atoms = self.max_atoms = self.periodic_frames = 0
        self._elements: set[int] = set()
        self._files: dict[str, _ArrayOut] = {}
        self._created = False

    def __enter__(self) -> StoreWriter:
        if os.path.lexists(self.out):
            raise AtomsDataError(f"{self.out} exists; choose another --out (nothing is overwritten)")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.partial.mkdir()
        except FileExistsError:
            raise AtomsDataError(f"{self.partial} exists (left by an interrupted pack?); remove it or choose "
                                 "another --out") from None
        self._created = True
        try:
            for name in _array_names(self.energy_key, self.forces_key):
                self._files[name] = _ArrayOut(self.partial / f"{name}.npy", name)
            self._files["offsets"].write(np.zeros(1, np.int64))
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise

    def append(self, data: AtomsData) -> None:
        """Append the frames of ``data`` (written to disk at once; nothing is kept but running totals).

        Raises:
            AtomsDataError: atomic numbers outside 1..118, NaN/Inf values, or energies/forces missing while the
                store has them.
        """
        if not self._files:
            raise RuntimeError("StoreWriter.append outside its `with` block")
        f = len(data)
        if f == 0:
            return
        offsets = np.asarray(data.offsets, dtype=np.int64)
        sizes = np.diff(offsets)
        if offsets[0] != 0 or (sizes < 0).any():
            raise AtomsDataError(f"{data.source}: offsets must start at 0 and never decrease")
        z = np.asarray(data.z)
        if z.size and (z.min() < 1 or z.max() > 118):  # also what makes uint8 storage exact
            bad = int(np.searchsorted(offsets, int(np.flatnonzero((z < 1) | (z > 118))[0]), side="right")) - 1
            raise AtomsDataError(f"{data.source}: frame {bad}: key 'numbers': atomic numbers must be in 1..118")
        arrays: dict[str, np.ndarray] = {"cell": data.cell, "pbc": data.pbc, "numbers": z, "positions": data.pos}
        for name, key, value in (("energy", self.energy_key, data.energy), ("forces", self.forces_key, data.forces)):
            if key is None:
                continue
            if value is None:
                raise AtomsDataError(f"{data.source}: no {key!r} values, but the store keeps {name} (give them, or "
                                     f"pack with {name}_key=None)")
            arrays[name] = value
        for name in ("positions", "cell", "energy", "forces"):
            if name in arrays and not np.isfinite(arrays[name]).all():
                raise AtomsDataError(f"{data.source}: {name} contain NaN/Inf")
        for name, value in arrays.items():
            self._files[name].write(value)
        self._files["offsets"].write(offsets[1:] + self.atoms)
        self.frames += f
        self.atoms += int(offsets[-1])
        self.max_atoms = max(self.max_atoms, int(sizes.max()))
        self.periodic_frames += int(np.asarray(data.pbc, bool).any(axis=1).sum())
        self._elements.update(int(v) for v in np.unique(z))

    def _finish(self) -> None:
        if self.frames == 0:
            raise AtomsDataError(f"{self.out}: no frames to store")
        arrays = {name: out.finish() for name, out in self._files.items()}
        manifest = {
            "format": STORE_FORMAT, "version": STORE_VERSION, "frames": self.frames, "atoms": self.atoms,
            "energy_key": self.energy_key, "forces_key": self.forces_key, "elements": sorted(self._elements),
            "max_atoms": self.max_atoms, "periodic_frames": self.periodic_frames, "sources": self.sources,
            "arrays": arrays, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with open(self.partial / MANIFEST, "w") as fh:
            fh.write(json.dumps(manifest, indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.lexists(self.out):  # appeared while we were writing: still never overwrite it
            raise AtomsDataError(f"{self.out} exists; choose another --out (nothing is overwritten)")
        os.rename(self.partial, self.out)
        self._created = False
        _fsync_folder(self.out.parent)

    def _abort(self) -> None:
        for out in self._files.values():
            out.abort()
        self._files = {}
        if self._created:  # only the folder this writer made
            shutil.rmtree(self.partial, ignore_errors=True)
            self._created = False


def _fsync_folder(path: Path) -> None:
    """Make a rename durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------- packing


class _ExtxyzStream:
    """Frames of a plain extended-XYZ file parsed one at a time from an open binary file, with the values of
    :func:`egnn.atoms.data.read_extxyz_fast`. At the first frame that uses anything else it stops and sets
    ``rest_at`` to that frame's byte offset, so that ASE reads the rest. Every byte read is hashed."""

    def __init__(self, fh: IO[bytes], hasher: Any) -> None:
        self.fh, self.hasher = fh, hasher
        self.pos = 0  # bytes read (and hashed) so far
        self.rest_at: int | None = None

    def _line(self) -> bytes:
        raw = self.fh.readline()
        self.hasher.update(raw)
        self.pos += len(raw)
        return raw

    def frames(self) -> Iterator[_Frame]:
        while True:
            start = self.pos
            head = self._line()
            while head and not head.strip():  # blank lines between frames
                start = self.pos
                head = self._line()
            if not head:
                return
            try:
                frame = self._frame(head)
            except (ValueError, KeyError, UnicodeDecodeError):
                frame = None
            if frame is None:
                self.rest_at = start
                return
            yield frame

    def _frame(self, head: bytes) -> _Frame | None:
        from ase.data import atomic_numbers

        n = int(head)
        if n < 0:
            return None
        comment = self._line()
        info = _parse_comment(comment.decode()) if comment else None
        if info is None:
            return None
        props = info.pop("Properties").split(":")
        if len(props) % 3 or props[:2] != ["species", "S"]:
            return None
        columns = [(props[k], props[k + 1], int(props[k + 2])) for k in range(0, len(props), 3)]
        if any(kind not in _COLUMN_TYPES for _, kind, _ in columns):
            return None
        width = sum(count for _, _, count in columns)
        rows = []
        for _ in range(n):
            raw = self._line()
            if not raw:  # truncated: ASE reports it
                return None
            rows.append(raw.decode().split())
        if any(len(r) != width for r in rows):
            return None
        table = np.array(rows, dtype=str).reshape(n, width)
        arrays: dict[str, np.ndarray] = {}
        first = 0
        for name, kind, count in columns:
            block = table[:, first : first + count]
            first += count
            if kind == "R":
                value = block.astype(np.float64)
            elif kind == "I":
                value = block.astype(np.int64)
            elif kind == "L":
                value = np.array([[_BOOLS[v] for v in row] for row in block.tolist()], dtype=bool).reshape(n, count)
            else:
                value = block
            arrays[name] = value[:, 0] if count == 1 else value
        numbers = np.array([atomic_numbers[s] for s in arrays.pop("species").tolist()], dtype=np.int64)
        if "pos" not in arrays:
            return None
        positions = arrays.pop("pos")
        lattice, pbc = info.pop("Lattice", None), info.pop("pbc", None)
        if pbc is None:
            pbc = np.full(3, lattice is not None)  # ASE's default: periodic exactly when a lattice is given
        cell = lattice if lattice is not None else np.zeros((3, 3))
        return _Frame(numbers, positions, cell, np.asarray(pbc, dtype=bool).reshape(3), info, arrays)

    def hash_rest(self) -> None:
        for block in iter(lambda: self.fh.read(BLOCK), b""):
            self.hasher.update(block)


class _TextFrom(io.TextIOBase):
    """The text of a binary file from byte ``start`` on, seen as a whole file: ASE's extxyz reader seeks to 0 and
    indexes the frames first, so this lets it read only the frames after ``start``, numbered from there."""

    def __init__(self, fh: IO[bytes], start: int) -> None:
        self.fh, self.start = fh, start
        fh.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.fh.tell() - self.start

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute positions")
        self.fh.seek(self.start + pos)
        return pos

    def readline(self, size: int | None = -1) -> str:
        return self.fh.readline(-1 if size is None else size).decode()

    def read(self, size: int | None = -1) -> str:
        return self.fh.read(-1 if size is None else size).decode()


def _ase_frames(path: Path, fileobj: io.TextIOBase | None = None, first: int = 0) -> Iterator[tuple[int, Any]]:
    """``(index, ase.Atoms)`` from ``ase.io.iread`` (of ``fileobj``, positioned at frame ``first``, if given),
    with ASE's failures as one-line :class:`AtomsDataError`."""
    import ase.io

    try:
        if fileobj is not None:
            frames = ase.io.iread(fileobj, index=":", format="extxyz")
        else:
            frames = ase.io.iread(str(path), index=":")
        for k, atoms in enumerate(frames):
            yield first + k, atoms
    except Exception as err:  # ASE raises many kinds (ValueError, KeyError, StopIteration, UnknownFileTypeError)
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = f" from frame {first} on" if first else ""
        raise AtomsDataError(f"{path}: ASE cannot read it{where} ({type(err).__name__}: {msg})") from None


class _Chunks:
    """Validated frames gathered into :class:`AtomsData` chunks of ``size`` frames for the writer."""

    def __init__(self, writer: StoreWriter, size: int) -> None:
        self.writer, self.size = writer, size
        self.frames: list[dict[str, np.ndarray | None]] = []
        self.source = ""

    def add(self, atoms: Any, index: int, source: str) -> None:
        w = self.writer
        self.frames.append(frame_arrays(atoms, index, source, w.energy_key, w.forces_key))
        self.source = self.source or source
        if len(self.frames) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.frames:
            return
        fr, w = self.frames, self.writer
        sizes = np.array([len(a["z"]) for a in fr], dtype=np.int64)
        data = AtomsData(
            z=np.concatenate([a["z"] for a in fr]), pos=np.concatenate([a["pos"] for a in fr]),
            offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            cell=np.stack([a["cell"] for a in fr]), pbc=np.stack([a["pbc"] for a in fr]),
            energy=np.concatenate([a["energy"] for a in fr]) if w.energy_key is not None else None,
            forces=np.concatenate([a["forces"] for a in fr]) if w.forces_key is not None else None,
            source=self.source,
        )
        w.append(data)
        self.frames, self.source = [], ""


def _pack_file(path: Path, chunks: _Chunks, bar: Any) -> dict[str, Any]:
    """Stream the frames of one file into ``chunks``; its source record."""
    source, count = str(path), 0
    if path.suffix.lower() in (".xyz", ".extxyz"):
        hasher = hashlib.sha256()
        with open(path, "rb") as fh:
            stream = _ExtxyzStream(fh, hasher)
            done = 0
            for frame in stream.frames():
                chunks.add(frame, count, source)
                count += 1
                bar.update(stream.pos - done)
                done = stream.pos
            if stream.rest_at is not None:  # a feature the fast parser leaves to ASE: ASE reads from this frame on
                with open(path, "rb") as raw:
                    for index, atoms in _ase_frames(path, _TextFrom(raw, stream.rest_at), count):
                        chunks.add(atoms, index, source)
                        count += 1
            stream.hash_rest()
            bar.update(path.stat().st_size - done)
        digest = hasher.hexdigest()
    else:
        digest = file_sha256(path)
        for index, atoms in _ase_frames(path):
            chunks.add(atoms, index, source)
            count += 1
        bar.update(path.stat().st_size)
    if count == 0:
        raise AtomsDataError(f"{path}: no frames")
    return {"file": source, "sha256": digest, "frames": count}


def pack(paths: Sequence[str | os.PathLike], out: str | os.PathLike, energy_key: str | None = "energy",
         forces_key: str | None = None, progress: bool = True, chunk_frames: int = 2048) -> dict[str, Any]:
    """Pack ASE-readable files, in order, into a new store in one streaming pass with bounded memory.

    Plain extended XYZ is parsed frame by frame (the values of :func:`egnn.atoms.data.read_dataset`); other
    formats, and an extxyz frame using anything unusual, are read with ``ase.io.iread``. Every frame is validated
    by :func:`egnn.atoms.data.frame_arrays` and must have the requested keys. At most ``chunk_frames`` frames are
    held in memory.

    Args:
        paths: the input files (extxyz, ASE ``.db``, ``.traj`` ...).
        out: the store folder to create (must not exist; nothing is overwritten).
        energy_key: graph-level target key (``None``: store no energies, e.g. prediction-only data).
        forces_key: per-atom forces key (``None``: store no forces).
        progress: a tqdm bar over the bytes of the input files.
        chunk_frames: frames gathered before they are written.

    Returns:
        The store's summary (:meth:`AtomsStore.summary`) with ``seconds`` and ``frames_per_s`` of the pack.

    Raises:
        AtomsDataError: as one line naming the file, the frame and the key; no store and no partial folder is
            left behind.
    """
    require_ase()
    from tqdm.auto import tqdm

    files = [Path(p) for p in paths]
    if not files:
        raise AtomsDataError("no input files to pack")
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    for path in files:
        if not path.is_file():
            raise AtomsDataError(f"{path}: file not found")
        if path.stat().st_size == 0:
            raise AtomsDataError(f"{path}: the file is empty (0 frames)")
    start = time.perf_counter()
    total = sum(p.stat().st_size for p in files)
    with StoreWriter(out, energy_key, forces_key) as writer, \
            tqdm(total=total, unit="B", unit_scale=True, desc="pack", disable=not progress, leave=False) as bar:
        chunks = _Chunks(writer, chunk_frames)
        for path in files:
            writer.sources.append(_pack_file(path, chunks, bar))
            bar.set_postfix(frames=writer.frames + len(chunks.frames), refresh=False)
        chunks.flush()
    seconds = time.perf_counter() - start
    summary = open_store(out, verify=False).summary()
    summary.update(seconds=round(seconds, 3), frames_per_s=round(summary["frames"] / max(seconds, 1e-9), 1))
    return summary


# ----------------------------------------------------------------------------------------------- reading


def _pread_into(fd: int, buf: memoryview, offset: int, lock: threading.Lock) -> int:
    """Read into ``buf`` from byte ``offset`` of ``fd`` without moving a shared file position; bytes read."""
    if hasattr(os, "preadv"):  # straight into the array: no intermediate bytes object
        return os.preadv(fd, [buf], offset)
    if hasattr(os, "pread"):
        chunk = os.pread(fd, len(buf), offset)
    else:  # Windows has neither: seek and read under the lock
        with lock:
            os.lseek(fd, offset, os.SEEK_SET)
            chunk = os.read(fd, len(buf))
    buf[: len(chunk)] = chunk
    return len(chunk)


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with a ``store.json`` (not yet whether that is valid: see :func:`open_store`)."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def _content_digest(arrays: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps({k: v["sha256"] for k, v in arrays.items()}, sort_keys=True).encode()).hexdigest()


def open_store(path: str | os.PathLike, verify: bool = True) -> AtomsStore:
    """Open a store: check its manifest and every array file (header, dtype, shape, byte size) and, with
    ``verify``, the SHA-256 of every array (streamed in 4 MiB blocks).

    Args:
        path: the store folder.
        verify: checksum every array (reads the whole store once); without it only sizes and headers are checked.

    Returns:
        The store, ready for :meth:`AtomsStore.read`.

    Raises:
        AtomsDataError: one line naming the store and what failed (missing manifest, truncated or corrupt array).
    """
    path = Path(path)
    if not path.is_dir():
        raise AtomsDataError(f"{path}: not an egnn store (" + ("not a folder)" if path.exists() else "no such folder)"))
    if not (path / MANIFEST).is_file():
        raise AtomsDataError(f"{path}: not an egnn store (no {MANIFEST})")
    try:
        meta = json.loads((path / MANIFEST).read_text())
    except (ValueError, UnicodeDecodeError):
        raise AtomsDataError(f"{path}: {MANIFEST} is not valid JSON (corrupt store; pack it again)") from None
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise AtomsDataError(f"{path}: not an egnn store ({MANIFEST} is not of format {STORE_FORMAT!r})")
    if meta.get("version") != STORE_VERSION:
        raise AtomsDataError(f"{path}: store version {meta.get('version')!r} is not supported (this egnn reads "
                             f"version {STORE_VERSION})")
    try:
        frames, atoms, arrays = int(meta["frames"]), int(meta["atoms"]), dict(meta["arrays"])
        energy_key, forces_key = meta["energy_key"], meta["forces_key"]
        names = _array_names(energy_key, forces_key)
        specs = {name: (str(arrays[name]["dtype"]), [int(v) for v in arrays[name]["shape"]],
                        int(arrays[name]["bytes"]), str(arrays[name]["sha256"])) for name in names}
    except (KeyError, TypeError, ValueError) as err:
        raise AtomsDataError(f"{path}: {MANIFEST} is incomplete ({type(err).__name__}: {err}; corrupt store; "
                             "pack it again)") from None
    if sorted(arrays) != sorted(names):
        raise AtomsDataError(f"{path}: {MANIFEST} lists arrays {sorted(arrays)}, expected {sorted(names)} "
                             "(corrupt store; pack it again)")
    layout: dict[str, int] = {}
    disk = (path / MANIFEST).stat().st_size
    offsets: np.ndarray | None = None
    for name in names:
        dtype, shape, nbytes, digest = specs[name]
        spec = _SPECS[name]
        expected = _expected_shape(name, frames, atoms)
        if dtype != spec.dtype or tuple(shape) != expected or nbytes != math.prod(expected) * np.dtype(dtype).itemsize:
            raise AtomsDataError(f"{path}: {MANIFEST} gives {name!r} as {dtype} {shape} ({nbytes} bytes), expected "
                                 f"{spec.dtype} {list(expected)} for {frames} frames and {atoms} atoms "
                                 "(corrupt store; pack it again)")
        file = path / f"{name}.npy"
        if not file.is_file():
            raise AtomsDataError(f"{path}: {file.name} is missing (corrupt store; pack it again)")
        with open(file, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                h_shape, h_fortran, h_dtype = read_header(fh)
            except (ValueError, OSError, SyntaxError):
                raise AtomsDataError(f"{path}: {file.name} has no valid .npy header (corrupt store; pack it "
                                     "again)") from None
            header = fh.tell()
            if h_dtype.str != dtype or tuple(h_shape) != expected or h_fortran:
                raise AtomsDataError(f"{path}: {file.name} holds {h_dtype.str} {list(h_shape)}, but {MANIFEST} "
                                     f"says {dtype} {list(expected)} (corrupt store; pack it again)")
            size = os.fstat(fh.fileno()).st_size
            if size < header + nbytes:
                raise AtomsDataError(f"{path}: {file.name} is truncated (expected {header + nbytes} bytes, found "
                                     f"{size})")
            if size > header + nbytes:
                raise AtomsDataError(f"{path}: {file.name} is longer than {MANIFEST} says (expected "
                                     f"{header + nbytes} bytes, found {size})")
            if name == "offsets":
                raw = fh.read(nbytes)
                offsets = np.frombuffer(raw, dtype=dtype).astype(np.int64)
                fh.seek(header)
            if verify:
                h = hashlib.sha256()
                for block in iter(lambda: fh.read(BLOCK), b""):
                    h.update(block)
                if h.hexdigest() != digest:
                    raise AtomsDataError(f"{path}: array {name!r} fails its checksum (corrupt store; pack it again)")
        layout[name] = header
        disk += size
    assert offsets is not None
    if offsets[0] != 0 or offsets[-1] != atoms or (np.diff(offsets) < 0).any():
        raise AtomsDataError(f"{path}: the frame offsets are inconsistent (corrupt store; pack it again)")
    meta["sha256"] = _content_digest({name: arrays[name] for name in names})
    meta["bytes"] = disk
    return AtomsStore(path, meta, offsets, layout, verified=verify)


class AtomsStore:
    """A store opened by :func:`open_store`: frames are read on demand with ``os.pread``.

    Only :attr:`offsets` is kept in memory. File descriptors are opened lazily and again in every new process
    (forked or spawned DataLoader workers); the object pickles without them. Any number of processes may read
    the same store at once.

    Attributes:
        path: the store folder.
        source: ``str(path)`` (used in messages and as the ``source`` of what :meth:`read` returns).
        energy_key, forces_key: the keys the targets were packed from (``None``: not stored).
        offsets: start of each frame in the atom arrays ``[F + 1]`` (int64).
        meta: the manifest, plus ``sha256`` (a digest of the content: of the per-array digests) and ``bytes``
            (on disk).
    """

    def __init__(self, path: Path, meta: dict[str, Any], offsets: np.ndarray, layout: dict[str, int],
                 verified: bool = False) -> None:
        self.path, self.source, self.meta, self.offsets = path, str(path), meta, offsets
        self.energy_key: str | None = meta["energy_key"]
        self.forces_key: str | None = meta["forces_key"]
        self.verified = verified
        self._layout = layout  # array name -> byte offset of its data (after the .npy header)
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ descriptors, pickling, closing

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"], state["_lock"] = {}, None  # descriptors and locks belong to one process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid, self._lock = os.getpid(), threading.Lock()

    def _fd(self, name: str) -> int:
        if self._pid != os.getpid():  # a forked child: its own descriptors (the parent's copies are left alone)
            self._fds, self._pid, self._lock = {}, os.getpid(), threading.Lock()
        fd = self._fds.get(name)
        if fd is None:
            with self._lock:
                fd = self._fds.get(name)
                if fd is None:
                    fd = os.open(self.path / f"{name}.npy", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                    self._fds[name] = fd
        return fd

    def close(self) -> None:
        """Close this process's file descriptors (they are reopened by the next read)."""
        if self._pid == os.getpid():
            fds, self._fds = self._fds, {}
            for fd in fds.values():
                os.close(fd)

    def __enter__(self) -> AtomsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # ---------------------------------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __repr__(self) -> str:
        return (f"AtomsStore({len(self)} frames, {int(self.offsets[-1])} atoms, elements {self.elements()}, "
                f"energy={self.energy_key!r}, forces={self.forces_key!r}, path={self.source!r})")

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per frame ``[F]``."""
        return np.diff(self.offsets)

    def elements(self) -> list[int]:
        """Sorted atomic numbers present."""
        return [int(v) for v in self.meta["elements"]]

    def _pread_into(self, name: str, out: np.ndarray, first: int) -> None:
        """Fill the C-contiguous ``out`` with the array ``name`` from index ``first`` (of its first axis) on."""
        buf = _bytes_of(out)
        if not len(buf):
            return
        fd = self._fd(name)
        offset = self._layout[name] + first * (out.nbytes // len(out))
        got = 0
        while got < len(buf):
            n = _pread_into(fd, buf[got:], offset + got, self._lock)
            if n == 0:
                raise AtomsDataError(f"{self.source}: {name}.npy ends early (changed since it was opened?)")
            got += n

    def read(self, rows: Sequence[int] | np.ndarray) -> AtomsData:
        """The frames ``rows`` (any order, repeats allowed) as an in-memory :class:`AtomsData`.

        Runs of consecutive rows are read with one ``pread`` per array.

        Raises:
            IndexError: a row outside ``[-len(self), len(self))``.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        f = len(self)
        if rows.size and (int(rows.min()) < -f or int(rows.max()) >= f):
            bad = int(rows[(rows < -f) | (rows >= f)][0])
            raise IndexError(f"{self.source}: row {bad} is out of range for {f} frames")
        rows = np.where(rows < 0, rows + f, rows)
        uniq, inverse = np.unique(rows, return_inverse=True)
        sizes = self.n_atoms[uniq]
        local = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # offsets within the result
        n = int(local[-1])
        cell, pbc = np.empty((len(uniq), 3, 3), np.float64), np.empty((len(uniq), 3), bool)
        z8, pos = np.empty(n, np.uint8), np.empty((n, 3), np.float64)
        energy = np.empty(len(uniq), np.float64) if self.energy_key is not None else None
        forces = np.empty((n, 3), np.float64) if self.forces_key is not None else None
        # runs of consecutive frames: [starts[k], stops[k]) in store rows, from position firsts[k] in ``uniq``
        cut = np.flatnonzero(np.diff(uniq) != 1) + 1
        firsts = np.concatenate([[0], cut]).astype(np.int64) if uniq.size else np.zeros(0, np.int64)
        lasts = np.concatenate([cut, [len(uniq)]]).astype(np.int64) if uniq.size else np.zeros(0, np.int64)
        for i, j in zip(firsts.tolist(), lasts.tolist()):
            a = int(uniq[i])
            self._pread_into("cell", cell[i:j], a)
            self._pread_into("pbc", pbc[i:j], a)
            if energy is not None:
                self._pread_into("energy", energy[i:j], a)
            lo, hi, at = int(local[i]), int(local[j]), int(self.offsets[a])
            self._pread_into("numbers", z8[lo:hi], at)
            self._pread_into("positions", pos[lo:hi], at)
            if forces is not None:
                self._pread_into("forces", forces[lo:hi], at)
        data = AtomsData(z=z8.astype(np.int64), pos=pos, offsets=local, cell=cell, pbc=pbc, energy=energy,
                         forces=forces, source=self.source, energy_key=self.energy_key, forces_key=self.forces_key)
        if len(uniq) == len(rows) and (uniq == rows).all():
            return data
        return data.subset(inverse.reshape(-1))

    def chunks(self, rows: Sequence[int] | np.ndarray | None = None,
               size: int = 4096) -> Iterator[tuple[np.ndarray, AtomsData]]:
        """``(rows, frames)`` pairs over ``rows`` (default: all, in order), ``size`` frames at a time, for streaming
        passes (statistics, evaluation) in bounded memory."""
        rows = np.arange(len(self), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        for k in range(0, len(rows), size):
            part = rows[k : k + size]
            yield part, self.read(part)

    def summary(self) -> dict[str, Any]:
        """Frames, atoms, keys, elements and size on disk, JSON-ready."""
        frames = len(self)
        m = self.meta
        return {
            "store": self.source, "frames": frames, "atoms": int(self.offsets[-1]), "energy_key": self.energy_key,
            "forces_key": self.forces_key, "elements": self.elements(), "max_atoms": m.get("max_atoms"),
            "periodic_frames": m.get("periodic_frames"), "files": len(m.get("sources", [])), "bytes": m["bytes"],
            "bytes_per_frame": round(m["bytes"] / max(frames, 1), 1), "sha256": m["sha256"],
        }
