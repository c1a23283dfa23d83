"""The EGNN model: input embedding, a stack of EGCL layers, node and graph heads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from egnn.nn.egcl import EGCL, EGCLVel, make_activation
from egnn.nn.validation import check_batch, check_graph_inputs
from egnn.ops.neighbors import fully_connected_edges
from egnn.ops.scatter import scatter_count, scatter_mean, scatter_sum

# names of the EGNN hyper-parameters before they took EGCL's (PyG-style) names; read by EGNNConfig.from_dict
OLD_CONFIG_NAMES = {
    "in_node_nf": "in_channels",
    "hidden_nf": "hidden_channels",
    "n_layers": "num_layers",
    "in_edge_nf": "edge_dim",
    "out_node_nf": "out_channels",
    "graph_out_nf": "graph_out_channels",
}


@dataclass
class EGNNConfig:
    """Hyper-parameters of :class:`EGNN` (stored as JSON in checkpoints). See :class:`EGNN` for meanings."""

    in_channels: int
    hidden_channels: int = 64
    num_layers: int = 4
    edge_dim: int = 0
    out_channels: int | None = None
    graph_out_channels: int | None = None
    readout: str = "sum"
    node_attr: bool = False
    act: str = "silu"
    residual: bool = True
    attention: bool = False
    normalize: bool | str = False
    tanh: bool = False
    coords_range: float = 15.0
    coord_agg: str = "mean"
    velocity: bool = False
    update_coords: bool = True
    norm_eps: float = 1e-8
    fast: bool = True
    chunk_size: int | None = None
    dense: bool = True
    checkpoint: bool = False
    checkpoint_chunks: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-ready; :meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EGNNConfig:
        """Read a config dict; the names used before the rename to :class:`EGCL`'s (``in_node_nf``,
        ``hidden_nf``, ``n_layers``, ``in_edge_nf``, ``out_node_nf``, ``graph_out_nf``) are still accepted, so
        old checkpoints load."""
        d = dict(d)
        for old, new in OLD_CONFIG_NAMES.items():
            if old in d:
                if new in d:
                    raise ValueError(f"EGNNConfig has both {old!r} and its new name {new!r}")
                d[new] = d.pop(old)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown EGNNConfig field(s): {unknown}")
        return cls(**d)


class EGNNOutput(NamedTuple):
    """``h`` node features (after the node head, if any) ``[N, *]``; ``pos`` ``[N, n]``; ``vel`` ``[N, n]``
    (velocity variant, else ``None``); ``graph`` graph-level output ``[B, graph_out_channels]`` (else ``None``)."""

    h: Tensor
    pos: Tensor
    vel: Tensor | None
    graph: Tensor | None


class EGNN(nn.Module):
    r"""E(n)-equivariant graph neural network, `arXiv:2102.09844 <https://arxiv.org/abs/2102.09844>`_.

    ``h^0 = W_{emb} h``; then ``L`` layers of :class:`EGCL` (or :class:`EGCLVel` with ``velocity``):

    .. math::
        h^{l+1}, x^{l+1} = \mathrm{EGCL}(h^l, x^l, \mathcal{E}, a)
        \qquad\text{or}\qquad
        h^{l+1}, x^{l+1}, v^{l+1} = \mathrm{EGCL_{vel}}(h^l, x^l, v^{init}, \mathcal{E}, a)

    an optional node head ``MLP(h^L)`` (``out_channels``) and an optional invariant graph readout
    ``MLP(pool_i h_i)`` with sum or mean pooling over each graph (``graph_out_channels``). Outputs: features are
    E(n)-invariant, positions and velocities E(n)-equivariant, all permutation-equivariant.

    Args:
        in_channels: size of the input node features ``h``. (The hyper-parameters take :class:`EGCL`'s
            names; :meth:`EGNNConfig.from_dict` still reads the reference-style names of older checkpoints:
            ``in_node_nf``, ``hidden_nf``, ``n_layers``, ``in_edge_nf``, ``out_node_nf``, ``graph_out_nf``.)
        hidden_channels: width of every layer.
        num_layers: number of EGCL layers ``L``.
        edge_dim: size of the edge attributes ``a_ij`` (0 for none).
        out_channels: if set, node head ``Linear -> act -> Linear(out_channels)``; else ``h^L`` is returned.
        graph_out_channels: if set, graph head ``Linear -> act -> Linear(graph_out_channels)`` on the pooled
            node outputs.
        readout: ``"sum"`` or ``"mean"`` pooling for the graph head.
        node_attr: feed the input features ``h`` to every layer's :math:`\phi_h` (the paper's QM9 model).
        act, residual, attention, normalize, tanh, coords_range, coord_agg, norm_eps, fast, chunk_size:
            as in :class:`EGCL` (which also lists the differences from the reference code; ``normalize=
            "reference"`` reproduces its normalisation).
        velocity: use :class:`EGCLVel` layers (eq. 7); ``vel`` becomes a required input.
        update_coords: ``False`` gives an invariant model (positions used only through distances).
        dense: take the dense path when the edges are exactly those of
            :func:`egnn.ops.fully_connected_edges` for ``B`` graphs of equal size ``n >= 2`` (e.g. the N-body
            batches): messages on ``[B, n, n - 1, H]`` views, no gather of targets and no scatter; same result
            as the sparse path up to float summation order. Not taken with ``edge_shift``, ``chunk_size``,
            ``fast=False`` or under ``torch.compile`` (the layout check reads the edge indices).
        checkpoint: recompute each layer in the backward pass (activation checkpointing) to save memory.
        checkpoint_chunks: recompute each edge chunk's messages in the backward pass (with ``chunk_size``):
            training memory ``O(N H + chunk H)`` per layer, for one extra message evaluation.

    Shapes:
        - **input:** ``h`` ``[N, in_channels]``, ``pos`` ``[N, n]``, ``edge_index`` ``[2, E]``,
          ``edge_attr`` ``[E, edge_dim]``, ``vel`` ``[N, n]``, ``batch`` ``[N]`` (sorted),
          ``edge_shift`` ``[E, n]`` (optional): Cartesian offset of each edge's source periodic image, the
          coordinate difference being :math:`x_i - (x_j + s_{ij})` in every layer (see :class:`EGCL`)
        - **output:** :class:`EGNNOutput`

    Example: two graphs of 3 and 4 nodes, complete graphs, one value per graph.

    >>> import torch
    >>> from egnn.nn import EGNN
    >>> from egnn.ops import fully_connected_edges
    >>> model = EGNN(in_channels=2, hidden_channels=16, num_layers=2, graph_out_channels=1)
    >>> batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    >>> out = model(torch.randn(7, 2), torch.randn(7, 3), fully_connected_edges([3, 4]), batch=batch)
    >>> out.h.shape, out.pos.shape, out.vel, out.graph.shape
    (torch.Size([7, 16]), torch.Size([7, 3]), None, torch.Size([2, 1]))
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 64,
        num_layers: int = 4,
        edge_dim: int = 0,
        out_channels: int | None = None,
        graph_out_channels: int | None = None,
        readout: str = "sum",
        node_attr: bool = False,
        act: str = "silu",
        residual: bool = True,
        attention: bool = False,
        normalize: bool | str = False,
        tanh: bool = False,
        coords_range: float = 15.0,
        coord_agg: str = "mean",
        velocity: bool = False,
        update_coords: bool = True,
        norm_eps: float = 1e-8,
        fast: bool = True,
        chunk_size: int | None = None,
        dense: bool = True,
        checkpoint: bool = False,
        checkpoint_chunks: bool = False,
    ) -> None:
        super().__init__()
        self.config = EGNNConfig(
            in_channels=in_channels, hidden_channels=hidden_channels, num_layers=num_layers, edge_dim=edge_dim,
            out_channels=out_channels, graph_out_channels=graph_out_channels, readout=readout, node_attr=node_attr,
            act=act, residual=residual, attention=attention, normalize=normalize, tanh=tanh,
            coords_range=coords_range, coord_agg=coord_agg, velocity=velocity, update_coords=update_coords,
            norm_eps=norm_eps, fast=fast, chunk_size=chunk_size, dense=dense, checkpoint=checkpoint,
            checkpoint_chunks=checkpoint_chunks,
        )
        c = self.config
        if min(in_channels, hidden_channels) < 1 or edge_dim < 0:
            raise ValueError("in_channels and hidden_channels must be >= 1 and edge_dim >= 0")
        if any(x is not None and x < 1 for x in (out_channels, graph_out_channels)):
            raise ValueError("out_channels and graph_out_channels must be >= 1 or None")
        if c.readout not in ("sum", "mean"):
            raise ValueError(f"readout must be 'sum' or 'mean', got {c.readout!r}")
        if c.velocity and not c.update_coords:
            raise ValueError("velocity=True needs update_coords=True")
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.embedding = nn.Linear(in_channels, hidden_channels)
        layer_cls = EGCLVel if c.velocity else EGCL
        self.layers = nn.ModuleList(
            layer_cls(
                hidden_channels, hidden_channels, hidden_channels, edge_dim=c.edge_dim,
                node_attr_dim=in_channels if c.node_attr else 0, act=c.act, residual=c.residual,
                attention=c.attention, normalize=c.normalize, tanh=c.tanh, coords_range=c.coords_range,
                coord_agg=c.coord_agg, update_coords=c.update_coords, norm_eps=c.norm_eps, fast=c.fast,
                chunk_size=c.chunk_size, checkpoint_chunks=c.checkpoint_chunks,
            )
            for _ in range(num_layers)
        )
        self.act = make_activation(c.act)
        self.node_head = (
            nn.ModuleList([nn.Linear(hidden_channels, hidden_channels), nn.Linear(hidden_channels, c.out_channels)])
            if c.out_channels
            else None
        )
        pooled = c.out_channels or hidden_channels
        self.graph_head = (
            nn.ModuleList([nn.Linear(pooled, hidden_channels), nn.Linear(hidden_channels, c.graph_out_channels)])
            if c.graph_out_channels
            else None
        )
        self._dense_edges: tuple[tuple, Tensor] | None = None  # the last canonical layout checked (not state)

    @classmethod
    def from_config(cls, config: EGNNConfig | dict[str, Any]) -> EGNN:
        """A new model (fresh weights) built from an :class:`EGNNConfig` or its dict form."""
        if isinstance(config, dict):
            config = EGNNConfig.from_dict(config)
        return cls(**config.to_dict())

    def reset_parameters(self) -> None:
        r"""Re-initialise every parameter as at construction: each layer's own :meth:`EGCL.reset_parameters`
        (which keeps :math:`\phi_x`'s small-gain start), the embedding and the heads."""
        self.embedding.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        for head in (self.node_head, self.graph_head):
            if head is not None:
                for lin in head:
                    lin.reset_parameters()

    def forward(
        self,
        h: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        vel: Tensor | None = None,
        batch: Tensor | None = None,
        num_graphs: int | None = None,
        edge_shift: Tensor | None = None,
    ) -> EGNNOutput:
        """Run the model on a batch of graphs (shapes in the class docstring).

        Args:
            h, pos, edge_index, edge_attr, vel, edge_shift: see Shapes above; ``edge_index[0]`` is the source
                ``j`` and ``edge_index[1]`` the target ``i`` of each message.
            batch: the graph of each node (sorted), for the graph readout; ``None``: one graph.
            num_graphs: the number of graphs ``B``; read from ``batch`` when not given (outside the traced code
                under ``torch.compile``, so the compiled model stays one graph; with ``fullgraph=True`` pass it).

        Returns:
            :class:`EGNNOutput` ``(h, pos, vel, graph)``.
        """
        c = self.config
        if batch is not None and num_graphs is None and self.graph_head is not None and torch.compiler.is_compiling():
            # the graph count is a value of ``batch``: read it outside the traced code, before any operation, so
            # that torch.compile still makes one graph of the whole model (reading it in pool would break the
            # graph there, and the breaks would split the model into several graphs)
            num_graphs = count_graphs(batch)
        check_graph_inputs(
            h=h, pos=pos, edge_index=edge_index, in_features=c.in_channels, dtype=self.embedding.weight.dtype,
            edge_attr=edge_attr, edge_dim=c.edge_dim, vel=vel, require_vel=c.velocity, edge_shift=edge_shift,
        )
        if vel is not None and not c.velocity:
            raise ValueError("vel given but the model was built with velocity=False")
        if batch is not None:
            check_batch(batch, h.shape[0], num_graphs)
        elif num_graphs is not None and num_graphs != 1:
            raise ValueError(f"num_graphs={num_graphs} needs batch (the graph of each node); without batch the "
                             "input is one graph")
        edge_index = edge_index.long()
        node_attr = h if c.node_attr else None
        x = self.embedding(h)
        n_dense = self._dense_size(edge_index, h.shape[0]) if edge_shift is None else None
        count = None
        if c.update_coords and c.coord_agg == "mean" and n_dense is None:
            count = scatter_count(edge_index[1], h.shape[0], pos.dtype)  # shared by all layers
        v_out = None
        for layer in self.layers:
            args = (x, pos, edge_index, edge_attr, node_attr, count, vel, edge_shift, n_dense)
            if c.checkpoint and torch.is_grad_enabled():
                x, pos, v_out = activation_checkpoint(self._layer_step, layer, *args, use_reentrant=False)
            else:
                x, pos, v_out = self._layer_step(layer, *args)
        if self.node_head is not None:
            x = self.node_head[1](self.act(self.node_head[0](x)))
        graph = None
        if self.graph_head is not None:
            graph = self.pool(x, batch, num_graphs)
            graph = self.graph_head[1](self.act(self.graph_head[0](graph)))
        return EGNNOutput(x, pos, v_out, graph)

    @staticmethod
    def _layer_step(layer, x, pos, edge_index, edge_attr, node_attr, count, vel, edge_shift=None, n_dense=None):
        if n_dense is not None:
            if isinstance(layer, EGCLVel):
                return layer.propagate_vel_dense(x, pos, edge_index, n_dense, vel, edge_attr, node_attr)
            x, delta = layer.propagate_dense(x, pos, edge_index, n_dense, edge_attr, node_attr)
            return x, (pos + delta if delta is not None else pos), None
        if isinstance(layer, EGCLVel):
            x, pos, v, _ = layer.propagate_vel(x, pos, edge_index, vel, edge_attr, node_attr, count, edge_shift)
            return x, pos, v
        x, delta, _ = layer.propagate(x, pos, edge_index, edge_attr, node_attr, count, edge_shift)
        return x, (pos + delta if delta is not None else pos), None

    def _dense_size(self, edge_index: Tensor, num_nodes: int) -> int | None:
        """``n`` if ``edge_index`` is ``fully_connected_edges([n] * B)`` with ``n >= 2`` and the dense path applies."""
        c = self.config
        if not c.dense or not c.fast or c.chunk_size is not None or torch.compiler.is_compiling():
            return None
        num_edges = edge_index.shape[1]
        if num_edges == 0 or num_edges % num_nodes:
            return None
        n = num_edges // num_nodes + 1
        if num_nodes % n:
            return None
        key = (num_nodes, n, edge_index.device)
        if self._dense_edges is None or self._dense_edges[0] != key:
            self._dense_edges = (key, fully_connected_edges([n] * (num_nodes // n), device=edge_index.device))
        return n if torch.equal(edge_index, self._dense_edges[1]) else None

    def pool(self, x: Tensor, batch: Tensor | None, num_graphs: int | None = None) -> Tensor:
        """Invariant per-graph pooling (sum or mean, ``readout``) of node values."""
        if batch is None:
            batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            num_graphs = 1
        elif num_graphs is None:
            num_graphs = int(batch.max()) + 1
        if self.config.readout == "sum":
            return scatter_sum(x, batch, num_graphs)
        return scatter_mean(x, batch, num_graphs)


@torch.compiler.disable
def count_graphs(batch: Tensor) -> int:
    """The number of graphs of a (sorted) ``batch`` vector, ``max + 1`` (0 when empty); never traced by
    ``torch.compile``, so that :class:`EGNN` called with ``batch`` but without ``num_graphs`` still compiles to one
    graph."""
    return int(batch.max()) + 1 if batch.numel() else 0
