"""Equivariance checks for graph models: ``assert_equivariant`` under O(n), translations and permutations.

Inputs are transformed by a random orthogonal ``Q`` (including reflections, ``det Q = -1``), a random
translation ``g`` and a random permutation of the nodes within each graph:
``pos -> P (pos Q^T + g)``, ``vel -> P vel Q^T``, node features ``-> P h``, ``edge_index -> P``-relabelled
(edge order, and so ``edge_attr``, unchanged). Outputs must transform the same way, by their type:

- ``"scalar"``: per-node invariant (``P out``);
- ``"position"``: per-node position (``P (out Q^T + g)``);
- ``"vector"``: per-node translation-invariant vector (``P out Q^T``);
- ``"graph"``: per-graph invariant (unchanged);
- ``"edge"``: per-edge invariant (unchanged, edges keep their order);
- ``"edge_vector"``: per-edge translation-invariant vector (``out Q^T``, edges keep their order), e.g. the
  periodic image offsets ``edge_shift``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
_TUPLE_TYPES = ("scalar", "position", "vector", "graph")
_INPUT_TYPES = {
    "h": "scalar", "node_attr": "scalar", "pos": "position", "vel": "vector", "edge_attr": "edge",
    "edge_shift": "edge_vector",
}


def random_orthogonal(
    n: int, reflect: bool | None = None, *, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
) -> Tensor:
    """A Haar-random ``n x n`` orthogonal matrix; ``reflect`` forces ``det = -1`` (True) or ``+1`` (False)."""
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar measure
    if reflect is not None and (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q.to(dtype=dtype, device=device)


def _perm_within_graphs(num_nodes: int, batch: Tensor | None, generator: torch.Generator) -> Tensor:
    """Random permutation that keeps each graph's nodes contiguous (so a sorted ``batch`` stays sorted)."""
    if batch is None:
        return torch.randperm(num_nodes, generator=generator)
    batch = batch.cpu()
    perm = torch.empty(num_nodes, dtype=torch.long)
    for g in torch.unique(batch).tolist():
        idx = (batch == g).nonzero().flatten()
        perm[idx] = idx[torch.randperm(idx.numel(), generator=generator)]
    return perm


def _as_dict(out: Any, output_types: Mapping[str, str] | None) -> tuple[dict[str, Tensor], dict[str, str]]:
    if isinstance(out, Tensor):
        out = (out,)
    if isinstance(out, Mapping):
        if output_types is None:
            raise ValueError("output_types is required when fn returns a dict")
        return {k: v.detach() for k, v in out.items() if v is not None}, dict(output_types)
    if hasattr(out, "_fields"):  # NamedTuple such as EGNNOutput
        d = {k: v.detach() for k, v in zip(out._fields, out) if v is not None}
        types = dict(output_types or {"h": "scalar", "pos": "position", "vel": "vector", "graph": "graph"})
        return d, types
    d = {f"out{i}": v.detach() for i, v in enumerate(out) if v is not None}
    types = dict(output_types or {f"out{i}": t for i, t in enumerate(_TUPLE_TYPES)})
    return d, types


def _transform(x: Tensor, kind: str, q: Tensor, g: Tensor, perm: Tensor | None) -> Tensor:
    if kind in ("position", "vector", "edge_vector"):
        x = x @ q.t().to(x.dtype)
        if kind == "position":
            x = x + g.to(x.dtype)
    if perm is not None and kind in ("position", "vector", "scalar"):
        x = x[perm.to(x.device)]
    return x


def assert_equivariant(
    fn: Callable[..., Any],
    inputs: Mapping[str, Tensor | None],
    output_types: Mapping[str, str] | None = None,
    *,
    trials: int = 2,
    rotate: bool = True,
    reflect: bool = True,
    translate: bool = True,
    permute: bool = True,
    tol: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Check that ``fn(**inputs)`` is equivariant; raise ``AssertionError`` with the errors if not.

    Args:
        fn: called as ``fn(**inputs)``. Returns a tensor, a tuple (read as ``(scalar, position, vector,
            graph)``), a NamedTuple with fields ``h, pos, vel, graph`` (e.g. :class:`egnn.nn.EGNNOutput`),
            or a dict whose keys ``output_types`` describes.
        inputs: ``pos`` (required) and any of ``h``, ``vel``, ``edge_index``, ``edge_attr``, ``node_attr``,
            ``edge_shift`` (rotated with the positions), ``batch`` and other keyword arguments (passed unchanged).
        output_types: type of each output (see the module docstring), when the defaults do not fit.
        trials: number of random transformations; with ``reflect`` they alternate ``det Q = +1`` and ``-1``.
        rotate, reflect, translate, permute: which transformations to apply.
        tol: largest allowed error ``max|f(Tx) - T f(x)| / max(1, max|T f(x)|)``; default by dtype
            (float64 1e-10, float32 1e-4).
        seed: seed of the random transformations.

    Returns:
        The largest error seen for each output.

    >>> import torch
    >>> from egnn.nn import EGCL
    >>> from egnn.ops import fully_connected_edges
    >>> layer = EGCL(4, 8).double()
    >>> errors = assert_equivariant(lambda h, pos, edge_index: layer(h, pos, edge_index),
    ...                             {"h": torch.randn(5, 4).double(), "pos": torch.randn(5, 3).double(),
    ...                              "edge_index": fully_connected_edges([5])})
    >>> sorted(errors), max(errors.values()) < 1e-10
    (['out0', 'out1'], True)
    """
    pos = inputs["pos"]
    if pos is None:
        raise ValueError("inputs must contain 'pos'")
    if tol is None:
        tol = DEFAULT_TOL.get(pos.dtype, 1e-4)
    gen = torch.Generator().manual_seed(seed)
    n, dim = pos.shape
    base_out, types = _as_dict(fn(**inputs), output_types)
    unknown = {k for k in base_out if k not in types}
    if unknown:
        raise ValueError(f"no output type for {sorted(unknown)}")
    errors = {k: 0.0 for k in base_out}
    for t in range(trials):
        if rotate:
            q = random_orthogonal(dim, reflect=(t % 2 == 1) if reflect else False, generator=gen, dtype=pos.dtype)
        elif reflect:
            q = torch.eye(dim, dtype=pos.dtype)
            q[0, 0] = -1.0
        else:
            q = torch.eye(dim, dtype=pos.dtype)
        q = q.to(pos.device)
        g = (torch.randn(dim, generator=gen, dtype=torch.float64) * 3.0 if translate else torch.zeros(dim)).to(
            pos.device, pos.dtype
        )
        perm = _perm_within_graphs(n, inputs.get("batch"), gen) if permute else None
        new_inputs: dict[str, Any] = {}
        for key, val in inputs.items():
            if val is None or not isinstance(val, Tensor):
                new_inputs[key] = val
            elif key == "edge_index":
                inv = torch.empty_like(perm) if perm is not None else None
                if inv is not None:
                    inv[perm] = torch.arange(n)
                    val = inv.to(val.device)[val]
                new_inputs[key] = val
            elif key == "batch":
                new_inputs[key] = val[perm.to(val.device)] if perm is not None else val
            elif key in _INPUT_TYPES:
                new_inputs[key] = _transform(val, _INPUT_TYPES[key], q, g, perm)
            else:
                new_inputs[key] = val
        out, _ = _as_dict(fn(**new_inputs), output_types)
        for key, base in base_out.items():
            expected = _transform(base, types[key], q, g, perm)
            got = out[key]
            if got.shape != expected.shape:
                raise AssertionError(f"output {key!r}: shape {tuple(got.shape)} != {tuple(expected.shape)}")
            if not bool(torch.isfinite(got).all()) or not bool(torch.isfinite(expected).all()):
                raise AssertionError(f"output {key!r} is not finite")
            scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
            err = float((got - expected).abs().max()) / scale if expected.numel() else 0.0
            errors[key] = max(errors[key], err)
    bad = {k: e for k, e in errors.items() if e > tol}
    if bad:
        raise AssertionError(f"not equivariant (tol {tol:g}): " + ", ".join(f"{k}: {e:.3g}" for k, e in bad.items()))
    return errors
