"""``egnn qm9 export``: the cached QM9 as extended XYZ, for the generic ``egnn fit`` path (issue 14, item 7).

Every molecule becomes one frame: ``Properties=species:S:1:pos:R:3``, positions in Angstrom, ``pbc="F F F"``, and in
the comment line (``atoms.info`` once read by ASE) the twelve targets in the paper's units (:data:`~egnn.experiments.
qm9.data.TARGETS`: meV for energies; the atomic reference energies of QM9's atomref table already subtracted from
``U0``, ``U``, ``H``, ``G`` and ``Cv``, as in the paper's pipeline), the 1-based GDB-9 index ``gdb_index`` and the
paper split the molecule belongs to (``split=train|valid|test``).

The file is written directly (not through ``ase.io.write``, which takes minutes for 130,831 molecules) and
read back by :func:`ase.io.read` / :func:`egnn.atoms.data.load_dataset` like any extxyz file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from egnn.experiments.qm9 import data as qm9

SPLIT_NAMES = ("train", "valid", "test")
_SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


def export_extxyz(data: qm9.QM9Data, out: str | Path, split_of_row: np.ndarray | None = None,
                  rows: np.ndarray | None = None, progress: bool = False) -> Path:
    """Write molecules ``rows`` (default all) of ``data`` to ``out`` (refuses to overwrite; atomic rename).

    Args:
        data: the QM9 cache.
        out: the extxyz file to create.
        split_of_row: per row ``0/1/2`` (train/valid/test) or ``-1`` (none), written as ``split=...``.
        rows: which rows to write, in order.
        progress: tqdm bar.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out (nothing is overwritten)")
    rows = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    names = qm9.TARGET_NAMES
    try:
        with open(tmp, "w") as fh:
            for r in tqdm(rows, desc="export", unit="mol", disable=not progress, mininterval=1.0):
                a, b = int(data.offsets[r]), int(data.offsets[r + 1])
                info = " ".join(f"{name}={value!r}" for name, value in zip(names, data.targets[r].tolist()))
                split = ""
                if split_of_row is not None and split_of_row[r] >= 0:
                    split = f" split={SPLIT_NAMES[int(split_of_row[r])]}"
                fh.write(f"{b - a}\nProperties=species:S:1:pos:R:3 gdb_index={int(data.index[r])} {info}{split} "
                         f'pbc="F F F"\n')
                fh.writelines(f"{_SYMBOLS[int(z)]} {x!r} {y!r} {w!r}\n"
                              for z, (x, y, w) in zip(data.z[a:b], data.pos[a:b].astype(np.float64).tolist()))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def split_labels(data: qm9.QM9Data, data_dir: str | Path) -> np.ndarray:
    """Per row: 0 train, 1 valid, 2 test (the paper's split from ``splits.npz``, else recomputed), -1 none."""
    try:
        by_index = qm9.load_splits(data_dir)
        rows = {name: data.rows_of(idx) for name, idx in by_index.items()}
    except qm9.CacheError:
        rows = qm9.make_splits(len(data), data.index)
    labels = np.full(len(data), -1, dtype=np.int64)
    for k, name in enumerate(SPLIT_NAMES):
        labels[rows[name]] = k
    return labels
