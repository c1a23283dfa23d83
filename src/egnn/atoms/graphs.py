"""Batches of atomic graphs: neighbour lists computed once per frame, concatenated per batch without padding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from egnn.atoms.data import AtomsData
from egnn.atoms.neighbors import NeighborError, neighbor_list


@dataclass
class AtomsBatch:
    """Frames concatenated without padding.

    Attributes:
        z: atomic numbers ``[N]`` (long).
        pos: positions ``[N, 3]``.
        edge_index: ``[2, E]`` (source ``j``, target ``i``; within frames).
        edge_shift: Cartesian shift of each edge's source image ``[E, 3]`` (``S @ cell`` of its frame).
        batch: frame of each atom ``[N]`` (sorted).
        num_graphs: number of frames ``B``.
        n_atoms: atoms per frame ``[B]``.
        energy: target ``[B]`` or ``None``.
        forces: ``[N, 3]`` or ``None``.
        rows: the data-set rows of the frames ``[B]``.
    """

    z: Tensor
    pos: Tensor
    edge_index: Tensor
    edge_shift: Tensor
    batch: Tensor
    num_graphs: int
    n_atoms: Tensor
    energy: Tensor | None = None
    forces: Tensor | None = None
    rows: Tensor | None = None


class AtomsGraphs:
    """A data set with its neighbour lists (computed once, at construction); ``get`` builds batches.

    Satisfies the trainer's ``DataSplit`` protocol (``__len__``, ``get(indices, device)``).

    Args:
        data: the frames.
        cutoff: neighbour radius (``None``: complete graph per frame, non-periodic frames only).
        images: periodic images beyond the minimum image (see :func:`~egnn.atoms.neighbors.neighbor_list`).
        dtype: floating dtype of positions, shifts and targets in the batches.
        progress: tqdm bar over the frames while building neighbour lists.
        frame_ids: the frames' numbers in their file or store, for error messages (default ``0..F-1``).

    Raises:
        NeighborError: as one line naming the file and frame.
    """

    def __init__(self, data: AtomsData, cutoff: float | None, images: bool = True,
                 dtype: torch.dtype = torch.float32, progress: bool = False,
                 frame_ids: np.ndarray | None = None) -> None:
        from tqdm.auto import tqdm

        self.data, self.cutoff, self.images, self.dtype = data, cutoff, images, dtype
        edges, shifts, counts = [], [], []
        for f in tqdm(range(len(data)), desc="neighbours", unit="frame", disable=not progress, leave=False):
            fr = data.frame(f)
            try:
                e, s = neighbor_list(fr["pos"], cutoff, fr["cell"], fr["pbc"], images)
            except NeighborError as err:
                key = "positions" if "positions" in str(err) else "cell"  # which input the neighbour list refused
                frame = f if frame_ids is None else int(frame_ids[f])
                raise NeighborError(f"{data.source}: frame {frame}: key '{key}': {err}") from None
            edges.append(e + int(data.offsets[f]))  # global atom indices
            shifts.append(s)
            counts.append(e.shape[1])
        # compact storage (QM9 as complete graphs is ~4e7 edges): int32 indices, integer offsets only when some
        # frame is periodic
        all_edges = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)
        if all_edges.size and all_edges.max() >= 2**31:
            raise ValueError(f"{data.source}: more than 2^31 atoms")
        self.edge_index = torch.from_numpy(all_edges.astype(np.int32))
        all_shifts = np.concatenate(shifts) if shifts else np.zeros((0, 3), np.int64)
        self.shift_int = torch.from_numpy(all_shifts.astype(np.int32)) if all_shifts.any() else None
        counts_np = np.asarray(counts, dtype=np.int64)
        self.edge_offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts_np)]))
        self.offsets = torch.from_numpy(data.offsets)
        self.z = torch.from_numpy(data.z)
        self.pos = torch.from_numpy(data.pos)
        self.cell = torch.from_numpy(data.cell)
        self.energy = None if data.energy is None else torch.from_numpy(data.energy)
        self.forces = None if data.forces is None else torch.from_numpy(data.forces)

    def __len__(self) -> int:
        return len(self.data)

    def sizes(self) -> np.ndarray:
        """Atoms + edges of each frame ``[F]``: what a frame's share of a batch's memory grows with."""
        return (torch.diff(self.offsets) + torch.diff(self.edge_offsets)).numpy()

    @property
    def num_edges(self) -> int:
        """The number of edges of all frames together."""
        return int(self.edge_index.shape[1])

    @staticmethod
    def _ranges(starts: Tensor, sizes: Tensor) -> Tensor:
        """Concatenation of ``arange(start, start + size)`` for every pair, without a Python loop."""
        first = torch.cumsum(sizes, 0) - sizes
        return torch.repeat_interleave(starts - first, sizes) + torch.arange(int(sizes.sum()))

    def get(self, indices: Tensor, device: torch.device | str = "cpu") -> AtomsBatch:
        """The frames ``indices`` as one :class:`AtomsBatch` on ``device`` (their atoms and edges concatenated)."""
        rows = torch.as_tensor(indices, dtype=torch.long).cpu().reshape(-1)
        a_start, a_size = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        e_start, e_size = self.edge_offsets[rows], self.edge_offsets[rows + 1] - self.edge_offsets[rows]
        atoms = self._ranges(a_start, a_size)
        edges = self._ranges(e_start, e_size)
        # global atom index -> index in this batch
        new_first = torch.cumsum(a_size, 0) - a_size
        edge_frame = torch.repeat_interleave(torch.arange(rows.numel()), e_size)
        edge_index = self.edge_index[:, edges].long() - (a_start - new_first)[edge_frame]
        if self.shift_int is None:
            shift = torch.zeros(edges.numel(), 3, dtype=torch.float64)
        else:
            shift = torch.einsum("ek,ekl->el", self.shift_int[edges].to(torch.float64), self.cell[rows][edge_frame])
        batch = torch.repeat_interleave(torch.arange(rows.numel()), a_size)
        dt = self.dtype
        return AtomsBatch(
            z=self.z[atoms].to(device), pos=self.pos[atoms].to(device, dt), edge_index=edge_index.to(device),
            edge_shift=shift.to(device, dt), batch=batch.to(device), num_graphs=int(rows.numel()),
            n_atoms=a_size.to(device),
            energy=None if self.energy is None else self.energy[rows].to(device, dt),
            forces=None if self.forces is None else self.forces[atoms].to(device, dt),
            rows=rows,
        )
