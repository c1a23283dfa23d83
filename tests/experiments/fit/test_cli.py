"""``egnn fit`` / ``predict`` / ``eval`` end to end on a tiny EMT data set, and their one-line errors (exit 2)."""

import json

import numpy as np
import pytest

pytest.importorskip("ase")
import ase.io  # noqa: E402
from ase.build import bulk  # noqa: E402

from egnn.experiments.cli import main  # noqa: E402
from egnn.experiments.fit.emt import EMTConfig, generate  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fitcli")
    frames = generate(EMTConfig(elements=("Cu", "Au"), n_frames=24, repeat=(1, 1, 2), seed=1))
    ase.io.write(str(root / "train.extxyz"), frames[:20])
    ase.io.write(str(root / "test.extxyz"), frames[20:])
    return root


def fit_args(root, out, *extra):
    return ["fit", "--data", str(root / "train.extxyz"), "--forces", "forces", "--cutoff", "4.0", "--hidden", "8",
            "--layers", "1", "--rbf", "4", "--epochs", "2", "--batch-size", "8", "--eval-every", "1",
            "--cache", str(root / "cache"), "--out", str(out), "--no-progress", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def run(files):
    out = files / "run"
    assert main(fit_args(files, out, "--test", str(files / "test.extxyz"))) == 0
    return out


def test_fit_writes_a_loadable_run(run, files):
    import egnn

    for name in ("best.safetensors", "last.safetensors", "run.json", "log.csv", "summary.json", "parity_valid.png",
                 "parity_test.png", "training_curve.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["train"]["frames"] == 18 and summary["data"]["valid"]["frames"] == 2
    assert np.isfinite(summary["test"]["forces_mae"])
    model = egnn.load_model(run)
    assert model.species == [29, 79] and model.cutoff == 4.0 and model.config.forces == "forces"
    # the cache made by the first read is reused by a second fit (resume with one more epoch)
    assert main(fit_args(files, run, "--resume", "--epochs", "3", "--test", str(files / "test.extxyz"))) == 0
    assert len(list((files / "cache").glob("*.npz"))) == 2


@pytest.mark.parametrize(("flags", "vectors", "update_coords", "lr"), [
    ([], 0, False, 2e-3),  # the default, auto: these cells are periodic, so the invariant model
    (["--model", "vector"], 8, False, 5e-3),  # the directional model at its own learning rate
    (["--model", "vector", "--vectors", "3"], 3, False, 5e-3),
    (["--model", "invariant"], 0, False, 2e-3),
    (["--model", "coords"], 0, True, 2e-3),
])
def test_model_kinds_and_their_learning_rates(files, tmp_path, flags, vectors, update_coords, lr):
    import egnn

    out = tmp_path / "run"
    args = fit_args(files, out, *flags)
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    model = egnn.load_model(out)
    assert (model.config.vector_channels, model.config.update_coords) == (vectors, update_coords)
    assert len(model.layers) == 1 and type(model.layers[0]).__name__ == ("VectorEGCL" if vectors else "EnvelopeEGCL")
    recipe = json.loads((out / "run.json").read_text())["identity"]["recipe"]
    assert recipe["lr"] == pytest.approx(lr)


def test_predict_and_eval(run, files, capsys):
    import egnn
    from egnn.atoms.data import read_dataset

    out = files / "pred.extxyz"
    assert main(["predict", str(run / "best"), "--data", str(files / "test.extxyz"), "--out", str(out)]) == 0
    frames = ase.io.read(str(out), index=":")
    model = egnn.load_model(run)
    truth = read_dataset(files / "test.extxyz", "energy", "forces")
    pred = model.predict(truth, forces=True)
    np.testing.assert_allclose([a.info["energy_pred"] for a in frames], pred["energy"], atol=1e-6)
    np.testing.assert_allclose(np.concatenate([a.arrays["forces_pred"] for a in frames]), pred["forces"], atol=1e-6)
    # the copy keeps the input's own labels
    np.testing.assert_allclose([a.get_potential_energy() for a in frames], truth.energy, atol=1e-6)
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(files / "test.extxyz"), "--no-cache"]) == 0
    res = json.loads(capsys.readouterr().out)
    err = pred["energy"] - truth.energy
    assert res["energy_mae"] == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert res["energy_per_atom_mae"] == pytest.approx(np.abs(err / truth.n_atoms).mean(), rel=1e-5)
    assert res["forces_mae"] == pytest.approx(np.abs(pred["forces"] - truth.forces).mean(), rel=1e-5)
    assert res["baseline_zero_forces_mae"] == pytest.approx(np.abs(truth.forces).mean())


def one_line_error(capsys, argv, *needles):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("egnn: error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_user_errors_are_one_line_exit_2(run, files, capsys, tmp_path):
    train = str(files / "train.extxyz")
    one_line_error(capsys, fit_args(files, tmp_path / "r1", "--target", "homo"), train, "frame 0", "'homo'")
    one_line_error(capsys, fit_args(files, run), "already holds a run", "--resume")
    # resuming with other settings is refused, naming the difference
    one_line_error(capsys, fit_args(files, run, "--resume", "--hidden", "9"), "cannot resume",
                   "model.hidden_channels: run 8, now 9")
    one_line_error(capsys, fit_args(files, tmp_path / "r0", "--cutoff", "-1"), "--cutoff")
    one_line_error(capsys, fit_args(files, tmp_path / "r0", "--energy-weight", "0", "--forces-weight", "0"),
                   "the loss has no term")
    one_line_error(capsys, fit_args(files, tmp_path / "r2", "--no-images"), train, "frame 0: key 'cell'",
                   "larger than half the shortest cell height")
    one_line_error(capsys, ["predict", str(run), "--data", train, "--out", train], "exists")
    ag = bulk("Ag", "fcc", a=4.1, cubic=True)
    ase.io.write(str(tmp_path / "ag.extxyz"), [bulk("Cu", "fcc", a=3.6, cubic=True), ag])
    one_line_error(capsys, ["predict", str(run), "--data", str(tmp_path / "ag.extxyz"), "--out",
                            str(tmp_path / "p.extxyz")], "ag.extxyz: frame 1: key 'numbers'", "Ag (Z=47)")
    assert not (tmp_path / "p.extxyz").exists()
    bad = ase.io.read(train, index=":4")
    bad[3].calc.results["forces"][1, 0] = np.nan
    ase.io.write(str(tmp_path / "nan.extxyz"), bad)
    one_line_error(capsys, ["eval", str(run), "--data", str(tmp_path / "nan.extxyz"), "--no-cache"],
                   "nan.extxyz: frame 3: key 'forces': contains NaN/Inf")
    one_line_error(capsys, ["eval", str(tmp_path / "nothing"), "--data", train], "no run folder or checkpoint")
    for ext in ("db", "traj"):  # formats that would drop the predictions: refused, nothing left behind
        one_line_error(capsys, ["predict", str(run), "--data", train, "--out", str(tmp_path / f"p.{ext}")],
                       f"p.{ext}", "use an .extxyz")
        assert not list(tmp_path.glob(f"*p*.{ext}"))
    one_line_error(capsys, ["example", "emt", "--out", train], "is not a folder")
    # the molecular readouts refuse crystals (no centre in a periodic cell)
    one_line_error(capsys, ["fit", "--data", train, "--readout", "dipole", "--no-cache", "--no-progress", "--out",
                            str(tmp_path / "r3")],
                   "train data", "frame 0 is periodic", "--readout dipole needs molecules")
    assert not (tmp_path / "r3").exists()


def molecules(path, key, frames, seed, offset=0.0):
    """``frames`` random H/C/O molecules of 2-5 atoms with a random ``key`` in ``atoms.info``, written to ``path``."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(frames):
        n = int(rng.integers(2, 6))
        a = Atoms(numbers=rng.choice([1, 6, 8], n), positions=rng.normal(size=(n, 3)) * 1.5)
        a.info[key] = float(rng.normal()) + offset
        out.append(a)
    ase.io.write(str(path), out)
    return out


def test_energy_only_fit_on_molecules_with_complete_graphs(tmp_path, capsys):
    import egnn

    molecules(tmp_path / "mol.extxyz", "U0", 12, seed=0)
    out = tmp_path / "run"
    assert main(["fit", "--data", str(tmp_path / "mol.extxyz"), "--target", "U0", "--cutoff", "none", "--readout",
                 "mean", "--hidden", "8", "--layers", "1", "--epochs", "2", "--batch-size", "4", "--no-cache",
                 "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out.split("\nmodel:")[0])
    assert "U0_mae" in res["valid"] and "U0_per_atom_mae" not in res["valid"] and "forces_mae" not in res["valid"]
    model = egnn.load_model(out)
    assert model.cutoff is None and model.config.readout == "mean" and model.config.forces is None
    assert model.config.vector_channels == 8  # --model auto on molecules (not periodic): the vector model


def test_intensive_target_with_the_mlp_readout_and_l1_loss(tmp_path, capsys):
    """The paper's QM9 recipe through the generic path: node MLP, sum, graph MLP, L1 loss, no reference energies."""
    import egnn

    frames = molecules(tmp_path / "mol.extxyz", "homo", 16, seed=1, offset=-7.0)
    out = tmp_path / "run"
    assert main(["fit", "--data", str(tmp_path / "mol.extxyz"), "--target", "homo", "--cutoff", "none", "--readout",
                 "mlp", "--loss", "l1", "--final-lr-ratio", "0", "--hidden", "8", "--layers", "1", "--epochs", "2",
                 "--batch-size", "4", "--no-cache", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out.split("\nmodel:")[0])
    assert "homo_mae" in res["valid"] and "homo_per_atom_mae" not in res["valid"]
    model = egnn.load_model(out)
    assert model.config.readout == "mlp" and not any(model.config.ref_energies)
    assert model.config.shift == pytest.approx(np.mean([f.info["homo"] for f in frames]), abs=1.0)
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["loss"]["kind"] == "l1"


@pytest.mark.parametrize("readout", ["dipole", "spatial"])
def test_molecular_readouts_through_the_generic_path(tmp_path, capsys, readout):
    import egnn

    molecules(tmp_path / "mol.extxyz", "y", 16, seed=2, offset=3.0)
    out = tmp_path / "run"
    assert main(["fit", "--data", str(tmp_path / "mol.extxyz"), "--target", "y", "--cutoff", "none", "--readout",
                 readout, "--hidden", "8", "--layers", "1", "--epochs", "2", "--batch-size", "4", "--no-cache",
                 "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out.split("\nmodel:")[0])
    assert "y_mae" in res["valid"] and "y_per_atom_mae" not in res["valid"]
    model = egnn.load_model(out)
    assert model.config.readout == readout
    assert any(model.config.ref_spatial) == (readout == "spatial")


def test_example_emt_runs_its_fixed_epochs_and_records_the_code(tmp_path, capsys):
    """The worked example end to end on a tiny set: the epochs asked for are the epochs run (no timing decides
    them), the summary says the schedule was not cut and which code printed it."""
    out = tmp_path / "emt"
    assert main(["example", "emt", "--out", str(out), "--train-frames", "12", "--test-frames", "4", "--epochs", "2",
                 "--md-steps", "3", "--no-progress", "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fit"]["epochs_planned"] == summary["fit"]["epochs_done"] == 2
    assert summary["fit"]["cut_by_time_cap"] is False and summary["code"].startswith("egnn ")
    assert json.loads((out / "summary.json").read_text())["fit"] == summary["fit"]
    assert (out / "run" / "parity_test.png").stat().st_size > 0


@pytest.mark.slow
def test_fit_compile_trains_through_the_compiled_graph_like_eager(files, monkeypatch):
    """``--compile``: every training step goes through the compiled energy + forces graph, and the run's losses
    equal the eager run's to float32 rounding (the same steps, other kernels)."""
    import csv

    from egnn.compiled.training import CompiledEnergyForces

    calls = []
    original = CompiledEnergyForces.__call__

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(CompiledEnergyForces, "__call__", counted)
    logs = {}
    for flag in ("--compile", "--no-compile"):
        out = files / f"run{flag}"
        assert main(fit_args(files, out, flag, "--model", "vector", "--vectors", "1")) == 0
        with open(out / "log.csv") as f:
            logs[flag] = [float(r["train_loss"]) for r in csv.DictReader(f)]
        if flag == "--compile":
            assert len(calls) == 2 * 3  # 2 epochs of 3 batches (18 frames, batch 8)
    assert len(calls) == 6  # --no-compile: none
    assert np.allclose(logs["--compile"], logs["--no-compile"], rtol=1e-4)


def test_fit_compile_only_when_asked():
    from egnn.experiments.fit.train import COMPILE_MIN_STEPS, use_compiled

    assert not use_compiled(None, True, "sum", 10 * COMPILE_MIN_STEPS)
    assert use_compiled(True, True, "sum", 1) and not use_compiled(False, True, "sum", 10**6)
    assert not use_compiled(True, False, "sum", 10**6) and not use_compiled(True, True, "mlp", 10**6)


def test_procs_auto_takes_processes_for_small_graphs_only(files, tmp_path):
    """``--procs auto`` with ``--threads N``: N one-thread processes when a training batch has few edges
    (molecules), one process of N threads otherwise, and never without ``--threads``."""
    from ase.build import molecule

    from egnn.experiments.cli import build_parser
    from egnn.experiments.fit.cli import PROCS_BELOW_EDGES, _worker_plan
    from egnn.experiments.fit.sources import graph_size
    from egnn.experiments.training.launch import WorkerPlan

    mol = tmp_path / "mol.extxyz"
    ase.io.write(str(mol), [molecule("CH3CH2OH")] * 3)

    def plan(data, *extra):
        return _worker_plan(build_parser().parse_args(["fit", "--data", str(data), "--out", str(tmp_path / "r"),
                                                       *extra]))

    assert graph_size(mol, 5.0) == (9.0, 72.0)
    assert plan(mol, "--threads", "2") == WorkerPlan(2, 1)
    assert plan(mol) is None and plan(mol, "--threads", "1") is None
    assert plan(mol, "--threads", "2", "--procs", "1") is None
    assert plan(mol, "--threads", "4", "--procs", "2") == WorkerPlan(2, 2)
    metal = files / "train.extxyz"
    atoms, edges = graph_size(metal, 5.0)
    small = int(PROCS_BELOW_EDGES // edges) - 1  # the largest batch below the threshold, and a larger one
    assert plan(metal, "--threads", "2", "--batch-size", str(small)) == WorkerPlan(2, 1)
    assert plan(metal, "--threads", "2", "--batch-size", str(small + 2)) is None
    assert plan(tmp_path / "missing.extxyz", "--threads", "2") is None  # the fit itself reports the file


def test_procs_refusals_are_one_line_exit_2(files, tmp_path, capsys, monkeypatch):
    one_line_error(capsys, fit_args(files, tmp_path / "r", "--procs", "3"), "--procs 3", "--threads >= 3")
    one_line_error(capsys, fit_args(files, tmp_path / "r", "--procs", "many"), "--procs",
                   "expected 'auto' or a positive integer")
    one_line_error(capsys, fit_args(files, tmp_path / "r", "--procs", "0"), "--procs")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun's workers see it
    monkeypatch.setenv("RANK", "0")
    one_line_error(capsys, fit_args(files, tmp_path / "r", "--threads", "2", "--procs", "2"), "--procs 2",
                   "torchrun")
    assert not (tmp_path / "r").exists()
