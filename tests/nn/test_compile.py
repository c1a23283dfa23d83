"""torch.compile: one dynamic graph serves batches of any node and edge count (no recompiles per shape)."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from egnn.nn import EGNN
from egnn.ops import fully_connected_edges, radius_graph

# 6 batches, every node and edge count different (no size 0 or 1, which torch specialises on)
SIZES = [[5] * 4, [3, 7, 2], [5] * 100, [9, 4], [6, 6, 6, 2, 3], [12, 2, 8]]
CONFIGS = {
    "nbody": {"in_channels": 1, "edge_dim": 2, "velocity": True},
    "qm9": {"in_channels": 15, "update_coords": False, "attention": True, "node_attr": True, "out_channels": 16,
            "graph_out_channels": 1},
    "radius": {"in_channels": 4, "normalize": True, "tanh": True},
}


def _batch(cfg, sizes, g):
    n = sum(sizes)
    ei = fully_connected_edges(sizes)
    args = {"h": torch.randn(n, cfg["in_channels"], generator=g), "pos": torch.randn(n, 3, generator=g),
            "edge_index": ei}
    if cfg.get("edge_dim"):
        args["edge_attr"] = torch.randn(ei.shape[1], cfg["edge_dim"], generator=g)
    if cfg.get("velocity"):
        args["vel"] = torch.randn(n, 3, generator=g)
    if cfg.get("graph_out_channels"):
        args["batch"] = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
        args["num_graphs"] = len(sizes)
    return args


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_dynamic_graph_for_all_shapes(name):
    torch._dynamo.reset()
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = EGNN(hidden_channels=16, num_layers=2, **cfg)
    counter = CompileCounter()  # counts the graphs dynamo hands to the backend (no code generation: fast)
    compiled = torch.compile(model, backend=counter, dynamic=True, fullgraph=True)
    g = torch.Generator().manual_seed(0)
    for sizes in SIZES:
        args = _batch(cfg, sizes, g)
        if name == "radius":  # neighbour lists of random size, not fully connected
            args["edge_index"] = radius_graph(args["pos"], 1.5)
        eager, comp = model(**args), compiled(**args)
        for a, b in zip(eager, comp):
            if a is not None:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert counter.frame_count <= 2, f"{counter.frame_count} graphs compiled for {len(SIZES)} shapes"


def test_one_dynamic_graph_for_training_steps():
    torch._dynamo.reset()
    cfg = CONFIGS["nbody"]
    model = EGNN(hidden_channels=16, num_layers=2, **cfg)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for sizes in SIZES[:5]:
        args = _batch(cfg, sizes, g)
        opt.zero_grad()
        compiled(**args).pos.square().mean().backward()
        opt.step()
    assert counter.frame_count <= 2


# Inductor (C++ code generation) at 2 threads, where torch 2.13's CPU backend once corrupted the heap in the first
# compiled backward of a 2-layer EGNN (docs/compile_crash_repro.py): every configuration the experiments use trains
# compiled, forward and gradients equal to eager.
TRAIN_SIZES = [[9, 12, 17], [18, 5, 11, 20], [7] * 9]
INDUCTOR_CONFIGS = {
    "default": {"in_channels": 5},
    **CONFIGS,
}


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(INDUCTOR_CONFIGS))
def test_inductor_training_equals_eager_at_two_threads(name, two_threads):
    torch._dynamo.reset()
    cfg = INDUCTOR_CONFIGS[name]
    torch.manual_seed(0)
    model = EGNN(hidden_channels=16, num_layers=2, **cfg)
    compiled = torch.compile(model, dynamic=True)
    g = torch.Generator().manual_seed(2)
    for sizes in TRAIN_SIZES:
        args = _batch(cfg, sizes, g)
        if name == "radius":
            args["edge_index"] = radius_graph(args["pos"], 1.5)
        grads = []
        outs = []
        for fn in (model, compiled):
            model.zero_grad(set_to_none=True)
            out = fn(**args)
            loss = sum(o.square().sum() for o in out if o is not None)
            loss.backward()
            outs.append([o.detach() for o in out if o is not None])
            grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        for a, b in zip(*outs):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        assert grads[0].keys() == grads[1].keys() and grads[0]
        for k in grads[0]:
            torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-5, rtol=1e-5, msg=f"{name}: grad of {k}")


def test_batch_without_num_graphs_is_one_graph():
    """Called as the layer example calls it (``batch=`` and no ``num_graphs=``), the compiled model is one graph
    without breaks: the graph count is read before tracing starts (``egnn.nn.egnn.count_graphs``; with
    ``fullgraph=True`` pass ``num_graphs``)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = EGNN(in_channels=4, hidden_channels=16, num_layers=2, normalize=True, tanh=True, graph_out_channels=1)
    g = torch.Generator().manual_seed(2)

    def args(sizes):
        n = sum(sizes)
        pos = torch.randn(n, 3, generator=g)
        batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
        return {"h": torch.randn(n, 4, generator=g), "pos": pos, "edge_index": radius_graph(pos, 1.5, batch=batch),
                "batch": batch}

    explained = torch._dynamo.explain(model)(**args([7, 9]))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=True)
    for sizes in ([7, 9], [5, 6, 8], [4, 4, 4, 9], [12, 3]):
        a = args(sizes)
        out, ref = compiled(**a), model(**a)
        assert out.graph.shape == (len(sizes), 1)
        torch.testing.assert_close(out.graph, ref.graph, atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1, f"{counter.frame_count} graphs"
