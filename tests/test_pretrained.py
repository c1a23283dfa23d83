"""egnn.pretrained: export to a folder, checked loading, the index's rules, and every model the package ships."""

import json

import numpy as np
import pytest
import torch

import egnn
from egnn import pretrained
from egnn.atoms.data import file_sha256
from egnn.atoms.model import save_model
from egnn.checkpoint import CheckpointError, load_checkpoint
from tests.pretrained_fixtures import flip_byte, molecule_data, tiny_model

CARD = {"target": "homo", "unit": "eV", "split": "synthetic", "test_mae": 0.5, "command": "pytest"}


@pytest.fixture
def folder(tmp_path):
    """A folder holding ``mlp-homo`` and ``sum-u0``; the models are in ``folder.models``."""
    root = tmp_path / "models"
    models = {"mlp-homo": tiny_model("mlp"), "sum-u0": tiny_model("sum", seed=1)}
    for name, model in models.items():
        pretrained.export_pretrained(model, name, {**CARD, "target": model.config.target}, folder=root)
    return root, models


@pytest.mark.parametrize("name", ["mlp-homo", "sum-u0"])
def test_export_then_load_predicts_the_same(folder, name):
    root, models = folder
    data = molecule_data()
    model = pretrained.load_pretrained(name, folder=root)
    assert not model.training and model.config.readout == models[name].config.readout
    expected = models[name].predict(data)["energy"]
    np.testing.assert_array_equal(model.predict(data)["energy"], expected)
    assert model.meta["pretrained"] == {"name": name, "card": pretrained.card(name, folder=root)}
    # the index says what the file is
    index = json.loads((root / "index.json").read_text())
    assert index["format"] == pretrained.FORMAT and list(index["models"]) == ["mlp-homo", "sum-u0"]
    entry = index["models"][name]
    assert entry["file"] == f"{name}.safetensors" and pretrained.model_path(name, folder=root) == root / entry["file"]
    assert entry["sha256"] == file_sha256(root / entry["file"])
    assert entry["card"]["target"] == models[name].config.target
    assert pretrained.available(folder=root) == ["mlp-homo", "sum-u0"]
    assert sorted(p.name for p in root.iterdir()) == ["index.json", "mlp-homo.safetensors", "sum-u0.safetensors"]


def test_weights_are_stored_as_float32_and_the_callers_model_is_untouched(tmp_path):
    model = tiny_model("sum").double()
    pretrained.export_pretrained(model, "u0", CARD, folder=tmp_path)
    tree, _ = load_checkpoint(tmp_path / "u0.safetensors")
    assert {v.dtype for v in tree["model"].values()} == {torch.float32}
    assert next(model.parameters()).dtype == torch.float64
    back = pretrained.load_pretrained("u0", folder=tmp_path, dtype=torch.float64)
    data = molecule_data()
    np.testing.assert_allclose(back.predict(data)["energy"], model.predict(data)["energy"], rtol=1e-5)


def test_export_from_a_checkpoint_path(tmp_path):
    model = tiny_model("mlp")
    save_model(model, tmp_path / "run" / "best")
    entry = pretrained.export_pretrained(tmp_path / "run", "from-run", CARD, folder=tmp_path / "models")
    assert entry["card"] == CARD and entry["sha256"] == file_sha256(tmp_path / "models" / "from-run.safetensors")
    data = molecule_data()
    np.testing.assert_array_equal(pretrained.load_pretrained("from-run", folder=tmp_path / "models").predict(data)
                                  ["energy"], model.predict(data)["energy"])


def test_a_flipped_byte_or_a_missing_file_is_refused(folder):
    root, _ = folder
    path = root / "sum-u0.safetensors"
    expected = pretrained.read_index(root)["models"]["sum-u0"]["sha256"]
    flip_byte(path)
    with pytest.raises(CheckpointError, match="SHA-256 mismatch") as err:
        pretrained.load_pretrained("sum-u0", folder=root)
    assert str(path) in str(err.value) and expected in str(err.value) and file_sha256(path) in str(err.value)
    pretrained.load_pretrained("mlp-homo", folder=root)  # the other model is unaffected
    path.unlink()
    with pytest.raises(CheckpointError, match="sum-u0.safetensors: file of pretrained model 'sum-u0' not found"):
        pretrained.load_pretrained("sum-u0", folder=root)


def test_unknown_names_list_the_available_ones(folder, tmp_path):
    root, _ = folder
    for fn in (pretrained.load_pretrained, pretrained.card, pretrained.model_path):
        with pytest.raises(ValueError, match=r"^unknown pretrained model 'nope'; available: mlp-homo, sum-u0$"):
            fn("nope", folder=root)
    with pytest.raises(ValueError, match=r"^unknown pretrained model 'nope'; available: none shipped$"):
        pretrained.load_pretrained("nope", folder=tmp_path / "empty")
    assert pretrained.available(folder=tmp_path / "empty") == []


def test_nothing_is_overwritten_unless_asked(folder):
    root, models = folder
    before = (root / "mlp-homo.safetensors").read_bytes(), (root / "index.json").read_bytes()
    with pytest.raises(FileExistsError, match="'mlp-homo' already exists.*overwrite=True"):
        pretrained.export_pretrained(models["sum-u0"], "mlp-homo", CARD, folder=root)
    assert ((root / "mlp-homo.safetensors").read_bytes(), (root / "index.json").read_bytes()) == before
    # a file without an index entry (an interrupted export) is not replaced silently either
    (root / "stray.safetensors").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="file stray.safetensors"):
        pretrained.export_pretrained(models["sum-u0"], "stray", CARD, folder=root)
    entry = pretrained.export_pretrained(models["sum-u0"], "mlp-homo", {"v": 2}, folder=root, overwrite=True)
    assert pretrained.card("mlp-homo", folder=root) == {"v": 2}
    assert entry["sha256"] == file_sha256(root / "mlp-homo.safetensors") != file_sha256(root / "sum-u0.safetensors")
    assert pretrained.load_pretrained("mlp-homo", folder=root).config.readout == "sum"
    assert pretrained.available(folder=root) == ["mlp-homo", "sum-u0"]


@pytest.mark.parametrize("name", ["", "a+b", "-x", "_x", ".x", "a/b", "a b", "x.json", "x.safetensors", "a" * 101])
def test_invalid_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="invalid pretrained model name") as err:
        pretrained.export_pretrained(tiny_model("mlp"), name, CARD, folder=tmp_path)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_cards_must_be_plain_json(tmp_path):
    with pytest.raises(ValueError, match="card must be plain JSON"):
        pretrained.export_pretrained(tiny_model("mlp"), "m", {"mae": float("nan")}, folder=tmp_path)
    with pytest.raises(ValueError, match="card must be plain JSON"):
        pretrained.export_pretrained(tiny_model("mlp"), "m", {"split": {1, 2}}, folder=tmp_path)
    assert not list(tmp_path.iterdir())


def test_non_finite_weights_are_not_exported(tmp_path):
    model = tiny_model("mlp")
    with torch.no_grad():
        model.embedding.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite weights"):
        pretrained.export_pretrained(model, "m", CARD, folder=tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "other", "models": {}}', "not a pretrained-model index"),
    ('{"format": "egnn-pretrained/1", "models": {"m": {"file": "../m.safetensors", "sha256": "' + "0" * 64
     + '", "card": {}}}}', "invalid file name"),
    ('{"format": "egnn-pretrained/1", "models": {"m": {"file": "m.safetensors", "sha256": "abc", "card": {}}}}',
     "invalid sha256"),
    ('{"format": "egnn-pretrained/1", "models": {"M+": {"file": "M.safetensors", "sha256": "' + "0" * 64
     + '", "card": {}}}}', "invalid model name"),
])
def test_a_malformed_index_is_reported(tmp_path, text, message):
    (tmp_path / "index.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        pretrained.available(folder=tmp_path)
    with pytest.raises(CheckpointError, match=message):  # and nothing is written over it
        pretrained.export_pretrained(tiny_model("mlp"), "m", CARD, folder=tmp_path)
    assert (tmp_path / "index.json").read_text() == text


def test_the_environment_variable_chooses_the_default_folder(folder, monkeypatch):
    root, models = folder
    monkeypatch.setenv(pretrained.ENV_DIR, str(root))
    assert pretrained.default_folder() == root and pretrained.available() == ["mlp-homo", "sum-u0"]
    data = molecule_data()
    np.testing.assert_array_equal(egnn.load_pretrained("sum-u0").predict(data)["energy"],
                                  models["sum-u0"].predict(data)["energy"])
    monkeypatch.delenv(pretrained.ENV_DIR)
    assert pretrained.default_folder() == pretrained.PACKAGE_DIR


# ---------------------------------------------------------------------------------------- the shipped models


def test_the_shipped_index_is_valid():
    index = pretrained.read_index(pretrained.PACKAGE_DIR)
    assert index["format"] == pretrained.FORMAT
    shipped = {p.name for p in pretrained.PACKAGE_DIR.glob("*.safetensors")}
    assert shipped == {e["file"] for e in index["models"].values()}, "every shipped file has an index entry"


def test_the_shipped_models_leave_the_wheel_small():
    # the wheel must stay under 15 MB; the models may take at most 12 MB of it
    total = sum(p.stat().st_size for p in pretrained.PACKAGE_DIR.iterdir() if p.is_file())
    assert total < 12 * 2**20, f"shipped models take {total / 2**20:.1f} MB"


@pytest.mark.parametrize("name", pretrained.available(folder=pretrained.PACKAGE_DIR))
def test_shipped_model(name):
    path = pretrained.model_path(name, folder=pretrained.PACKAGE_DIR)
    assert path.is_file()
    assert file_sha256(path) == pretrained.read_index(pretrained.PACKAGE_DIR)["models"][name]["sha256"]
    model = pretrained.load_pretrained(name, folder=pretrained.PACKAGE_DIR)
    card = pretrained.card(name, folder=pretrained.PACKAGE_DIR)
    assert model.meta["pretrained"]["name"] == name
    if "target" in card:
        assert card["target"] == model.config.target


def test_every_shipped_qm9_model_states_its_training_domain():
    for name in pretrained.available(folder=pretrained.PACKAGE_DIR):
        d = pretrained.domain(name, folder=pretrained.PACKAGE_DIR)
        assert d == pretrained.QM9_DOMAIN, name
        line = pretrained.describe_domain(d)
        assert "H, C, N, O, F" in line and "29 atoms" in line and "9 heavy" in line and "B3LYP/6-31G(2df,p)" in line


def test_domain_note_names_what_lies_outside():
    note = pretrained.domain_note("qm9-U0", [[6, 1, 1, 1, 1], [6] * 10, [14, 1, 1, 1, 1], [1] * 30],
                                  folder=pretrained.PACKAGE_DIR)
    assert note.startswith("egnn: note: 3 of 4 structures lie outside the training domain of qm9-U0")
    assert "structure 1 has 10 atoms (10 heavy) and 2 more" in note and "\n" not in note
    assert pretrained.domain_note("qm9-U0", [[8, 1, 1]] * 3, folder=pretrained.PACKAGE_DIR) is None


def test_predict_with_a_pretrained_name_notes_structures_outside_its_domain(tmp_path, capsys, monkeypatch):
    """``egnn predict --model qm9-U0`` on C60 predicts it and says in one stderr line that it is an
    extrapolation; methane gives no note."""
    pytest.importorskip("ase")
    import ase.build
    import ase.io

    from egnn.experiments.cli import main

    monkeypatch.delenv(pretrained.ENV_DIR, raising=False)
    ase.io.write(tmp_path / "c60.xyz", ase.build.molecule("C60"), format="extxyz")
    ase.io.write(tmp_path / "ch4.xyz", ase.build.molecule("CH4"), format="extxyz")
    assert main(["predict", "--model", "qm9-U0", str(tmp_path / "c60.xyz"), "--out", str(tmp_path / "p.xyz")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("egnn: note: 1 of 1 structures lie outside the training domain")
    assert "structure 0 has 60 atoms (60 heavy)" in err[0]
    assert ase.io.read(tmp_path / "p.xyz").info["U0_pred"] != 0
    assert main(["predict", "--model", "qm9-U0", str(tmp_path / "ch4.xyz"), "--out", str(tmp_path / "q.xyz")]) == 0
    assert capsys.readouterr().err == ""
