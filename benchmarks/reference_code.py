"""Locate and load the paper's reference model code (vgsatorras/egnn) for side-by-side benchmarks and tests.

The code is never part of the package: it sits in ``shared/reference_egnn/`` beside the repository (or in a
folder named by ``EGNN_REFERENCE_DIR``). :func:`reference_dir` returns ``None`` when it is absent, and every caller
skips with a note then.

Weight porting (:func:`port_nbody_weights`, :func:`port_qm9_weights`) copies our parameters into the reference
modules, so that both compute the same function and their outputs can be compared (known-answer checks).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

ABSENT_NOTE = "reference code not found (shared/reference_egnn beside the repository, or EGNN_REFERENCE_DIR)"


def reference_dir() -> Path | None:
    """The reference code's folder, or ``None``: ``$EGNN_REFERENCE_DIR``, else ``shared/reference_egnn`` in the
    repository's parent folder or any folder above it (a git worktree sits one level deeper)."""
    env = os.environ.get("EGNN_REFERENCE_DIR")
    if env:
        p = Path(env)
        return p if (p / "n_body_system" / "model.py").is_file() else None
    root = Path(__file__).resolve().parents[1]
    for parent in root.parents:
        p = parent / "shared" / "reference_egnn"
        if (p / "n_body_system" / "model.py").is_file():
            return p
    return None


def _import(module: str) -> ModuleType | None:
    d = reference_dir()
    if d is None:
        return None
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
    __import__(module)
    return sys.modules[module]


def nbody_module() -> ModuleType | None:
    """``n_body_system.model`` of the reference (``EGNN_vel``), or ``None``."""
    return _import("n_body_system.model")


def qm9_module() -> ModuleType | None:
    """``qm9.models`` of the reference (the padded QM9 ``EGNN``), or ``None``."""
    return _import("qm9.models")


def gcl_module() -> ModuleType | None:
    """``models.gcl`` of the reference (``E_GCL``, ``E_GCL_vel``), or ``None``."""
    return _import("models.gcl")


@torch.no_grad()
def _copy(dst: nn.Linear, src: nn.Linear) -> None:
    dst.weight.copy_(src.weight)
    if dst.bias is not None:
        dst.bias.copy_(src.bias)


def port_nbody_weights(ref: nn.Module, ours: nn.Module) -> None:
    """Copy an ``EGNN(1, H, L, in_edge_nf=2, velocity=True)`` into a reference ``EGNN_vel`` of the same size."""
    _copy(ref.embedding, ours.embedding)
    for i, layer in enumerate(ours.layers):
        g = getattr(ref, f"gcl_{i}")
        for a, b in ((g.edge_mlp[0], layer.edge_mlp[0]), (g.edge_mlp[2], layer.edge_mlp[1]),
                     (g.node_mlp[0], layer.node_mlp[0]), (g.node_mlp[2], layer.node_mlp[1]),
                     (g.coord_mlp[0], layer.coord_mlp[0]), (g.coord_mlp[2], layer.coord_mlp[1]),
                     (g.coord_mlp_vel[0], layer.vel_mlp[0]), (g.coord_mlp_vel[2], layer.vel_mlp[1])):
            _copy(a, b)


def port_qm9_weights(ref: nn.Module, ours: nn.Module) -> None:
    """Copy our QM9 EGNN (``egnn.experiments.qm9.model.build_model``) into the reference ``qm9.models.EGNN``."""
    _copy(ref.embedding, ours.embedding)
    for i, layer in enumerate(ours.layers):
        g = getattr(ref, f"gcl_{i}")
        for a, b in ((g.edge_mlp[0], layer.edge_mlp[0]), (g.edge_mlp[2], layer.edge_mlp[1]),
                     (g.node_mlp[0], layer.node_mlp[0]), (g.node_mlp[2], layer.node_mlp[1]),
                     (g.att_mlp[0], layer.att_mlp[0])):
            _copy(a, b)
    _copy(ref.node_dec[0], ours.node_head[0])
    _copy(ref.node_dec[2], ours.node_head[1])
    _copy(ref.graph_dec[0], ours.graph_head[0])
    _copy(ref.graph_dec[2], ours.graph_head[1])


def padded_qm9_inputs(h: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor, num_graphs: int,
                      n_max: int | None = None) -> dict:
    """The reference QM9 trainer's padded layout of a batch: ``[B * n_max, *]`` nodes, all ``n_max^2 - n_max``
    ordered pairs of every padded molecule as ``[rows, cols]``, node and edge masks."""
    sizes = torch.bincount(batch, minlength=num_graphs)
    n_max = int(sizes.max()) if n_max is None else n_max
    first = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(batch.numel()) - first[batch]
    flat = batch * n_max + slot
    h0 = h.new_zeros(num_graphs * n_max, h.shape[1])
    x = pos.new_zeros(num_graphs * n_max, 3)
    node_mask = h.new_zeros(num_graphs * n_max, 1)
    h0[flat], x[flat], node_mask[flat] = h, pos, 1.0
    i, j = torch.meshgrid(torch.arange(n_max), torch.arange(n_max), indexing="ij")
    keep = i != j
    off = (torch.arange(num_graphs) * n_max).view(-1, 1)
    rows = (i[keep].view(1, -1) + off).flatten()
    cols = (j[keep].view(1, -1) + off).flatten()
    edge_mask = (node_mask[rows] * node_mask[cols])
    return {"h0": h0, "x": x, "edges": [rows, cols], "edge_attr": None, "node_mask": node_mask,
            "edge_mask": edge_mask, "n_nodes": n_max}
