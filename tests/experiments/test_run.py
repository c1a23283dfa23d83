"""The run layer: run folders, crash safety of a whole training run, checkpoint -> model, presets."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from egnn import checkpoint as ck
from egnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from egnn.experiments.run import (
    LRRule,
    Preset,
    RunFolder,
    RunFolderError,
    grid_cell,
    load_trained,
    markdown_table,
    ratio,
)
from tests.experiments import tiny_run

REPO = Path(__file__).resolve().parents[2]


class Crash(Exception):
    pass


def _log_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("train_seconds")  # wall time: differs between any two runs
    return rows


def _weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    tree, _ = load_checkpoint(folder / name)
    return tree["model"]


def _assert_same_run(a: Path, b: Path) -> None:
    assert _log_rows(a) == _log_rows(b)
    for name in ("last", "best"):
        wa, wb = _weights(a, name), _weights(b, name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert not [p for p in b.iterdir() if ck.is_temp_file(p)]


def _child_env() -> dict[str, str]:
    """The environment of a ``tiny_run`` child: this checkout on the path, the caller's thread count (1 if unset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGNN_")}
    env.update(PYTHONPATH=str(REPO / "src") + os.pathsep + str(REPO),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return env


# ------------------------------------------------------------------------------------------- run folders


def test_a_folder_holding_a_run_is_never_reused_without_resume(tmp_path):
    tiny_run.run(str(tmp_path / "a"), epochs=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    with pytest.raises(RunFolderError, match="already holds a run"):
        tiny_run.run(str(tmp_path / "a"), epochs=2)
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    # any trace counts: a lone log, a lone best checkpoint, a stale temporary file
    for name in ("log.csv", "best.safetensors", ".last.safetensors.123.tmp"):
        folder = tmp_path / f"trace_{name}"
        folder.mkdir()
        (folder / name).write_text("x")
        with pytest.raises(RunFolderError, match="already holds a run"):
            tiny_run.run(str(folder), epochs=1)
        assert [p.name for p in folder.iterdir()] == [name]
    # a folder with unrelated files is fine, and they are left alone
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    tiny_run.run(str(tmp_path / "mine"), epochs=1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="not a folder"):
        tiny_run.run(str(tmp_path / "file"), epochs=1)


def test_resume_with_other_data_or_model_names_the_difference(tmp_path):
    tiny_run.run(str(tmp_path / "a"), epochs=2)
    with pytest.raises(RunFolderError, match=r"data: run 0, now 7"):
        tiny_run.run(str(tmp_path / "a"), resume=True, epochs=4, data_seed=7)
    with pytest.raises(RunFolderError, match=r"hparams: run \{\"width\": 16\}, now \{\"width\": 8\}"):
        tiny_run.run(str(tmp_path / "a"), resume=True, epochs=4, width=8)
    result = tiny_run.run(str(tmp_path / "a"), resume=True, epochs=4)  # more epochs: allowed
    assert result.epochs_done == 4


@pytest.mark.timing
def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_cleanly(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    tiny_run.run(str(straight))
    killed = tmp_path / "killed"
    calls = {"n": 0}

    def hook(label):  # dies at the 8th file operation: after run.json and the first log rows, before `last`
        calls["n"] += 1
        if calls["n"] == 8:
            raise Crash

    monkeypatch.setattr(ck, "io_hook", hook)
    with pytest.raises(Crash):
        tiny_run.run(str(killed))
    monkeypatch.setattr(ck, "io_hook", None)
    assert not RunFolder(killed).has_checkpoint() and RunFolder(killed).holds_run()
    tiny_run.run(str(killed), resume=True)
    _assert_same_run(straight, killed)


def _count_file_operations(folder: Path, monkeypatch) -> int:
    calls = []
    monkeypatch.setattr(ck, "io_hook", calls.append)
    tiny_run.run(str(folder))
    monkeypatch.setattr(ck, "io_hook", None)
    return len(calls)


@pytest.mark.timing
def test_a_crash_between_any_two_file_operations_loses_nothing(tmp_path, monkeypatch):
    """Training killed at every file operation of the run (each checkpoint write step, log line, run record),
    then resumed: the same weights and log as a run never interrupted, and at every crash the last complete
    checkpoint loads."""
    straight = tmp_path / "straight"
    n_ops = _count_file_operations(straight, monkeypatch)
    assert n_ops > 30
    for k in range(1, n_ops + 1):
        folder = tmp_path / f"k{k}"
        calls = {"n": 0}

        def hook(label, k=k, calls=calls):
            calls["n"] += 1
            if calls["n"] == k:
                raise Crash(label)

        monkeypatch.setattr(ck, "io_hook", hook)
        with pytest.raises(Crash):
            tiny_run.run(str(folder))
        monkeypatch.setattr(ck, "io_hook", None)
        if RunFolder(folder).has_checkpoint():
            load_checkpoint(folder / "last")  # loadable at the instant of the crash
        tiny_run.run(str(folder), resume=True)
        _assert_same_run(straight, folder)


@pytest.mark.timing
def test_killed_at_random_events_the_run_ends_as_if_never_killed(tmp_path):
    """SIGKILL of the training process at random points of its run, then ``--resume``, until the run is done.

    The kill points are drawn as event counts (training steps, evaluation batches, file operations: see
    ``tiny_run``), and the process kills itself when it gets there, so the test is the same on a fast machine,
    a slow one and a busy one: no sleeping, no racing the clock."""
    epochs = 40
    events = tiny_run.count_events(str(tmp_path / "straight"), epochs=epochs)
    per_epoch = len(events) / epochs
    assert {"step", "eval", "append"} <= set(events) and len(events) > 10 * epochs
    folder = tmp_path / "killed"
    rng = random.Random(1)
    # the first kill anywhere in the first epochs, start-up (0) included; then four within a few epochs of
    # progress: mid-step, mid-evaluation or between two steps of a checkpoint write
    kill_points = [rng.randint(0, int(2 * per_epoch))] + [rng.randint(1, int(6 * per_epoch)) for _ in range(4)]
    env = _child_env()
    killed_after_progress = 0
    for attempt, k in enumerate([*kill_points, None]):
        cmd = [sys.executable, "-m", "tests.experiments.tiny_run", str(folder), str(epochs)]
        cmd += ["--resume"] if attempt else []
        cmd += ["--die-at", str(k)] if k is not None else []
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if k is None:
            assert proc.returncode == 0, proc.stderr.decode()
            break
        assert proc.returncode == -signal.SIGKILL, (k, proc.returncode, proc.stderr.decode())
        if RunFolder(folder).has_checkpoint():
            load_checkpoint(folder / "last")  # loadable right after the kill
            killed_after_progress += 1
        assert not (folder / "log.csv").is_file() or len(_log_rows(folder)) < epochs  # it really was cut short
    assert killed_after_progress >= 3
    _assert_same_run(tmp_path / "straight", folder)


@pytest.mark.timing
def test_the_kill_hook_dies_exactly_at_the_chosen_event(tmp_path):
    """The hook the kill test relies on: at event K the process is gone, and the run's files show exactly the
    events before K (here: K = the append of epoch 3's log row, so two rows are on disk)."""
    events = tiny_run.count_events(str(tmp_path / "count"), epochs=6)
    appends = [i + 1 for i, label in enumerate(events) if label == "append"]
    env = _child_env()
    folder = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-m", "tests.experiments.tiny_run", str(folder), "6",
                           "--die-at", str(appends[2])], cwd=REPO, env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert [r["epoch"] for r in _log_rows(folder)] == ["1", "2"]


# ------------------------------------------------------------------------------------ checkpoint -> model


def _build(meta):
    return torch.nn.Sequential(torch.nn.Linear(4, meta["hparams"]["width"]), torch.nn.SiLU(),
                               torch.nn.Linear(meta["hparams"]["width"], 1))


def test_load_trained_checks_the_metadata_before_building(tmp_path, monkeypatch):
    tiny_run.run(str(tmp_path / "run"), epochs=1)
    model, meta = load_trained(tmp_path / "run", "tiny", _build)  # a run folder means its best checkpoint
    assert meta["hparams"] == {"width": 16} and not model.training

    # a header edited to ask for a huge model fails on the shape check: the real model is never built
    tree, meta = load_checkpoint(tmp_path / "run" / "best")
    tampered = {**meta, "hparams": {"width": 30000}}
    save_checkpoint(tmp_path / "tampered", tree, tampered)
    devices = []

    def spy(meta):
        devices.append(torch.empty(0).device.type)  # the default device build() runs under
        return _build(meta)

    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_trained(tmp_path / "tampered", "tiny", spy)
    assert devices == ["meta"]
    save_checkpoint(tmp_path / "nokey", tree, {"experiment": "tiny", "hparams": {}})
    with pytest.raises(CheckpointError, match="metadata do not describe a valid model.*width"):
        load_trained(tmp_path / "nokey", "tiny", _build)
    with pytest.raises(CheckpointError, match="is not a checkpoint of the 'qm9' experiment"):
        load_trained(tmp_path / "run", "qm9", _build)
    bad = {k: v.clone() for k, v in tree["model"].items()}
    next(iter(bad.values()))[0] = float("nan")
    save_checkpoint(tmp_path / "nan", {"model": bad}, meta)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_trained(tmp_path / "nan", "tiny", _build)


# ----------------------------------------------------------------------------------------- presets, grids


def test_preset_learning_rate_rule_and_overrides():
    p = Preset("test", {"epochs": 3, "schedule": "cosine", "ema_decay": 0.9}, LRRule(scale=4.0, per_model={"b": 0.1}))
    assert p.train_config(5e-4).lr == pytest.approx(2e-3)
    assert p.train_config(5e-4, "b").lr == 0.1
    assert p.train_config(5e-4, epochs=None, lr=1e-2).lr == 1e-2 and p.train_config(5e-4).epochs == 3
    assert p.train_config(5e-4, ema_decay=0).ema_decay is None
    assert Preset("fixed", {}, LRRule(value=1e-3)).train_config(None).lr == 1e-3
    with pytest.raises(ValueError, match="not TrainConfig fields"):
        Preset("bad", {"epochz": 3})
    with pytest.raises(ValueError, match="none is known"):
        Preset("scaled", {}).train_config(None)


def test_grid_cell_computes_once_and_resumes(tmp_path):
    calls = []

    def compute(resume):
        calls.append(resume)
        (tmp_path / "cell").mkdir(exist_ok=True)
        (tmp_path / "cell" / "log.csv").write_text("x")
        return {"value": 1.5}

    assert grid_cell(tmp_path / "cell", compute) == {"value": 1.5}
    assert grid_cell(tmp_path / "cell", compute) == {"value": 1.5} and calls == [False]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "log.csv").write_text("x")  # an interrupted cell is resumed
    grid_cell(tmp_path / "other", compute)
    assert calls == [False, True]


def test_tables():
    assert markdown_table(["a", "b"], [[1, None]]) == "| a | b |\n|---|---|\n| 1 | - |"
    assert ratio(0.0142, 0.0071) == "2.00" and ratio(None, 1.0) is None and ratio(1.0, None) is None
    assert json.loads(json.dumps({"r": ratio(float("nan"), 1.0)})) == {"r": None}


def test_a_time_cap_only_cuts_the_run_short_and_says_so(tmp_path, capsys):
    """--max-minutes is a cap, not a recipe: the schedule stays the recipe's (lr of step k is the same), the run
    stops after an evaluation and a checkpoint, and both the result and stderr say it was cut short."""
    from dataclasses import replace

    from egnn.experiments.trainer import Trainer

    full = tiny_run.run(str(tmp_path / "full"), epochs=6)
    assert full.epochs_planned == 6 and not full.cut_by_time_cap
    assert "time cap" not in capsys.readouterr().err
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))
    task = tiny_run.Task(tiny_run.Split(48, 0), tiny_run.Split(16, 1), tiny_run.Split(16, 2), tiny_run._loss,
                         tiny_run._metric)
    cfg = replace(tiny_run.config(6), max_minutes=1e-9)  # 60 ns: no epoch is that fast
    trainer = Trainer(model, task, cfg, tmp_path / "capped", {"experiment": "tiny"})
    capped = trainer.fit()
    assert capped.cut_by_time_cap and capped.epochs_done == 1 and capped.epochs_planned == 6
    assert capped.history[0]["lr"] == full.history[0]["lr"] and capped.history[0]["valid"] is not None
    assert load_checkpoint(tmp_path / "capped" / "last")[1]["epoch"] == 1
    assert "stopped the run after 1 of its 6 epochs" in capsys.readouterr().err
