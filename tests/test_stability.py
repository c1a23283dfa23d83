"""Numerical stability: a short training run of the recommended configuration stays finite, and degenerate
geometry (coincident, collinear, coplanar, huge, tiny, isolated, single node) gives finite outputs and
gradients, with float64 equivariance wherever the input allows it.

The recommended options come from ``benchmarks/stability.py`` (see the README's table): ``normalize`` and
``tanh`` with a coordinate range, mean coordinate aggregation.
"""

from __future__ import annotations

import pytest
import torch

from egnn.nn import EGNN
from egnn.ops import collate, fully_connected_edges, radius_graph, sizes_to_batch
from egnn.ops.batch import Graph
from egnn.testing import assert_equivariant

RECOMMENDED = {"normalize": True, "tanh": True, "coords_range": 3.0, "coord_agg": "mean"}
PAPER: dict[str, object] = {}


def _model(dtype: torch.dtype, layers: int = 4, hidden: int = 16, seed: int = 0, **opts) -> EGNN:
    torch.manual_seed(seed)
    model = EGNN(3, hidden, layers, **opts).to(dtype)
    for layer in model.layers:  # a trained-like coordinate MLP, so positions really move
        torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.3)
    return model


def _all_finite(model: EGNN, *tensors: torch.Tensor) -> bool:
    ok = all(bool(torch.isfinite(t).all()) for t in tensors)
    return ok and all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_recommended_config_trains_finite_deep_and_mixed_sizes():
    """Reduced stability study: 16 layers, hidden 64, float32, mixed-size radius graphs at a length scale
    (x30) where the paper's plain layer overflows within a few steps, 15 Adam steps at lr 1e-3."""
    gen = torch.Generator().manual_seed(0)
    graphs = []
    for n in (3, 10, 25, 50):
        pos = torch.rand(n, 3, generator=gen) * n ** (1 / 3)
        h = torch.randint(0, 2, (n, 3), generator=gen).float()
        ei = radius_graph(pos, 1.6, max_num_neighbors=12)
        graphs.append(Graph(h=h, pos=pos * 30, edge_index=ei, y=(pos * 1.1 + 0.2) * 30))
    g = collate(graphs)
    torch.manual_seed(0)
    model = EGNN(3, 64, 16, **RECOMMENDED)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        out = model(g.h, g.pos, g.edge_index, batch=g.batch)
        loss = (out.pos - g.y).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        assert _all_finite(model, out.pos, out.h, loss)
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0]  # it learns, not just survives


def _degenerate_positions(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    base = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    if kind == "coincident":
        return torch.randn(1, 3, generator=gen, dtype=torch.float64).expand(n, 3).clone()
    if kind == "collinear":
        return torch.randn(1, 3, generator=gen, dtype=torch.float64) + base[:, :1] * torch.tensor([[1.0, -2.0, 0.5]])
    if kind == "coplanar":
        plane = torch.linalg.qr(torch.randn(3, 2, generator=gen, dtype=torch.float64))[0]
        return base[:, :2] @ plane.t() + 1.0
    if kind == "scaled_1e6":
        return base * 1e6
    if kind == "scaled_1e-6":
        return base * 1e-6
    raise AssertionError(kind)


GEOMETRIES = ["coincident", "collinear", "coplanar", "scaled_1e6", "scaled_1e-6"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", GEOMETRIES)
def test_degenerate_geometry_finite_values_and_gradients(kind, dtype):
    gen = torch.Generator().manual_seed(1)
    n = 7
    pos = _degenerate_positions(kind, n, gen).to(dtype).requires_grad_(True)
    h = torch.randn(n, 3, generator=gen, dtype=torch.float64).to(dtype)
    model = _model(dtype, layers=8, **RECOMMENDED)
    out = model(h, pos, fully_connected_edges([n]))
    scale = float(pos.detach().abs().max()) or 1.0
    (out.pos.sum() / scale + out.h.mean()).backward()
    assert _all_finite(model, out.pos, out.h, pos.grad)
    if kind == "coincident":  # nothing to move along: every node stays at the common point
        assert torch.equal(out.pos, pos.detach())


@pytest.mark.parametrize("kind", GEOMETRIES)
def test_degenerate_geometry_equivariance_float64(kind):
    gen = torch.Generator().manual_seed(2)
    n = 6
    pos = _degenerate_positions(kind, n, gen)
    if kind == "scaled_1e-6":
        pos = pos + 1.0  # tiny differences on an O(1) offset: the hard case for cancellation
    model = _model(torch.float64, layers=4, **RECOMMENDED)
    inputs = {"h": torch.randn(n, 3, generator=gen, dtype=torch.float64), "pos": pos,
              "edge_index": fully_connected_edges([n])}
    # features grow like |x|^2 through the radial input at 1e6 scale (~1e12), so compare relative errors
    tol = 1e-8 if kind == "scaled_1e6" else 1e-10
    errors = assert_equivariant(model, inputs, tol=tol, trials=4)
    assert set(errors) == {"h", "pos"}


FRAGILE = {"paper": PAPER, "normalize": {"normalize": True}, "tanh": {"tanh": True, "coords_range": 3.0},
           "normalize+sum": {"normalize": True, "coord_agg": "sum"}}


@pytest.mark.parametrize("scale", [1e3, 1e6])
@pytest.mark.parametrize("name", sorted(FRAGILE))
def test_only_normalize_plus_tanh_bounds_the_update_at_large_scale(name, scale):
    """The documented failure of the plain layer (README table), in float64: with a trained-like coordinate MLP,
    16 layers on coordinates of size 1e3 or 1e6 overflow (or move nodes by > 1e12) unless both ``normalize``
    and ``tanh`` are on; with both, each layer moves a node by at most ``coords_range`` (mean aggregation)."""
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(10, 3, generator=gen, dtype=torch.float64) * scale
    h = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    ei = fully_connected_edges([10])
    with torch.no_grad():
        bad = _model(torch.float64, layers=16, hidden=32, **FRAGILE[name])(h, pos, ei).pos
        good = _model(torch.float64, layers=16, hidden=32, **RECOMMENDED)(h, pos, ei)
    assert not bool(torch.isfinite(bad).all()) or float((bad - pos).abs().max()) > 1e12
    assert bool(torch.isfinite(good.pos).all()) and bool(torch.isfinite(good.h).all())
    step = (good.pos - pos).norm(dim=-1).max()
    assert float(step) <= 16 * RECOMMENDED["coords_range"] + 1e-9


@pytest.mark.parametrize("opts", [PAPER, RECOMMENDED, {"coord_agg": "sum"}], ids=["paper", "recommended", "sum"])
def test_isolated_nodes_and_single_node(opts):
    gen = torch.Generator().manual_seed(3)
    sizes = [1, 5, 4]  # a one-node graph, then a graph whose last two nodes have no edges
    pos = torch.randn(10, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    h = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    ei = torch.cat([fully_connected_edges([3]) + 1, fully_connected_edges([4]) + 6], dim=1)  # nodes 4, 5 isolated
    model = _model(torch.float64, **opts)
    out = model(h, pos, ei, batch=sizes_to_batch(sizes))
    out.pos.pow(2).sum().backward()
    assert _all_finite(model, out.pos, out.h, pos.grad)
    for i in (0, 4, 5):  # no neighbours: the position is returned unchanged
        assert torch.equal(out.pos[i], pos.detach()[i])
    assert_equivariant(model, {"h": h, "pos": pos.detach(), "edge_index": ei, "batch": sizes_to_batch(sizes)})
    # one node alone, no edges at all
    single = model(h[:1], pos.detach()[:1], torch.empty(2, 0, dtype=torch.long))
    assert torch.equal(single.pos, pos.detach()[:1]) and bool(torch.isfinite(single.h).all())
