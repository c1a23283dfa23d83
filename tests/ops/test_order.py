import pytest
import torch

from egnn.nn import EGNN
from egnn.ops import locality_order, radius_graph
from egnn.ops.order import _spread3


def test_spread_bits_by_brute_force():
    v = torch.tensor([0, 1, 2, 3, 5, 0x1FFFFF, 123456], dtype=torch.long)
    expected = [sum(((int(x) >> b) & 1) << (3 * b) for b in range(21)) for x in v]
    assert _spread3(v).tolist() == expected


def test_a_permutation_that_groups_nearby_points():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(20000, 3, generator=g)
    perm = locality_order(pos)
    assert torch.equal(torch.sort(perm).values, torch.arange(20000))
    edges = radius_graph(pos, 0.03)
    ordered = radius_graph(pos[perm], 0.03)
    assert ordered.shape == edges.shape  # same graph, renumbered
    spread = (edges[0] - edges[1]).abs().double().median()
    spread_ordered = (ordered[0] - ordered[1]).abs().double().median()
    assert spread_ordered < spread / 20  # neighbours are close in memory


def test_model_output_does_not_depend_on_the_order():
    g = torch.Generator().manual_seed(1)
    pos = torch.rand(3000, 3, generator=g, dtype=torch.float64)
    h = torch.randn(3000, 4, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = EGNN(4, 16, 2, chunk_size=1000).double()
    out = model(h, pos, radius_graph(pos, 0.12))
    perm = locality_order(pos)
    out_sorted = model(h[perm], pos[perm], radius_graph(pos[perm], 0.12))
    inv = torch.argsort(perm)
    torch.testing.assert_close(out_sorted.pos[inv], out.pos, rtol=0, atol=1e-12)
    torch.testing.assert_close(out_sorted.h[inv], out.h, rtol=0, atol=1e-12)


def test_edge_cases_and_errors():
    assert locality_order(torch.zeros(0, 3)).numel() == 0
    assert locality_order(torch.ones(5, 3)).tolist() == [0, 1, 2, 3, 4]  # degenerate box: stable
    assert locality_order(torch.rand(7, 2)).shape == (7,)  # 2-D points
    assert locality_order(torch.rand(7, 5)).shape == (7,)  # extra axes ignored
    with pytest.raises(ValueError, match="bits"):
        locality_order(torch.rand(4, 3), bits=30)
    with pytest.raises(ValueError, match="NaN"):
        locality_order(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        locality_order(torch.rand(4))
