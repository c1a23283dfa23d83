from types import SimpleNamespace

import pytest
import torch

from egnn.ops import Graph, collate, fully_connected_edges


def make_graph(n, seed):
    g = torch.Generator().manual_seed(seed)
    ei = fully_connected_edges([n])
    return Graph(
        h=torch.randn(n, 2, generator=g),
        pos=torch.randn(n, 3, generator=g),
        edge_index=ei,
        edge_attr=torch.randn(ei.shape[1], 1, generator=g),
        vel=torch.randn(n, 3, generator=g),
        y=torch.randn(1, 1, generator=g),
    )


def test_collate_and_unbatch_round_trip():
    graphs = [make_graph(n, i) for i, n in enumerate([3, 1, 4])]
    b = collate(graphs)
    assert b.num_graphs == 3 and b.num_nodes == 8 and b.num_edges == 6 + 0 + 12
    assert b.batch.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert int(b.edge_index[:, 6:].min()) == 4  # third graph's edges offset by 3 + 1
    for orig, back in zip(graphs, b.unbatch()):
        for name in ("h", "pos", "edge_index", "edge_attr", "vel", "y"):
            assert torch.equal(getattr(orig, name), getattr(back, name)), name


def test_collate_rejects_mixed_optional_fields():
    a, b = make_graph(3, 0), make_graph(2, 1)
    b.vel = None
    with pytest.raises(ValueError, match="vel is set on some graphs"):
        collate([a, b])
    with pytest.raises(ValueError, match="non-empty"):
        collate([])


def test_to_casts_floats_only():
    b = collate([make_graph(3, 0)]).to("cpu", torch.float64)
    assert b.pos.dtype == torch.float64 and b.edge_index.dtype == torch.long and b.batch.dtype == torch.long


def test_from_pyg_like_object():
    # duck-typed stand-in for torch_geometric.data.Batch (torch_geometric is optional)
    data = SimpleNamespace(
        x=torch.ones(4, 2), pos=torch.zeros(4, 3), edge_index=torch.tensor([[0, 1], [1, 0]]),
        edge_attr=None, batch=torch.tensor([0, 0, 1, 1]), num_graphs=2, y=None,
    )
    g = Graph.from_pyg(data)
    assert g.num_graphs == 2 and g.num_nodes == 4 and g.vel is None
    assert torch.equal(g.edge_index, data.edge_index)


def test_budget_starts_cut_contiguous_batches_by_count_and_size():
    from egnn.ops.batch import budget_starts

    assert budget_starts([3, 3, 3, 3, 3], 2, None) == [0, 2, 4]  # frames only
    assert budget_starts([3, 3, 3, 3, 3], 10, 7) == [0, 2, 4]  # 3 + 3 <= 7 < 3 + 3 + 3
    assert budget_starts([9, 1, 1, 8, 1], 10, 7) == [0, 1, 3, 4]  # a sample above the budget sits alone
    assert budget_starts([1, 1, 1, 1], 3, 100) == [0, 3]
    assert budget_starts([], 4, 10) == []
