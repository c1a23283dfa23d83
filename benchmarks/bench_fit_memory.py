"""Peak memory of a default ``egnn fit`` against the size of its validation set, before and after a change, in one
run: a 1-epoch fit of a 500-frame Cu/Au store (31-32 atoms, energies + forces, default model and recipe,
``--threads 2``) with 50, 200 and 500 validation frames (a store of their own).

    python benchmarks/bench_fit_memory.py [--work /tmp/egnn_bench_memory] [--before SRC]

``--before SRC``: a ``src`` folder of another version of egnn (e.g. ``git archive main src | tar -x -C /tmp/old``,
then ``--before /tmp/old/src``), measured beside this one. Peak RSS is the largest resident set of the fit and
every process it waited for (its DataLoader workers): ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper
process per fit, so the runs do not see each other's peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import egnn
from egnn.experiments.run import code_version

VALID_SIZES = (50, 200, 500)


def store(work: Path, frames: int, seed: int) -> Path:
    """A store of ``frames`` EMT Cu/Au frames of 32 atoms (a quarter with a vacancy), made once."""
    from egnn.experiments.cli import main
    from egnn.experiments.fit.emt import EMTConfig, write_dataset

    path = work / f"emt_{frames}_seed{seed}.store"
    if not path.exists():
        extxyz = path.with_suffix(".extxyz")
        write_dataset(extxyz, EMTConfig(n_frames=frames, seed=seed))
        with open(os.devnull, "w") as quiet:
            sys.stdout, saved = quiet, sys.stdout
            try:
                code = main(["data", "pack", str(extxyz), "--out", str(path), "--forces", "forces", "--no-progress"])
            finally:
                sys.stdout = saved
        if code != 0:
            sys.exit(f"egnn data pack {extxyz} failed ({code})")
    return path


def peak_rss(cmd: list[str], src: str) -> tuple[float, float]:
    """Peak RSS (GB) and wall time (s) of ``cmd`` run with ``src`` first on the path."""
    probe = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:], capture_output=True, "
             "text=True); print(json.dumps([r.returncode, r.stderr[-2000:], "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True, text=True, check=True)
    code, err, kib = json.loads(out.stdout.strip().splitlines()[-1])
    if code != 0:
        sys.exit(f"failed ({code}): {' '.join(cmd)}\n{err}")
    return kib * 1024 / 1e9, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/egnn_bench_memory", help="folder of the stores (reused) and the runs")
    p.add_argument("--before", default=None, metavar="SRC", help="the src folder of the version to compare with")
    p.add_argument("--train-frames", type=int, default=500)
    p.add_argument("--procs", default="1,auto", help="comma-separated --procs of this version's fits (default 1,auto: "
                   "one process, as before --procs existed, and the default, two one-thread processes on this data)")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train = store(work, args.train_frames, 0)
    valid = {n: store(work, n, 1) for n in VALID_SIZES}
    here = str(Path(egnn.__file__).resolve().parents[1])
    versions: dict[str, tuple[str, list[str]]] = {
        f"this --procs {p}": (here, ["--procs", p]) for p in args.procs.split(",")}
    if args.before:
        versions = {"before": (str(Path(args.before).resolve()), []), **versions}
    print(f"code {code_version()}; {os.cpu_count()} CPU(s); load average {os.getloadavg()[0]:.2f}")
    print(f"# egnn fit --data {train.name} --valid VALID --forces forces --epochs 1 --threads 2 (defaults otherwise); "
          "peak RSS: the largest process")
    print(f"{'version':<20} {'valid frames':>12} {'peak RSS (GB)':>14} {'wall (s)':>9}")
    runs = work / f"runs_{os.getpid()}"
    for name, (src, extra) in versions.items():
        for n, path in valid.items():
            cmd = [sys.executable, "-m", "egnn.experiments.cli", "fit", "--data", str(train), "--valid", str(path),
                   "--forces", "forces", "--epochs", "1", "--threads", "2", "--no-progress",
                   "--out", str(runs / f"{name.replace(' ', '_')}_{n}"), *extra]
            gb, wall = peak_rss(cmd, src)
            print(f"{name:<20} {n:>12} {gb:>14.3f} {wall:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
