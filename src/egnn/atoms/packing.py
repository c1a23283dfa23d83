"""Writing stores (:mod:`egnn.atoms.store` describes the format): :class:`StoreWriter` appends chunks of frames,
:func:`pack` converts ASE-readable files in one streaming pass with bounded memory (``egnn data pack``)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from egnn.atoms.data import (
    AtomsData,
    AtomsDataError,
    _Frame,
    file_sha256,
    frame_arrays,
    parse_extxyz_frame,
    require_ase,
)
from egnn.atoms.store import (
    _SPECS,
    BLOCK,
    HEADER_BYTES,
    MANIFEST,
    STORE_FORMAT,
    STORE_VERSION,
    _array_names,
    _bytes_of,
    _npy_header,
    open_store,
)
from egnn.checkpoint import fsync_dir

__all__ = ["StoreWriter", "pack"]


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
        fsync_dir(self.out.parent)

    def _abort(self) -> None:
        for out in self._files.values():
            out.abort()
        self._files = {}
        if self._created:  # only the folder this writer made
            shutil.rmtree(self.partial, ignore_errors=True)
            self._created = False




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
        n = int(head)
        if n < 0:
            return None
        comment = self._line()
        lines = [self._line() for _ in range(n)]
        if not comment or not all(lines):  # truncated: ASE reports it
            return None
        return parse_extxyz_frame(comment.decode(), [raw.decode() for raw in lines])

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
        The store's summary (:meth:`~egnn.atoms.store.AtomsStore.summary`) with ``seconds`` and
        ``frames_per_s`` of the pack.

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


