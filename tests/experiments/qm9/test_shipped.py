"""Every shipped QM9 model (``egnn qm9 ship``) loads from the package, matches its SHA-256 and reproduces the MAE
its card recorded on the first 500 molecules of the test split (the full QM9 of the qm9pack package, prepared once
here; a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from egnn import pretrained
from egnn.experiments.qm9 import data as qm9

SHIPPED = [n for n in pretrained.available(folder=pretrained.PACKAGE_DIR) if n.startswith("qm9-")]


@pytest.fixture(scope="module")
def full_qm9(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if qm9.qm9pack_data_dir() is None:
        pytest.skip("qm9pack is not installed")
    out = tmp_path_factory.mktemp("qm9")
    qm9.prepare(out, progress=False)
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reproduces_its_recorded_slice_mae(name: str, full_qm9: Path) -> None:
    from egnn.experiments.qm9.fit import evaluate_rows
    from egnn.experiments.qm9.ship import SLICE

    card = pretrained.card(name, folder=pretrained.PACKAGE_DIR)
    model = pretrained.load_pretrained(name, folder=pretrained.PACKAGE_DIR)  # checks the SHA-256 first
    assert model.config.target == card["target"] and name == f"qm9-{card['target']}"
    mae, n = evaluate_rows(model, full_qm9, "test", limit=SLICE)
    assert n == card["slice"]["first"] == SLICE
    assert mae == pytest.approx(card["slice"]["mae"], rel=1e-5)
