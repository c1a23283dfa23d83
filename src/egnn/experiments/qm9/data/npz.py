"""Crash-safe writing of ``.npz`` files (shared by the cache and the splits)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed npz via a temporary file + rename: a crash never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
