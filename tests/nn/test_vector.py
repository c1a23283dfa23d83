import pytest
import torch

from egnn.nn import VectorEGCL
from egnn.ops import fully_connected_edges, scatter_sum
from egnn.testing import assert_equivariant

DIMS = [2, 3, 4, 7]
OPTIONS = {
    "plain": {},
    "no_attention": {"attention": False},
    "edge_attr": {"edge_dim": 2},
    "node_attr": {"node_attr_dim": 3},
    "relu": {"act": "relu"},
}
K = 3


def graph(dim, dtype, sizes=(5, 3, 6), seed=0, edge_dim=0, node_attr_dim=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    edge_index = fully_connected_edges(list(sizes))
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    inputs = {"h": rand(n, 6), "pos": rand(n, dim), "vel": rand(n, dim), "edge_index": edge_index, "batch": batch,
              "edge_weight": rand(edge_index.shape[1], 1).abs()}
    if edge_dim:
        inputs["edge_attr"] = rand(edge_index.shape[1], edge_dim)
    if node_attr_dim:
        inputs["node_attr"] = rand(n, node_attr_dim)
    return inputs


def layer_fn(layers, first_vec_none):
    """Two layers in a row; the input channels are built from ``vel`` and the positions about each graph's centroid,
    so that both are rotated by ``assert_equivariant``. Returns ``h`` and each output channel as a vector."""
    coef = torch.linspace(-1.0, 1.5, 2 * K, dtype=torch.float64)

    def fn(h, pos, vel, edge_index, batch, edge_weight, edge_attr=None, node_attr=None):
        num = int(batch.max()) + 1
        count = scatter_sum(torch.ones_like(pos[:, :1]), batch, num)
        rel = pos - (scatter_sum(pos, batch, num) / count).index_select(0, batch)
        c = coef.to(pos.dtype)
        vec = None if first_vec_none else vel.unsqueeze(-1) * c[:K] + rel.unsqueeze(-1) * c[K:]
        for layer in layers:
            h, vec = layer(h, vec, pos, edge_index, edge_attr, edge_weight, node_attr)
        return {"h": h, **{f"v{k}": vec[..., k] for k in range(K)}}

    return fn


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("first_vec_none", [True, False], ids=["from_zero", "given"])
def test_vector_layer_equivariance(name, dim, first_vec_none, dtype):
    opts = OPTIONS[name]
    torch.manual_seed(0)
    layers = [VectorEGCL(6, 16, K, vector_scale=0.5, **opts).to(dtype) for _ in range(2)]
    inputs = graph(dim, dtype, edge_dim=opts.get("edge_dim", 0), node_attr_dim=opts.get("node_attr_dim", 0))
    types = {"h": "scalar", **{f"v{k}": "vector" for k in range(K)}}
    errors = assert_equivariant(layer_fn(layers, first_vec_none), inputs, types, trials=4)
    assert set(errors) == set(types)
    out = layer_fn(layers, first_vec_none)(**inputs)
    assert all(out[f"v{k}"].abs().max() > 1e-3 for k in range(K))  # the channels really carry vectors


def test_helper_sees_a_broken_vector_layer():
    """A layer that uses a raw coordinate in a message is caught (the check can fail)."""

    class Broken(VectorEGCL):
        def propagate(self, h, vec, pos, *args, **kwargs):
            h, vec = super().propagate(h, vec, pos, *args, **kwargs)
            return h + pos[:, :1], vec

    torch.manual_seed(0)
    inputs = graph(3, torch.float64)
    with pytest.raises(AssertionError):
        assert_equivariant(layer_fn([Broken(6, 16, K).double()], True), inputs,
                           {"h": "scalar", **{f"v{k}": "vector" for k in range(K)}})


def test_zero_edge_weight_is_no_edge():
    """With weight 0 an edge adds nothing (the cut-off envelope's zero): the same as deleting it."""
    torch.manual_seed(0)
    layer = VectorEGCL(6, 16, K).double()
    inputs = graph(3, torch.float64, sizes=(4,))
    h, pos, ei = inputs["h"], inputs["pos"], inputs["edge_index"]
    vec = torch.randn(4, 3, K, dtype=torch.float64)
    weight = torch.ones(ei.shape[1], 1, dtype=torch.float64)
    weight[0] = 0.0
    full = layer(h, vec, pos, ei, edge_weight=weight)
    cut = layer(h, vec, pos, ei[:, 1:], edge_weight=weight[1:])
    for a, b in zip(full, cut):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_bad_inputs_name_the_argument():
    layer = VectorEGCL(6, 16, K)
    inputs = graph(3, torch.float32, sizes=(4,))
    h, pos, ei = inputs["h"], inputs["pos"], inputs["edge_index"]
    with pytest.raises(ValueError, match="h must have shape"):
        layer(h[:, :5], None, pos, ei)
    with pytest.raises(ValueError, match="vec must have shape"):
        layer(h, torch.zeros(4, 3, K + 1), pos, ei)
    with pytest.raises(ValueError, match=r"edge_index values must be in \[0, num_nodes=4\)"):
        layer(h, None, pos, ei + 1)
    with pytest.raises(ValueError, match="edge_attr given but the module was built with edge_dim=0"):
        layer(h, None, pos, ei, edge_attr=torch.zeros(ei.shape[1], 2))
    with pytest.raises(ValueError, match="vector channels must be positive"):
        VectorEGCL(6, 16, 0)
