"""QM9 molecules as :class:`~egnn.atoms.data.AtomsData`, so the QM9 table trains the model and run layer of
``egnn fit`` (no file round trip: the arrays of the verified cache are used directly).

Targets are in the paper's units (:data:`~egnn.experiments.qm9.data.TARGETS`); for U0, U, H, G and Cv the QM9
atomic reference values are already subtracted (atomisation quantities, as in the paper's pipeline). A model with
the ``sum`` readout fits its own per-element references on top by least squares, so the subtraction does not change
what it can learn; it only makes its predictions atomisation quantities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from egnn.atoms.data import AtomsData
from egnn.experiments.qm9 import data as qm9

SPLITS = ("train", "valid", "test")


def to_atoms(data: qm9.QM9Data, rows: np.ndarray, target: str, source: str = "QM9") -> AtomsData:
    """Molecules ``rows`` of ``data`` (in that order) with ``target`` as the graph-level value."""
    rows = np.asarray(rows, dtype=np.int64)
    sub = data.subset(rows)
    f = len(sub)
    return AtomsData(
        z=sub.z.astype(np.int64), pos=sub.pos.astype(np.float64), offsets=sub.offsets.astype(np.int64),
        cell=np.zeros((f, 3, 3)), pbc=np.zeros((f, 3), dtype=bool),
        energy=sub.targets[:, qm9.target_index(target)].astype(np.float64).copy(), source=source,
        energy_key=target,
    )


def split_rows(data: qm9.QM9Data, data_dir: str | Path) -> dict[str, np.ndarray]:
    """Rows of the paper's train / valid / test split (``splits.npz`` of ``egnn qm9 prepare``, else recomputed with
    the same seed)."""
    try:
        by_index = qm9.load_splits(data_dir)
        return {name: data.rows_of(idx) for name, idx in by_index.items()}
    except qm9.CacheError:
        return qm9.make_splits(len(data), data.index)
    except KeyError as err:
        raise qm9.QM9DataError(f"{data_dir}/splits.npz does not match the cache ({err}); run "
                               f"egnn qm9 prepare --out {data_dir} --force") from None


def load_atoms_splits(data_dir: str | Path, target: str, max_train: int | None = None
                      ) -> dict[str, AtomsData]:
    """The paper's splits of the cache in ``data_dir`` for ``target`` (``max_train``: the first N training
    molecules only)."""
    data = qm9.load(data_dir, progress=False)
    rows = split_rows(data, data_dir)
    if max_train is not None:
        rows["train"] = rows["train"][:max_train]
    return {name: to_atoms(data, rows[name], target, source=f"QM9 {name} ({data_dir})") for name in SPLITS}
