"""Ours against MACE on the same data, the same threads and the same CPU-time budgets, in one invocation.

    python benchmarks/bench_potentials.py [--work data/potentials] [--budgets 3,6,12] [--sets molecules,metals]
        [--models vector,invariant] [--largest-only invariant] [--mace-venv .venv-mace | --no-mace]

Data (generated once under ``--work``, nothing downloaded):

- ``molecules``: GFN2-xTB Langevin MD of six small organic molecules at 300-600 K (``xtb_md_data.py``, tblite):
  1,200 training, 150 validation and 300 test frames (the test frames from separate trajectories).
- ``metals``: the EMT Cu-Au cells of ``egnn example emt`` (32-atom fcc cells, rattled and strained, a vacancy in a
  quarter of them): 400 training (seed 11), 50 validation (seed 12) and 100 test frames (seed 13).

Budgets are CPU time (user + system seconds of the training process, all its threads, read from /proc), not wall
time: on this shared 2-core machine the wall time of a one-thread process depends on whatever else runs, its CPU
time hardly. Every training process runs at ``--threads`` (default 1), ours and MACE side by side.

Ours: ``egnn fit --model M`` with the fit recipe, one run per budget: a three-epoch probe gives the CPU seconds per
epoch, and each run's epoch count fills its budget (so the cosine schedule ends with it). Reported: the test MAE of
its best (validation-selected) model and the CPU time it used.

MACE (mace-torch 0.3.16, in its own environment, which this script creates with pinned versions when
``--mace-venv`` does not exist: mace pins e3nn 0.4.4 and our ``tfn`` extra e3nn 0.6.0): ``mace_run_train`` with the
settings of MACE's README example scaled to a small model: ``--hidden_irreps '32x0e + 32x1o' --r_max 5
--batch_size 10 --E0s average --ema --ema_decay 0.99 --amsgrad`` and its defaults otherwise (float64, lr 0.01,
energy weight 1, forces weight 100, ReduceLROnPlateau), one run stopped once it has used the largest budget. MACE
saves its (EMA) weights at each improvement of the validation loss; at budget B the last checkpoint written before
B CPU-seconds is evaluated on the test set. MACE's learning-rate schedule does not depend on the run's length, so
this equals a run stopped at B.

Afterwards, with nothing else of ours running: the energy + forces call time at 2 threads of the trained models on
a 108-atom Cu-Au cell and a 30-atom molecule (S22's adenine-thymine pair), and NVE on ethanol from a 500 K start
(0.5 fs x ``--md-steps``) with ours and with GFN2-xTB itself: total-energy span and drift per atom, and the time of
one MD step (9 atoms).

Call times depend on the machine and its load (printed); compare only within one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MACE_PINS = ["mace-torch==0.3.16", "ase==3.29.0"]
MACE_ARGS = ["--model", "MACE", "--hidden_irreps", "32x0e + 32x1o", "--r_max", "5.0", "--batch_size", "10",
             "--E0s", "average", "--ema", "--ema_decay", "0.99", "--amsgrad", "--error_table", "PerAtomMAE",
             "--device", "cpu", "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--seed", "0"]


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


# ------------------------------------------------------------------------------------------------------- data


def write_ref(frames: list, path: Path) -> None:
    """Frames with their labels under REF_energy / REF_forces (the keys MACE reads reliably)."""
    import ase.io

    out = []
    for a in frames:
        b = a.copy()
        b.info["REF_energy"] = float(a.get_potential_energy())
        b.arrays["REF_forces"] = a.get_forces().copy()
        b.calc = None
        out.append(b)
    tmp = path.with_name(f".{path.name}.tmp")
    ase.io.write(tmp, out, format="extxyz")
    tmp.replace(path)


def make_data(work: Path, sets: list[str]) -> dict[str, Path]:
    folders = {}
    if "molecules" in sets:
        folder = work / "molecules"
        if not (folder / "test.extxyz").exists():
            sys.path.insert(0, str(HERE))
            import xtb_md_data

            if xtb_md_data.main(["--out", str(folder)]) != 0:
                raise SystemExit("bench_potentials: the molecular data needs tblite (pip install '.[potentials]')")
        folders["molecules"] = folder
    if "metals" in sets:
        from egnn.experiments.fit.emt import EMTConfig, generate

        folder = work / "metals"
        folder.mkdir(parents=True, exist_ok=True)
        for split, n, seed in (("train", 400, 11), ("valid", 50, 12), ("test", 100, 13)):
            if not (folder / f"{split}.extxyz").exists():
                write_ref(generate(EMTConfig(n_frames=n, seed=seed)), folder / f"{split}.extxyz")
        folders["metals"] = folder
    return folders


# ------------------------------------------------------------------------------------------------------- ours


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Run:
    """A training process and the CPU seconds it had used at each poll (wall time, CPU time)."""

    proc: subprocess.Popen
    start: float
    out: Path
    logfile: Any
    samples: list[tuple[float, float]] = field(default_factory=list)
    rows_at: list[float] = field(default_factory=list)  # CPU seconds when each new log.csv row appeared
    cpu_limit: float | None = None  # stop the process once it has used this many CPU seconds

    def watch(self, log_csv: Path | None = None, every: float = 0.25) -> None:
        rows = 0
        while self.proc.poll() is None:
            cpu = cpu_seconds(self.proc.pid)
            if cpu is not None:
                self.samples.append((time.time(), cpu))
                if log_csv is not None and log_csv.exists():
                    n = max(0, len(log_csv.read_text().splitlines()) - 1)
                    self.rows_at += [cpu] * (n - rows)
                    rows = n
                if self.cpu_limit is not None and cpu >= self.cpu_limit:
                    self.proc.terminate()
            time.sleep(every)

    def cpu_at(self, wall: float) -> float:
        """CPU seconds used by wall time ``wall`` (linear between polls)."""
        t = np.array([w for w, _ in self.samples])
        c = np.array([c for _, c in self.samples])
        return float(np.interp(wall, t, c))

    def wait(self, log_csv: Path | None = None) -> float:
        """Wait for the process (watching its CPU time); returns the CPU seconds it used."""
        self.watch(log_csv)
        self.logfile.close()
        return self.samples[-1][1] if self.samples else 0.0


def start(cmd: list[str], logpath: Path, threads: int, cwd: Path | None = None) -> Run:
    logfile = open(logpath, "w")
    logfile.write(shlex.join(cmd) + "\n")
    logfile.flush()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    return Run(proc, time.time(), logpath.parent, logfile)


def egnn_fit(folder: Path, model: str, out: Path, epochs: int, threads: int) -> Run:
    cmd = [sys.executable, "-m", "egnn.experiments.cli", "fit", "--data", str(folder / "train.extxyz"),
           "--valid", str(folder / "valid.extxyz"), "--test", str(folder / "test.extxyz"),
           "--target", "REF_energy", "--forces", "REF_forces", "--model", model, "--epochs", str(epochs),
           "--threads", str(threads), "--out", str(out), "--no-progress", "--no-cache"]
    out.parent.mkdir(parents=True, exist_ok=True)
    return start(cmd, out.with_suffix(".log"), threads)


def ours_results(out: Path) -> dict[str, float]:
    summary = json.loads((out / "summary.json").read_text())
    test = summary["test"]
    return {"forces_mae_meV_per_A": 1000 * test["forces_mae"],
            "energy_per_atom_mae_meV": 1000 * test["REF_energy_per_atom_mae"],
            "epochs_done": summary["fit"]["epochs_done"], "epochs_planned": summary["fit"]["epochs_planned"]}


def ours_sequence(folder: Path, model: str, budgets: list[float], work: Path, threads: int) -> dict[float, dict]:
    """A three-epoch probe (CPU seconds per epoch: between the first and the last epoch's log row), then one run
    per budget, one after another, whose epoch count fills the budget."""
    probe = work / f"{model}-probe"
    info = probe.with_suffix(".json")
    if not info.exists():
        run = egnn_fit(folder, model, probe, 3, threads)
        run.wait(probe / "log.csv")
        if len(run.rows_at) < 3:
            raise SystemExit(f"bench_potentials: the probe {probe} did not log 3 epochs; see {probe}.log")
        per_epoch = (run.rows_at[-1] - run.rows_at[0]) / (len(run.rows_at) - 1)
        info.write_text(json.dumps({"cpu_s_per_epoch": per_epoch, "startup_cpu_s": run.rows_at[0] - per_epoch}))
    probe_info = json.loads(info.read_text())
    per_epoch, startup = probe_info["cpu_s_per_epoch"], probe_info["startup_cpu_s"]
    results = {}
    for b in budgets:
        out = work / f"{model}-{b:g}min"
        done = out.with_suffix(".json")
        if not done.exists():
            # the final test evaluation of the best model costs about one more epoch's evaluation
            epochs = max(1, int((b * 60 - startup) / per_epoch) - 1)
            log(f"ours {model} {folder.name}: {b:g} CPU-min -> {epochs} epochs ({per_epoch:.1f} CPU-s/epoch; "
                f"{load()})")
            run = egnn_fit(folder, model, out, epochs, threads)
            used = run.wait(out / "log.csv")
            done.write_text(json.dumps({"cpu_s": used, "wall_s": time.time() - run.start}))
        res = {**ours_results(out), **json.loads(done.read_text())}
        results[b] = res
        log(f"ours {model} {folder.name} {b:g} CPU-min: {res}")
    return results


# ------------------------------------------------------------------------------------------------------- MACE


def mace_env(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating the MACE environment {venv} ({', '.join(MACE_PINS)})")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *MACE_PINS], check=True)
    return python


def mace_train(venv: Path, folder: Path, out: Path, epochs: int, threads: int) -> Run:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(venv / "bin" / "mace_run_train"), "--name", "mace", "--train_file", str(folder / "train.extxyz"),
           "--valid_file", str(folder / "valid.extxyz"), "--test_file", str(folder / "test.extxyz"),
           "--max_num_epochs", str(epochs), "--keep_checkpoints", "--eval_interval", "1", *MACE_ARGS,
           "--work_dir", str(out)]
    return start(cmd, out / "stdout.log", threads, cwd=out)


def mace_pipeline(venv: Path, folder: Path, budgets: list[float], work: Path, threads: int) -> None:
    """A one-epoch probe (a model file of the architecture, for evaluation and timing), then the run, stopped once
    it has used the largest budget's CPU time. At each checkpoint's modification time the CPU time used is read off
    the polls and kept in ``checkpoint_cpu.json``."""
    mace_env(venv)
    probe = work / "mace-probe"
    if not (probe / "mace.model").exists():
        mace_train(venv, folder, probe, 1, threads).wait()
    out = work / "mace-run"
    if (out / "checkpoint_cpu.json").exists():
        return
    b = max(budgets)
    log(f"MACE {folder.name}: until {b:g} CPU-min ({load()})")
    run = mace_train(venv, folder, out, 10_000, threads)
    run.cpu_limit = b * 60
    used = run.wait()
    ckpts = {p.name: run.cpu_at(p.stat().st_mtime) for p in (out / "checkpoints").glob("*_epoch-*.pt")}
    (out / "checkpoint_cpu.json").write_text(json.dumps({"cpu_s": used, "wall_s": time.time() - run.start,
                                                         "checkpoints": ckpts}, indent=1))


def mace_results(venv: Path, folder: Path, budgets: list[float], work: Path) -> dict[float, dict]:
    out = work / "mace-run"
    record = json.loads((out / "checkpoint_cpu.json").read_text())
    ckpts = sorted(record["checkpoints"].items(), key=lambda kv: kv[1])
    results = {}
    for b in budgets:
        before = [(name, cpu) for name, cpu in ckpts if cpu <= b * 60]
        if not before:
            results[b] = {"note": "no checkpoint yet"}
            continue
        name, cpu = before[-1]
        cache = out / f"eval_{Path(name).stem}.json"
        if not cache.exists():
            res = subprocess.run([str(venv / "bin" / "python"), str(HERE / "mace_tools.py"), "eval",
                                  str(work / "mace-probe" / "mace.model"), str(out / "checkpoints" / name),
                                  str(folder / "test.extxyz")],
                                 capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            if res.returncode:
                raise SystemExit(f"bench_potentials: MACE eval failed:\n{res.stderr[-2000:]}")
            cache.write_text(res.stdout.strip().splitlines()[-1])
        res = json.loads(cache.read_text())
        res["epoch"] = int(Path(name).stem.rsplit("-", 1)[1])
        res["checkpoint_cpu_s"] = round(cpu, 1)
        results[b] = res
        log(f"MACE {folder.name} {b:g} CPU-min: {res}")
    return results


# --------------------------------------------------------------------------------------------- calls and MD


def call_structures(work: Path) -> Path:
    """A 108-atom Cu-Au cell and S22's adenine-thymine pair (30 atoms)."""
    import ase.io
    from ase.build import bulk
    from ase.collections import s22

    path = work / "call_structures.extxyz"
    if not path.exists():
        rng = np.random.default_rng(5)
        cell = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((3, 3, 3))
        cell.set_chemical_symbols(list(rng.choice(["Cu", "Au"], len(cell))))
        cell.positions += rng.normal(0, 0.05, cell.positions.shape)
        ase.io.write(path, [cell, s22["Adenine-thymine_Watson-Crick_complex"]], format="extxyz")
    return path


def ours_call_ms(model_dir: Path, atoms, threads: int, calls: int = 30, warmup: int = 5,
                 dtype: str = "float32") -> float:
    import torch

    from egnn.ase import EGNNCalculator

    torch.set_num_threads(threads)
    a = atoms.copy()
    a.calc = EGNNCalculator(model_dir, dtype=getattr(torch, dtype))
    rng = np.random.default_rng(0)
    base = a.positions.copy()
    times = []
    for i in range(warmup + calls):
        a.positions = base + rng.normal(0, 0.01, base.shape)
        t = time.perf_counter()
        a.get_forces()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def nve(atoms, calc, steps: int, seed: int = 0) -> dict[str, float]:
    """NVE from a 500 K Maxwell-Boltzmann start, 0.5 fs steps: total-energy span and drift (meV/atom)."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet

    a = atoms.copy()
    a.calc = calc
    MaxwellBoltzmannDistribution(a, temperature_K=500, rng=np.random.default_rng(seed))
    Stationary(a)
    ZeroRotation(a)
    energies = []
    dyn = VelocityVerlet(a, 0.5 * units.fs)
    dyn.attach(lambda: energies.append(a.get_total_energy()), interval=10)
    t = time.perf_counter()
    dyn.run(steps)
    step_ms = 1000 * (time.perf_counter() - t) / steps
    e = np.asarray(energies) / len(a) * 1000
    return {"span_meV_per_atom": float(e.max() - e.min()), "drift_meV_per_atom": float(e[-1] - e[0]),
            "ms_per_step": step_ms}


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("data/potentials"), help="data and runs (reused when present)")
    p.add_argument("--budgets", default="3,6,12", help="CPU-time budgets in minutes (default 3,6,12)")
    p.add_argument("--sets", default="molecules,metals")
    p.add_argument("--models", default="vector,invariant", help="our --model values (default vector,invariant)")
    p.add_argument("--largest-only", default="invariant",
                   help="models trained at the largest budget only (default invariant: the model before this one)")
    p.add_argument("--mace-venv", type=Path, default=Path(".venv-mace"))
    p.add_argument("--no-mace", action="store_true", help="ours only")
    p.add_argument("--threads", type=int, default=1, help="threads of each training process (default 1)")
    p.add_argument("--md-steps", type=int, default=20000, help="NVE steps of 0.5 fs (default 20000: 10 ps; 0: no MD)")
    p.add_argument("--skip-calls", action="store_true", help="no call timing and no MD")
    args = p.parse_args(argv)
    from egnn.experiments.run import code_version

    budgets = [float(b) for b in args.budgets.split(",")]
    sets, models = args.sets.split(","), args.models.split(",")
    log(f"{code_version()}; budgets {budgets} min, {args.threads} thread(s) per training process; {load()}")
    folders = make_data(args.work, sets)
    venv = args.mace_venv.resolve()
    table: dict[str, Any] = {"version": code_version(), "budgets_min": budgets, "threads": args.threads, "sets": {}}
    for name, folder in folders.items():
        work = args.work / f"runs-{name}"
        work.mkdir(parents=True, exist_ok=True)
        mace = None
        if not args.no_mace:  # MACE in a second process beside ours (one core each at --threads 1)
            mace = threading.Thread(target=mace_pipeline, args=(venv, folder, budgets, work, args.threads))
            mace.start()
        largest = set(args.largest_only.split(","))
        entry = {m: ours_sequence(folder, m, [max(budgets)] if m in largest else budgets, work, args.threads)
                 for m in models}
        if mace is not None:
            mace.join()
            entry["mace"] = mace_results(venv, folder, budgets, work)
        table["sets"][name] = entry
    if not args.skip_calls:
        table["calls"] = calls_and_md(args, folders, venv, models)
    print_tables(table)
    out = args.work / "bench_potentials.json"
    out.write_text(json.dumps(table, indent=1, default=str))
    log(f"wrote {out}")
    return 0


def calls_and_md(args: argparse.Namespace, folders: dict[str, Path], venv: Path, models: list[str]) -> dict:
    import ase.io
    from ase.build import molecule

    structures = call_structures(args.work)
    frames = ase.io.read(structures, index=":")
    which = {"metals": (0, frames[0]), "molecules": (1, frames[1])}
    b = max(float(x) for x in args.budgets.split(","))
    calls: dict[str, Any] = {}
    for name in folders:
        k, atoms = which[name]
        work = args.work / f"runs-{name}"
        row = {f"ours {m}": ours_call_ms(work / f"{m}-{b:g}min", atoms, 2) for m in models}
        if not args.no_mace:
            res = subprocess.run([str(venv / "bin" / "python"), str(HERE / "mace_tools.py"), "time",
                                  str(work / "mace-probe" / "mace.model"), str(structures), "--threads", "2",
                                  "--index", str(k)],
                                 capture_output=True, text=True)
            if res.returncode == 0:
                ms = json.loads(res.stdout.strip().splitlines()[-1])
                row.update({f"mace {key.split(':')[2]}": v for key, v in ms.items() if key.startswith(f"{k}:")})
            else:
                row["mace"] = f"failed: {res.stderr[-300:]}"
        calls[f"{name}: {len(atoms)} atoms"] = row
        log(f"call ms, {len(atoms)} atoms: {row}")
    if "molecules" in folders and args.md_steps:
        import torch

        from egnn.ase import EGNNCalculator

        torch.set_num_threads(2)
        ethanol = molecule("CH3CH2OH")
        work = args.work / "runs-molecules"
        md = {f"ours {m}": nve(ethanol, EGNNCalculator(work / f"{m}-{b:g}min"), args.md_steps) for m in models}
        md["ours vector float32 call ms (9 atoms)"] = ours_call_ms(work / f"vector-{b:g}min", ethanol, 2)
        try:
            from tblite.ase import TBLite

            md["GFN2-xTB"] = nve(ethanol, TBLite(method="GFN2-xTB", verbosity=0), args.md_steps)
        except ImportError:
            md["GFN2-xTB"] = "tblite not installed"
        calls["md ethanol"] = md
        log(f"NVE: {md}")
    return calls


def print_tables(table: dict) -> None:
    print(f"\n{table['version']}; {table['threads']} thread(s) per training process")
    for name, entry in table["sets"].items():
        print(f"\n{name}: test force MAE (meV/A) / energy MAE (meV/atom) at each CPU-time budget")
        print("| model | " + " | ".join(f"{b:g} CPU-min" for b in table["budgets_min"]) + " |")
        print("|---|" + "---|" * len(table["budgets_min"]))
        for model, res in entry.items():
            cells = []
            for b in table["budgets_min"]:
                r = res.get(b) or res.get(str(b)) or {}
                cells.append(f"{r['forces_mae_meV_per_A']:.1f} / {r['energy_per_atom_mae_meV']:.2f}"
                             if "forces_mae_meV_per_A" in r else "-")
            print(f"| {model} | " + " | ".join(cells) + " |")
    for key, row in table.get("calls", {}).items():
        print(f"\n{key}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))


if __name__ == "__main__":
    raise SystemExit(main())
