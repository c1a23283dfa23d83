"""Input checks shared by the layers and models: a clear ``ValueError`` naming the argument."""

from __future__ import annotations

import torch
from torch import Tensor


def _compiling() -> bool:
    # data-dependent checks would break torch.compile(fullgraph=True); the eager call already validated
    return bool(torch.compiler.is_compiling())


def check_finite(name: str, x: Tensor | None) -> None:
    if x is None or _compiling():
        return
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); inputs must be finite")


def check_graph_inputs(
    *,
    h: Tensor,
    pos: Tensor,
    edge_index: Tensor,
    in_features: int,
    dtype: torch.dtype,
    edge_attr: Tensor | None = None,
    edge_dim: int = 0,
    node_attr: Tensor | None = None,
    node_attr_dim: int = 0,
    vel: Tensor | None = None,
    require_vel: bool = False,
    edge_shift: Tensor | None = None,
) -> None:
    """Validate the tensors of one forward call against the module's expected sizes and dtype."""
    if not isinstance(h, Tensor) or h.dim() != 2:
        raise ValueError(f"h must have shape [num_nodes, {in_features}], got {_shape(h)}")
    n = h.shape[0]
    if n == 0:
        raise ValueError("h has 0 nodes; a graph needs at least one node")
    if h.shape[1] != in_features:
        raise ValueError(f"h must have shape [num_nodes, {in_features}], got {tuple(h.shape)}")
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[0] != n or pos.shape[1] < 1:
        raise ValueError(f"pos must have shape [num_nodes={n}, dim], got {_shape(pos)}")
    for name, x in (("h", h), ("pos", pos)):
        if x.dtype != dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but the module's parameters are {dtype}")
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, num_edges], got {_shape(edge_index)}")
    if edge_index.dtype.is_floating_point or edge_index.dtype.is_complex or edge_index.dtype == torch.bool:
        raise ValueError(f"edge_index must be an integer tensor, got {edge_index.dtype}")
    num_edges = edge_index.shape[1]
    if not _compiling() and num_edges:
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"edge_index values must be in [0, num_nodes={n}), got range [{lo}, {hi}]")
    if edge_dim:
        if edge_attr is None:
            raise ValueError(f"edge_attr of shape [num_edges={num_edges}, {edge_dim}] is required")
        if edge_attr.dim() != 2 or edge_attr.shape != (num_edges, edge_dim):
            raise ValueError(f"edge_attr must have shape [num_edges={num_edges}, {edge_dim}], got {_shape(edge_attr)}")
        if edge_attr.dtype != dtype:
            raise ValueError(f"edge_attr has dtype {edge_attr.dtype} but the module's parameters are {dtype}")
    elif edge_attr is not None and edge_attr.numel():
        raise ValueError(f"edge_attr given but the module was built with edge_dim=0 (got {_shape(edge_attr)})")
    if node_attr_dim:
        if node_attr is None or node_attr.dim() != 2 or node_attr.shape != (n, node_attr_dim):
            raise ValueError(f"node_attr must have shape [num_nodes={n}, {node_attr_dim}], got {_shape(node_attr)}")
        if node_attr.dtype != dtype:
            raise ValueError(f"node_attr has dtype {node_attr.dtype} but the module's parameters are {dtype}")
    elif node_attr is not None:
        raise ValueError("node_attr given but the module was built with node_attr_dim=0")
    if require_vel and vel is None:
        raise ValueError(f"vel of shape [num_nodes={n}, {pos.shape[1]}] is required by the velocity layer")
    if vel is not None:
        if vel.shape != pos.shape:
            raise ValueError(f"vel must have the shape of pos {tuple(pos.shape)}, got {_shape(vel)}")
        if vel.dtype != dtype:
            raise ValueError(f"vel has dtype {vel.dtype} but the module's parameters are {dtype}")
    if edge_shift is not None:
        if not isinstance(edge_shift, Tensor) or edge_shift.dim() != 2 or edge_shift.shape != (num_edges, pos.shape[1]):
            raise ValueError(
                f"edge_shift must have shape [num_edges={num_edges}, dim={pos.shape[1]}], got {_shape(edge_shift)}"
            )
        if edge_shift.dtype != dtype:
            raise ValueError(f"edge_shift has dtype {edge_shift.dtype} but the module's parameters are {dtype}")
    for name, x in (("h", h), ("pos", pos), ("edge_attr", edge_attr), ("node_attr", node_attr), ("vel", vel),
                    ("edge_shift", edge_shift)):
        check_finite(name, x)


def check_batch(batch: Tensor, num_nodes: int, num_graphs: int | None = None) -> None:
    """``batch``: integer ``[num_nodes]`` with values in ``[0, num_graphs)``."""
    if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.shape[0] != num_nodes:
        raise ValueError(f"batch must have shape [num_nodes={num_nodes}], got {_shape(batch)}")
    if batch.dtype.is_floating_point or batch.dtype.is_complex or batch.dtype == torch.bool:
        raise ValueError(f"batch must be an integer tensor, got {batch.dtype}")
    if num_graphs is not None and num_graphs < 1:
        raise ValueError(f"num_graphs must be >= 1, got {num_graphs}")
    if _compiling() or not batch.numel():
        return
    lo, hi = int(batch.min()), int(batch.max())
    if lo < 0 or (num_graphs is not None and hi >= num_graphs):
        bound = f"num_graphs={num_graphs}" if num_graphs is not None else "num_graphs"
        raise ValueError(f"batch values must be in [0, {bound}), got range [{lo}, {hi}]")


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
