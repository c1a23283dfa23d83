"""The non-equivariant GCL: permutation equivariance, its equations, checkpoint key names."""

import pytest
import torch

from egnn.nn import GCL
from egnn.ops import radius_graph
from egnn.testing import assert_equivariant
from tests.nn.layer_checks import assert_seeded_reset_redraws_init, random_graph


@pytest.mark.parametrize(
    "opts",
    [{}, {"edge_dim": 2}, {"residual": False, "out_channels": 4}, {"act": "relu", "edge_dim": 1}],
    ids=["plain", "edge_attr", "no_residual", "relu"],
)
def test_permutation_equivariant(opts: dict, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = GCL(6, 16, **opts).to(dtype)
    inputs = random_graph(dtype, h=6, edge_attr=opts.get("edge_dim", 0))
    pos = torch.zeros(inputs["h"].shape[0], 3, dtype=dtype)  # assert_equivariant permutes along pos's nodes
    out = layer(**inputs)
    assert out.shape == (pos.shape[0], opts.get("out_channels", 6))

    def fn(pos: torch.Tensor, **kw) -> torch.Tensor:
        return layer(**kw)

    assert_equivariant(fn, {"pos": pos, **inputs}, {"out0": "scalar"}, rotate=False, reflect=False,
                       translate=False, trials=3)


def test_permutation_of_a_sparse_graph(dtype: torch.dtype) -> None:
    """Nodes of unequal degree (radius graph): the sum aggregation must follow the relabelling."""
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(12, 3, generator=g, dtype=torch.float64).to(dtype)
    h = torch.randn(12, 5, generator=g, dtype=torch.float64).to(dtype)
    torch.manual_seed(1)
    layer = GCL(5, 8).to(dtype)
    assert_equivariant(lambda pos, h, edge_index: layer(h, edge_index),
                       {"pos": pos, "h": h, "edge_index": radius_graph(pos, 1.5)}, {"out0": "scalar"},
                       rotate=False, reflect=False, translate=False, trials=3)


def test_equations_node_by_node() -> None:
    """The layer equals eq. (2) written out per node with its own MLPs (targets at edge_index[1])."""
    torch.manual_seed(2)
    layer = GCL(3, 8, edge_dim=2, residual=True).double()
    edge_index = torch.tensor([[0, 1, 2, 2, 3], [1, 0, 0, 1, 1]])  # node 3 only sends, node 2 receives nothing
    h = torch.randn(4, 3, dtype=torch.float64)
    a = torch.randn(5, 2, dtype=torch.float64)
    out = layer(h, edge_index, a)
    for i in range(4):
        m_i = torch.zeros(8, dtype=torch.float64)
        for e in range(5):
            j, t = edge_index[:, e].tolist()
            if t == i:
                m_i = m_i + layer.edge_mlp(torch.cat([h[i], h[j], a[e]]))
        torch.testing.assert_close(out[i], h[i] + layer.node_mlp(torch.cat([h[i], m_i])))


def test_state_dict_keys_and_reset() -> None:
    """Key names are those of the checkpoints written before the layer moved here; a seeded reset redraws the
    seeded constructor's weights."""
    layer = assert_seeded_reset_redraws_init(lambda: GCL(4, 8, out_channels=4, edge_dim=1), seed=3)
    assert list(layer.state_dict()) == [f"{mlp}.{i}.{p}" for mlp in ("edge_mlp", "node_mlp") for i in (0, 2)
                                        for p in ("weight", "bias")]


def test_bad_sizes_rejected() -> None:
    with pytest.raises(ValueError, match="residual needs"):
        GCL(4, 8, out_channels=5)
    with pytest.raises(ValueError, match="channel sizes"):
        GCL(0, 8)
    with pytest.raises(ValueError, match="edge_dim"):
        GCL(4, 8, edge_dim=-1)
