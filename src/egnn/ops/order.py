"""A memory-friendly node order for large spatial graphs (Morton / Z-order)."""

from __future__ import annotations

import torch
from torch import Tensor

_BITS = 21  # per axis: 3 x 21 = 63 bits fit an int64 code


def _spread3(v: Tensor) -> Tensor:
    """Insert two zero bits after each of the low 21 bits of ``v`` (int64): ``b2 b1 b0 -> b2 0 0 b1 0 0 b0``."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    return (v | (v << 2)) & 0x1249249249249249


def locality_order(pos: Tensor, bits: int = 10) -> Tensor:
    """A permutation of the nodes that puts nodes close in space close in memory (Morton / Z-order curve).

    Messages gather the rows of their source nodes; on a graph of millions of nodes in random order every gather
    is a cache miss. Nodes renumbered along a space-filling curve (``pos = pos[perm]`` before building the graph,
    features and targets likewise) have their neighbours nearby in memory. The model's outputs do not depend on
    the order (permutation equivariance): ``out_sorted[inv] == out`` with ``inv = argsort(perm)``, up to float
    summation order.

    Args:
        pos: positions ``[N, n]``; the first three axes define the order (any further axes are ignored).
        bits: grid resolution per axis, ``2**bits`` cells across the bounding box (1..21).

    Returns:
        ``perm`` ``[N]`` (long): node ``perm[k]`` of the input becomes node ``k``.
    """
    if pos.dim() != 2 or pos.shape[1] < 1:
        raise ValueError(f"pos must have shape [N, n] with n >= 1, got {tuple(pos.shape)}")
    if not 1 <= bits <= _BITS:
        raise ValueError(f"bits must be in 1..{_BITS}, got {bits}")
    if pos.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=pos.device)
    p = pos[:, :3].detach().double()
    if not bool(torch.isfinite(p).all()):
        raise ValueError("pos holds NaN or Inf")
    lo, hi = p.min(0).values, p.max(0).values
    cells = (1 << bits) - 1
    q = ((p - lo) / (hi - lo).clamp_min(1e-300) * cells).round().long().clamp_(0, cells)
    code = torch.zeros(p.shape[0], dtype=torch.long, device=pos.device)
    for axis in range(q.shape[1]):
        code |= _spread3(q[:, axis]) << axis
    return torch.argsort(code, stable=True)
