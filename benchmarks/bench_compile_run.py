"""Whole training runs, eager beside ``--compile``, in one invocation: does compiling pay for itself?

    python benchmarks/bench_compile_run.py --nbody-data data/nbody_small [--qm9-data data/qm9] [--threads 1,2]
                                           [--rounds 2]

Each workload is one real ``egnn ... train`` command with a fixed number of epochs, run as a fresh process (so
compile time and its caches count as a user sees them), eager and compiled alternating round by round so that a
change in machine load hits both. Reported: the median wall time of each, the compiled run's saving, and the test
metric of both runs (compiled and eager training are equal to 1e-5 per step, so the metrics should agree closely).
Inductor's on-disk cache is pointed at a fresh folder per compiled run: every run pays the full compile, as the
first run on a new machine does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from egnn.checkpoint import read_checkpoint_info
from egnn.experiments.run import code_version


def workloads(args: argparse.Namespace) -> dict[str, list[str]]:
    """Name -> the ``egnn`` arguments of one fixed-length training run (``--out`` is added per run)."""
    w = {}
    if args.nbody_data:
        w["nbody_egnn"] = ["nbody", "train", "--model", "egnn", "--preset", "quick", "--data", args.nbody_data,
                           "--epochs", str(args.nbody_epochs)]
    if args.qm9_data:
        w["qm9_homo"] = ["qm9", "train", "--target", "homo", "--preset", "quick", "--data", args.qm9_data,
                         "--epochs", "1", "--max-train", str(args.qm9_train)]
    return w


def run_once(cmd: list[str], threads: int, compile_: bool, scratch: Path) -> tuple[float, str]:
    out = Path(tempfile.mkdtemp(dir=scratch))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if compile_:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tempfile.mkdtemp(dir=scratch)))
    full = [sys.executable, "-m", "egnn.experiments.cli", *cmd, "--out", str(out / "run"), "--threads", str(threads),
            "--no-progress", "--compile" if compile_ else "--no-compile"]
    start = time.perf_counter()
    proc = subprocess.run(full, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(full)}\n{proc.stderr[-2000:]}")
    test = read_checkpoint_info(out / "run" / "best").meta.get("best", {}).get("test")
    return wall, f"{test:.4g}" if isinstance(test, float) else "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nbody-data", default=None, help="folder of `egnn nbody generate --dataset small`")
    p.add_argument("--nbody-epochs", type=int, default=20)
    p.add_argument("--qm9-data", default=None, help="folder of `egnn qm9 prepare`")
    p.add_argument("--qm9-train", type=int, default=5000, help="training molecules of the one-epoch QM9 run")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    work = workloads(args)
    if not work:
        p.error("give --nbody-data and/or --qm9-data")
    print(f"code {code_version()}")
    scratch = Path(tempfile.mkdtemp(prefix="bench_compile_run_"))
    try:
        print(f"{'workload':<12} {'threads':>7} {'eager s':>9} {'compiled s':>11} {'eager/compiled':>15}  "
              f"test (eager | compiled)")
        for threads in (int(t) for t in args.threads.split(",")):
            for name, cmd in work.items():
                times: dict[bool, list[float]] = {False: [], True: []}
                tests: dict[bool, str] = {}
                for _ in range(args.rounds):
                    for compile_ in (False, True):
                        wall, tests[compile_] = run_once(cmd, threads, compile_, scratch)
                        times[compile_].append(wall)
                e, c = statistics.median(times[False]), statistics.median(times[True])
                print(f"{name:<12} {threads:>7} {e:>9.1f} {c:>11.1f} {e / c:>14.2f}x  {tests[False]} | {tests[True]}",
                      flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
