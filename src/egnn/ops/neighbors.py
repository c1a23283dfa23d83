"""Edge construction for batches of graphs: fully connected, radius and k-nearest-neighbour graphs.

Edge convention (used throughout the library): ``edge_index[0]`` is the source node ``j``, ``edge_index[1]``
the target node ``i``; messages ``j -> i`` aggregate at ``edge_index[1]``.

Graphs in a batch are contiguous: ``batch`` is sorted (``[0, 0, 0, 1, 1, ...]``). Neighbour searches never
allocate ``O(N^2)`` memory: on the CPU they use ``scipy.spatial.cKDTree``; elsewhere (or with
``method="blockwise"``) a blockwise exact distance computation restricted to each graph's own nodes.
Both return edges sorted by target, then by distance, then by source index, so they agree exactly with
brute force.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Elements of the block distance matrix computed at once by the blockwise search (about 64 MB in float32).
_BLOCK_ELEMENTS = 1 << 24


def _check_batch(pos: Tensor, batch: Tensor | None) -> Tensor:
    if pos.dim() != 2:
        raise ValueError(f"pos must have shape [num_nodes, dim], got {tuple(pos.shape)}")
    if batch is None:
        return torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    if batch.dim() != 1 or batch.shape[0] != pos.shape[0]:
        raise ValueError(f"batch must have shape [num_nodes={pos.shape[0]}], got {tuple(batch.shape)}")
    if batch.dtype.is_floating_point or batch.dtype == torch.bool:
        raise ValueError(f"batch must be an integer tensor, got {batch.dtype}")
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be sorted (nodes of each graph contiguous)")
    if batch.numel() and int(batch[0]) < 0:
        raise ValueError("batch must be non-negative")
    return batch.long()


def sizes_to_batch(sizes: Tensor | list[int], device: torch.device | str | None = None) -> Tensor:
    """Batch vector ``[0]*n_0 + [1]*n_1 + ...`` from graph sizes."""
    sizes = torch.as_tensor(sizes, dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes)


def fully_connected_edges(sizes: Tensor | list[int], device: torch.device | str | None = None) -> Tensor:
    """All ordered pairs ``(j, i)``, ``j != i``, within each graph of a batch.

    Args:
        sizes: number of nodes of each graph, shape ``[B]``.

    Returns:
        ``edge_index`` of shape ``[2, sum_b n_b (n_b - 1)]``, sorted by target then source.

    >>> fully_connected_edges([2, 3])   # graph 0: nodes 0, 1; graph 1: nodes 2, 3, 4
    tensor([[1, 0, 3, 4, 2, 4, 2, 3],
            [0, 1, 2, 2, 3, 3, 4, 4]])
    """
    sizes = torch.as_tensor(sizes, dtype=torch.long, device=device)
    if sizes.dim() != 1 or bool((sizes < 0).any()):
        raise ValueError(f"sizes must be a 1-D tensor of non-negative graph sizes, got {sizes.tolist()}")
    dev = sizes.device
    ptr = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    node_graph = torch.repeat_interleave(torch.arange(sizes.numel(), device=dev), sizes)
    n_of_node = sizes[node_graph]
    deg = (n_of_node - 1).clamp_min(0)
    target = torch.repeat_interleave(torch.arange(node_graph.numel(), device=dev), deg)
    first_edge = torch.cumsum(deg, 0) - deg
    t = torch.arange(target.numel(), device=dev) - first_edge[target]  # 0 .. n-2 for each target
    local_i = target - ptr[node_graph[target]]
    local_j = t + (t >= local_i).long()  # skip the target itself
    source = ptr[node_graph[target]] + local_j
    return torch.stack([source, target])


def _sort_edges(target: Tensor, dist2: Tensor, source: Tensor) -> Tensor:
    # order by target, then distance, then source (stable sorts applied from the least significant key)
    order = torch.argsort(source, stable=True)
    order = order[torch.argsort(dist2[order], stable=True)]
    order = order[torch.argsort(target[order], stable=True)]
    return torch.stack([source[order], target[order]])


def _blockwise(pos: Tensor, batch: Tensor, r: float | None, k: int | None, loop: bool) -> Tensor:
    """Exact neighbour search in row blocks, comparing each node only with its own graph's nodes."""
    n = pos.shape[0]
    counts = torch.bincount(batch, minlength=int(batch.max()) + 1 if n else 0)
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).tolist()
    batch_list = batch.tolist() if n <= 1 << 16 else None
    sources, targets, dists = [], [], []
    start = 0
    while start < n:
        g0 = batch_list[start] if batch_list is not None else int(batch[start])
        col0 = ptr[g0]
        # rows of one block share a column window covering their graphs
        rows_budget = max(1, _BLOCK_ELEMENTS // max(1, ptr[-1] - col0))
        stop = min(n, start + rows_budget)
        g1 = batch_list[stop - 1] if batch_list is not None else int(batch[stop - 1])
        col1 = ptr[g1 + 1]
        # shrink the block so the column window stays within budget
        while stop - start > 1 and (stop - start) * (col1 - col0) > _BLOCK_ELEMENTS:
            stop = start + max(1, (stop - start) // 2)
            g1 = batch_list[stop - 1] if batch_list is not None else int(batch[stop - 1])
            col1 = ptr[g1 + 1]
        rows = torch.arange(start, stop, device=pos.device)
        d2 = (pos[start:stop, None, :] - pos[None, col0:col1, :]).pow(2).sum(-1)
        valid = batch[start:stop, None] == batch[None, col0:col1]
        if not loop:
            valid &= rows[:, None] != torch.arange(col0, col1, device=pos.device)[None, :]
        if r is not None:
            valid &= d2 < r * r
        d2 = d2.masked_fill(~valid, float("inf"))
        if k is not None:
            kk = min(k, col1 - col0)
            # exact top-k by (distance, index): sort the row by index-stable distance order
            order = torch.argsort(d2, dim=1, stable=True)[:, :kk]
            dsel = torch.gather(d2, 1, order)
            keep = torch.isfinite(dsel)
            tgt = rows[:, None].expand_as(order)[keep]
            src = (order + col0)[keep]
            dd = dsel[keep]
        else:
            tgt_l, src_l = valid.nonzero(as_tuple=True)
            tgt, src, dd = rows[tgt_l], src_l + col0, d2[tgt_l, src_l]
        sources.append(src)
        targets.append(tgt)
        dists.append(dd)
        start = stop
    if not sources:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    return _sort_edges(torch.cat(targets), torch.cat(dists), torch.cat(sources))


def _kdtree(pos: Tensor, batch: Tensor, r: float | None, k: int | None, loop: bool) -> Tensor:
    import numpy as np
    from scipy.spatial import cKDTree

    x = pos.detach().to(torch.float64).numpy()
    b = batch.numpy()
    n = x.shape[0]
    if n == 0:
        return torch.empty(2, 0, dtype=torch.long)
    if b[-1] > 0:
        # separate graphs by an extra coordinate: equal within a graph (adds exactly 0 to distances),
        # further apart than any neighbour we could want across graphs
        span = float(np.ptp(x, axis=0).max()) if n > 1 else 0.0
        gap = 2.0 * (span + (r or 0.0)) + 1.0
        x = np.concatenate([x, (b * gap)[:, None]], axis=1)
    tree = cKDTree(x)
    if k is None:
        # unlimited radius search
        pairs = tree.query_pairs(r, output_type="ndarray")
        src = np.concatenate([pairs[:, 0], pairs[:, 1]])
        tgt = np.concatenate([pairs[:, 1], pairs[:, 0]])
        if loop:
            src = np.concatenate([src, np.arange(n)])
            tgt = np.concatenate([tgt, np.arange(n)])
    else:
        return _kdtree_knn(pos, batch, tree, x, r, k, loop)
    src_t = torch.from_numpy(np.ascontiguousarray(src)).long()
    tgt_t = torch.from_numpy(np.ascontiguousarray(tgt)).long()
    same = batch[src_t] == batch[tgt_t]
    src_t, tgt_t = src_t[same], tgt_t[same]
    d2 = (pos[src_t] - pos[tgt_t]).pow(2).sum(-1)  # same arithmetic as the blockwise search
    if r is not None:
        inside = d2 < r * r
        src_t, tgt_t, d2 = src_t[inside], tgt_t[inside], d2[inside]
    return _sort_edges(tgt_t, d2, src_t)


def _kdtree_knn(pos: Tensor, batch: Tensor, tree, x, r: float | None, k: int, loop: bool) -> Tensor:
    """The k-d tree's ``[N, k (+1)]`` candidate table, ordered and cut per row: each target's candidates are
    sorted by (distance recomputed in ``pos``'s dtype, source) within their row, so the edges come out sorted
    by (target, distance, source) without any global sort."""
    import numpy as np

    n = x.shape[0]
    kk = min(k + (0 if loop else 1), n)
    _, idx = tree.query(x, k=kk, distance_upper_bound=np.inf if r is None else r, workers=-1)
    src = torch.from_numpy(np.ascontiguousarray(idx.reshape(n, kk))).long()
    valid = src < n  # missing neighbours are reported with index n
    src.masked_fill_(~valid, 0)
    tgt = torch.arange(n).unsqueeze(1)
    if not loop:
        valid &= src != tgt
    valid &= batch[src] == batch.unsqueeze(1)
    d2 = (pos[src] - pos.unsqueeze(1)).pow(2).sum(-1)  # same arithmetic as the blockwise search
    if r is not None:
        valid &= d2 < r * r
    d2.masked_fill_(~valid, float("inf"))
    # within each row: by source, then (stable) by distance -> (distance, source) order; invalid ones last
    src, order = torch.sort(src.masked_fill(~valid, n), dim=1)
    d2 = torch.gather(d2, 1, order)
    d2, order = torch.sort(d2, dim=1, stable=True)
    src = torch.gather(src, 1, order)
    keep = torch.isfinite(d2)
    keep[:, k:] = False  # the tree returned k+1 candidates when self was excluded: keep the nearest k
    counts = keep.sum(1)
    return torch.stack([src[keep], torch.repeat_interleave(torch.arange(n), counts)])


def _search(pos: Tensor, batch: Tensor | None, r: float | None, k: int | None, loop: bool, method: str) -> Tensor:
    batch = _check_batch(pos, batch)
    if torch.is_floating_point(pos) and pos.numel() and not bool(torch.isfinite(pos).all()):
        raise ValueError("pos contains NaN or Inf")
    if method not in ("auto", "kdtree", "blockwise"):
        raise ValueError(f"method must be 'auto', 'kdtree' or 'blockwise', got {method!r}")
    use_tree = method == "kdtree" or (method == "auto" and pos.device.type == "cpu")
    if use_tree:
        try:
            return _kdtree(pos.cpu(), batch.cpu(), r, k, loop).to(pos.device)
        except ImportError:
            if method == "kdtree":
                raise
    return _blockwise(pos, batch, r, k, loop)


def radius_graph(
    pos: Tensor,
    r: float,
    batch: Tensor | None = None,
    max_num_neighbors: int | None = 32,
    loop: bool = False,
    method: str = "auto",
) -> Tensor:
    """Edges ``j -> i`` for every pair of nodes of the same graph closer than ``r``.

    Args:
        pos: node positions, shape ``[N, n]``.
        r: cut-off radius (strict: ``||x_i - x_j|| < r``).
        batch: graph of each node, shape ``[N]``, sorted; ``None`` for a single graph.
        max_num_neighbors: keep only the nearest this many neighbours of each target (ties broken by the
            smaller source index); ``None`` keeps all.
        loop: include self loops.
        method: ``"auto"`` (k-d tree on CPU, blockwise otherwise), ``"kdtree"`` or ``"blockwise"``.

    Returns:
        ``edge_index`` of shape ``[2, E]``, sorted by target, distance, source.

    >>> pos = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0], [3.2, 0.0]])
    >>> radius_graph(pos, r=1.0, batch=torch.tensor([0, 0, 0, 1]))   # nodes 2 and 3 are in different graphs
    tensor([[1, 0],
            [0, 1]])
    """
    if not r > 0:
        raise ValueError(f"r must be positive, got {r}")
    if max_num_neighbors is not None and max_num_neighbors < 1:
        raise ValueError(f"max_num_neighbors must be >= 1 or None, got {max_num_neighbors}")
    return _search(pos, batch, float(r), max_num_neighbors, loop, method)


def knn_graph(pos: Tensor, k: int, batch: Tensor | None = None, loop: bool = False, method: str = "auto") -> Tensor:
    """Edges from the ``k`` nearest neighbours ``j`` of each node ``i`` within its graph.

    Graphs with fewer than ``k + 1`` nodes connect each node to all others. Ties are broken by the smaller
    source index. Arguments as in :func:`radius_graph`.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _search(pos, batch, None, int(k), loop, method)
