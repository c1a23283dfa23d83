"""The paper's train / valid / test splits (Cormorant's), stored as GDB-9 indices in ``splits.npz``."""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from egnn.experiments.qm9.data.constants import N_TRAIN, SPLIT_SEED, SPLITS_NAME, TEST_FRACTION, CacheError
from egnn.experiments.qm9.data.dataset import QM9Data
from egnn.experiments.qm9.data.npz import _atomic_savez


def split_sizes(n_molecules: int) -> tuple[int, int, int]:
    """(train, valid, test): Cormorant's 100,000 / rest / int(0.1 N) -> 100,000 / 17,748 / 13,083 for QM9.

    For fewer than ~125k molecules (test subsets) train shrinks to N - 2 int(0.1 N) so valid keeps as many
    molecules as test; Cormorant itself only handles the full set.
    """
    n_test = int(TEST_FRACTION * n_molecules)
    n_train = max(0, min(N_TRAIN, n_molecules - 2 * n_test))
    return n_train, n_molecules - n_train - n_test, n_test


def make_splits(n_molecules: int, gdb_index: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
    """Paper splits as row positions into the molecules ordered by ascending GDB-9 index.

    Same as Cormorant: ``np.random.seed(0); perm = np.random.permutation(N)``, then the first 100,000
    entries of ``perm`` are train, the next 17,748 valid, the last 13,083 test (for N = 130,831). Uses a
    private ``RandomState(0)`` (identical stream) so the global numpy state is left alone.
    """
    gdb_index = np.asarray(gdb_index)
    if gdb_index.shape != (n_molecules,):
        raise ValueError(f"gdb_index has shape {gdb_index.shape}, expected ({n_molecules},)")
    if np.any(np.diff(gdb_index) <= 0):
        raise ValueError("gdb_index must be strictly increasing (molecules ordered by GDB-9 index)")
    n_train, n_valid, _ = split_sizes(n_molecules)
    perm = np.random.RandomState(SPLIT_SEED).permutation(n_molecules).astype(np.int64)
    return {
        "train": perm[:n_train],
        "valid": perm[n_train : n_train + n_valid],
        "test": perm[n_train + n_valid :],
    }


def write_splits(path: str | os.PathLike, data: QM9Data) -> Path:
    """Write ``splits.npz``: keys train / valid / test with 1-based GDB-9 indices in split order."""
    path = Path(path)
    splits = make_splits(len(data), data.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_savez(path, {name: data.index[rows].astype(np.int64) for name, rows in splits.items()})
    return path


def load_splits(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """GDB-9 indices per split from ``splits.npz`` (or its folder); rows via ``QM9Data.rows_of``."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".npz":
        path = path / SPLITS_NAME
    try:
        with np.load(path, allow_pickle=False) as npz:
            splits = {name: npz[name].astype(np.int64) for name in ("train", "valid", "test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise CacheError(
            f"cannot read QM9 splits {path} ({err}); run: egnn qm9 prepare --out {path.parent}"
        ) from err
    return splits
