"""The Radial Field layer: E(n) equivariance, its equations, checkpoint key names."""

import pytest
import torch

from egnn.nn import RadialFieldLayer
from egnn.ops import radius_graph
from egnn.testing import assert_equivariant
from tests.nn.layer_checks import assert_seeded_reset_redraws_init, random_graph

OPTIONS = {
    "plain": {},
    "edge_attr": {"edge_dim": 2},
    "tanh": {"tanh": True},
    "velocity": {"velocity": True, "tanh": True, "edge_dim": 2},  # the N-body baseline's layer
    "clamp_eps": {"clamp": 100.0, "dist_eps": 1e-12, "edge_dim": 1},  # the autoencoder's layer
    "relu": {"act": "relu"},
}


def make_layer(dtype: torch.dtype, seed: int = 0, **opts) -> RadialFieldLayer:
    torch.manual_seed(seed)
    layer = RadialFieldLayer(16, **opts).to(dtype)
    # the near-zero start of phi's last map would hide the coordinate update (and its errors)
    torch.nn.init.normal_(layer.phi[2].weight, std=0.5)
    return layer


@pytest.mark.parametrize("dim", [2, 3, 5])
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_equivariant(name: str, dim: int, dtype: torch.dtype) -> None:
    opts = OPTIONS[name]
    layer = make_layer(dtype, **opts)
    vel_dim = dim if opts.get("velocity") else 0
    inputs = random_graph(dtype, seed=dim, pos=dim, edge_attr=opts.get("edge_dim", 0), vel=vel_dim)
    assert_equivariant(layer, inputs, {"out0": "position"}, trials=2)
    assert (layer(**inputs) - inputs["pos"]).abs().max() > 1e-3  # the coordinate path is really exercised


def test_equivariant_on_a_sparse_graph_with_shared_count() -> None:
    g = torch.Generator().manual_seed(4)
    pos = torch.randn(12, 3, generator=g, dtype=torch.float64)
    layer = make_layer(torch.float64, velocity=True)
    edge_index = radius_graph(pos, 1.5)
    count = torch.bincount(edge_index[1], minlength=12).double()  # in-degree: invariant under E(n), not under P

    def fn(pos, vel, edge_index):
        deg = torch.bincount(edge_index[1], minlength=pos.shape[0]).to(pos.dtype)
        return layer(pos, edge_index, vel=vel, count=deg)

    inputs = {"pos": pos, "vel": torch.randn(12, 3, generator=g, dtype=torch.float64), "edge_index": edge_index}
    assert_equivariant(fn, inputs, {"out0": "position"}, trials=3)
    torch.testing.assert_close(layer(pos, edge_index, vel=inputs["vel"], count=count),
                               layer(pos, edge_index, vel=inputs["vel"]))


def test_equations_node_by_node() -> None:
    """Mean over incoming edges of (x_i - x_j) phi(|x_i - x_j|, a_ij), plus v_i phi_v(|v_i|)."""
    layer = make_layer(torch.float64, seed=5, edge_dim=1, velocity=True, tanh=True)
    edge_index = torch.tensor([[0, 1, 2, 2, 3], [1, 0, 0, 1, 1]])  # node 2 and 3 receive nothing
    g = torch.Generator().manual_seed(5)
    pos, vel = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    a = torch.randn(5, 1, generator=g, dtype=torch.float64)
    out = layer(pos, edge_index, a, vel=vel)
    for i in range(4):
        msgs = []
        for e in range(5):
            j, t = edge_index[:, e].tolist()
            if t == i:
                d = pos[i] - pos[j]
                msgs.append(d * torch.tanh(layer.phi[:3](torch.cat([d.norm().view(1), a[e]]))))
        shift = torch.stack(msgs).mean(0) if msgs else torch.zeros(3, dtype=torch.float64)
        expected = pos[i] + shift + vel[i] * layer.phi_v(vel[i].norm().view(1))
        torch.testing.assert_close(out[i], expected)


def test_clamp_bounds_each_message() -> None:
    layer = make_layer(torch.float64, clamp=0.01)
    pos = torch.tensor([[0.0, 0.0], [50.0, 0.0]], dtype=torch.float64)
    edge_index = torch.tensor([[1], [0]])
    out = layer(pos, edge_index)
    assert (out[0] - pos[0]).abs().max() <= 0.01
    assert torch.equal(out[1], pos[1])


def test_active_clamp_keeps_translations_and_permutations_only() -> None:
    """The clamp acts per component (as the reference's): once it bites, rotations no longer commute."""
    layer = make_layer(torch.float64, clamp=0.05)
    inputs = random_graph(torch.float64, pos=3)
    assert_equivariant(layer, inputs, {"out0": "position"}, rotate=False, reflect=False, trials=2)
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(layer, inputs, {"out0": "position"}, translate=False, permute=False, trials=2)


def test_state_dict_keys_and_reset() -> None:
    """Key names are those of the checkpoints written before the layer moved here; a seeded reset redraws the
    seeded constructor's weights (including the small-gain start of phi's last map)."""
    layer = assert_seeded_reset_redraws_init(lambda: RadialFieldLayer(8, edge_dim=2, tanh=True, velocity=True), 6)
    assert list(layer.state_dict()) == ["phi.0.weight", "phi.0.bias", "phi.2.weight", "phi_v.0.weight",
                                        "phi_v.0.bias", "phi_v.2.weight", "phi_v.2.bias"]
    assert list(RadialFieldLayer(8, edge_dim=1).state_dict()) == ["phi.0.weight", "phi.0.bias", "phi.2.weight"]
    assert layer.phi[2].weight.abs().max() < 1e-3


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ValueError, match="needs vel"):
        RadialFieldLayer(4, velocity=True)(torch.zeros(2, 3), torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="clamp"):
        RadialFieldLayer(4, clamp=0.0)
    with pytest.raises(ValueError, match="dist_eps"):
        RadialFieldLayer(4, dist_eps=-1.0)
    with pytest.raises(ValueError, match="hidden_channels"):
        RadialFieldLayer(0)
