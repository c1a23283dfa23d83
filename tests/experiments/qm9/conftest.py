"""Shared fixture of the QM9 tests: a verified cache of the first 300 molecules of the packaged data."""

from __future__ import annotations

from pathlib import Path

import pytest

from egnn.experiments.qm9 import data as qm9

N_SLICE = 300


@pytest.fixture(scope="session")
def slice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if qm9.qm9pack_data_dir() is None:
        pytest.skip("qm9pack is not installed")
    out = tmp_path_factory.mktemp("qm9slice")
    qm9.prepare(out, limit=N_SLICE, progress=False)
    return out
