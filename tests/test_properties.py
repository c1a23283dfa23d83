"""Property-based tests of the public API (hypothesis): random node counts, feature sizes, dimensions, dtypes,
options and edge indices, valid and invalid.

Contract: every call either returns a finite result that passes :func:`egnn.testing.assert_equivariant`, or
raises ``ValueError`` whose message names the offending argument -- never a raw ``IndexError`` /
``RuntimeError`` from inside, never NaN for finite input.

The number of examples is bounded by the ``ci`` profile registered and loaded here (``HYPOTHESIS_PROFILE=dev``
selects a longer search for local runs).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egnn.nn import EGCL, EGNN
from egnn.ops import knn_graph, radius_graph, sizes_to_batch
from egnn.testing import assert_equivariant

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=400, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# invalid variants of an otherwise valid call -> the argument the ValueError must name
BREAKAGES = {
    "edge_out_of_range": "edge_index",
    "edge_negative": "edge_index",
    "edge_float": "edge_index",
    "edge_bool": "edge_index",
    "edge_rank1": "edge_index",
    "edge_three_rows": "edge_index",
    "h_width": "h",
    "h_rank": "h",
    "pos_rows": "pos",
    "pos_dtype": "pos",
    "pos_nan": "pos",
    "h_inf": "h",
    "edge_attr_rows": "edge_attr",
    "vel_shape": "vel",
}


@st.composite
def calls(draw):
    """A model (EGNN or a single EGCL) and keyword inputs for it, possibly broken in one documented way."""
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    n = draw(st.integers(1, 9))
    feat = draw(st.integers(1, 4))
    dim = draw(st.integers(1, 5))
    api = draw(st.sampled_from(["EGNN", "EGCL"]))
    opts = {
        "normalize": draw(st.booleans()),
        "tanh": draw(st.booleans()),
        "coord_agg": draw(st.sampled_from(["mean", "sum"])),
        "attention": draw(st.booleans()),
        "chunk_size": draw(st.sampled_from([None, 1, 3])),
    }
    edge_dim = draw(st.sampled_from([0, 2]))
    velocity = api == "EGNN" and draw(st.booleans())
    # coordinates on an integer grid times a scale: nodes either coincide exactly or are well apart, so the
    # check is not at the mercy of catastrophic cancellation in float32 (near-coincident points are covered
    # by tests/test_stability.py)
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    grid = draw(st.lists(st.integers(-4, 4), min_size=n * dim, max_size=n * dim))
    pos = torch.tensor(grid, dtype=torch.float64).view(n, dim) * scale
    num_edges = draw(st.integers(0, 3 * n))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=num_edges,
                          max_size=num_edges))
    edge_index = torch.tensor(pairs, dtype=torch.long).view(-1, 2).t().contiguous()
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    if api == "EGNN":
        graph_out = draw(st.sampled_from([None, 2]))
        model = EGNN(feat, 8, draw(st.integers(0, 3)), edge_dim=edge_dim, velocity=velocity,
                     graph_out_channels=graph_out, **opts)
        layers = list(model.layers)
    else:
        model = EGCL(feat, 8, edge_dim=edge_dim, **opts)
        layers = [model]
    for layer in layers:  # make the coordinate update large enough to be checked
        torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.1, generator=gen)
    model = model.to(dtype)
    inputs = {
        "h": torch.randn(n, feat, generator=gen, dtype=torch.float64).to(dtype),
        "pos": pos.to(dtype),
        "edge_index": edge_index.to(draw(st.sampled_from([torch.long, torch.int32]))),
    }
    if edge_dim:
        inputs["edge_attr"] = torch.randn(num_edges, edge_dim, generator=gen, dtype=torch.float64).to(dtype)
    if velocity:
        inputs["vel"] = torch.randn(n, dim, generator=gen, dtype=torch.float64).to(dtype)
    breakage = draw(st.sampled_from([None, None, None, *sorted(BREAKAGES)]))
    if breakage is not None:
        breakage = _break(inputs, breakage, n, feat, edge_dim, velocity, dtype)
    return model, inputs, breakage


def _break(inputs: dict, kind: str, n: int, feat: int, edge_dim: int, velocity: bool, dtype) -> str | None:
    """Apply one breakage if it applies to this call; return its name (or ``None`` when it does not apply)."""
    ei = inputs["edge_index"]
    if kind.startswith("edge_") and kind != "edge_attr_rows" and kind not in ("edge_rank1", "edge_three_rows"):
        if ei.shape[1] == 0:
            return None
        ei = ei.clone().long()
        if kind == "edge_out_of_range":
            ei[1, -1] = n
        elif kind == "edge_negative":
            ei[0, 0] = -1
        inputs["edge_index"] = {"edge_float": ei.float(), "edge_bool": ei > 0}.get(kind, ei)
    elif kind == "edge_rank1":
        inputs["edge_index"] = ei.reshape(-1)
    elif kind == "edge_three_rows":
        inputs["edge_index"] = torch.cat([ei, ei[:1]], dim=0)
    elif kind == "h_width":
        inputs["h"] = torch.zeros(n, feat + 1, dtype=dtype)
    elif kind == "h_rank":
        inputs["h"] = torch.zeros(n, dtype=dtype)
    elif kind == "pos_rows":
        inputs["pos"] = torch.cat([inputs["pos"], inputs["pos"][:1]], dim=0)
    elif kind == "pos_dtype":
        inputs["pos"] = inputs["pos"].to(torch.float64 if dtype == torch.float32 else torch.float32)
    elif kind == "pos_nan":
        inputs["pos"] = inputs["pos"].clone()
        inputs["pos"][-1, 0] = float("nan")
    elif kind == "h_inf":
        inputs["h"] = inputs["h"].clone()
        inputs["h"][0, -1] = float("inf")
    elif kind == "edge_attr_rows":
        if not edge_dim:
            return None
        inputs["edge_attr"] = torch.zeros(ei.shape[1] + 1, edge_dim, dtype=dtype)
    elif kind == "vel_shape":
        if not velocity:
            return None
        inputs["vel"] = torch.zeros(n, inputs["pos"].shape[1] + 1, dtype=dtype)
    return kind


def _finite(out) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in out if t is not None)


@given(calls())
def test_call_returns_equivariant_finite_result_or_raises_value_error(call):
    model, inputs, breakage = call
    if breakage is not None:
        with pytest.raises(ValueError, match=BREAKAGES[breakage]):
            model(**inputs)
        return
    with torch.no_grad():
        out = model(**inputs)
        assert _finite(out), "NaN/Inf output for finite input"
        assert out[1].shape == inputs["pos"].shape
        assert_equivariant(model, inputs)


@given(calls())
def test_gradients_finite_for_valid_calls(call):
    model, inputs, breakage = call
    if breakage is not None:
        return  # the invalid half of the contract is the test above
    pos = inputs["pos"].clone().requires_grad_(True)
    out = model(**{**inputs, "pos": pos})
    sum(t.sum() for t in out if t is not None).backward()
    assert bool(torch.isfinite(pos.grad).all())
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@st.composite
def searches(draw):
    """Arguments of radius_graph / knn_graph, valid or broken in one documented way."""
    sizes = draw(st.lists(st.integers(0, 8), min_size=1, max_size=4))
    n = sum(sizes)
    dim = draw(st.integers(1, 4))
    pos = torch.tensor(draw(st.lists(st.integers(-6, 6), min_size=n * dim, max_size=n * dim)),
                       dtype=torch.float64).view(n, dim) * 0.5
    kind = draw(st.sampled_from(["radius", "knn"]))
    kwargs = {"pos": pos, "batch": sizes_to_batch(sizes), "loop": draw(st.booleans()),
              "method": draw(st.sampled_from(["auto", "kdtree", "blockwise"]))}
    if kind == "radius":
        kwargs["r"] = draw(st.sampled_from([0.4, 1.0, 2.5, 100.0]))
        kwargs["max_num_neighbors"] = draw(st.sampled_from([None, 1, 3]))
    else:
        kwargs["k"] = draw(st.integers(1, 5))
    bad = draw(st.sampled_from([None, None, "r", "k", "batch", "pos", "method", "max_num_neighbors"]))
    if bad == "r" and kind == "radius":
        kwargs["r"] = draw(st.sampled_from([0.0, -1.0, float("nan")]))
    elif bad == "k" and kind == "knn":
        kwargs["k"] = draw(st.integers(-2, 0))
    elif bad == "batch" and n > 1:
        kwargs["batch"] = draw(st.sampled_from(["unsorted", "short", "float"]))
        b = sizes_to_batch(sizes)
        kwargs["batch"] = {"unsorted": b.flip(0) if b[0] != b[-1] else None, "short": b[:-1],
                           "float": b.double()}[kwargs["batch"]]
        if kwargs["batch"] is None:
            kwargs["batch"], bad = sizes_to_batch(sizes), None
    elif bad == "pos" and n:
        kwargs["pos"] = pos.clone()
        kwargs["pos"][0, 0] = float("inf")
    elif bad == "method":
        kwargs["method"] = "brute"
    elif bad == "max_num_neighbors" and kind == "radius":
        kwargs["max_num_neighbors"] = 0
    else:
        bad = None
    return kind, kwargs, bad


@given(searches())
def test_neighbour_search_returns_valid_edges_or_raises_value_error(search):
    kind, kwargs, bad = search
    fn = radius_graph if kind == "radius" else knn_graph
    if bad is not None:
        with pytest.raises(ValueError, match=bad):
            fn(**kwargs)
        return
    ei = fn(**kwargs)
    pos, batch = kwargs["pos"], kwargs["batch"]
    assert ei.dtype == torch.long and ei.dim() == 2 and ei.shape[0] == 2
    if ei.shape[1] == 0:
        return
    src, dst = ei
    assert int(ei.min()) >= 0 and int(ei.max()) < pos.shape[0]
    assert torch.equal(batch[src], batch[dst]), "edge between graphs"
    assert kwargs["loop"] or not bool((src == dst).any()), "self loop without loop=True"
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert len(pairs) == ei.shape[1], "duplicate edge"
    cap = kwargs.get("max_num_neighbors") if kind == "radius" else kwargs["k"]
    if cap is not None:
        assert int(torch.bincount(dst).max()) <= cap
    if kind == "radius":
        assert bool(((pos[src] - pos[dst]).norm(dim=-1) < kwargs["r"]).all())


@pytest.mark.parametrize("batch", [[0, 0, -1, 1], [0.0, 0.0, 1.0, 1.0]], ids=["negative", "float"])
def test_graph_readout_rejects_bad_batch_values(batch):
    model = EGNN(2, 8, 1, graph_out_channels=1)
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(4, 2), torch.randn(4, 3), torch.tensor([[0, 1], [1, 0]]), batch=torch.tensor(batch))


def test_graph_readout_rejects_batch_beyond_num_graphs():
    model = EGNN(2, 8, 1, graph_out_channels=1)
    with pytest.raises(ValueError, match=r"batch values must be in \[0, num_graphs=2\)"):
        model(torch.randn(4, 2), torch.randn(4, 3), torch.tensor([[0, 1], [1, 0]]), batch=torch.tensor([0, 0, 1, 2]),
              num_graphs=2)
