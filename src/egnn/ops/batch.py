"""A container for one graph or a batch of variable-size graphs, collation, and batches cut by a size budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class Graph:
    """Node features, positions, optional velocities and edges of one graph or of a batch of graphs.

    Edge convention: ``edge_index[0]`` = source ``j``, ``edge_index[1]`` = target ``i``.

    Attributes:
        h: node features ``[N, F]``.
        pos: positions ``[N, n]``.
        edge_index: ``[2, E]`` (long).
        edge_attr: edge attributes ``[E, A]`` or ``None``.
        vel: velocities ``[N, n]`` or ``None``.
        batch: graph of each node ``[N]`` (sorted); ``None`` means a single graph.
        y: targets (any shape whose first dimension is per node or per graph) or ``None``.
        num_graphs: number of graphs in the batch.
    """

    h: Tensor
    pos: Tensor
    edge_index: Tensor
    edge_attr: Tensor | None = None
    vel: Tensor | None = None
    batch: Tensor | None = None
    y: Tensor | None = None
    num_graphs: int = 1

    @property
    def num_nodes(self) -> int:
        """``N``, the number of nodes of all graphs together."""
        return int(self.pos.shape[0])

    @property
    def num_edges(self) -> int:
        """``E``, the number of edges of all graphs together."""
        return int(self.edge_index.shape[1])

    def batch_vector(self) -> Tensor:
        """``batch``, or zeros for a single graph."""
        if self.batch is not None:
            return self.batch
        return torch.zeros(self.num_nodes, dtype=torch.long, device=self.pos.device)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Graph:
        """Move tensors to ``device``; floating tensors (not indices) also cast to ``dtype`` if given."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.to(device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            out[f.name] = v
        return replace(self, **out)

    def unbatch(self) -> list[Graph]:
        """Split a batch back into its graphs (edge indices made local again)."""
        batch = self.batch_vector()
        sizes = torch.bincount(batch, minlength=self.num_graphs).tolist()
        ptr = [0]
        for s in sizes:
            ptr.append(ptr[-1] + s)
        edge_graph = batch[self.edge_index[1]] if self.num_edges else batch.new_zeros(0)
        per_graph_y = self.y is not None and self.y.shape[0] == self.num_graphs and self.num_graphs != self.num_nodes
        graphs = []
        for g in range(self.num_graphs):
            sl = slice(ptr[g], ptr[g + 1])
            emask = edge_graph == g
            graphs.append(
                Graph(
                    h=self.h[sl],
                    pos=self.pos[sl],
                    edge_index=self.edge_index[:, emask] - ptr[g],
                    edge_attr=None if self.edge_attr is None else self.edge_attr[emask],
                    vel=None if self.vel is None else self.vel[sl],
                    y=None if self.y is None else (self.y[g : g + 1] if per_graph_y else self.y[sl]),
                )
            )
        return graphs

    @classmethod
    def from_pyg(cls, data: Any) -> Graph:
        """Build from a PyTorch Geometric ``Data``/``Batch`` (``x``, ``pos``, ``edge_index``, ...).

        PyG uses the same edge convention (``edge_index[0]`` = source). torch_geometric is never imported.
        """
        h = data.x if getattr(data, "x", None) is not None else data.pos.new_ones(data.pos.shape[0], 1)
        batch = getattr(data, "batch", None)
        num_graphs = int(getattr(data, "num_graphs", 1) or 1)
        return cls(
            h=h,
            pos=data.pos,
            edge_index=data.edge_index,
            edge_attr=getattr(data, "edge_attr", None),
            vel=getattr(data, "vel", None),
            batch=batch,
            y=getattr(data, "y", None),
            num_graphs=num_graphs,
        )


def collate(graphs: list[Graph]) -> Graph:
    """Concatenate graphs into one batch: node tensors stacked, edge indices offset, ``batch`` filled.

    ``y`` is concatenated along its first dimension (per-node or per-graph targets both work).
    """
    if not graphs:
        raise ValueError("graphs must be a non-empty list")
    sizes = [g.num_nodes for g in graphs]
    offsets = torch.tensor([0, *sizes[:-1]], device=graphs[0].pos.device).cumsum(0)
    edge_index = torch.cat([g.edge_index + off for g, off in zip(graphs, offsets.tolist())], dim=1)

    def cat_optional(name: str) -> Tensor | None:
        values = [getattr(g, name) for g in graphs]
        present = [v is not None for v in values]
        if not any(present):
            return None
        if not all(present):
            raise ValueError(f"{name} is set on some graphs and missing on others")
        return torch.cat(values, dim=0)

    return Graph(
        h=torch.cat([g.h for g in graphs]),
        pos=torch.cat([g.pos for g in graphs]),
        edge_index=edge_index,
        edge_attr=cat_optional("edge_attr"),
        vel=cat_optional("vel"),
        batch=torch.repeat_interleave(
            torch.arange(len(graphs), device=graphs[0].pos.device),
            torch.tensor(sizes, device=graphs[0].pos.device),
        ),
        y=cat_optional("y"),
        num_graphs=len(graphs),
    )


def budget_starts(sizes: Sequence[int] | np.ndarray, batch_size: int, budget: int | None) -> list[int]:
    """Where the contiguous batches of samples with these ``sizes`` start: at most ``batch_size`` samples and (a
    lone sample excepted) at most ``budget`` in size each (``None``: no budget)."""
    starts: list[int] = []
    count = total = 0
    for i, size in enumerate(np.asarray(sizes, dtype=np.int64).tolist()):
        if not starts or count == batch_size or (budget is not None and total + size > budget):
            starts.append(i)
            count = total = 0
        count += 1
        total += size
    return starts
