"""Scatter reductions on ``index_add_`` (no torch_scatter): sum or mean of rows grouped by an index."""

from __future__ import annotations

import torch
from torch import Tensor


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """``out[k] = sum_{e: index[e] == k} src[e]`` along dim 0.

    Args:
        src: values, shape ``[E, *]``.
        index: target row of each value, shape ``[E]``, integer, in ``[0, dim_size)``.
        dim_size: number of output rows (explicit, so empty groups and trailing empty rows are kept).

    Returns:
        Tensor of shape ``[dim_size, *]`` with the dtype and device of ``src``.

    >>> scatter_sum(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 2, 0]), dim_size=4)
    tensor([5., 0., 2., 0.])
    """
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.index_add_(0, index, src)


def scatter_count(index: Tensor, dim_size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Number of entries per group, shape ``[dim_size]``."""
    ones = torch.ones(index.shape[0], dtype=dtype, device=index.device)
    return scatter_sum(ones, index, dim_size)


def scatter_mean(src: Tensor, index: Tensor, dim_size: int, count: Tensor | None = None) -> Tensor:
    """Mean of ``src`` rows per group along dim 0; empty groups give zero (not NaN).

    ``count`` (shape ``[dim_size]``) may be passed when several reductions share one index.
    """
    if count is None:
        count = scatter_count(index, dim_size, src.dtype)
    total = scatter_sum(src, index, dim_size)
    return total / count.clamp_min(1).to(src.dtype).view(-1, *([1] * (src.dim() - 1)))
