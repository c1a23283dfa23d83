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


@pytest.mark.parametrize("name", SHIPPED)
def test_predict_with_a_shipped_name_equals_the_library_call(name: str, full_qm9: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import ase
    import ase.io
    import numpy as np

    from egnn.atoms.data import from_atoms_list
    from egnn.experiments.cli import main
    from egnn.experiments.qm9.atoms import split_rows

    model = pretrained.load_pretrained(name, folder=pretrained.PACKAGE_DIR)
    data = qm9.load(full_qm9, progress=False)
    rows = split_rows(data, full_qm9)["test"][:3]
    frames = [ase.Atoms(numbers=data.molecule(int(r)).z, positions=data.molecule(int(r)).pos) for r in rows]
    ase.io.write(tmp_path / "mols.xyz", frames, format="extxyz")
    monkeypatch.delenv(pretrained.ENV_DIR, raising=False)  # the name resolves to the package's folder
    assert main(["predict", "--model", name, str(tmp_path / "mols.xyz"), "--out", str(tmp_path / "p.xyz")]) == 0
    capsys.readouterr()
    target = model.config.target
    got = [a.info[f"{target}_pred"] for a in ase.io.read(tmp_path / "p.xyz", index=":")]
    # the library call on the positions the file holds (extxyz keeps 8 decimals: a float32 dipole norm moves by ~1e-6)
    written = from_atoms_list(ase.io.read(tmp_path / "mols.xyz", index=":"), energy_key=None)
    expect = model.predict(written, forces=False)["energy"]
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)
