"""Data parallel training under ``torchrun`` (gloo, CPU, 1 thread per process): N processes give the same
per-epoch losses, metrics and final weights as one (same global batch), for an energy + forces fit (a file and a
store), a QM9 target and N-body; resume with another N; a killed rank ends the job with one line, and the run
resumes as if never interrupted; refusals are one line, exit code 2."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from egnn.checkpoint import load_checkpoint
from egnn.experiments.cli import main

pytestmark = pytest.mark.timing
pytest.importorskip("ase")

REPO = Path(__file__).resolve().parents[2]


def torchrun(n: int, argv: list[str], cwd: Path, script: list[str] | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node n -m egnn.experiments.cli ARGV`` (or ``script`` instead of the
    module), one thread per process, a bounded wait."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EGNN_DIST_TIMEOUT": "120",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    target = script or ["-m", "egnn.experiments.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *target, *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_course(a: Path, b: Path, rtol: float = 1e-5) -> None:
    """Same steps and learning rates; losses and metrics to float tolerance; final and best weights close."""
    ra, rb = log_rows(a), log_rows(b)
    assert [(r["epoch"], r["step"], r["lr"], r["best_epoch"]) for r in ra] == \
        [(r["epoch"], r["step"], r["lr"], r["best_epoch"]) for r in rb]
    for key in ("train_loss", "valid", "test"):
        x = [float(r[key]) for r in ra if r[key]]
        y = [float(r[key]) for r in rb if r[key]]
        np.testing.assert_allclose(x, y, rtol=rtol, err_msg=key)
    for name in ("last", "best"):
        wa, wb = load_checkpoint(a / name)[0]["model"], load_checkpoint(b / name)[0]["model"]
        for k in wa:
            # Adam divides by the root of the squared gradients: an element whose gradient is near zero moves by
            # up to the learning rate on rounding differences of the reduction order (seen: 2e-5 after 10 steps)
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4, msg=f"{name} {k}")


def weights_moved(run: Path, other: Path) -> bool:
    wa, wb = load_checkpoint(run / "last")[0]["model"], load_checkpoint(other / "last")[0]["model"]
    return any(not torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------------- egnn fit


@pytest.fixture(scope="module")
def emt(tmp_path_factory):
    import ase.io

    from egnn.experiments.fit.emt import EMTConfig, generate

    root = tmp_path_factory.mktemp("ddp_fit")
    frames = generate(EMTConfig(elements=("Cu", "Au"), n_frames=30, repeat=(1, 1, 2), seed=1))
    ase.io.write(str(root / "train.extxyz"), frames[:25])
    ase.io.write(str(root / "test.extxyz"), frames[25:])
    assert main(["data", "pack", str(root / "train.extxyz"), "--out", str(root / "train.store"), "--forces",
                 "forces", "--no-progress"]) == 0
    assert main(["data", "pack", str(root / "test.extxyz"), "--out", str(root / "test.store"), "--energy",
                 "energy", "--no-progress"]) == 0  # no forces in this store
    return root


def fit_args(data: str, out: Path, *extra: str) -> list[str]:
    # batch 7 of 22 training frames: the last global batch has one frame, so some ranks have none
    return ["fit", "--data", data, "--forces", "forces", "--cutoff", "4.0", "--hidden", "8", "--layers", "1",
            "--rbf", "4", "--epochs", "3", "--batch-size", "7", "--eval-every", "1", "--lr", "1e-2",
            "--warmup-steps", "0", "--no-cache", "--no-progress", "--threads", "1", "--out", str(out), *extra]


def test_fit_with_forces_is_the_same_on_1_2_and_3_processes_and_resumes_with_another_number(emt, tmp_path):
    """Energy + forces: one process, two (a file), three (its store, two loader workers each) follow the same
    course; the two-process run, resumed for one more epoch by three processes, equals a straight 4-epoch run."""
    train, test = str(emt / "train.extxyz"), str(emt / "test.extxyz")
    flat = ("--test", test, "--final-lr-ratio", "1")  # a constant rate: a longer --epochs keeps the schedule
    assert main(fit_args(train, tmp_path / "n1", *flat)) == 0
    res = torchrun(2, fit_args(train, tmp_path / "n2", *flat), emt)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_course(tmp_path / "n1", tmp_path / "n2")
    res = torchrun(3, fit_args(str(emt / "train.store"), tmp_path / "n3", *flat, "--workers", "2"), emt)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_course(tmp_path / "n1", tmp_path / "n3")
    assert sorted(p.name for p in (tmp_path / "n3").iterdir()) == \
        sorted(p.name for p in (tmp_path / "n1").iterdir())
    # resume with another number of processes
    assert main(fit_args(train, tmp_path / "straight", *flat, "--epochs", "4")) == 0
    res = torchrun(3, fit_args(train, tmp_path / "n2", *flat, "--epochs", "4", "--resume"), emt)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_course(tmp_path / "straight", tmp_path / "n2")
    # the weights did move: the equalities above are not those of untrained models
    assert weights_moved(tmp_path / "n1", tmp_path / "straight")


@pytest.fixture(scope="module")
def whole(emt, tmp_path_factory):
    """The uninterrupted 6-epoch run the killed runs resume to."""
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(fit_args(str(emt / "train.extxyz"), out, "--epochs", "6")) == 0
    return out


def test_a_killed_rank_ends_the_job_with_one_line_and_the_run_resumes_as_if_never_killed(emt, tmp_path, whole):
    """Rank 1 SIGKILLs itself at its 22nd training step (epoch 6 of 6; 4 steps an epoch, a checkpoint after
    epoch 5): the job ends without hanging, and ``--resume`` (one process) ends as the uninterrupted run."""
    train = str(emt / "train.extxyz")
    killer = [str(REPO / "tests" / "experiments" / "die_on_rank.py"), "--rank", "1", "--step", "22", "--"]
    res = torchrun(2, fit_args(train, tmp_path / "killed", "--epochs", "6"), emt, script=killer)
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("egnn: error:")]
    assert len(ours) <= 1 and all("rank 0: another rank stopped" in line for line in ours), res.stderr[-3000:]
    assert load_checkpoint(tmp_path / "killed" / "last")[1]["epoch"] == 5
    assert len(log_rows(tmp_path / "killed")) >= 5
    assert main(fit_args(train, tmp_path / "killed", "--epochs", "6", "--resume")) == 0
    assert_same_course(whole, tmp_path / "killed")


def egnn(argv: list[str], cwd: Path, script: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python -m egnn.experiments.cli ARGV`` (or ``script``) in a fresh process, a bounded wait."""
    env = {**os.environ, "EGNN_DIST_TIMEOUT": "120",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, *(script or ["-m", "egnn.experiments.cli"]), *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_procs_2_is_torchrun_with_2_processes_and_prints_once(emt, tmp_path):
    """``egnn fit --threads 2 --procs 2`` starts the workers torchrun would: the same log and weights, bit for
    bit; the summary is printed once and nothing lands on stderr (no warning from DDP either)."""
    train = str(emt / "train.extxyz")
    res = torchrun(2, fit_args(train, tmp_path / "torchrun"), emt)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "find_unused_parameters" not in res.stderr, res.stderr[-3000:]
    res = egnn([*fit_args(train, tmp_path / "procs"), "--threads", "2", "--procs", "2"], emt)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count('"best_epoch"') == 1 and res.stdout.count("model: ") == 1, res.stdout
    assert res.stderr == "", res.stderr[-3000:]
    drop = ("train_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in log_rows(tmp_path / "torchrun")] == \
        [{k: v for k, v in r.items() if k not in drop} for r in log_rows(tmp_path / "procs")]
    for name in ("last", "best"):
        wa, wb = load_checkpoint(tmp_path / "torchrun" / name)[0], load_checkpoint(tmp_path / "procs" / name)[0]
        for k in wa["model"]:
            assert torch.equal(wa["model"][k], wb["model"][k]), (name, k)


@pytest.mark.parametrize("in_backward", [False, True], ids=["before-forward", "in-backward"])
def test_a_killed_worker_of_procs_ends_the_job_with_one_line_and_resumes(emt, tmp_path, whole, in_backward):
    """``--procs 2`` whose rank-1 worker is SIGKILLed at its 22nd step (before its forward, or once the step's loss
    was reduced, so that rank 0 meets the loss in DDP's all-reduce inside ``loss.backward()``): one line from the
    launcher, exit code 1, no traceback; ``--resume`` ends as the uninterrupted run."""
    train = str(emt / "train.extxyz")
    killer = [str(REPO / "tests" / "experiments" / "launch_dying.py"), "--rank", "1", "--step", "22",
              *(["--in-backward"] if in_backward else []), "--"]
    res = egnn([*fit_args(train, tmp_path / "killed", "--epochs", "6"), "--threads", "2", "--procs", "2"], emt,
               script=killer)
    assert res.returncode == 1, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egnn: error: worker process of rank 1 was killed by SIGKILL"), \
        res.stderr[-3000:]
    assert load_checkpoint(tmp_path / "killed" / "last")[1]["epoch"] == 5
    assert main(fit_args(train, tmp_path / "killed", "--epochs", "6", "--resume")) == 0
    assert_same_course(whole, tmp_path / "killed")


def test_ctrl_c_stops_every_worker_of_procs_with_one_line(emt, tmp_path):
    """SIGINT to ``egnn fit --procs 2`` once its first epoch is logged: the launcher and both workers stop, one
    ``egnn: interrupted`` line, exit code 130; the run resumes."""
    train = str(emt / "train.extxyz")
    out = tmp_path / "run"
    env = {**os.environ, "EGNN_DIST_TIMEOUT": "120",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "egnn.experiments.cli", *fit_args(train, out, "--epochs", "500"), "--threads", "2",
           "--procs", "2"]
    # SIG_DFL: a launcher started from a shell's background job would otherwise inherit SIGINT ignored
    proc = subprocess.Popen(cmd, cwd=emt, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300  # a bound, not a wait for time to pass: the loop waits for a logged epoch
        while not ((out / "log.csv").exists() and log_rows(out)) and proc.poll() is None:
            assert time.monotonic() < deadline, "no epoch logged in 300 s"
            time.sleep(0.05)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines() == ["egnn: interrupted (the last complete checkpoint is kept; continue with "
                                        "--resume)"], err[-3000:]
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert main(fit_args(train, out, "--epochs", str(int(log_rows(out)[-1]["epoch"]) + 1), "--resume")) == 0


def test_torchrun_rank_lost_in_backward_is_one_line(emt, tmp_path):
    """Under torchrun, rank 1 SIGKILLed once its step's loss was reduced: rank 0 meets the loss in DDP's gradient
    all-reduce inside ``loss.backward()`` and says so in one line (exit code 1), not with gloo's traceback."""
    train = str(emt / "train.extxyz")
    killer = [str(REPO / "tests" / "experiments" / "die_on_rank.py"), "--rank", "1", "--step", "6", "--in-backward",
              "--"]
    res = torchrun(2, fit_args(train, tmp_path / "killed"), emt, script=killer)
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("egnn: error:")]
    assert len(ours) == 1 and "rank 0: another rank stopped" in ours[0], res.stderr[-3000:]
    # torchrun prints its own report of the dead rank; rank 0's traceback through backward() is gone
    assert "loss.backward()" not in res.stderr and "_train_epoch" not in res.stderr, res.stderr[-3000:]


def test_refusals_are_one_line_with_exit_code_2(emt, tmp_path, capsys):
    train = str(emt / "train.extxyz")
    # a store without forces when --forces is asked
    assert main(fit_args(str(emt / "test.store"), tmp_path / "nf")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test.store" in err[0] and "forces" in err[0]
    assert not (tmp_path / "nf").exists()
    # a corrupt store
    bad = tmp_path / "corrupt.store"
    import shutil

    shutil.copytree(emt / "train.store", bad)
    data = bytearray((bad / "positions.npy").read_bytes())
    data[-5] ^= 0xFF
    (bad / "positions.npy").write_bytes(bytes(data))
    assert main(fit_args(str(bad), tmp_path / "nc")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum" in err[0] and "positions" in err[0]
    # torchrun with a folder another run holds: one line, from rank 0, and the folder untouched
    assert main(fit_args(train, tmp_path / "held", "--epochs", "1")) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "held").iterdir() if p.is_file()}
    res = torchrun(2, fit_args(train, tmp_path / "held"), emt)
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("egnn: error:")]
    assert ours == [line for line in ours if "rank 0: " in line and "already holds a run" in line] and len(ours) == 1
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "held").iterdir() if p.is_file()}


# ----------------------------------------------------------------------------------------------- QM9, N-body


def test_qm9_target_is_the_same_on_1_2_and_3_processes(tmp_path):
    from egnn.experiments.qm9 import data as qm9

    if qm9.qm9pack_data_dir() is None:
        pytest.skip("qm9pack is not installed")
    data = tmp_path / "qm9"
    qm9.prepare(data, limit=300, progress=False)
    args = ["qm9", "train", "--target", "homo", "--data", str(data), "--max-train", "48", "--epochs", "2",
            "--batch-size", "10", "--eval-every", "1", "--warmup-steps", "0", "--lr", "5e-3", "--device", "cpu",
            "--no-progress", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "n1")]) == 0
    for n in (2, 3):
        res = torchrun(n, [*args, "--out", str(tmp_path / f"n{n}")], tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert_same_course(tmp_path / "n1", tmp_path / f"n{n}")


def test_nbody_is_the_same_on_1_2_and_3_processes(tmp_path):
    from egnn.experiments.nbody.files import save_split_files
    from egnn.experiments.nbody.simulate import generate_dataset

    data = tmp_path / "nbody"
    data.mkdir()
    save_split_files(data, generate_dataset(40, 20, 20, seed=7, progress=False))
    args = ["nbody", "train", "--data", str(data), "--max-samples", "40", "--epochs", "2", "--batch-size", "9",
            "--device", "cpu", "--no-progress", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "n1")]) == 0
    for n in (2, 3):
        res = torchrun(n, [*args, "--out", str(tmp_path / f"n{n}")], tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert_same_course(tmp_path / "n1", tmp_path / f"n{n}")
