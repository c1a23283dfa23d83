"""N-body baselines (Table 2): equivariance, shapes, batching, training, and the table / sweep drivers."""

from __future__ import annotations

import argparse
import csv

import pytest
import torch

from egnn.experiments.cli import CLIError
from egnn.experiments.cli import main as cli_main
from egnn.experiments.nbody import baselines, table
from egnn.experiments.nbody.cli_baselines import register_baselines
from egnn.experiments.nbody.data import NBodySplit, edge_features
from egnn.experiments.nbody.files import save_split_files
from egnn.experiments.nbody.models import NBODY_MODELS
from egnn.experiments.nbody.simulate import generate_dataset
from egnn.experiments.nbody.train import load_model, train_nbody
from egnn.experiments.run import code_version
from egnn.ops import fully_connected_edges
from egnn.testing import assert_equivariant

POSITION = {"out0": "position"}
# small widths for speed; the degrees are the paper's (TFN 0..1, SE(3)-Transformer 0..2)
SMALL = {
    "linear": {},
    "gnn": {"hidden_nf": 16, "n_layers": 2},
    "rf": {"hidden_nf": 16, "n_layers": 2},
    "tfn": {"hidden_nf": 8, "n_layers": 3, "num_degrees": 2},
    "se3_transformer": {"hidden_nf": 9, "n_layers": 2, "num_degrees": 3},
}
EQUIVARIANT = ("linear", "rf", "tfn", "se3_transformer")


def build(name: str, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return NBODY_MODELS.get(name).build(**SMALL[name]).to(dtype)


def raw_inputs(name: str, sizes=(5, 3, 4), seed: int = 0) -> dict[str, torch.Tensor]:
    """Keyword inputs of each model's forward, float64, several graphs."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    ei = fully_connected_edges(list(sizes))
    pos = torch.randn(n, 3, generator=g, dtype=torch.float64)
    vel = torch.randn(n, 3, generator=g, dtype=torch.float64)
    q = torch.randint(0, 2, (n, 1), generator=g).double() * 2 - 1
    qq = q[ei[1]] * q[ei[0]]
    by_model = {
        "linear": {"pos": pos, "vel": vel},
        "gnn": {"pos": pos, "vel": vel, "edge_index": ei, "edge_attr": qq},
        "rf": {"pos": pos, "vel": vel, "h": vel.norm(dim=-1, keepdim=True), "edge_index": ei,
               "edge_attr": edge_features(pos, ei, qq)},
        "tfn": {"pos": pos, "vel": vel, "node_attr": q, "edge_index": ei},
        "se3_transformer": {"pos": pos, "vel": vel, "node_attr": q, "edge_index": ei},
    }
    return by_model[name]


def test_registered_with_paper_numbers():
    expected = {"linear": 0.0819, "gnn": 0.0107, "rf": 0.0104, "tfn": 0.0155, "se3_transformer": 0.0244}
    for name, mse in expected.items():
        spec = NBODY_MODELS.get(name)
        assert spec.paper_mse == mse
    assert NBODY_MODELS.get("rf").lr == 2e-4 and NBODY_MODELS.get("se3_transformer").lr == 5e-3
    assert NBODY_MODELS.get("tfn").hparams == {"hidden_nf": 32, "n_layers": 4, "num_degrees": 2}


@pytest.mark.parametrize("name", EQUIVARIANT)
def test_equivariant_baselines(name):
    """E(3): rotations and reflections (O(3), the TFN/SE(3) features carry parity), translations, permutations."""
    model = build(name)
    errors = assert_equivariant(model, raw_inputs(name), POSITION, trials=4)
    assert errors["out0"] < 1e-10


def test_gnn_is_not_equivariant_and_the_helper_detects_it():
    model = build("gnn")
    inputs = raw_inputs("gnn")
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(model, inputs, POSITION)
    with pytest.raises(AssertionError, match="not equivariant"):  # rotations alone already break it
        assert_equivariant(model, inputs, POSITION, reflect=False, translate=False, permute=False)
    # it is a graph network, so it does commute with node permutations
    assert_equivariant(model, inputs, POSITION, rotate=False, reflect=False, translate=False, permute=True)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_shape_and_batched_equals_per_graph(name):
    model = build(name)
    sizes = (5, 2, 4)
    inp = raw_inputs(name, sizes)
    out = model(**inp)
    assert out.shape == (sum(sizes), 3) and out.dtype == torch.float64
    start = e0 = 0
    for n in sizes:
        ne = n * (n - 1)
        single = {}
        for key, val in inp.items():
            if key == "edge_index":
                single[key] = val[:, e0:e0 + ne] - start
            elif key == "edge_attr":
                single[key] = val[e0:e0 + ne]
            else:
                single[key] = val[start:start + n]
        torch.testing.assert_close(model(**single), out[start:start + n], rtol=1e-10, atol=1e-10)
        start, e0 = start + n, e0 + ne


def test_predict_from_nbody_batch():
    """The registered ``predict`` reads the right fields of an NBodyBatch (float32 data as in training)."""
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 2, 3, 5, generator=gen).numpy()
    vel = torch.randn(3, 2, 3, 5, generator=gen).numpy()
    charges = (torch.randint(0, 2, (3, 5, 1), generator=gen) * 2 - 1).numpy()
    b = NBodySplit(loc, vel, charges, 0, 1).get(torch.arange(3))
    for name in SMALL:
        spec = NBODY_MODELS.get(name)
        out = spec.predict(build(name, torch.float32), b)
        assert out.shape == b.target.shape and torch.isfinite(out).all()
    # linear dynamics: x + 0.7 v at initialisation
    torch.testing.assert_close(NBODY_MODELS.get("linear").predict(build("linear", torch.float32), b),
                               b.pos + 0.7 * b.vel)


def test_segment_softmax_matches_per_group_softmax():
    logits = torch.randn(7, dtype=torch.float64) * 30
    index = torch.tensor([0, 2, 0, 2, 2, 0, 3])
    out = baselines.segment_softmax(logits, index, 4)
    for k in (0, 2, 3):
        torch.testing.assert_close(out[index == k], torch.softmax(logits[index == k], 0))


def test_e3nn_models_reject_other_dimensions():
    with pytest.raises(ValueError, match="3 dimensions"):
        build("tfn")(torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64),
                     None, fully_connected_edges([4]))
    with pytest.raises(ValueError, match="num_degrees"):
        baselines.TensorFieldNetwork(num_degrees=1)


# ----------------------------------------------------------------------------------------------------------
# training and the table / sweep drivers on tiny generated data
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny ``small`` set (frames 30 -> 40) and a tiny ``large`` set (frames 6 -> 8)."""
    root = tmp_path_factory.mktemp("nbody")
    small = generate_dataset(240, 60, 60, seed=3, sample_freq=100, length=5000, progress=False)
    save_split_files(root / "small", small, suffix="small")
    large = generate_dataset(120, 10, 10, seed=4, sample_freq=500, length=5000, progress=False)
    save_split_files(root / "large", large, suffix="")
    return root / "small", root / "large"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_tiny_training_decreases_loss(name, tiny_data, tmp_path):
    small, _ = tiny_data
    out = tmp_path / name
    res = train_nbody(name, small, out, preset="paper", max_samples=160, hparams=SMALL[name], epochs=5,
                      eval_every=5, batch_size=40, lr=3e-3, progress=False, device="cpu")
    losses = [row["train_loss"] for row in res.history]
    assert losses[-1] < losses[0], losses
    assert res.test_at_best is not None and res.test_at_best > 0
    model, meta = load_model(out / "best")  # checkpoints round-trip (e3nn constants are not stored)
    assert meta["model"] == name and sum(p.numel() for p in model.parameters()) > 0


def test_quick_table_preset_is_fixed_in_epochs():
    """The reduced table is a recipe of epochs: nothing in it depends on how fast the machine is."""
    recipes = table.TABLE_PRESETS.get("quick").recipes
    assert set(recipes) == set(table.TABLE_MODELS)
    assert all(isinstance(r.epochs, int) and r.epochs > 0 for r in recipes.values())


def test_sweep_schedule_is_the_reference():
    assert table.SWEEP_SIZES[0] == 100 and table.SWEEP_SIZES[-1] == 50000
    assert table.sweep_epochs("gnn", 100) == 2000 and table.sweep_epochs("gnn", 3200) == 10000
    assert table.sweep_epochs("egnn", 3200) == 1500 and table.sweep_epochs("rf", 50000) == 2000
    assert table.sweep_epochs("gnn", 150) == 2000  # between grid points: the next larger one
    assert table.sweep_epochs("egnn", 100, scale=0.001) == 4
    assert table.sweep_eval_every(100, 2000) == 100 and table.sweep_eval_every(50000, 1000) == 1
    assert table.sweep_eval_every(100, 3) == 3


@pytest.fixture
def tiny_preset(monkeypatch):
    recipes = {name: table.ModelRecipe(epochs=2, eval_every=1, lr=1e-3, warmup_steps=0) for name in table.TABLE_MODELS}
    recipes["linear"].ema = False
    preset = table.TablePreset("quick", "test recipe", recipes=recipes)  # the quick recipe averages weights
    monkeypatch.setitem(table.TABLE_PRESETS._items, "tiny", preset)
    return "tiny"


def test_table_writes_markdown_and_resumes(tiny_data, tmp_path, tiny_preset, monkeypatch):
    small, _ = tiny_data
    res = table.run_table(small, tmp_path, preset=tiny_preset, models=["linear", "gnn", "egnn"], device="cpu",
                          progress=False)
    assert [r.model for r in res.rows] == ["linear", "gnn", "egnn"]
    for r in res.rows:
        assert r.epochs == r.planned_epochs == 2 and r.test_mse > 0 and r.forward_ms > 0 and r.parameters > 0
        assert r.paper_mse == NBODY_MODELS.get(r.model).paper_mse
    md = (tmp_path / "table.md").read_text()
    assert "| EGNN |" in md and "0.0071" in md and "0.0107" in md and "Forward ms" in md
    rows = list(csv.DictReader(open(tmp_path / "table.csv")))
    assert [r["model"] for r in rows] == ["linear", "gnn", "egnn"]
    assert "commit" in md or "egnn " in md  # the code that printed it
    # ema=False really switches the preset's weight average off; the others keep it
    assert load_model(tmp_path / "linear" / "best")[1]["weights"] == "model"
    assert load_model(tmp_path / "gnn" / "best")[1]["weights"] == "ema"
    assert load_model(tmp_path / "gnn" / "best")[1]["train_config"]["warmup_steps"] == 0

    def no_training(*args, **kwargs):
        raise AssertionError("a finished model was trained again")

    monkeypatch.setattr(table, "train_nbody", no_training)
    again = table.run_table(small, tmp_path, preset=tiny_preset, models=["linear", "gnn", "egnn"], device="cpu",
                            progress=False)
    assert [r.test_mse for r in again.rows] == [r.test_mse for r in res.rows]


def test_sweep_writes_csv_plot_and_resumes_per_size(tiny_data, tmp_path, monkeypatch):
    small, large = tiny_data
    rows = table.run_sweep(large, small, tmp_path, models=["gnn", "egnn"], sizes=[40, 80], epoch_scale=0.001,
                           device="cpu", progress=False)
    assert [(r["model"], r["samples"], r["epochs"]) for r in rows] == [
        ("gnn", 40, 2), ("gnn", 80, 2), ("egnn", 40, 4), ("egnn", 80, 4)]
    assert all(r["test_mse"] > 0 for r in rows)
    assert (tmp_path / "sweep.png").stat().st_size > 0
    written = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert len(written) == 4
    assert {r["code"] for r in written} == {code_version()}  # each row names the code that trained it

    calls = []
    real = table.train_nbody

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(table, "train_nbody", spy)
    (tmp_path / "egnn" / "n80" / "result.json").unlink()  # as if killed after its last checkpoint
    again = table.run_sweep(large, small, tmp_path, models=["gnn", "egnn"], sizes=[40, 80], epoch_scale=0.001,
                            device="cpu", progress=False)
    assert len(calls) == 1 and calls[0]["resume"] is True and calls[0]["max_samples"] == 80
    assert calls[0]["dataset"] == "large" and calls[0]["valid_test_from"] == small
    assert again[-1]["test_mse"] == pytest.approx(rows[-1]["test_mse"])


def _parser():
    parser = argparse.ArgumentParser()
    register_baselines(parser.add_subparsers(dest="action", required=True))
    return parser


def test_cli_table_and_errors(tiny_data, tmp_path, tiny_preset, capsys):
    small, _ = tiny_data
    args = _parser().parse_args(["table", "--preset", tiny_preset, "--data", str(small), "--out", str(tmp_path),
                                 "--models", "linear", "--device", "cpu", "--no-progress"])
    assert args.func(args) == 0
    assert "| Linear |" in capsys.readouterr().out
    bad = _parser().parse_args(["table", "--data", str(small), "--out", str(tmp_path / "x"), "--models", "nope"])
    with pytest.raises(KeyError, match="unknown N-body model"):
        bad.func(bad)
    assert cli_main(["nbody", "table", "--data", str(small), "--out", str(tmp_path / "x"), "--models", "nope"]) == 2
    assert "egnn: error: unknown N-body model 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["sweep", "--data", str(tmp_path / "none")])
    assert "does not exist" in capsys.readouterr().err
    sizes = _parser().parse_args(["sweep", "--data", str(small), "--small", str(small), "--sizes", "1,x"])
    with pytest.raises(CLIError, match="--sizes"):
        sizes.func(sizes)

