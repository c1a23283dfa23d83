"""QM9 model and training: invariance, unpadded batching, normalisation, a tiny run, eval/table, CLI errors.

Everything runs on a 300-molecule slice of the packaged data (``data.prepare(tmp, limit=300)``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from egnn.experiments.qm9 import data as qm9
from egnn.experiments.qm9 import train as qt
from egnn.experiments.qm9.model import PAPER_HPARAMS, build_model, predict
from egnn.testing import assert_equivariant

needs_qm9pack = pytest.mark.skipif(qm9.qm9pack_data_dir() is None, reason="qm9pack is not installed")
N_SLICE = 300  # the slice of conftest.slice_dir
TINY = {"hidden_nf": 16, "n_layers": 2}


@pytest.fixture(scope="module")
def splits64(slice_dir: Path) -> dict[str, qt.QM9Split]:
    return qt.load_splits_for(slice_dir, "homo", dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny_run(slice_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, qt.FitResult]:
    """A short run of a tiny model on the slice (paper recipe otherwise: L1, Adam, cosine). alpha (which grows
    with molecule size) is learnt in a few epochs; homo barely moves from the mean in so few steps."""
    out = tmp_path_factory.mktemp("runs") / "alpha_tiny"
    result = qt.train_qm9("alpha", "paper", out, data_dir=slice_dir, epochs=6, hparams=TINY, batch_size=16,
                          lr=2e-3, eval_every=3, progress=False, device="cpu")
    return out, result


# ------------------------------------------------------------------------------------------------ model


def test_paper_model_layout() -> None:
    model = build_model(**PAPER_HPARAMS)
    c = model.config
    assert (c.in_channels, c.hidden_channels, c.num_layers) == (15, 128, 7)
    assert not c.update_coords and c.attention and c.node_attr and c.act == "silu" and c.readout == "sum"
    assert all(layer.coord_mlp is None for layer in model.layers)  # invariant layers, no phi_x
    # node head 128 -> 128 -> 128, graph head 128 -> 128 -> 1 (reference node_dec / graph_dec)
    assert [tuple(lin.weight.shape) for lin in model.node_head] == [(128, 128), (128, 128)]
    assert [tuple(lin.weight.shape) for lin in model.graph_head] == [(128, 128), (1, 128)]
    # phi_h input: [h, m_i, h^0] = 128 + 128 + 15
    assert model.layers[0].node_mlp[0].weight.shape == (128, 128 + 128 + 15)


@needs_qm9pack
def test_predictions_invariant_on_real_molecules(splits64: dict[str, qt.QM9Split]) -> None:
    torch.manual_seed(0)
    model = build_model(**PAPER_HPARAMS).double().eval()
    b = splits64["train"].get(torch.arange(3))

    def fn(h, pos, edge_index, batch):
        return {"y": predict(model, h, pos, edge_index, batch, 3)}

    inputs = {"h": b.h, "pos": b.pos, "edge_index": b.edge_index, "batch": b.batch}
    errors = assert_equivariant(fn, inputs, {"y": "graph"}, trials=2)  # rotation, reflection, translation, perm.
    assert errors["y"] < 1e-10
    # positions enter: moving one atom changes the prediction
    moved = b.pos.clone()
    moved[0] += 0.3
    assert not torch.allclose(fn(b.h, moved, b.edge_index, b.batch)["y"], fn(**inputs)["y"])


@needs_qm9pack
def test_batched_equals_per_molecule(splits64: dict[str, qt.QM9Split]) -> None:
    torch.manual_seed(1)
    model = build_model(hidden_nf=32, n_layers=3).double().eval()
    split = splits64["valid"]
    idx = torch.arange(8)
    b = split.get(idx)
    with torch.no_grad():
        together = predict(model, b.h, b.pos, b.edge_index, b.batch, b.num_graphs)
        alone = torch.cat([
            predict(model, m.h, m.pos, m.edge_index, m.batch, 1) for m in (split.get(idx[i : i + 1]) for i in idx)
        ])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)


@needs_qm9pack
def test_unpadded_batch_matches_the_data(slice_dir: Path, splits64: dict[str, qt.QM9Split]) -> None:
    data = qm9.load(slice_dir, rebuild=False)
    split = splits64["test"]
    idx = torch.tensor([5, 0, 17, 3])
    b = split.get(idx)
    rows = split.rows[idx.numpy()]
    sizes = [int(data.n_atoms[r]) for r in rows]
    assert b.num_graphs == 4 and b.batch.tolist() == sum(([g] * n for g, n in enumerate(sizes)), [])
    z = np.concatenate([data.molecule(int(r)).z for r in rows])
    np.testing.assert_array_equal(b.pos.numpy(), np.concatenate([data.molecule(int(r)).pos for r in rows]))
    torch.testing.assert_close(b.h, qm9.node_features(z).double())
    np.testing.assert_allclose(b.y.numpy(), data.target("homo")[rows])
    src, dst = b.edge_index
    assert b.edge_index.shape[1] == sum(n * (n - 1) for n in sizes)  # fully connected, no self loops
    assert bool((src != dst).all()) and bool((b.batch[src] == b.batch[dst]).all())
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert len(pairs) == b.edge_index.shape[1]


def test_normalizer_round_trip() -> None:
    y = np.array([-250.0, -200.0, -300.0, -150.0])
    norm = qt.Normalizer.fit(y)
    # mean = -225; |y - mean| = 25, 25, 75, 75 -> MAD = 50
    assert norm.mean == pytest.approx(-225.0) and norm.mad == pytest.approx(50.0)
    t = torch.tensor(y)
    z = norm.normalize(t)
    torch.testing.assert_close(z, torch.tensor([-0.5, 0.5, -1.5, 1.5], dtype=torch.float64))
    assert float(z.mean()) == pytest.approx(0.0) and float(z.abs().mean()) == pytest.approx(1.0)
    torch.testing.assert_close(norm.denormalize(z), t)
    assert qt.Normalizer.fit(np.full(3, 7.0)).mad == 1.0  # constant targets: no division by zero


def test_presets_and_learning_rates() -> None:
    paper = qt.train_config_for("homo", "paper")
    assert (paper.epochs, paper.batch_size, paper.weight_decay, paper.schedule) == (1000, 96, 1e-16, "cosine")
    assert paper.lr == 1e-3 and qt.train_config_for("alpha", "paper").lr == 5e-4
    assert {t: qt.paper_lr(t) for t in ("gap", "lumo", "U0", "mu")} == {"gap": 1e-3, "lumo": 1e-3, "U0": 5e-4,
                                                                         "mu": 5e-4}
    assert qt.PRESETS.get("paper").model == PAPER_HPARAMS
    assert set(qt.PAPER_MAE) == set(qm9.TARGET_NAMES)
    with pytest.raises(ValueError, match="unknown QM9 target 'HOMO'"):
        qt.paper_lr("HOMO")


# --------------------------------------------------------------------------------------------- training


@needs_qm9pack
def test_tiny_training_lowers_the_loss(tiny_run: tuple[Path, qt.FitResult], slice_dir: Path) -> None:
    out, result = tiny_run
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    assert (out / "log.csv").is_file() and (out / "training_curve.png").stat().st_size > 0
    # eval recomputes the trainer's test MAE at the best validation epoch (paper unit, bohr^3)
    res = qt.evaluate_checkpoint(out, slice_dir, device="cpu")
    assert res["target"] == "alpha" and res["unit"] == "bohr^3" and res["best_epoch"] == result.best_epoch
    assert res["test_mae"] == pytest.approx(result.test_at_best, rel=1e-5)
    table = qt.table(out.parent)
    row = next(line for line in table.splitlines() if line.startswith("| alpha |"))
    assert f"{result.test_at_best:.4g}" in row and "| 0.071 |" in row and "6/6" in row


# -------------------------------------------------------------------------------------------------- CLI


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from egnn.experiments.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_unknown_target(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _, err = _cli(["qm9", "train", "--target", "homoo", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "invalid choice: 'homoo'" in err and "'homo'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    code, _, err = _cli(["qm9", "train", "--target", "homo", "--preset", "fast"], capsys)
    assert code == 2 and "invalid choice: 'fast'" in err


def test_cli_missing_data_source(capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(qm9.sources, "qm9pack_data_dir", lambda: None)
    code, _, err = _cli(["qm9", "train", "--target", "homo", "--data", str(tmp_path / "none"),
                         "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and re.search(r"pip install 'qm9pack==1\.0\.3'", err)
    assert not (tmp_path / "r").exists()


@needs_qm9pack
def test_cli_checkpoint_of_another_target(
    tiny_run: tuple[Path, qt.FitResult], slice_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    out, result = tiny_run
    code, printed, _ = _cli(["qm9", "eval", str(out), "--data", str(slice_dir), "--device", "cpu"], capsys)
    assert code == 0 and json.loads(printed)["test_mae"] == pytest.approx(result.test_at_best, rel=1e-5)
    code, _, err = _cli(["qm9", "eval", str(out), "--target", "homo", "--data", str(slice_dir)], capsys)
    assert code == 2 and "trained for target 'alpha', not 'homo'" in err
    # resuming the alpha run as a homo run is refused by the trainer's meta check
    code, _, err = _cli(["qm9", "train", "--target", "homo", "--preset", "paper", "--out", str(out), "--resume",
                         "--data", str(slice_dir), "--no-progress"], capsys)
    assert code == 2 and "target" in err and '"alpha"' in err
    code, _, err = _cli(["qm9", "eval", str(out / "nothing")], capsys)
    assert code == 2 and "no run folder or checkpoint at" in err
    code, printed, _ = _cli(["qm9", "table", "--runs", str(out.parent)], capsys)
    assert code == 0 and "| alpha | bohr^3 |" in printed and "| U0 | meV | - | 11 |" in printed
