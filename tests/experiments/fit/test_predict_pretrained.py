"""``egnn predict --model NAME|PATH FILE --out OUT``: pretrained names and checkpoint paths, and one-line errors."""

import shutil

import numpy as np
import pytest

pytest.importorskip("ase")
import ase.io  # noqa: E402
from ase import Atoms  # noqa: E402

from egnn import pretrained  # noqa: E402
from egnn.atoms.data import read_dataset  # noqa: E402
from egnn.experiments.cli import main  # noqa: E402
from tests.pretrained_fixtures import flip_byte, tiny_model, write_molecules  # noqa: E402


@pytest.fixture(scope="module")
def shelf(tmp_path_factory):
    """A folder of pretrained models (``mlp-homo``, ``sum-u0``) and a file of molecules."""
    root = tmp_path_factory.mktemp("pretrained")
    models = {"mlp-homo": tiny_model("mlp"), "sum-u0": tiny_model("sum", seed=1)}
    for name, model in models.items():
        pretrained.export_pretrained(model, name, {"target": model.config.target}, folder=root / "models")
    write_molecules(root / "mol.extxyz")
    return root, models


@pytest.fixture
def env(shelf, monkeypatch):
    """``$EGNN_PRETRAINED_DIR`` pointing at the shelf's models."""
    monkeypatch.setenv(pretrained.ENV_DIR, str(shelf[0] / "models"))
    return shelf


@pytest.mark.parametrize("name", ["mlp-homo", "sum-u0"])
@pytest.mark.parametrize("form", ["name", "path", "old-form"])
def test_predict_equals_model_predict(env, tmp_path, capsys, name, form):
    root, models = env
    mol, out = str(root / "mol.extxyz"), str(tmp_path / "pred.xyz")
    path = str(root / "models" / f"{name}.safetensors")
    argv = {"name": ["predict", "--model", name, mol, "--out", out],
            "path": ["predict", "--model", path, "--data", mol, "--out", out, "--device", "cpu"],
            "old-form": ["predict", path, "--data", mol, "--out", out]}[form]
    assert main(argv) == 0, capsys.readouterr().err
    model = models[name]
    key = f"{model.config.target}_pred"
    frames = ase.io.read(out, index=":")
    expected = model.predict(read_dataset(mol, energy_key=None, require_targets=False))["energy"]
    assert len(frames) == len(expected) == 6
    np.testing.assert_allclose([a.info[key] for a in frames], expected, rtol=0, atol=1e-6)
    # the molecules themselves are copied unchanged
    np.testing.assert_array_equal(np.concatenate([a.numbers for a in frames]),
                                  np.concatenate([a.numbers for a in ase.io.read(mol, index=":")]))


def one_line_error(capsys, argv, *needles):
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("egnn: error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_bad_inputs_give_one_line_and_exit_2(env, tmp_path, capsys):
    root, _ = env
    mol, out = str(root / "mol.extxyz"), str(tmp_path / "pred.xyz")
    good = Atoms("CH4", positions=np.random.default_rng(0).normal(size=(5, 3)))
    # unknown model name: the available ones are listed
    one_line_error(capsys, ["predict", "--model", "nope", mol, "--out", out], "'nope'",
                   "available: mlp-homo, sum-u0")
    # an element the model was not trained on: the frame and the element are named
    ase.io.write(str(tmp_path / "cl.xyz"), [good, Atoms("CH3Cl", positions=np.eye(5, 3) * 1.5)])
    one_line_error(capsys, ["predict", "--model", "sum-u0", str(tmp_path / "cl.xyz"), "--out", out],
                   "cl.xyz: frame 1: key 'numbers'", "Cl (Z=17)", "trained on: H, C, N, O, F")
    # NaN / inf positions: the frame is named
    for value in (np.nan, np.inf):
        bad = good.copy()
        bad.positions[2, 1] = value
        ase.io.write(str(tmp_path / "nan.xyz"), [good, good, bad])
        one_line_error(capsys, ["predict", "--model", "mlp-homo", str(tmp_path / "nan.xyz"), "--out", out],
                       "nan.xyz: frame 2: key 'positions': contains NaN/Inf")
    # empty files: zero bytes, or nothing but blank lines
    (tmp_path / "empty.xyz").write_text("")
    one_line_error(capsys, ["predict", "--model", "mlp-homo", str(tmp_path / "empty.xyz"), "--out", out],
                   "empty.xyz: the file is empty (0 frames)")
    (tmp_path / "blank.xyz").write_text("\n\n")
    one_line_error(capsys, ["predict", "--model", "mlp-homo", str(tmp_path / "blank.xyz"), "--out", out],
                   "blank.xyz: no frames")
    one_line_error(capsys, ["predict", "--model", "mlp-homo", str(tmp_path / "missing.xyz"), "--out", out],
                   "missing.xyz: file not found")
    # exactly one model and one data file
    one_line_error(capsys, ["predict", "--model", "mlp-homo", mol, mol, "--out", out], "exactly one",
                   "data files given: ")
    one_line_error(capsys, ["predict", "--model", "mlp-homo", "--out", out], "exactly one", "given: none")
    one_line_error(capsys, ["predict", "--model", "mlp-homo", str(root / "models" / "sum-u0"), "--data", mol,
                            "--out", out], "exactly one")
    one_line_error(capsys, ["predict", "--data", mol, "--out", out], "no model", "--model")
    one_line_error(capsys, ["predict", "--model", str(tmp_path / "nothing"), mol, "--out", out],
                   "no run folder or checkpoint at", "available: mlp-homo, sum-u0")
    assert not (tmp_path / "pred.xyz").exists()


def test_a_corrupt_pretrained_file_is_one_line(shelf, tmp_path, capsys, monkeypatch):
    root, _ = shelf
    shutil.copytree(root / "models", tmp_path / "models")
    monkeypatch.setenv(pretrained.ENV_DIR, str(tmp_path / "models"))
    flip_byte(tmp_path / "models" / "mlp-homo.safetensors")
    one_line_error(capsys, ["predict", "--model", "mlp-homo", str(root / "mol.extxyz"), "--out",
                            str(tmp_path / "p.xyz")], "mlp-homo.safetensors: SHA-256 mismatch")
    assert not (tmp_path / "p.xyz").exists()


def test_no_pretrained_models_is_said(shelf, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(pretrained.ENV_DIR, str(tmp_path / "none"))
    one_line_error(capsys, ["predict", "--model", "qm9-homo", str(shelf[0] / "mol.extxyz"), "--out",
                            str(tmp_path / "p.xyz")], "no pretrained model 'qm9-homo' (available: none shipped)")
