"""An on-disk, checksummed store of atomistic frames for data sets larger than memory (``egnn data pack``).

A store is a folder of flat ``.npy`` arrays (the standard NumPy header, then little-endian data in C order) and a
JSON manifest ``store.json``:

- per frame: ``offsets.npy`` int64 ``[F + 1]`` (start of each frame in the atom arrays), ``cell.npy`` float64
  ``[F, 3, 3]`` (rows are the lattice vectors, zeros without a cell), ``pbc.npy`` bool ``[F, 3]`` and
  ``energy.npy`` float64 ``[F]`` (only if an energy key was packed);
- per atom: ``numbers.npy`` uint8 ``[N]``, ``positions.npy`` float64 ``[N, 3]`` and ``forces.npy`` float64
  ``[N, 3]`` (only if a forces key was packed).

The manifest names the source files (with their SHA-256) and gives every array's dtype, shape, byte size and the
SHA-256 of its data. A store is written (:mod:`egnn.atoms.packing`) into a hidden sibling folder, the manifest last,
and renamed into place only when complete: a folder without a valid ``store.json`` is not a store, and nothing ever
writes to a finished one.

Why this format: it needs no new dependency; a frame is read by byte offset without touching the rest; any number
of readers (DataLoader workers, ranks) can read a store at once because it is read-only; and its checksums are the
cache's (SHA-256 of each array's bytes). Reads use ``os.pread`` rather than ``np.memmap``: the pages of a memory
map touched during an epoch count towards the process's resident memory, so over an epoch of 10^6 frames a
memory-mapped reader's RSS grows with the store, whereas ``pread`` copies through the page cache and every
process's memory stays flat in the store size. Only the frame offsets (8 bytes per frame) are held in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from egnn.atoms.data import (
    AtomsData,
    AtomsDataError,
)

STORE_FORMAT = "egnn-atoms-store"
STORE_VERSION = 1
MANIFEST = "store.json"
HEADER_BYTES = 128  # fixed .npy header length: a placeholder is written first, the final shape at the end
BLOCK = 1 << 22  # 4 MiB reads when checksumming

__all__ = ["AtomsStore", "is_store", "open_store"]


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
        """The frames ``rows`` (any order, repeats allowed) as an in-memory :class:`~egnn.atoms.data.AtomsData`.

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
