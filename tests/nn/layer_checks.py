"""Checks shared by the layer tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from egnn.ops import fully_connected_edges


def assert_seeded_reset_redraws_init(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``reset_parameters()`` after ``manual_seed(seed)`` gives the weights that ``build()`` drew after the same
    seed (so a reset is a fresh start, small-gain initialisations included); returns the layer."""
    torch.manual_seed(seed)
    layer = build()
    first = {k: v.clone() for k, v in layer.state_dict().items()}
    torch.manual_seed(seed)
    layer.reset_parameters()
    for k, v in layer.state_dict().items():
        assert torch.equal(v, first[k]), k
    return layer


def random_graph(dtype: torch.dtype, sizes: tuple[int, ...] = (5, 3, 6), seed: int = 0,
                 **widths: int) -> dict[str, torch.Tensor]:
    """Keyword inputs on fully connected graphs of ``sizes``: ``edge_index`` and, for each ``name=width > 0`` (in
    the order given), a standard normal ``[E, width]`` for ``edge_attr`` and ``[N, width]`` otherwise."""
    g = torch.Generator().manual_seed(seed)
    edge_index = fully_connected_edges(list(sizes))
    inputs = {"edge_index": edge_index}
    for name, width in widths.items():
        if width:
            rows = edge_index.shape[1] if name == "edge_attr" else sum(sizes)
            inputs[name] = torch.randn(rows, width, generator=g, dtype=torch.float64).to(dtype)
    return inputs
