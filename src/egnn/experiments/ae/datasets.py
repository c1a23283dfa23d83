"""Graph data sets of the autoencoder experiment (paper Section 5.2, `arXiv:2102.09844
<https://arxiv.org/abs/2102.09844>`_): *Community Small* and *Erdos-Renyi*, generated with fixed seeds.

Generation follows the reference repository (vgsatorras/egnn, ``ae_datasets/d_creator.py``); the code here is
our own and does not reproduce its random streams bit for bit:

- **Community Small** (after You et al. 2018, GraphRNN, as implemented by the reference): two communities whose
  sizes are drawn uniformly from ``{6, ..., 10}`` (12-20 nodes), each a ``G(n, 0.7)`` graph; every pair of nodes
  from different communities is joined with probability 0.01, and if no such edge was drawn the first nodes of
  the two communities are joined. The reference seeds the ``G(n, 0.7)`` draw of community ``c`` with ``c``
  itself (``seed=i``), so a community's internal structure depends only on its size and index;
  ``fixed_intra_seed=True`` (default) keeps that, ``False`` draws them from the data set's generator.
- **Erdos-Renyi**: ``G(n, p)`` graphs, ``p = 0.25``, with the same number of graphs of each size
  ``n = 7, ..., 16``, shuffled.

Splits: 5000 train / 500 valid / 500 test graphs with seeds 0 / 1 / 2 (as the reference). The overfitting study
uses 100 Erdos-Renyi graphs (10 of each size) with seed 3, the same graphs for training and evaluation.

Each graph is an undirected simple graph. The models see it as the fully connected graph on its nodes (all
ordered pairs ``j != i``) with edge attribute ``a_ij = A_ij``, and reconstruct ``A_ij`` for every ordered pair.
``networkx`` (the optional extra ``egnn[ae]``) is imported only when a data set is generated.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from egnn.experiments.registry import Registry
from egnn.ops import fully_connected_edges

SPLIT_SIZES = {"train": 5000, "valid": 500, "test": 500}
SPLIT_SEEDS = {"train": 0, "valid": 1, "test": 2}
OVERFIT_SEED = 3


def _nx():
    try:
        import networkx
    except ModuleNotFoundError as err:  # the optional extra
        raise ModuleNotFoundError(
            f"{err}; the graph autoencoder data sets need networkx: pip install -e '.[ae]'"
        ) from None
    return networkx


def _adjacency(graph, n: int) -> np.ndarray:
    a = np.zeros((n, n), dtype=np.uint8)
    for u, v in graph.edges():
        if u != v:
            a[u, v] = a[v, u] = 1
    return a


# --- generators --------------------------------------------------------------------------------------------
def community_small(
    num_graphs: int,
    seed: int,
    community_sizes: Sequence[int] = (6, 7, 8, 9, 10),
    num_communities: int = 2,
    p_intra: float = 0.7,
    p_inter: float = 0.01,
    fixed_intra_seed: bool = True,
) -> list[np.ndarray]:
    """Adjacency matrices of ``num_graphs`` community graphs (see the module docstring).

    Returns:
        a list of symmetric ``uint8`` arrays ``[n, n]`` with zero diagonal.
    """
    nx = _nx()
    rng = np.random.default_rng(seed)
    graphs = []
    for _ in range(num_graphs):
        sizes = rng.choice(np.asarray(community_sizes), num_communities)
        parts = [
            nx.gnp_random_graph(int(s), p_intra, seed=c if fixed_intra_seed else int(rng.integers(2**31)))
            for c, s in enumerate(sizes)
        ]
        g = nx.disjoint_union_all(parts)
        # communities are the connected components of the union, as in the reference
        comps = [sorted(c) for c in nx.connected_components(g)]
        for a in range(len(comps)):
            for b in range(a + 1, len(comps)):
                pairs = [(u, v) for u in comps[a] for v in comps[b]]
                hits = rng.random(len(pairs)) < p_inter
                for (u, v), hit in zip(pairs, hits):
                    if hit:
                        g.add_edge(u, v)
                if not hits.any():
                    g.add_edge(comps[a][0], comps[b][0])
        graphs.append(_adjacency(g, g.number_of_nodes()))
    return graphs


def erdos_renyi_nodes(
    num_graphs: int, seed: int, p: float = 0.25, node_counts: Sequence[int] = tuple(range(7, 17))
) -> list[np.ndarray]:
    """Adjacency matrices of ``G(n, p)`` graphs, ``num_graphs // len(node_counts)`` of each size, shuffled."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    nx = _nx()
    rng = random.Random(seed)
    graphs = []
    for _ in range(num_graphs // len(node_counts)):
        for n in node_counts:
            graphs.append(_adjacency(nx.gnp_random_graph(n, p, seed=rng), n))
    rng.shuffle(graphs)
    return graphs


# --- batches -------------------------------------------------------------------------------------------------
@dataclass
class AEBatch:
    """A batch of ``B`` graphs as fully connected graphs over their nodes.

    Attributes:
        h: constant node features ``[N, 1]`` (ones).
        edge_index: all ordered pairs ``(j, i)``, ``j != i``, within each graph ``[2, E]`` (``[0]`` = source j).
        edge_attr: ``a_ij = A_ij`` ``[E, 1]``.
        target: ``A_ij`` of each pair ``[E]`` (the reconstruction target).
        batch: graph of each node ``[N]``; edge_batch: graph of each pair ``[E]``.
        sizes: nodes per graph ``[B]``.
    """

    h: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    target: Tensor
    batch: Tensor
    edge_batch: Tensor
    sizes: Tensor
    num_graphs: int

    @property
    def num_nodes(self) -> int:
        return int(self.h.shape[0])


class AESplit:
    """One split: graphs stored as node counts and the flattened ``A_ij`` of every ordered pair, in the pair
    order of :func:`egnn.ops.fully_connected_edges`. ``get(indices, device)`` batches without Python loops."""

    def __init__(self, adjacencies: Sequence[np.ndarray], dtype: torch.dtype = torch.float32) -> None:
        if len(adjacencies) == 0:
            raise ValueError("a split needs at least one graph")
        labels = []
        for a in adjacencies:
            a = np.asarray(a)
            if a.ndim != 2 or a.shape[0] != a.shape[1]:
                raise ValueError(f"adjacency matrices must be square, got shape {a.shape}")
            local = fully_connected_edges([a.shape[0]])
            labels.append(torch.as_tensor(a[local[1].numpy(), local[0].numpy()], dtype=dtype))  # A[i, j]
        self.sizes = torch.tensor([np.asarray(a).shape[0] for a in adjacencies], dtype=torch.long)
        self.labels = torch.cat(labels)
        pairs = self.sizes * (self.sizes - 1)
        self.edge_ptr = torch.cat([pairs.new_zeros(1), pairs.cumsum(0)[:-1]])
        self.dtype = dtype

    def __len__(self) -> int:
        return int(self.sizes.numel())

    def adjacency(self, i: int) -> Tensor:
        """Dense adjacency of graph ``i`` ``[n, n]``."""
        n = int(self.sizes[i])
        start = int(self.edge_ptr[i])
        local = fully_connected_edges([n])
        a = torch.zeros(n, n, dtype=self.dtype)
        a[local[1], local[0]] = self.labels[start : start + n * (n - 1)]
        return a

    def get(self, indices: Tensor, device: torch.device | str = "cpu") -> AEBatch:
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        sizes = self.sizes[idx]
        pairs = sizes * (sizes - 1)
        total = int(pairs.sum())
        first = pairs.cumsum(0) - pairs
        gather = torch.repeat_interleave(self.edge_ptr[idx] - first, pairs) + torch.arange(total)
        target = self.labels[gather]
        b = idx.numel()
        dev = torch.device(device)
        return AEBatch(
            h=torch.ones(int(sizes.sum()), 1, dtype=self.dtype, device=dev),
            edge_index=fully_connected_edges(sizes).to(dev),
            edge_attr=target.unsqueeze(-1).to(dev),
            target=target.to(dev),
            batch=torch.repeat_interleave(torch.arange(b), sizes).to(dev),
            edge_batch=torch.repeat_interleave(torch.arange(b), pairs).to(dev),
            sizes=sizes.to(dev),
            num_graphs=b,
        )

    def stats(self) -> dict[str, float]:
        """Mean/min/max node count, mean number of undirected edges and edge density."""
        n = self.sizes.double()
        pairs = n * (n - 1)
        return {
            "graphs": float(len(self)),
            "nodes_mean": float(n.mean()),
            "nodes_min": float(n.min()),
            "nodes_max": float(n.max()),
            "edges_mean": float(self.labels.double().sum() / 2 / len(self)),
            "density": float(self.labels.double().sum() / pairs.sum()),
        }


# --- named data sets -----------------------------------------------------------------------------------------
@dataclass
class AEDataset:
    """A named data set: ``generate(num_graphs, seed) -> adjacency matrices``."""

    generate: Callable[[int, int], list[np.ndarray]]
    description: str


AE_DATASETS: Registry[AEDataset] = Registry("AE data set")
AE_DATASETS.add("community", AEDataset(community_small, "Community Small: 2 communities of 6-10 nodes"))
AE_DATASETS.add("erdos_renyi", AEDataset(erdos_renyi_nodes, "Erdos-Renyi G(n, 0.25), n = 7..16"))


@lru_cache(maxsize=8)
def _generate_cached(name: str, num_graphs: int, seed: int) -> tuple[np.ndarray, ...]:
    return tuple(AE_DATASETS.get(name).generate(num_graphs, seed))


def load_ae_dataset(name: str, sizes: dict[str, int] | None = None) -> dict[str, AESplit]:
    """``{"train", "valid", "test"}`` splits of data set ``name`` (``community`` or ``erdos_renyi``), generated
    with the fixed seeds 0 / 1 / 2. ``sizes`` overrides the number of graphs of a split (default 5000/500/500).
    """
    AE_DATASETS.get(name)  # clear error for an unknown name
    sizes = {**SPLIT_SIZES, **(sizes or {})}
    return {split: AESplit(_generate_cached(name, sizes[split], SPLIT_SEEDS[split])) for split in SPLIT_SIZES}


def overfit_split(p: float, graphs_per_size: int = 10, seed: int = OVERFIT_SEED) -> AESplit:
    """The overfitting study's 100 Erdos-Renyi graphs with edge probability ``p`` (10 of each size 7..16)."""
    return AESplit(erdos_renyi_nodes(graphs_per_size * 10, seed, p=p))
