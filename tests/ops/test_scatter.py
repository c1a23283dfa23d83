import torch

from egnn.ops import scatter_count, scatter_mean, scatter_sum


def test_scatter_sum_and_mean_match_loops():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(20, 3, generator=g, dtype=torch.float64)
    index = torch.randint(0, 6, (20,), generator=g)
    dim_size = 8  # rows 6 and 7 are always empty
    s = scatter_sum(src, index, dim_size)
    m = scatter_mean(src, index, dim_size)
    for k in range(dim_size):
        rows = src[index == k]
        assert torch.allclose(s[k], rows.sum(0))
        expected = rows.mean(0) if len(rows) else torch.zeros(3, dtype=torch.float64)
        assert torch.allclose(m[k], expected)
    assert scatter_count(index, dim_size).tolist() == [float((index == k).sum()) for k in range(dim_size)]


def test_scatter_sum_gradient():
    src = torch.randn(5, 2, requires_grad=True)
    index = torch.tensor([0, 0, 1, 1, 1])
    scatter_sum(src, index, 2).sum().backward()
    assert torch.equal(src.grad, torch.ones(5, 2))
