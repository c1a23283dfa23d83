"""The N-body prediction task of the paper: from frame 30 (positions, velocities, charges) predict the
positions at frame 40 (frames 6 -> 8 for the ``large`` set), on fully connected 5-particle graphs.

Node feature ``|v_i|``; edge attributes ``[q_i q_j, ||x_i - x_j||^2]`` (as the reference's ``main_nbody.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from egnn.experiments.nbody.files import load_split
from egnn.ops import fully_connected_edges

# split file suffix and (input frame, target frame) of each data set preset
FRAMES = {"small": ("small", 30, 40), "large": ("", 6, 8)}


@dataclass
class NBodyBatch:
    """A batch of ``B`` systems of ``M`` particles, flattened to ``B*M`` nodes (system-major)."""

    h: Tensor  # [B*M, 1] speed |v|
    pos: Tensor  # [B*M, n] positions at the input frame
    vel: Tensor  # [B*M, n] velocities at the input frame
    charges: Tensor  # [B*M, 1]
    edge_index: Tensor  # [2, B*M*(M-1)] fully connected within each system
    edge_attr: Tensor  # [E, 2] = [q_i q_j, ||x_i - x_j||^2]
    target: Tensor  # [B*M, n] positions at the target frame
    batch: Tensor  # [B*M]
    num_graphs: int
    n_particles: int


def edge_features(pos: Tensor, edge_index: Tensor, edge_q: Tensor) -> Tensor:
    r"""The N-body edge attributes :math:`a_{ij} = [q_i q_j, \|x_i - x_j\|^2]` (the reference's
    ``main_nbody.py``); every place that feeds a model builds them here, so they cannot drift apart.

    Args:
        pos: positions ``[N, n]``.
        edge_index: ``[2, E]``, ``edge_index[0]`` the source ``j``, ``edge_index[1]`` the target ``i``.
        edge_q: charge products :math:`q_i q_j` ``[E, 1]`` (constant along a trajectory, so callers keep them).

    Returns:
        ``[E, 2]``.
    """
    diff = pos[edge_index[1]] - pos[edge_index[0]]
    return torch.cat([edge_q, (diff * diff).sum(-1, keepdim=True)], dim=-1)


class NBodySplit:
    """One split (train/valid/test) as tensors, batched by index without Python loops."""

    def __init__(
        self,
        loc: np.ndarray,
        vel: np.ndarray,
        charges: np.ndarray,
        frame_in: int,
        frame_out: int,
        max_samples: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if loc.ndim != 4:
            raise ValueError(f"loc must have shape [S, frames, dim, M], got {loc.shape}")
        frames = loc.shape[1]
        if not (0 <= frame_in < frames and 0 <= frame_out < frames):
            raise ValueError(f"frames {frame_in}->{frame_out} out of range for {frames} stored frames")
        s = loc.shape[0] if max_samples is None else min(max_samples, loc.shape[0])
        # reference layout [S, frame, axis, particle] -> ours [S, particle, axis]
        self.pos = torch.as_tensor(np.ascontiguousarray(loc[:s, frame_in].transpose(0, 2, 1)), dtype=dtype)
        self.vel = torch.as_tensor(np.ascontiguousarray(vel[:s, frame_in].transpose(0, 2, 1)), dtype=dtype)
        self.target = torch.as_tensor(np.ascontiguousarray(loc[:s, frame_out].transpose(0, 2, 1)), dtype=dtype)
        self.charges = torch.as_tensor(np.array(charges[:s]), dtype=dtype).reshape(s, -1, 1)
        self.n_particles = self.pos.shape[1]
        local = fully_connected_edges([self.n_particles])
        self._local_edges = local
        # q_i q_j per edge (target i = local[1], source j = local[0])
        q = self.charges[:, :, 0]
        self.edge_q = (q[:, local[1]] * q[:, local[0]]).unsqueeze(-1)  # [S, M(M-1), 1]
        self._cache: dict[tuple[str, int], dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return self.pos.shape[0]

    def _on(self, device: torch.device) -> dict[str, Tensor]:
        key = (device.type, device.index or 0)
        if key not in self._cache:
            self._cache[key] = {k: getattr(self, k).to(device) for k in ("pos", "vel", "target", "charges", "edge_q")}
        return self._cache[key]

    def get(self, indices: Tensor, device: torch.device | str = "cpu") -> NBodyBatch:
        device = torch.device(device)
        t = self._on(device)
        idx = indices.to(device)
        b, m = idx.numel(), self.n_particles
        pos = t["pos"][idx].reshape(b * m, -1)
        vel = t["vel"][idx].reshape(b * m, -1)
        offsets = (torch.arange(b, device=device) * m).repeat_interleave(self._local_edges.shape[1])
        edge_index = self._local_edges.to(device).repeat(1, b) + offsets
        edge_attr = edge_features(pos, edge_index, t["edge_q"][idx].reshape(-1, 1))
        return NBodyBatch(
            h=vel.norm(dim=-1, keepdim=True),
            pos=pos,
            vel=vel,
            charges=t["charges"][idx].reshape(b * m, 1),
            edge_index=edge_index,
            edge_attr=edge_attr,
            target=t["target"][idx].reshape(b * m, -1),
            batch=torch.arange(b, device=device).repeat_interleave(m),
            num_graphs=b,
            n_particles=m,
        )


def load_nbody(
    data_dir: str | Path,
    dataset: str = "small",
    max_samples: int | None = 3000,
    n_particles: int = 5,
    valid_test_from: str | Path | None = None,
) -> dict[str, NBodySplit]:
    """Train/valid/test splits of a generated data set (``dataset`` = ``small`` or ``large``).

    ``max_samples`` keeps the first k training trajectories (3000 in the paper). ``valid_test_from`` reads
    valid and test from another directory holding the ``small`` set (the data-efficiency sweep trains on
    ``large`` and validates/tests on ``small``, as the reference does).
    """
    if dataset not in FRAMES:
        raise ValueError(f"dataset must be one of {sorted(FRAMES)}, got {dataset!r}")
    suffix, f_in, f_out = FRAMES[dataset]
    splits = {}
    tr = load_split(data_dir, "train", suffix=suffix, n_particles=n_particles, mmap=True)
    splits["train"] = NBodySplit(tr["loc"], tr["vel"], tr["charges"], f_in, f_out, max_samples)
    vt_dir, vt_dataset = (data_dir, dataset) if valid_test_from is None else (valid_test_from, "small")
    vt_suffix, vf_in, vf_out = FRAMES[vt_dataset]
    for split in ("valid", "test"):
        arr = load_split(vt_dir, split, suffix=vt_suffix, n_particles=n_particles, mmap=True)
        splits[split] = NBodySplit(arr["loc"], arr["vel"], arr["charges"], vf_in, vf_out)
    return splits
