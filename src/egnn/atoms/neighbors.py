"""Neighbour lists of atomic structures, with periodic images and their shift vectors.

Edge convention (the library's): ``edge_index[0]`` is the source ``j``, ``edge_index[1]`` the target ``i``. A
periodic edge also carries the integer lattice offset ``S_ij`` of the source's image; its Cartesian shift is
``s_ij = S_ij @ cell`` and the coordinate difference every layer uses is ``x_i - (x_j + s_ij)`` (the
``edge_shift`` argument of :class:`egnn.nn.EGCL`). This is the pair ``(i, j, S)`` of
``ase.neighborlist.neighbor_list("ijS", atoms, cutoff)`` (whose distance vector is ``x_j + S @ cell - x_i``).

The search wraps the atoms into the cell along the periodic directions, lays out every image within reach of the
cut-off (``ceil(cutoff / height)`` cells along each periodic direction, the height being the distance between
opposite faces) and queries a k-d tree, so it never allocates ``O(N^2)`` memory; the integer offsets are then
referred back to the unwrapped positions, so the result does not depend on where in the lattice the atoms sit.
"""

from __future__ import annotations

import itertools

import numpy as np

# molecules (no periodic direction) up to this size get their pairs from one dense distance matrix
DENSE_MAX_ATOMS = 256


class NeighborError(ValueError):
    """A structure and cut-off for which no valid neighbour list exists (one line, names the problem)."""


def cell_heights(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the cell, ``[3]`` (``volume / |a_l x a_m|``)."""
    cell = np.asarray(cell, dtype=np.float64)
    vol = abs(float(np.linalg.det(cell)))
    out = np.empty(3)
    for k in range(3):
        l, m = [x for x in range(3) if x != k]
        area = float(np.linalg.norm(np.cross(cell[l], cell[m])))
        out[k] = vol / area if area > 0 else 0.0
    return out


def complete_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The cell with its non-periodic rows replaced, if needed, by unit vectors orthogonal to the periodic ones,
    so that fractional coordinates along the periodic directions are defined (e.g. a slab given only ``a, b``).

    Raises:
        NeighborError: the periodic lattice vectors are linearly dependent (zero volume/area/length).
    """
    cell = np.array(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    scale = max(float(np.abs(cell).max()), 1.0)
    if abs(float(np.linalg.det(cell))) > 1e-9 * scale**3:
        return cell
    per = cell[pbc]
    if per.shape[0] and np.linalg.matrix_rank(per, tol=1e-9 * scale) < per.shape[0]:
        kind = {3: "volume", 2: "area", 1: "length"}[per.shape[0]]
        raise NeighborError(f"cell has zero {kind} along its periodic directions (pbc={pbc.tolist()})")
    # orthonormal complement of the periodic rows
    _, _, vt = np.linalg.svd(per if per.shape[0] else np.zeros((1, 3)))
    complement = vt[per.shape[0]:] if per.shape[0] else np.eye(3)
    out = cell.copy()
    for row, vec in zip(np.flatnonzero(~pbc), complement):
        out[row] = vec
    return out


def neighbor_list(
    pos: np.ndarray,
    cutoff: float | None,
    cell: np.ndarray | None = None,
    pbc: np.ndarray | tuple[bool, bool, bool] | bool = False,
    images: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges ``j -> i`` between atoms closer than ``cutoff``, across periodic boundaries.

    Args:
        pos: Cartesian positions ``[N, 3]``.
        cutoff: radius (strict, ``|x_j + s_ij - x_i| < cutoff``); ``None`` gives the complete graph on the atoms
            (all ordered pairs ``i != j``), which needs a non-periodic structure.
        cell: lattice vectors as rows ``[3, 3]`` (needed along periodic directions).
        pbc: periodic directions (one bool or three).
        images: use as many periodic images as the cut-off reaches (an atom may then meet another atom, or
            itself, several times). ``False`` allows at most one image per pair (the minimum-image convention)
            and raises :class:`NeighborError` if ``cutoff`` exceeds half the shortest cell height.

    Returns:
        ``edge_index`` ``[2, E]`` (int64; sorted by target, source, offset) and the integer lattice offsets
        ``S`` ``[E, 3]`` (int64) of each source image (Cartesian shift ``S @ cell``).
    """
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise NeighborError(f"pos must have shape [N, 3], got {pos.shape}")
    n = pos.shape[0]
    if not np.isfinite(pos).all():
        raise NeighborError("positions contain NaN/Inf")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if cutoff is None:
        if pbc.any():
            raise NeighborError("a periodic structure needs a cutoff (a complete graph has no periodic images)")
        i, j = np.nonzero(~np.eye(n, dtype=bool))
        return np.stack([j, i]).astype(np.int64), np.zeros((i.size, 3), dtype=np.int64)
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise NeighborError(f"cutoff must be a positive number, got {cutoff}")
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if n == 0:
        return np.zeros((2, 0), np.int64), np.zeros((0, 3), np.int64)
    if pbc.any():
        if not np.isfinite(cell).all():
            raise NeighborError("cell contains NaN/Inf")
        full = complete_cell(cell, pbc)
        heights = cell_heights(full)
        if not images:
            shortest = float(heights[pbc].min())
            if cutoff > shortest / 2:
                raise NeighborError(
                    f"cutoff {cutoff:g} is larger than half the shortest cell height ({shortest:g} / 2) and periodic "
                    "images are off; use images (the default) or a cutoff <= half the shortest height")
        frac = np.linalg.solve(full.T, pos.T).T
        offset = np.where(pbc, np.floor(frac), 0.0).astype(np.int64)  # atom = wrapped + offset @ cell
        wrapped = pos - offset @ full
        reach = np.where(pbc, np.ceil(cutoff / heights), 0).astype(np.int64)
    elif n <= DENSE_MAX_ATOMS:
        # a small molecule: all pairs at once (the k-d tree's set-up cost 0.07-0.2 ms for 9 atoms, this ~10 us);
        # row-major order is the (target, source) order below, and the distances are computed the same way
        vec = pos[None, :, :] - pos[:, None, :]  # [target, source]: x_j - x_i
        tgt, src = np.nonzero(((vec * vec).sum(-1) < cutoff * cutoff) & ~np.eye(n, dtype=bool))
        return np.stack([src, tgt]).astype(np.int64), np.zeros((src.size, 3), dtype=np.int64)
    else:
        full = cell
        offset = np.zeros((n, 3), dtype=np.int64)
        wrapped = pos
        reach = np.zeros(3, dtype=np.int64)
    shifts = np.array(list(itertools.product(*[range(-r, r + 1) for r in reach])), dtype=np.int64)  # [M, 3]
    from scipy.spatial import cKDTree

    image_pos = (wrapped[None, :, :] + (shifts @ full)[:, None, :]).reshape(-1, 3)
    tree = cKDTree(wrapped)
    pairs = tree.sparse_distance_matrix(cKDTree(image_pos), cutoff, output_type="ndarray")
    tgt = pairs["i"].astype(np.int64)
    k = pairs["j"].astype(np.int64)
    src = k % n
    s = shifts[k // n] - offset[src] + offset[tgt]  # refer the image offset back to the unwrapped positions
    # exact distances from the caller's positions: strict cut-off, no self pair
    vec = pos[src] + s @ full - pos[tgt]
    d2 = (vec * vec).sum(-1)
    keep = (d2 < cutoff * cutoff) & ~((src == tgt) & (s == 0).all(-1))
    src, tgt, s = src[keep], tgt[keep], s[keep]
    order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], src, tgt))
    src, tgt, s = src[order], tgt[order], s[order]
    if not images and pbc.any() and src.size:
        pair = tgt * n + src
        if np.unique(pair).size != pair.size:  # cannot happen below half the height; kept as a guard
            raise NeighborError("an atom pair meets more than one periodic image; enable images")
    # non-periodic directions never get offsets (their cell rows may have been completed)
    return np.stack([src, tgt]), s


def edge_vectors(pos: np.ndarray, edge_index: np.ndarray, shifts: np.ndarray, cell: np.ndarray | None) -> np.ndarray:
    """``x_i - (x_j + S_ij @ cell)`` for every edge ``[E, 3]`` (numpy; for checks and tests)."""
    src, tgt = edge_index
    shift = shifts @ (np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64))
    return pos[tgt] - (pos[src] + shift)
