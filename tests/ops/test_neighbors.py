import pytest
import torch

from egnn.ops import fully_connected_edges, knn_graph, radius_graph, sizes_to_batch


def brute_force(pos, batch, r=None, k=None, loop=False):
    """Reference neighbour lists from the full distance matrix, sorted by (target, distance, source)."""
    n = pos.shape[0]
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    edges = []
    for i in range(n):
        cand = []
        for j in range(n):
            if batch[i] != batch[j] or (i == j and not loop):
                continue
            if r is not None and not d2[i, j] < r * r:
                continue
            cand.append((float(d2[i, j]), j))
        cand.sort()
        if k is not None:
            cand = cand[:k]
        edges += [(j, i) for _, j in cand]
    if not edges:
        return torch.empty(2, 0, dtype=torch.long)
    return torch.tensor(edges).t()


def test_fully_connected_edges():
    ei = fully_connected_edges([3, 1, 0, 2])
    expected = {(j, i) for i in range(3) for j in range(3) if i != j} | {(5, 4), (4, 5)}
    assert set(map(tuple, ei.t().tolist())) == expected
    assert ei.shape[1] == len(expected)
    assert fully_connected_edges([]).shape == (2, 0)


@pytest.mark.parametrize("method", ["kdtree", "blockwise"])
@pytest.mark.parametrize("dim", [2, 3, 5])
def test_radius_and_knn_equal_brute_force(method, dim):
    g = torch.Generator().manual_seed(dim)
    sizes = [1, 17, 40, 3]
    batch = sizes_to_batch(sizes)
    pos = torch.rand(sum(sizes), dim, generator=g, dtype=torch.float64)
    for k in (None, 4):
        got = radius_graph(pos, 0.45, batch, max_num_neighbors=k, method=method)
        assert torch.equal(got, brute_force(pos, batch, r=0.45, k=k))
    got = radius_graph(pos, 0.45, batch, max_num_neighbors=None, loop=True, method=method)
    assert torch.equal(got, brute_force(pos, batch, r=0.45, loop=True))
    for k in (1, 5, 50):  # 50 > every graph: all pairs
        assert torch.equal(knn_graph(pos, k, batch, method=method), brute_force(pos, batch, k=k))


def test_blockwise_small_blocks_equal(monkeypatch):
    import egnn.ops.neighbors as nb

    monkeypatch.setattr(nb, "_BLOCK_ELEMENTS", 37)  # force many tiny blocks
    g = torch.Generator().manual_seed(1)
    batch = sizes_to_batch([30, 25])
    pos = torch.rand(55, 3, generator=g)
    assert torch.equal(
        radius_graph(pos, 0.4, batch, 6, method="blockwise"), radius_graph(pos, 0.4, batch, 6, method="kdtree")
    )
    assert torch.equal(knn_graph(pos, 3, batch, method="blockwise"), knn_graph(pos, 3, batch, method="kdtree"))


def test_neighbour_search_rejects_bad_input():
    pos = torch.rand(5, 3)
    with pytest.raises(ValueError, match="r must be positive"):
        radius_graph(pos, 0.0)
    with pytest.raises(ValueError, match="k must be"):
        knn_graph(pos, 0)
    with pytest.raises(ValueError, match="batch must be sorted"):
        radius_graph(pos, 1.0, torch.tensor([0, 1, 0, 1, 1]))
    with pytest.raises(ValueError, match="batch must have shape"):
        radius_graph(pos, 1.0, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        radius_graph(torch.tensor([[0.0, float("nan"), 0.0]]), 1.0)
    with pytest.raises(ValueError, match="pos must have shape"):
        radius_graph(torch.rand(5), 1.0)



@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("cap", [1, 4, 32])
def test_kdtree_rowwise_order_equals_blockwise(loop, cap):
    """The k-d tree path orders each target's candidates by (distance, source) in its row and cuts at ``cap``:
    exactly the blockwise search's edges, on random points in three graphs and, where no tie straddles the
    cut, on grid points with many exactly equal distances (tie order by source)."""
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(300, 3, generator=gen) * 3
    batch = torch.cat([torch.zeros(100), torch.ones(150), torch.full((50,), 2)]).long()
    for r in (0.3, 0.8, 2.0):
        a = radius_graph(pos, r, batch, cap, loop=loop, method="kdtree")
        assert a.shape[1] > 0
        assert torch.equal(a, radius_graph(pos, r, batch, cap, loop=loop, method="blockwise"))
    assert torch.equal(knn_graph(pos, cap, batch, loop=loop, method="kdtree"),
                       knn_graph(pos, cap, batch, loop=loop, method="blockwise"))
    g = torch.arange(5.0)
    grid = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    gb = torch.cat([torch.zeros(125), torch.ones(125)]).long()
    grid = torch.cat([grid, grid + 0.25])  # second graph: the same grid, shifted
    for r in (1.01, 1.5):  # at most 6 / 18 neighbours: no cut when cap = 32
        if cap == 32:
            a = radius_graph(grid, r, gb, cap, loop=loop, method="kdtree")
            assert torch.equal(a, radius_graph(grid, r, gb, cap, loop=loop, method="blockwise"))
