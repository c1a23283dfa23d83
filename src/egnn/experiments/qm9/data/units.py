"""Raw QM9 values to the paper's targets and units; parsed arrays to a :class:`QM9Data`."""

from __future__ import annotations

import numpy as np

from egnn.experiments.qm9.data.constants import ATOMREF, RAW_FIELDS, SPECIES, TARGETS, QM9DataError
from egnn.experiments.qm9.data.dataset import QM9Data, _gather_atoms


def convert_targets(raw: np.ndarray, z: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Raw QM9 values ([n_mol, 12], RAW_FIELDS order and units) -> targets (TARGET_NAMES order, paper units).

    For U0, U, H, G and Cv the per-molecule sum of atomic reference values is subtracted in the raw unit
    (Hartree, cal/mol K) before converting (Hartree -> meV: x 27211.4).
    """
    raw = np.asarray(raw, dtype=np.float64)
    n = len(offsets) - 1
    molecule_of_atom = np.repeat(np.arange(n), np.diff(offsets))
    out = np.empty((n, len(TARGETS)), dtype=np.float64)
    for j, target in enumerate(TARGETS):
        value = raw[:, RAW_FIELDS.index(target.raw)].copy()
        if target.atomref:
            table = np.zeros(max(SPECIES) + 1)
            for zz, ref in ATOMREF[target.name].items():
                table[zz] = ref
            value -= np.bincount(molecule_of_atom, weights=table[z], minlength=n)
        out[:, j] = value * target.scale
    return out


def _assemble(
    z: np.ndarray, pos: np.ndarray, n_atoms: np.ndarray, raw: np.ndarray, index: np.ndarray, meta: dict
) -> QM9Data:
    """Order molecules by GDB-9 index, check uniqueness, convert targets."""
    offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(n_atoms, out=offsets[1:])
    if np.any(np.diff(index) <= 0):
        order = np.argsort(index, kind="stable")
        atoms, offsets = _gather_atoms(offsets, order)
        z, pos, raw, index = z[atoms], pos[atoms], raw[order], index[order]
        duplicated = index[1:][np.diff(index) == 0]
        if len(duplicated):
            raise QM9DataError(
                f"duplicate GDB-9 indices in the source: {np.unique(duplicated)[:10].tolist()}"
            )
    targets = convert_targets(raw, z, offsets)
    meta = {**meta, "n_molecules": int(len(index)), "n_atoms": int(len(z))}
    return QM9Data(z.astype(np.uint8), pos.astype(np.float32), offsets, targets, index.astype(np.int64), meta)
