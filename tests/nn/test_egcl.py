import copy
import math

import pytest
import torch

from egnn.nn import EGCL, EGCLVel
from egnn.ops import fully_connected_edges, radius_graph, sizes_to_batch
from egnn.testing import assert_equivariant

DIMS = [2, 3, 4, 7]
# every option alone and combined; each entry is EGCL keyword arguments
OPTIONS = {
    "plain": {},
    "no_residual": {"residual": False},
    "attention": {"attention": True},
    "normalize": {"normalize": True},
    "tanh": {"tanh": True, "coords_range": 3.0},
    "sum_agg": {"coord_agg": "sum"},
    "invariant": {"update_coords": False},
    "edge_attr": {"edge_dim": 2},
    "node_attr": {"node_attr_dim": 3},
    "concat_form": {"fast": False},
    "chunked": {"chunk_size": 5},
    "relu": {"act": "relu"},
    "combined": {"attention": True, "normalize": True, "tanh": True, "coord_agg": "sum", "edge_dim": 2,
                 "node_attr_dim": 3, "chunk_size": 7},
}


def make_inputs(dim, dtype, edge_dim=0, node_attr_dim=0, vel=False, sizes=(5, 3, 6), seed=0, feat=6):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    edge_index = fully_connected_edges(list(sizes))
    inputs = {
        "h": torch.randn(n, feat, generator=g, dtype=torch.float64).to(dtype),
        "pos": torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype),
        "edge_index": edge_index,
    }
    if edge_dim:
        inputs["edge_attr"] = torch.randn(edge_index.shape[1], edge_dim, generator=g, dtype=torch.float64).to(dtype)
    if node_attr_dim:
        inputs["node_attr"] = torch.randn(n, node_attr_dim, generator=g, dtype=torch.float64).to(dtype)
    if vel:
        inputs["vel"] = torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype)
    return inputs


def make_layer(cls, dtype, seed=0, **opts):
    torch.manual_seed(seed)
    layer = cls(6, 16, **opts).to(dtype)
    if layer.coord_mlp is not None:
        # the paper's near-zero start would make coordinate updates (and their errors) invisible
        torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.5)
    return layer


# the velocity layer always updates coordinates (its invariant variant is rejected: test_velocity_layer_options)
LAYER_CASES = [(cls, name) for cls in (EGCL, EGCLVel) for name in sorted(OPTIONS)
               if not (cls is EGCLVel and name == "invariant")]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize(("cls", "name"), LAYER_CASES, ids=[f"{c.__name__}-{n}" for c, n in LAYER_CASES])
def test_layer_equivariance(cls, name, dim, dtype):
    opts = OPTIONS[name]
    layer = make_layer(cls, dtype, **opts)
    inputs = make_inputs(dim, dtype, opts.get("edge_dim", 0), opts.get("node_attr_dim", 0), vel=cls is EGCLVel)
    errors = assert_equivariant(layer, inputs, trials=2)
    out = layer(**inputs)
    moved = (out[1] - inputs["pos"]).abs().max()
    if opts.get("update_coords", True):
        assert moved > 1e-3  # the coordinate path is really exercised
    else:
        assert moved == 0
    assert max(errors.values()) <= (1e-10 if dtype == torch.float64 else 1e-4)


def test_velocity_layer_options():
    with pytest.raises(ValueError, match="update_coords"):
        EGCLVel(4, 8, update_coords=False)


def test_helper_detects_broken_equivariance():
    class Broken(EGCL):
        def forward(self, h, pos, edge_index, **kw):
            h, pos = super().forward(h, pos, edge_index, **kw)
            return h + pos[:, :1], pos  # features depend on an absolute coordinate

    layer = make_layer(Broken, torch.float64)
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(layer, make_inputs(3, torch.float64))
    # and a layer that ignores the translation of its positions
    layer2 = make_layer(EGCL, torch.float64)

    def untranslated(**inputs):
        h, pos = layer2(**inputs)
        return h, pos - pos.mean(0)

    with pytest.raises(AssertionError, match="out1"):
        assert_equivariant(untranslated, make_inputs(3, torch.float64))
    assert_equivariant(untranslated, make_inputs(3, torch.float64), translate=False)


def silu(v):
    return v / (1.0 + math.exp(-v))


def test_known_answer_three_nodes():
    """One EGCL with fixed weights on a 3-node graph equals eqs. (3)-(6) worked out by hand."""
    layer = EGCL(1, 2, coord_agg="sum", residual=True).double()
    w = {
        "e1_w": [[0.1, -0.2, 0.3], [0.4, 0.5, -0.6]], "e1_b": [0.05, -0.05],   # phi_e layer 1 on [h_i, h_j, r]
        "e2_w": [[0.7, -0.1], [0.2, 0.3]], "e2_b": [0.0, 0.1],                # phi_e layer 2
        "x1_w": [[0.5, -0.4], [0.3, 0.2]], "x1_b": [0.1, 0.0], "x2_w": [[0.6, -0.7]],  # phi_x
        "n1_w": [[0.2, 0.1, -0.3], [-0.5, 0.4, 0.6]], "n1_b": [0.0, 0.2],     # phi_h layer 1 on [h_i, m_i]
        "n2_w": [[0.8, -0.9]], "n2_b": [0.3],
    }
    mods = {"e1": layer.edge_mlp[0], "e2": layer.edge_mlp[1], "x1": layer.coord_mlp[0], "x2": layer.coord_mlp[1],
            "n1": layer.node_mlp[0], "n2": layer.node_mlp[1]}
    with torch.no_grad():
        for name, mod in mods.items():
            mod.weight.copy_(torch.tensor(w[f"{name}_w"], dtype=torch.float64))
            if mod.bias is not None:
                mod.bias.copy_(torch.tensor(w[f"{name}_b"], dtype=torch.float64))
    h = [1.0, 2.0, -1.0]
    x = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
    edge_index = torch.tensor([[1, 2, 0, 2, 0, 1], [0, 0, 1, 1, 2, 2]])  # j -> i

    def lin(wk, bk, v):
        return [sum(a * b for a, b in zip(row, v)) + (w[bk][k] if bk else 0.0) for k, row in enumerate(w[wk])]

    h_new, x_new = [], []
    for i in range(3):
        m_sum = [0.0, 0.0]
        shift = [0.0, 0.0]
        for j in range(3):
            if j == i:
                continue
            d = [x[i][0] - x[j][0], x[i][1] - x[j][1]]
            r = d[0] ** 2 + d[1] ** 2
            m = [silu(v) for v in lin("e2_w", "e2_b", [silu(v) for v in lin("e1_w", "e1_b", [h[i], h[j], r])])]
            phi_x = lin("x2_w", None, [silu(v) for v in lin("x1_w", "x1_b", m)])[0]
            shift = [shift[0] + d[0] * phi_x, shift[1] + d[1] * phi_x]
            m_sum = [m_sum[0] + m[0], m_sum[1] + m[1]]
        x_new.append([x[i][0] + shift[0], x[i][1] + shift[1]])
        h_new.append(h[i] + lin("n2_w", "n2_b", [silu(v) for v in lin("n1_w", "n1_b", [h[i], *m_sum])])[0])

    for fast in (True, False):
        layer.fast = fast
        out_h, out_x = layer(torch.tensor(h).double()[:, None], torch.tensor(x).double(), edge_index)
        assert torch.allclose(out_h[:, 0], torch.tensor(h_new, dtype=torch.float64), atol=1e-12, rtol=0)
        assert torch.allclose(out_x, torch.tensor(x_new, dtype=torch.float64), atol=1e-12, rtol=0)
    # with mean aggregation the coordinate shift is divided by the in-degree (2)
    layer.coord_agg = "mean"
    _, out_x = layer(torch.tensor(h).double()[:, None], torch.tensor(x).double(), edge_index)
    expected = [[x[i][k] + (x_new[i][k] - x[i][k]) / 2 for k in range(2)] for i in range(3)]
    assert torch.allclose(out_x, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("opts", [{}, {"attention": True, "edge_dim": 2, "node_attr_dim": 3}])
def test_fast_path_equals_concatenated_form(opts):
    inputs = make_inputs(3, torch.float64, opts.get("edge_dim", 0), opts.get("node_attr_dim", 0), vel=True)
    fast = make_layer(EGCLVel, torch.float64, fast=True, **opts)
    concat = copy.deepcopy(fast)
    concat.fast = False
    out_f, out_c = fast(**inputs), concat(**inputs)
    for a, b in zip(out_f, out_c):
        assert torch.allclose(a, b, atol=1e-13, rtol=0)
    # and the gradients agree
    sum(o.sum() for o in out_f).backward()
    sum(o.sum() for o in out_c).backward()
    for (name, p1), p2 in zip(fast.named_parameters(), concat.parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-12, rtol=0), name


def test_chunked_equals_unchunked_on_radius_graph():
    g = torch.Generator().manual_seed(3)
    pos = torch.rand(60, 3, generator=g, dtype=torch.float64)
    batch = sizes_to_batch([25, 35])
    edge_index = radius_graph(pos, 0.5, batch)
    h = torch.randn(60, 6, generator=g, dtype=torch.float64)
    full = make_layer(EGCL, torch.float64, attention=True)
    chunked = copy.deepcopy(full)
    chunked.chunk_size = 3
    a, b = full(h, pos, edge_index), chunked(h, pos, edge_index)
    assert torch.allclose(a[0], b[0], atol=1e-12, rtol=0) and torch.allclose(a[1], b[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("opts", [{}, {"normalize": True}, {"attention": True, "tanh": True}])
def test_coincident_nodes_finite_values_and_gradients(opts):
    layer = make_layer(EGCLVel, torch.float32, **opts)
    inputs = make_inputs(3, torch.float32, vel=True, sizes=(4,))
    pos = inputs["pos"].clone()
    pos[1] = pos[0]  # two nodes at the same point
    pos.requires_grad_(True)
    inputs["pos"] = pos
    out = layer(**inputs)
    assert all(torch.isfinite(o).all() for o in out)
    sum(o.pow(2).sum() for o in out).backward()
    assert torch.isfinite(pos.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_no_edges_leaves_coordinates():
    layer = make_layer(EGCL, torch.float64)
    inputs = make_inputs(3, torch.float64, sizes=(4,))
    inputs["edge_index"] = torch.empty(2, 0, dtype=torch.long)
    h, pos = layer(**inputs)
    assert torch.equal(pos, inputs["pos"]) and torch.isfinite(h).all()
    # an isolated node in a graph with edges keeps its position
    inputs["edge_index"] = torch.tensor([[0, 1], [1, 0]])
    _, pos = layer(**inputs)
    assert torch.equal(pos[2:], inputs["pos"][2:]) and not torch.equal(pos[:2], inputs["pos"][:2])


def test_state_dict_round_trip_and_deepcopy():
    layer = make_layer(EGCLVel, torch.float64, attention=True, edge_dim=2)
    inputs = make_inputs(3, torch.float64, edge_dim=2, vel=True)
    other = EGCLVel(6, 16, attention=True, edge_dim=2).double()
    other.load_state_dict(layer.state_dict())
    clone = copy.deepcopy(layer)
    for a, b, c in zip(layer(**inputs), other(**inputs), clone(**inputs)):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_reset_parameters_starts_coordinate_mlp_small():
    layer = EGCL(6, 64)
    bound = 0.001 * math.sqrt(6.0 / (64 + 1))  # Xavier-uniform bound with gain 0.001
    assert layer.coord_mlp[1].bias is None
    assert layer.coord_mlp[1].weight.abs().max() <= bound
