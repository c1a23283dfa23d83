"""Library contract of EGCL / EGNN: initialisation, argument validation, names, the reference normalisation."""

import inspect
import sys
from pathlib import Path

import pytest
import torch

from egnn.nn import EGCL, EGNN, EGCLVel, EGNNConfig
from egnn.ops import fully_connected_edges

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import reference_code  # noqa: E402

XAVIER_001 = 0.001 * (6 / (16 + 1)) ** 0.5  # bound of phi_x's last weight (gain 0.001, fan 16 -> 1)


def test_reset_parameters_keeps_small_phi_x_init():
    torch.manual_seed(0)
    model = EGNN(3, 16, 2, velocity=True, out_channels=2, graph_out_channels=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in model.layers:
        assert layer.coord_mlp[1].weight.abs().max() <= XAVIER_001
    model.reset_parameters()
    for layer in model.layers:
        assert layer.coord_mlp[1].weight.abs().max() <= XAVIER_001
    # every parameter was re-drawn (the heads and the velocity MLP included)
    for k, v in model.state_dict().items():
        assert not torch.equal(v, before[k]), k


def test_layer_reset_parameters_is_authoritative():
    layer = EGCLVel(4, 16)
    for p in layer.parameters():
        torch.nn.init.constant_(p, 3.0)
    layer.reset_parameters()
    assert layer.coord_mlp[1].weight.abs().max() <= XAVIER_001
    assert all(p.abs().max() < 3.0 for p in layer.parameters())


def test_num_graphs_without_batch():
    model = EGNN(2, 8, 1, graph_out_channels=1)
    ei = fully_connected_edges([5])
    h, pos = torch.randn(5, 2), torch.randn(5, 3)
    with pytest.raises(ValueError, match="num_graphs=3 needs batch"):
        model(h, pos, ei, num_graphs=3)
    assert model(h, pos, ei, num_graphs=1).graph.shape == (1, 1)
    assert model(h, pos, ei).graph.shape == (1, 1)


@pytest.mark.parametrize("cls", [EGCL, EGNN])
def test_bad_hyper_parameters(cls):
    with pytest.raises(ValueError, match="norm_eps must be > 0"):
        cls(2, 8, normalize=True, norm_eps=0.0)
    with pytest.raises(ValueError, match="norm_eps must be > 0"):
        cls(2, 8, normalize="reference", norm_eps=-1e-3)
    with pytest.raises(ValueError, match="coords_range must be > 0"):
        cls(2, 8, tanh=True, coords_range=-1.0)
    with pytest.raises(ValueError, match="normalize must be"):
        cls(2, 8, normalize="yes")


def test_explicit_signature_and_one_naming_scheme():
    sig = inspect.signature(EGNN)
    assert all(p.kind != p.VAR_KEYWORD for p in sig.parameters.values())
    with pytest.raises(TypeError):
        EGNN(2, 8, 1, hidden_nf=8)  # old names are not silently accepted by the constructor
    layer_names = set(inspect.signature(EGCL).parameters)
    for shared in ("in_channels", "hidden_channels", "out_channels", "edge_dim", "act", "residual", "attention",
                   "normalize", "tanh", "coords_range", "coord_agg", "update_coords", "norm_eps", "fast",
                   "chunk_size", "checkpoint_chunks"):
        assert shared in layer_names and shared in sig.parameters, shared


def test_old_config_names_still_load():
    old = {"in_node_nf": 3, "hidden_nf": 8, "n_layers": 2, "in_edge_nf": 1, "out_node_nf": 4, "graph_out_nf": 1,
           "velocity": True}
    model = EGNN.from_config(old)
    c = model.config
    assert (c.in_channels, c.hidden_channels, c.num_layers, c.edge_dim, c.out_channels, c.graph_out_channels) == (
        3, 8, 2, 1, 4, 1)
    same = EGNN.from_config(c.to_dict())
    same.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="both"):
        EGNNConfig.from_dict({"in_node_nf": 3, "in_channels": 3})


def _pair_layer(normalize, dtype=torch.float64):
    torch.manual_seed(0)
    layer = EGCL(4, 16, normalize=normalize).to(dtype)
    torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.5)
    return layer


def test_reference_normalisation_formula():
    """``normalize="reference"``: x_i += mean_j (x_i - x_j) / (stop_grad(|x_i - x_j|) + eps) phi_x(m_ij)."""
    dtype = torch.float64
    layer = _pair_layer("reference")
    g = torch.Generator().manual_seed(1)
    h = torch.randn(4, 4, generator=g, dtype=dtype)
    pos = torch.randn(4, 3, generator=g, dtype=dtype)
    pos[3] = pos[2] + 1e-5  # a near-coincident pair, where the formulas differ most
    ei = fully_connected_edges([4])
    src, dst = ei
    pos.requires_grad_(True)
    _, out = layer(h, pos, ei)
    # by hand from the layer's own MLPs
    diff = pos[dst] - pos[src]
    radial = (diff * diff).sum(-1, keepdim=True)
    lin = layer.edge_mlp[0]
    e = torch.cat([h[dst], h[src], radial], -1) @ lin.weight.t() + lin.bias
    m = torch.nn.functional.silu(layer.edge_mlp[1](torch.nn.functional.silu(e)))
    phi = layer.coord_mlp[1](torch.nn.functional.silu(layer.coord_mlp[0](m)))
    trans = diff / (radial.sqrt().detach() + layer.norm_eps) * phi
    expected = pos + torch.zeros_like(pos).index_add(0, dst, trans) / 3
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    w = torch.randn(4, 3, generator=g, dtype=dtype)
    (g1,) = torch.autograd.grad((out * w).sum(), pos)
    (g2,) = torch.autograd.grad((expected * w).sum(), pos)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=1e-10)
    # ours (gradient through the norm) differs from it in the gradient, not much in the value at unit scale
    ours = _pair_layer(True)
    _, out_ours = ours(h, pos, ei)
    (g3,) = torch.autograd.grad((out_ours * w).sum(), pos)
    assert (g3 - g1).abs().max() > 1e-3


@pytest.mark.skipif(reference_code.reference_dir() is None, reason=reference_code.ABSENT_NOTE)
@pytest.mark.parametrize("normalize", ["reference", True])
@pytest.mark.parametrize("attention", [False, True])
def test_reference_normalisation_matches_reference_code(normalize, attention):
    clean = reference_code._import("models.egnn_clean.egnn_clean")
    dtype = torch.float64
    torch.manual_seed(0)
    ours = EGCL(4, 16, 4, edge_dim=2, normalize=normalize, attention=attention).to(dtype)
    torch.nn.init.normal_(ours.coord_mlp[1].weight, std=0.5)
    ref = clean.E_GCL(4, 4, 16, edges_in_d=2, normalize=True, attention=attention, coords_agg="mean").to(dtype)
    with torch.no_grad():
        for a, b in ((ref.edge_mlp[0], ours.edge_mlp[0]), (ref.edge_mlp[2], ours.edge_mlp[1]),
                     (ref.node_mlp[0], ours.node_mlp[0]), (ref.node_mlp[2], ours.node_mlp[1]),
                     (ref.coord_mlp[0], ours.coord_mlp[0]), (ref.coord_mlp[2], ours.coord_mlp[1])):
            a.weight.copy_(b.weight)
            if a.bias is not None:
                a.bias.copy_(b.bias)
        if attention:
            ref.att_mlp[0].weight.copy_(ours.att_mlp[0].weight)
            ref.att_mlp[0].bias.copy_(ours.att_mlp[0].bias)
    g = torch.Generator().manual_seed(2)
    ei = fully_connected_edges([6, 4])
    h = torch.randn(10, 4, generator=g, dtype=dtype)
    pos = torch.randn(10, 3, generator=g, dtype=dtype)
    pos[1] = pos[0] + 1e-4  # close pair: the gradient through the norm matters here
    attr = torch.randn(ei.shape[1], 2, generator=g, dtype=dtype)
    pos_a, pos_b = pos.clone().requires_grad_(True), pos.clone().requires_grad_(True)
    h_a, x_a = ours(h, pos_a, ei, attr)
    h_b, x_b, _ = ref(h, [ei[1], ei[0]], pos_b, attr)  # reference edges: [target, source]
    torch.testing.assert_close(h_a, h_b, atol=1e-10, rtol=1e-10)
    w = torch.randn(10, 3, generator=g, dtype=dtype)
    (ga,) = torch.autograd.grad((x_a * w).sum() + h_a.sum(), pos_a)
    (gb,) = torch.autograd.grad((x_b * w).sum() + h_b.sum(), pos_b)
    if normalize == "reference":
        torch.testing.assert_close(x_a, x_b, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(ga, gb, atol=1e-8, rtol=1e-8)
    else:  # the documented difference: gradients through the norm
        assert (ga - gb).abs().max() > 1e-3
