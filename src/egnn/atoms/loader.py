"""Batches of atomic graphs built on the fly from frames on disk: neighbour lists per batch, in DataLoader workers.

For data sets larger than memory (:mod:`egnn.atoms.store`) no structure of the whole set's edges exists anywhere:
a batch's frames are read by row, their neighbour lists built and the batch assembled in a worker process
(``torch.utils.data.DataLoader``), which prepares the next batches while the current one trains. The same class
serves in-memory :class:`~egnn.atoms.data.AtomsData` (the rows are then views of arrays already in memory).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from egnn.atoms.data import AtomsData
from egnn.atoms.graphs import AtomsBatch, AtomsGraphs


class FrameRows:
    """Rows of a frame source (an :class:`~egnn.atoms.store.AtomsStore` or an
    :class:`~egnn.atoms.data.AtomsData`) as a data set.

    Args:
        source: where the frames are.
        rows: the source's rows in this set, in order (``None``: all).
    """

    def __init__(self, source: Any, rows: np.ndarray | None = None) -> None:
        self.base = source
        self.rows = np.arange(len(source), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.source = str(getattr(source, "source", "<memory>"))
        self.energy_key = source.energy_key
        self.forces_key = source.forces_key

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per frame ``[F]``."""
        return self.base.n_atoms[self.rows]

    def subset(self, rows: np.ndarray) -> FrameRows:
        """The rows at positions ``rows`` of this set, as a new set over the same source."""
        return FrameRows(self.base, self.rows[np.asarray(rows, dtype=np.int64)])

    def read(self, indices: np.ndarray | Tensor) -> AtomsData:
        """Frames ``indices`` of this set (positions in ``rows``) as an in-memory
        :class:`~egnn.atoms.data.AtomsData`."""
        picked = self.rows[np.asarray(indices, dtype=np.int64).reshape(-1)]
        if isinstance(self.base, AtomsData):
            return self.base.subset(picked)
        return self.base.read(picked)

    def chunks(self, size: int = 4096) -> Iterator[AtomsData]:
        """The whole set in order, ``size`` frames at a time (streaming passes: statistics, metrics)."""
        for start in range(0, len(self), size):
            yield self.read(np.arange(start, min(len(self), start + size)))


class _Batches(torch.utils.data.Dataset):
    """Index batch -> :class:`AtomsBatch` on the CPU (runs in the DataLoader's workers)."""

    def __init__(self, graphs: OnTheFlyGraphs) -> None:
        self.graphs = graphs

    def __len__(self) -> int:  # not used: the sampler yields the index batches
        return len(self.graphs)

    def __getitem__(self, indices: Tensor) -> AtomsBatch:
        return self.graphs.get(indices, "cpu")


def _as_is(item: Any) -> Any:
    return item


class _IndexBatches(torch.utils.data.Sampler):
    """The index batches of the current pass: set before each pass, so one DataLoader (and its persistent
    workers) serves every epoch."""

    def __init__(self) -> None:
        self.batches: list[Tensor] = []

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # neighbour lists are NumPy/SciPy work; torch threads would only compete


class OnTheFlyGraphs:
    """A split whose batches (neighbour lists included) are built when asked for.

    Satisfies the trainer's data seam: ``__len__``, ``get(indices, device)`` and ``loader(index_batches, device)``
    (a DataLoader with ``workers`` processes, 0: in this process).

    Args:
        frames: the frames (:class:`FrameRows`).
        cutoff, images, dtype: as for :class:`~egnn.atoms.graphs.AtomsGraphs`.
        workers: DataLoader worker processes.
    """

    def __init__(self, frames: FrameRows, cutoff: float | None, images: bool = True,
                 dtype: torch.dtype = torch.float32, workers: int = 0) -> None:
        self.frames, self.cutoff, self.images, self.dtype, self.workers = frames, cutoff, images, dtype, workers
        self._sampler = _IndexBatches()
        self._loader: torch.utils.data.DataLoader | None = None
        self._sizes: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:  # what a spawned worker receives: no loader inside
        return {**self.__dict__, "_loader": None}

    def __len__(self) -> int:
        return len(self.frames)

    def sizes(self, sample: int = 16) -> np.ndarray:
        """Atoms + edges of each frame ``[F]``, the edges estimated as atoms times the mean edges per atom of the
        first ``sample`` frames (the neighbour lists of the others are built only when their batch is)."""
        if self._sizes is None:
            n_atoms = self.frames.n_atoms.astype(np.int64)
            head = np.arange(min(sample, len(self)))
            per_atom = self.get(head).edge_index.shape[1] / max(1, int(n_atoms[head].sum())) if head.size else 0.0
            self._sizes = np.ceil(n_atoms * (1.0 + per_atom)).astype(np.int64)
        return self._sizes

    def get(self, indices: Tensor | np.ndarray, device: torch.device | str = "cpu") -> AtomsBatch:
        """Read the frames ``indices`` and build their neighbour lists now: one
        :class:`~egnn.atoms.graphs.AtomsBatch`."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64)).reshape(-1)
        chunk = self.frames.read(idx.numpy())
        graphs = AtomsGraphs(chunk, self.cutoff, self.images, self.dtype, frame_ids=self.frames.rows[idx.numpy()])
        batch = graphs.get(torch.arange(len(chunk)), device)
        batch.rows = idx
        return batch

    def loader(self, index_batches: Sequence[Tensor], device: torch.device) -> Iterator[AtomsBatch]:
        """The batches ``index_batches`` in order, read and built by the worker processes ahead of use."""
        if self.workers == 0:
            for idx in index_batches:
                yield self.get(idx, device)
            return
        if self._loader is None:  # workers start once and stay for every later pass (epochs, evaluations)
            self._loader = torch.utils.data.DataLoader(
                _Batches(self), sampler=self._sampler, batch_size=None, collate_fn=_as_is,
                num_workers=self.workers, worker_init_fn=_worker_init, prefetch_factor=4, persistent_workers=True,
                pin_memory=device.type == "cuda")
        self._sampler.batches = list(index_batches)
        for batch in self._loader:
            yield _to(batch, device)


def _to(b: AtomsBatch, device: torch.device) -> AtomsBatch:
    if device.type == "cpu":
        return b
    move = {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) and k != "rows" else v)
            for k, v in vars(b).items()}
    return AtomsBatch(**move)
