"""``egnn qm9 table``: train whatever the 12-target grid is missing, then the table of Table 3 beside ours.

The grid is a folder with one run folder per target (``GRID/<target>``) and one log per target
(``GRID/<target>.log``). A finished run is kept; an unfinished one is resumed from its last checkpoint (the run layer
refuses to resume a run with other settings); a missing one is started. A finished run also gets a small record,
``GRID/<target>/result.json`` (test MAE, epochs, minutes, the code that trained it), which is all the table needs:
the checkpoints can be left out of a copy of the grid (as in ``benchmarks/results/qm9_table_quick``) and the grid
still counts the target as done. Each run is a separate
``egnn qm9 train`` process at one thread, ``jobs`` at a time, so a crash or a kill loses at most the epoch in
progress, and the whole grid resumes by running the same command again.
"""

from __future__ import annotations

import csv
import io
import shlex
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egnn.checkpoint import CheckpointError, read_checkpoint_info
from egnn.experiments.qm9 import data as qm9
from egnn.experiments.qm9.fit import PRESETS, check_target, unit
from egnn.experiments.qm9.train import PAPER_MAE
from egnn.experiments.run import RESULT_FILE, RUN_FILE, read_json, write_json

PAPER_SOURCE = "EGNN column of Table 3, Satorras, Hoogeboom & Welling, arXiv:2102.09844 (ICML 2021)"


class GridError(RuntimeError):
    """A training process of the grid failed; ``states`` holds where every target stands."""

    def __init__(self, message: str, states: list[RunState]) -> None:
        super().__init__(message)
        self.states = states


@dataclass
class RunState:
    """Where one target's run stands."""

    target: str
    folder: Path
    epoch: int | None  # last checkpointed epoch (None: not started)
    epochs: int | None  # the recipe's epochs
    test_mae: float | None  # at the best validation epoch
    best_epoch: int | None
    minutes: float | None  # training wall time (evaluations included)
    code: str | None = None  # the code that trained it (run.json)

    @property
    def finished(self) -> bool:
        return self.epoch is not None and self.epochs is not None and self.epoch >= self.epochs


def run_state(folder: Path, target: str, planned: int | None = None) -> RunState:
    """Where ``target``'s run in ``folder`` stands: from the last checkpoint's header, or, in a copy without
    checkpoints, from the finished run's record; ``planned``: the recipe's epochs (default: the run's own)."""
    code = _training_code(folder)
    try:
        last = read_checkpoint_info(folder / "last").meta
    except CheckpointError:
        record = read_json(folder / RESULT_FILE)
        if isinstance(record, dict) and record.get("target") == target:
            return RunState(target, folder, record["epoch"], planned if planned is not None else record["epochs"],
                            record["test_mae"], record["best_epoch"], record["minutes"], record.get("code", code))
        return RunState(target, folder, None, planned, None, None, None, code)
    best = last.get("best") or {}
    epochs = planned if planned is not None else (last.get("train_config") or {}).get("epochs")
    seconds = last.get("train_seconds")
    return RunState(target, folder, last.get("epoch"), epochs, best.get("test"), best.get("epoch"),
                    None if seconds is None else seconds / 60, code)


def _training_code(folder: Path) -> str | None:
    try:
        run = read_json(folder / RUN_FILE)
    except ValueError:
        return None
    return run.get("code") if isinstance(run, dict) else None


def record_finished(state: RunState) -> None:
    """Write (or bring up to date) ``result.json`` of a finished run: the record the table reads when the
    checkpoints are not there."""
    path = state.folder / RESULT_FILE
    record = {"target": state.target, "epoch": state.epoch, "epochs": state.epochs, "test_mae": state.test_mae,
              "best_epoch": state.best_epoch, "minutes": state.minutes, "code": state.code}
    if state.finished and read_json(path) != record:
        write_json(path, record)


def grid_states(grid: Path, targets: list[str], planned: dict[str, int]) -> list[RunState]:
    """Every target's state; finished runs get their record."""
    states = [run_state(grid / t, t, planned[t]) for t in targets]
    for s in states:
        record_finished(s)
    return states


def train_command(target: str, preset: str, folder: Path, data_dir: str | Path, threads: int = 1) -> list[str]:
    """The ``egnn`` command line that trains (or resumes) ``target`` in ``folder``."""
    return ["egnn", "qm9", "train", "--target", target, "--preset", preset, "--data", str(data_dir),
            "--out", str(folder), "--threads", str(threads)]


def run_grid(
    preset: str,
    grid: str | Path,
    data_dir: str | Path,
    targets: list[str] | None = None,
    jobs: int = 2,
    threads: int = 1,
    say: Callable[[str], None] = print,
) -> list[RunState]:
    """Train every unfinished target of ``grid`` (``jobs`` processes of ``threads`` threads); return every state.

    Raises:
        GridError: a training process failed (the others still ran); names the target and its log.
    """
    grid = Path(grid)
    targets = [check_target(t) for t in (targets or list(qm9.TARGET_NAMES))]
    grid.mkdir(parents=True, exist_ok=True)
    planned = planned_epochs(preset, targets)
    todo = [s.target for s in grid_states(grid, targets, planned) if not s.finished]
    if todo:
        say(f"qm9 table: training {len(todo)} of {len(targets)} targets ({', '.join(todo)}), {jobs} at a time; "
            f"logs in {grid}/<target>.log")

    def train(target: str) -> tuple[str, int]:
        folder = grid / target
        cmd = train_command(target, preset, folder, data_dir, threads) + ["--no-progress"]
        if run_state(folder, target).epoch is not None:
            cmd.append("--resume")
        say(f"  start {target}: {shlex.join(cmd)}")
        with open(grid / f"{target}.log", "a") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            argv = [sys.executable, "-m", "egnn.experiments.cli", *cmd[1:]]
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode
        state = run_state(folder, target, planned[target])
        if code == 0:
            record_finished(state)
        say(f"  done  {target}: exit {code}, epoch {state.epoch}/{state.epochs}, test MAE {state.test_mae}")
        return target, code

    failed = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for target, code in pool.map(train, todo):
            if code != 0:
                failed.append(f"{target} (exit {code}, see {grid / (target + '.log')})")
    states = grid_states(grid, targets, planned)
    if failed:
        raise GridError(f"training failed for {', '.join(failed)}", states)
    return states


def planned_epochs(preset: str, targets: list[str]) -> dict[str, int]:
    """The recipe's epochs per target (a run is finished when its last checkpoint reached them)."""
    p = PRESETS.get(preset)
    return {t: p.train_config(t).epochs for t in targets}


def table_rows(states: list[RunState], preset: str, data_dir: str | Path) -> list[dict[str, Any]]:
    rows = []
    for s in states:
        paper = PAPER_MAE[s.target]
        rows.append({
            "target": s.target, "unit": unit(s.target),
            "ours": s.test_mae, "paper": paper,
            "ratio": None if s.test_mae is None else s.test_mae / paper,
            "epochs": s.epoch, "epochs_planned": s.epochs, "best_epoch": s.best_epoch,
            "minutes": s.minutes, "finished": s.finished, "trained_with": s.code,
            "command": shlex.join(train_command(s.target, preset, s.folder, data_dir)),
        })
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render_markdown(rows: list[dict[str, Any]], code: str) -> str:
    lines = ["| target | unit | ours (test MAE) | paper EGNN | ours / paper | epochs | minutes | command |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ep = "-" if r["epochs"] is None else f"{r['epochs']}/{r['epochs_planned']}" + (
            "" if r["finished"] else " (unfinished)")
        lines.append(f"| {r['target']} | {r['unit']} | {_fmt(r['ours'], '.4g')} | {r['paper']:g} | "
                     f"{_fmt(r['ratio'], '.2f')} | {ep} | {_fmt(r['minutes'], '.1f')} | `{r['command']}` |")
    done = [r["ratio"] for r in rows if r["ratio"] is not None and r["finished"]]
    lines.append("")
    if done:
        lines.append(f"{len(done)} of {len(rows)} targets finished; worst ratio {max(done):.2f}, "
                     f"targets within 3x: {sum(x <= 3 for x in done)}, within 2x: {sum(x <= 2 for x in done)}.")
    trained: dict[str, list[str]] = {}
    for r in rows:
        if r["epochs"] is not None:
            trained.setdefault(r["trained_with"] or "unknown code", []).append(r["target"])
    if trained:
        lines.append("Trained with: " + "; ".join(f"{c} ({', '.join(ts)})" for c, ts in trained.items()) + ".")
    lines.append(f"Paper: {PAPER_SOURCE}; test MAE at the best validation epoch, 100k training molecules, "
                 "1000 epochs. Ours: the same split and metric. Printed by " + code + ".")
    return "\n".join(lines)


def render_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["target"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
