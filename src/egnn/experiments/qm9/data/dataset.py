"""The in-memory data set: molecules as concatenated atom arrays (:class:`QM9Data`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from egnn.experiments.qm9.data.constants import ARRAY_DTYPES, TARGET_NAMES, TARGETS, target_index


@dataclass(frozen=True, eq=False)
class Molecule:
    """One molecule (views into the dataset arrays)."""

    index: int
    z: np.ndarray
    pos: np.ndarray
    targets: np.ndarray

    def target(self, name: str) -> float:
        return float(self.targets[target_index(name)])


@dataclass(eq=False, repr=False)
class QM9Data:
    """Molecules as concatenated atom arrays; molecule ``i`` owns atoms ``offsets[i]:offsets[i + 1]``."""

    z: np.ndarray  # uint8 [n_atoms]
    pos: np.ndarray  # float32 [n_atoms, 3], Angstrom
    offsets: np.ndarray  # int64 [n_mol + 1]
    targets: np.ndarray  # float64 [n_mol, 12], TARGET_NAMES order, paper units
    index: np.ndarray  # int64 [n_mol], 1-based GDB-9 index
    meta: dict[str, Any] = field(default_factory=dict)

    target_names: ClassVar[tuple[str, ...]] = TARGET_NAMES

    def __post_init__(self) -> None:
        n = len(self.index)
        problems = []
        if self.offsets.shape != (n + 1,):
            problems.append(f"offsets shape {self.offsets.shape} for {n} molecules")
        elif n and (
            self.offsets[0] != 0 or self.offsets[-1] != len(self.z) or np.any(np.diff(self.offsets) < 1)
        ):
            problems.append("offsets are not 0 .. n_atoms with at least one atom per molecule")
        if self.pos.shape != (len(self.z), 3):
            problems.append(f"pos shape {self.pos.shape} for {len(self.z)} atoms")
        if self.targets.shape != (n, len(TARGETS)):
            problems.append(f"targets shape {self.targets.shape}, expected {(n, len(TARGETS))}")
        if problems:
            raise ValueError("inconsistent QM9Data: " + "; ".join(problems))

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"QM9Data({len(self)} molecules, {len(self.z)} atoms)"

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per molecule (int64 [n_mol])."""
        return np.diff(self.offsets)

    def molecule(self, i: int) -> Molecule:
        """Molecule at row ``i`` (not GDB index ``i``; see :meth:`rows_of`)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"molecule {i} out of range for {n} molecules")
        i %= n
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return Molecule(int(self.index[i]), self.z[a:b], self.pos[a:b], self.targets[i])

    def target(self, name: str) -> np.ndarray:
        """Column of one target (float64 [n_mol])."""
        return self.targets[:, target_index(name)]

    def subset(self, rows: Sequence[int] | np.ndarray) -> QM9Data:
        """New dataset of the given rows (integer positions or boolean mask), in that order; numpy only."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {rows.shape} for {len(self)} molecules")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} molecules")
        rows = rows % max(len(self), 1)
        atoms, offsets = _gather_atoms(self.offsets, rows)
        meta = {k: v for k, v in self.meta.items() if k not in ("arrays", "n_molecules", "n_atoms")}
        meta["subset_of"] = len(self)
        return QM9Data(self.z[atoms], self.pos[atoms], offsets, self.targets[rows], self.index[rows], meta)

    def rows_of(self, gdb_index: Iterable[int] | np.ndarray) -> np.ndarray:
        """Row positions of the given GDB-9 indices (raises KeyError if one is absent)."""
        query = np.asarray(gdb_index, dtype=np.int64).reshape(-1)
        order = np.argsort(self.index, kind="stable")
        ordered = self.index[order]
        where = np.minimum(np.searchsorted(ordered, query), max(len(ordered) - 1, 0))
        found = ordered[where] == query if len(ordered) else np.zeros(len(query), bool)
        if not np.all(found):
            raise KeyError(f"GDB-9 indices not in this dataset: {query[~found][:10].tolist()}")
        return order[where]

    def arrays(self) -> dict[str, np.ndarray]:
        """The five arrays with their cache dtypes (C-contiguous)."""
        return {
            name: np.ascontiguousarray(getattr(self, name), dtype=dtype)
            for name, dtype in ARRAY_DTYPES.items()
        }


def _gather_atoms(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atom indices of ``rows`` (concatenated, in row order) and the matching new offsets."""
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    atoms = np.repeat(starts - new_offsets[:-1], counts) + np.arange(new_offsets[-1], dtype=np.int64)
    return atoms, new_offsets
