"""QM9 on the atoms path (``egnn qm9 train --preset quick``, ``egnn qm9 table``): data conversion, recipes, invariance
on real molecules, a tiny run whose best checkpoint is an ordinary atoms model, and the resumable grid.

Everything runs on a 300-molecule slice of the packaged data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from egnn.atoms.graphs import AtomsGraphs
from egnn.experiments.qm9 import data as qm9
from egnn.experiments.qm9 import fit as qf
from egnn.experiments.qm9 import grid as qg
from egnn.experiments.qm9.atoms import load_atoms_splits, split_rows, to_atoms
from egnn.testing import assert_equivariant

N_SLICE = 300  # the slice of conftest.slice_dir
TINY = {"hidden_channels": 16, "num_layers": 2}


@pytest.fixture(scope="module")
def tiny_alpha(slice_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, qf.FitResult]:
    """alpha (sum readout with per-element references) for 8 epochs of a tiny model on ~230 molecules."""
    out = tmp_path_factory.mktemp("runs") / "alpha_tiny"
    result = qf.train_target("alpha", "quick", out, data_dir=slice_dir, hparams=TINY, epochs=8, batch_size=16,
                             eval_every=4, warmup_steps=10, lr=1e-2, progress=False, device="cpu")
    return out, result


def test_every_target_has_a_family_and_a_recipe() -> None:
    assert sorted(qf.FAMILY_OF) == sorted(qm9.TARGET_NAMES)
    quick = qf.PRESETS.get("quick")
    for target in qm9.TARGET_NAMES:
        opts = quick.model_options(target)
        extensive = qf.FAMILY_OF[target] in ("energy", "extensive")
        readout = {"mu": "dipole", "r2": "spatial"}.get(target, "sum" if extensive else "mlp")
        # least-squares per-element baselines: energies and extensive targets, and the spatial extent
        assert opts["readout"] == readout and opts["reference"] == (extensive or target == "r2")
        cfg = quick.train_config(target)
        assert cfg.epochs == 16 and cfg.batch_size == 32 and cfg.max_minutes is None and cfg.grad_clip == 10.0
        assert quick.recipe(target).loss == ("mse" if extensive or target == "r2" else "l1")
    with pytest.raises(ValueError, match="unknown QM9 target 'u0'"):
        quick.recipe("u0")


def test_quick_vector_is_the_quick_recipe_with_the_vector_model(slice_dir: Path) -> None:
    quick, vector = qf.PRESETS.get("quick"), qf.PRESETS.get("quick-vector")
    for target in ("U0", "homo", "mu"):
        opts = vector.model_options(target)
        assert opts == {**quick.model_options(target), "vector_channels": 8}
        assert vector.train_config(target) == quick.train_config(target)
    splits = load_atoms_splits(slice_dir, "U0")
    model = qf.build_model(splits["train"], {**vector.model_options("U0"), **TINY}, "U0")
    assert model.config.vector_channels == 8 and type(model.layers[0]).__name__ == "VectorEGCL"


def test_conversion_keeps_molecules_and_targets(slice_dir: Path) -> None:
    data = qm9.load(slice_dir, progress=False)
    rows = split_rows(data, slice_dir)
    assert sum(len(r) for r in rows.values()) == N_SLICE
    atoms = to_atoms(data, rows["test"], "U0")
    for k in (0, len(rows["test"]) - 1):
        mol = data.molecule(int(rows["test"][k]))
        fr = atoms.frame(k)
        np.testing.assert_array_equal(fr["z"], mol.z)
        np.testing.assert_allclose(fr["pos"], mol.pos)
        assert fr["energy"][0] == pytest.approx(mol.target("U0"))
    splits = load_atoms_splits(slice_dir, "homo", max_train=50)
    assert len(splits["train"]) == 50 and len(splits["test"]) == len(rows["test"])


@pytest.mark.parametrize("target", ["U0", "homo", "mu", "r2"])
def test_qm9_atoms_model_is_invariant_on_real_molecules(slice_dir: Path, target: str) -> None:
    splits = load_atoms_splits(slice_dir, target)
    torch.manual_seed(0)
    model = qf.build_model(splits["train"], {**qf.PRESETS.get("quick").model_options(target), **TINY}, target)
    model = model.double()
    b = AtomsGraphs(splits["valid"].subset(np.arange(5)), None, dtype=torch.float64).get(torch.arange(5))

    def fn(h, pos, edge_index, batch):
        return {"y": model(h[:, 0].long(), pos, edge_index, None, batch, 5)}

    inputs = {"h": b.z.double().unsqueeze(-1), "pos": b.pos, "edge_index": b.edge_index, "batch": b.batch}
    assert_equivariant(fn, inputs, {"y": "graph"}, trials=4)


def test_tiny_run_is_an_ordinary_atoms_model(tiny_alpha: tuple[Path, qf.FitResult], slice_dir: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    import egnn
    from egnn.experiments.cli import main

    out, result = tiny_alpha
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 8 and losses[-1] < 0.85 * losses[0]
    model = egnn.load_model(out)
    assert model.config.readout == "sum" and model.config.cutoff == 5.0 and model.config.target == "alpha"
    assert model.config.species == [1, 6, 7, 8, 9] and any(model.config.ref_energies)
    assert model.meta["target"] == "alpha" and model.meta["unit"] == "bohr^3"
    mae, n = qf.evaluate_rows(model, slice_dir, "test")
    assert mae == pytest.approx(result.test_at_best, rel=1e-4)
    # the network learnt something beyond the least-squares per-element references
    with torch.no_grad():
        model.head[1].weight.zero_()
        model.head[1].bias.zero_()
    assert mae < 0.9 * qf.evaluate_rows(model, slice_dir, "test")[0]
    assert main(["qm9", "eval", str(out), "--data", str(slice_dir), "--device", "cpu", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["target"] == "alpha" and res["molecules"] == n and res["test_mae"] == pytest.approx(mae, rel=1e-6)
    assert main(["qm9", "eval", str(out), "--target", "homo", "--data", str(slice_dir)]) == 2
    assert "trained for target 'alpha', not 'homo'" in capsys.readouterr().err


def test_grid_trains_what_is_missing_resumes_and_writes_the_table(slice_dir: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from egnn.experiments.cli import main

    grid = tmp_path / "grid"
    # an unfinished run: one epoch of the 16 (the grid resumes it with the preset's settings)
    qf.train_target("homo", "quick", grid / "homo", data_dir=slice_dir, epochs=1, progress=False, device="cpu")
    assert not qg.run_state(grid / "homo", "homo", 16).finished
    argv = ["qm9", "table", "--grid", str(grid), "--data", str(slice_dir), "--targets", "alpha,homo", "--jobs", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "training 2 of 2 targets" in captured.err
    assert "--resume" in (grid / "homo.log").read_text() and "--resume" not in (grid / "alpha.log").read_text()
    rows = list(csv.DictReader(open(grid / "table.csv")))
    assert [r["target"] for r in rows] == ["alpha", "homo"]
    for r in rows:
        state = qg.run_state(grid / r["target"], r["target"], 16)
        assert state.finished and r["epochs"] == "16" and float(r["ours"]) == pytest.approx(state.test_mae)
        assert float(r["ratio"]) == pytest.approx(state.test_mae / qf.PAPER_MAE[r["target"]])
        assert r["command"].startswith("egnn qm9 train --target " + r["target"])
    assert (grid / "table.md").read_text().strip() == captured.out.strip()
    assert "| alpha | bohr^3 |" in captured.out and "arXiv:2102.09844" in captured.out
    # everything finished: the same command trains nothing and prints the same numbers
    assert main(argv) == 0
    again = capsys.readouterr()
    assert "training" not in again.err and list(csv.DictReader(open(grid / "table.csv"))) == rows
    # the checkpoint is the truth while it is there: a stale record is brought up to date
    rec = grid / "homo" / "result.json"
    rec.write_text(rec.read_text().replace('"epoch": 16', '"epoch": 3'))
    assert qg.run_state(grid / "homo", "homo", 16).finished
    qg.grid_states(grid, ["homo"], {"homo": 16})
    assert json.loads(rec.read_text())["epoch"] == 16
    # a copy of the grid without checkpoints (the committed benchmarks/results form) still counts as done
    for r in rows:
        assert json.loads((grid / r["target"] / "result.json").read_text())["test_mae"] == float(r["ours"])
        assert r["trained_with"].startswith("egnn ") and r["trained_with"] in again.out
        for f in (grid / r["target"]).glob("*.safetensors"):
            f.unlink()
    assert main(argv) == 0
    bare = capsys.readouterr()
    assert "training" not in bare.err and list(csv.DictReader(open(grid / "table.csv"))) == rows
    assert bare.out == again.out


def test_a_failed_training_job_gives_the_table_and_one_error_line(slice_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from egnn.experiments.cli import main

    grid = tmp_path / "grid"
    # a run with other settings than the preset's: the grid's --resume is refused, so that job fails
    qf.train_target("gap", "quick", grid / "gap", data_dir=slice_dir, hparams=TINY, epochs=1, progress=False,
                    device="cpu")
    assert main(["qm9", "table", "--grid", str(grid), "--data", str(slice_dir), "--targets", "gap"]) == 1
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last == f"egnn: error: training failed for gap (exit 2, see {grid / 'gap.log'})"
    assert "Traceback" not in captured.err and "| gap | meV |" in captured.out
    assert "1/16 (unfinished)" in (grid / "table.md").read_text()
    assert "started with other settings" in (grid / "gap.log").read_text()


def test_ship_exports_finished_targets_with_a_card_and_predict_uses_them(
        slice_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import ase
    import ase.io

    import egnn
    from egnn import pretrained
    from egnn.experiments.cli import main
    from egnn.experiments.qm9.atoms import split_rows

    grid, models = tmp_path / "grid", tmp_path / "models"
    qf.train_target("gap", "quick", grid / "gap", data_dir=slice_dir, hparams=TINY, epochs=2, progress=False,
                    device="cpu")
    # unfinished (2 of the recipe's 16 epochs): refused
    assert main(["qm9", "ship", "--grid", str(grid), "--data", str(slice_dir), "--folder", str(models)]) == 2
    assert "no finished target" in capsys.readouterr().err
    assert main(["qm9", "ship", "--grid", str(grid), "--targets", "gap", "--data", str(slice_dir),
                 "--folder", str(models)]) == 2
    assert "not finished (epoch 2 of 16)" in capsys.readouterr().err
    qf.train_target("gap", "quick", grid / "gap", data_dir=slice_dir, hparams=TINY, epochs=16, resume=True,
                    progress=False, device="cpu")
    assert main(["qm9", "ship", "--grid", str(grid), "--data", str(slice_dir), "--folder", str(models)]) == 0
    card = json.loads(capsys.readouterr().out)["qm9-gap"]
    assert pretrained.available(folder=models) == ["qm9-gap"]
    assert card["target"] == "gap" and card["unit"] == "meV" and card["readout"] == "mlp" and card["epochs"] == 16
    assert card["command"].startswith("egnn qm9 train --target gap --preset quick")
    assert "commit" in card["code"] or card["code"].startswith("egnn ")
    model = egnn.load_pretrained("qm9-gap", folder=models)
    assert qf.evaluate_rows(model, slice_dir, "test", limit=500)[0] == pytest.approx(card["slice"]["mae"], rel=1e-6)
    # again: refused (nothing is overwritten) unless --overwrite
    assert main(["qm9", "ship", "--grid", str(grid), "--data", str(slice_dir), "--folder", str(models)]) == 2
    capsys.readouterr()
    # egnn predict --model qm9-gap on molecules of the test split == the library call
    data = qm9.load(slice_dir, progress=False)
    rows = split_rows(data, slice_dir)["test"][:4]
    frames = [ase.Atoms(numbers=data.molecule(int(r)).z, positions=data.molecule(int(r)).pos) for r in rows]
    ase.io.write(tmp_path / "mols.xyz", frames, format="extxyz")
    monkeypatch.setenv("EGNN_PRETRAINED_DIR", str(models))
    assert main(["predict", "--model", "qm9-gap", str(tmp_path / "mols.xyz"), "--out", str(tmp_path / "p.xyz")]) == 0
    capsys.readouterr()
    back = ase.io.read(tmp_path / "p.xyz", index=":")
    expect = model.predict(to_atoms(data, rows, "gap"), forces=False)["energy"]
    np.testing.assert_allclose([a.info["gap_pred"] for a in back], expect, rtol=1e-6, atol=1e-6)
    # an element QM9 does not have: one line naming the frame and the element
    frames[2].numbers[0] = 17
    ase.io.write(tmp_path / "cl.xyz", frames, format="extxyz")
    assert main(["predict", "--model", "qm9-gap", str(tmp_path / "cl.xyz"), "--out", str(tmp_path / "q.xyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "frame 2" in err and "Cl" in err and not (tmp_path / "q.xyz").exists()
