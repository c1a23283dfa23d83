"""Reconstruction metrics of the graph autoencoder experiment, defined as the reference implementation computes
the paper's numbers (vgsatorras/egnn, ``main_ae.py``, ``eval.py``, ``losess.py``):

- **BCE**: binary cross-entropy *summed* over every ordered pair ``(i, j)``, ``i != j``, of a graph (both
  directions of each undirected pair; the diagonal is excluded, which is what the reference's zeroed diagonal
  amounts to since its term is exactly 0), then *averaged over graphs*. Each term is capped at 100 nats, as
  PyTorch's ``binary_cross_entropy`` clamps ``log`` at -100.
- **% error**: wrong edge predictions over all ordered pairs of the split, pooled (not a mean of per-graph
  rates), times 100. A pair is predicted to be an edge when ``sigmoid(logit) > 0.5``, i.e. ``logit > 0``.
- **F1**: ``TP / (TP + (FP + FN) / 2)`` from counts pooled over the split's ordered pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from egnn.ops import scatter_sum

BCE_TERM_CAP = 100.0  # torch.nn.functional.binary_cross_entropy clamps log(p) at -100


def pair_bce(logits: Tensor, target: Tensor, cap: float | None = BCE_TERM_CAP) -> Tensor:
    """Per-pair binary cross-entropy from logits (numerically stable), optionally capped at ``cap``."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce.clamp_max(cap) if cap is not None else bce


def graph_bce(logits: Tensor, target: Tensor, edge_batch: Tensor, num_graphs: int,
              cap: float | None = BCE_TERM_CAP) -> Tensor:
    """BCE summed over each graph's ordered pairs ``[num_graphs]``.

    Shapes: ``logits``, ``target``, ``edge_batch`` ``[E]``.
    """
    return scatter_sum(pair_bce(logits, target, cap), edge_batch, num_graphs)


@dataclass
class EdgeCounts:
    """Sums over a split, from which the reported metrics follow. Add two with ``+``."""

    bce_sum: float = 0.0  # sum over graphs of the per-graph BCE
    graphs: int = 0
    pairs: int = 0  # ordered pairs i != j
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: EdgeCounts) -> EdgeCounts:
        return EdgeCounts(self.bce_sum + other.bce_sum, self.graphs + other.graphs, self.pairs + other.pairs,
                          self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def bce(self) -> float:
        """Mean over graphs of the summed pair BCE (the paper's "BCE")."""
        return self.bce_sum / max(self.graphs, 1)

    @property
    def wrong(self) -> int:
        return self.fp + self.fn

    @property
    def error_percent(self) -> float:
        """Percentage of ordered pairs whose edge/no-edge prediction is wrong (the paper's "% Error")."""
        return 100.0 * self.wrong / max(self.pairs, 1)

    @property
    def f1(self) -> float:
        """F1 of the edge predictions; 1.0 when there are no edges and none is predicted."""
        denom = self.tp + 0.5 * (self.fp + self.fn)
        return self.tp / denom if denom > 0 else 1.0

    def as_dict(self) -> dict[str, float]:
        return {"bce": self.bce, "error_percent": self.error_percent, "f1": self.f1, "graphs": self.graphs,
                "pairs": self.pairs, "tp": self.tp, "fp": self.fp, "fn": self.fn}


def edge_counts(logits: Tensor, target: Tensor, edge_batch: Tensor, num_graphs: int) -> EdgeCounts:
    """Counts of one batch of graphs (pairs in any order; ``edge_batch`` names each pair's graph)."""
    pred = logits > 0
    truth = target > 0.5
    return EdgeCounts(
        bce_sum=float(graph_bce(logits, target, edge_batch, num_graphs).sum()),
        graphs=int(num_graphs),
        pairs=int(target.numel()),
        tp=int((pred & truth).sum()),
        fp=int((pred & ~truth).sum()),
        fn=int((~pred & truth).sum()),
    )


def dense_counts(prob: Tensor, adjacency: Tensor) -> EdgeCounts:
    """Counts of one graph from a dense predicted edge-probability matrix ``[n, n]`` and the true adjacency
    ``[n, n]``; the diagonal is ignored. Probabilities are clamped away from 0 and 1 so that each BCE term is
    at most 100 nats, as in the reference's ``binary_cross_entropy``."""
    n = adjacency.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=adjacency.device)
    p = prob[off].double()
    t = adjacency[off].double()
    bce = -(t * p.log().clamp_min(-BCE_TERM_CAP) + (1 - t) * (1 - p).log().clamp_min(-BCE_TERM_CAP))
    pred = p > 0.5
    truth = t > 0.5
    return EdgeCounts(float(bce.sum()), 1, int(t.numel()), int((pred & truth).sum()), int((pred & ~truth).sum()),
                      int((~pred & truth).sum()))
