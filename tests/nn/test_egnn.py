import copy

import pytest
import torch

from egnn.nn import EGNN, EGNNConfig
from egnn.ops import collate, fully_connected_edges, radius_graph, sizes_to_batch
from egnn.ops.batch import Graph
from egnn.testing import assert_equivariant

MODEL_OPTIONS = {
    "paper_nbody": {"velocity": True, "edge_dim": 2},
    "plain": {},
    "attention_sum_tanh": {"attention": True, "coord_agg": "sum", "tanh": True, "normalize": True},
    "qm9_like": {"update_coords": False, "attention": True, "node_attr": True, "out_channels": 8,
                 "graph_out_channels": 1},
    "graph_mean_readout": {"graph_out_channels": 3, "readout": "mean", "edge_dim": 2},
    "checkpointed_chunked": {"checkpoint": True, "chunk_size": 4, "velocity": True},
}


def model_inputs(model, dim, dtype, sizes=(5, 3, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    n = sum(sizes)
    ei = fully_connected_edges(list(sizes))
    inp = {
        "h": torch.randn(n, c.in_channels, generator=g, dtype=torch.float64).to(dtype),
        "pos": torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype),
        "edge_index": ei,
        "batch": sizes_to_batch(list(sizes)),
        "num_graphs": len(sizes),
    }
    if c.edge_dim:
        inp["edge_attr"] = torch.randn(ei.shape[1], c.edge_dim, generator=g, dtype=torch.float64).to(dtype)
    if c.velocity:
        inp["vel"] = torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype)
    return inp


def make_model(dtype, seed=0, **opts):
    torch.manual_seed(seed)
    model = EGNN(4, 16, 3, **opts).to(dtype)
    for layer in model.layers:
        if layer.coord_mlp is not None:
            torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.3)
    return model


@pytest.mark.parametrize("dim", [2, 3, 4, 7])
@pytest.mark.parametrize("name", sorted(MODEL_OPTIONS))
def test_model_equivariance(name, dim, dtype):
    model = make_model(dtype, **MODEL_OPTIONS[name])
    errors = assert_equivariant(model, model_inputs(model, dim, dtype))
    assert set(errors) >= {"h", "pos"}


@pytest.mark.parametrize("name", sorted(MODEL_OPTIONS))
def test_batched_equals_per_graph(name):
    model = make_model(torch.float64, **MODEL_OPTIONS[name])
    sizes = (5, 1, 3, 6)
    inp = model_inputs(model, 3, torch.float64, sizes=sizes)
    out = model(**inp)
    start, e0 = 0, 0
    for gi, n in enumerate(sizes):
        ne = n * (n - 1)
        single = {
            "h": inp["h"][start : start + n], "pos": inp["pos"][start : start + n],
            "edge_index": fully_connected_edges([n]),
        }
        if "edge_attr" in inp:
            single["edge_attr"] = inp["edge_attr"][e0 : e0 + ne]
        if "vel" in inp:
            single["vel"] = inp["vel"][start : start + n]
        one = model(**single)
        assert torch.allclose(one.h, out.h[start : start + n], atol=1e-12, rtol=0)
        assert torch.allclose(one.pos, out.pos[start : start + n], atol=1e-12, rtol=0)
        if one.graph is not None:
            assert torch.allclose(one.graph[0], out.graph[gi], atol=1e-12, rtol=0)
        start, e0 = start + n, e0 + ne


def test_velocity_model_returns_velocity_and_uses_it():
    model = make_model(torch.float64, velocity=True, edge_dim=2)
    inp = model_inputs(model, 3, torch.float64)
    out = model(**inp)
    assert out.vel is not None and out.vel.shape == inp["pos"].shape
    inp2 = dict(inp, vel=inp["vel"] * 2)
    assert not torch.allclose(model(**inp2).pos, out.pos)


def test_checkpointing_gives_same_gradients():
    base = make_model(torch.float64, velocity=True)
    ckpt = copy.deepcopy(base)
    ckpt.config.checkpoint = True
    inp = model_inputs(base, 3, torch.float64)
    for m in (base, ckpt):
        m(**inp).pos.pow(2).sum().backward()
    compared = 0
    for p1, p2 in zip(base.parameters(), ckpt.parameters()):
        assert (p1.grad is None) == (p2.grad is None)  # the last node MLP does not reach pos
        if p1.grad is not None:
            assert torch.allclose(p1.grad, p2.grad, atol=1e-12, rtol=0)
            compared += 1
    assert compared > 10


def test_config_round_trip_and_state_dict():
    model = make_model(torch.float32, attention=True, graph_out_channels=2)
    cfg = EGNNConfig.from_dict(model.config.to_dict())
    clone = EGNN.from_config(cfg)
    clone.load_state_dict(model.state_dict())
    inp = model_inputs(model, 3, torch.float32)
    assert torch.equal(clone(**inp).graph, model(**inp).graph)
    with pytest.raises(ValueError, match="unknown EGNNConfig field"):
        EGNNConfig.from_dict({"in_channels": 3, "bogus": 1})


def test_graph_container_feeds_model():
    g = torch.Generator().manual_seed(0)
    graphs = []
    for n in (4, 7):
        pos = torch.randn(n, 3, generator=g)
        graphs.append(Graph(h=torch.randn(n, 4, generator=g), pos=pos, edge_index=radius_graph(pos, 2.0)))
    b = collate(graphs)
    model = EGNN(4, 8, 2, graph_out_channels=1)
    out = model(b.h, b.pos, b.edge_index, batch=b.batch, num_graphs=b.num_graphs)
    assert out.graph.shape == (2, 1)


# "aot_eager" runs dynamo's whole-graph capture and AOT autograd on dynamic shapes (what our code can break) in
# ~7 s; "inductor" adds C++ code generation (~35 s even for one layer on CPU), so that one is marked slow.
@pytest.mark.parametrize(
    ("backend", "n_layers"), [("aot_eager", 2), pytest.param("inductor", 1, marks=pytest.mark.slow)]
)
def test_torch_compile_fullgraph_two_sizes(backend: str, n_layers: int):
    torch._dynamo.reset()
    model = EGNN(1, 8, n_layers, edge_dim=2, velocity=True)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=backend)
    for sizes in ([5] * 4, [3, 7, 2]):
        n = sum(sizes)
        ei = fully_connected_edges(sizes)
        args = dict(h=torch.randn(n, 1), pos=torch.randn(n, 3), edge_index=ei,
                    edge_attr=torch.randn(ei.shape[1], 2), vel=torch.randn(n, 3))
        eager, comp = model(**args), compiled(**args)
        assert torch.allclose(eager.pos, comp.pos, atol=1e-5)


def bad_inputs():
    n = 4
    ei = fully_connected_edges([n])
    good = dict(h=torch.randn(n, 4), pos=torch.randn(n, 3), edge_index=ei, edge_attr=torch.randn(ei.shape[1], 2),
                vel=torch.randn(n, 3))
    nan_pos = good["pos"].clone()
    nan_pos[1, 2] = float("nan")
    inf_h = good["h"].clone()
    inf_h[0, 0] = float("inf")
    cases = {
        "h rank": ({"h": torch.randn(n)}, "h must have shape"),
        "h width": ({"h": torch.randn(n, 5)}, r"h must have shape \[num_nodes, 4\]"),
        "pos nodes": ({"pos": torch.randn(n + 1, 3)}, r"pos must have shape \[num_nodes=4"),
        "edge_index rank": ({"edge_index": ei[0]}, r"edge_index must have shape \[2, num_edges\]"),
        "edge_index float": ({"edge_index": ei.float()}, "edge_index must be an integer"),
        "edge_index range": ({"edge_index": ei + 1}, r"edge_index values must be in \[0, num_nodes=4\)"),
        "edge_index negative": ({"edge_index": ei - 1}, "edge_index values must be in"),
        "edge_attr rows": ({"edge_attr": torch.randn(3, 2)}, r"edge_attr must have shape \[num_edges=12, 2\]"),
        "edge_attr missing": ({"edge_attr": None}, "edge_attr of shape"),
        "vel missing": ({"vel": None}, "vel of shape"),
        "vel shape": ({"vel": torch.randn(n, 2)}, "vel must have the shape of pos"),
        "nan pos": ({"pos": nan_pos}, "pos contains 1 NaN/Inf"),
        "inf h": ({"h": inf_h}, "h contains 1 NaN/Inf"),
        "dtype": ({"pos": good["pos"].double()}, "pos has dtype torch.float64"),
        "empty": ({"h": torch.randn(0, 4), "pos": torch.randn(0, 3), "vel": torch.randn(0, 3)}, "0 nodes"),
    }
    return good, cases


@pytest.mark.parametrize("case", sorted(bad_inputs()[1]))
def test_bad_inputs_raise_clear_errors(case):
    model = EGNN(4, 8, 2, edge_dim=2, velocity=True)
    good, cases = bad_inputs()
    change, message = cases[case]
    with pytest.raises(ValueError, match=message):
        model(**{**good, **change})
    model(**good)  # the unchanged input is fine


def test_model_rejects_bad_options():
    with pytest.raises(ValueError, match="readout"):
        EGNN(4, 8, readout="max")
    with pytest.raises(ValueError, match="act must be one of"):
        EGNN(4, 8, act="swish2")
    with pytest.raises(ValueError, match="coord_agg"):
        EGNN(4, 8, coord_agg="max")
    with pytest.raises(ValueError, match="velocity=True needs update_coords"):
        EGNN(4, 8, velocity=True, update_coords=False)


def test_chunk_checkpointing_gives_same_outputs_and_gradients():
    base = make_model(torch.float64, attention=True)
    chunked = EGNN.from_config({**base.config.to_dict(), "chunk_size": 7, "checkpoint_chunks": True}).double()
    chunked.load_state_dict(base.state_dict())
    inp = model_inputs(base, 3, torch.float64)
    outs = []
    for m in (base, chunked):
        out = m(**inp)
        (out.pos.pow(2).sum() + out.h.pow(2).sum()).backward()
        outs.append(out)
    assert torch.allclose(outs[0].pos, outs[1].pos, atol=1e-12, rtol=0)
    for p1, p2 in zip(base.parameters(), chunked.parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-10, rtol=0)
