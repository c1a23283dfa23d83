"""Processes or threads: ``egnn fit --threads 2`` as one process of 2 threads (``--procs 1``) and as 2 worker
processes of 1 thread (``--procs 2``), on data sets from small molecules to 32-atom metal cells, in one run.

    python benchmarks/bench_fit_procs.py [--work /tmp/egnn_bench_procs] [--epochs 4] [--repeats 1]

Data (made once under ``--work``): GFN2-xTB MD frames of six small molecules (8-14 atoms;
``benchmarks/xtb_md_data.py``, needs tblite) and EMT Cu/Au cells of 4, 8, 16, 32 (and 64) atoms
(:func:`egnn.experiments.fit.emt.generate`); ``--frames`` training frames each, 16 validation frames. Every run is
``egnn fit`` with the default model and recipe (``--model auto``: vector for molecules, invariant for metals;
batch 16; cut-off 5 Å) and ``--eval-every`` past the last epoch, so only the last epoch evaluates.

Reported per data set: the mean atoms and edges of a frame (the first 8 frames, as ``--procs auto`` estimates
them), the edges of a training batch, training epochs per minute of each layout (``(E - 1)`` epochs over the
``train_seconds`` between the first and the last ``log.csv`` rows: start-up and the first epoch left out), their
ratio (``procs 2 / procs 1``: above 1, processes are faster) and what ``--procs auto`` chooses. With ``--repeats R``
the two layouts alternate ``R`` times and the medians are reported. Ratios are only comparable within one run: the
machine may be shared (the load average is printed).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import egnn
from egnn.experiments.fit.cli import PROCS_BELOW_EDGES
from egnn.experiments.fit.sources import graph_size
from egnn.experiments.run import code_version

MOLECULES = "molecules"


def molecules_file(work: Path, frames: int) -> Path | None:
    """The xtb MD training file (``frames`` in all; ``None`` without tblite)."""
    try:
        import tblite  # noqa: F401
    except ImportError:
        return None
    folder = work / f"xtb_{frames}"
    if not folder.exists():
        per = max(1, frames // 6)
        cmd = [sys.executable, str(Path(__file__).with_name("xtb_md_data.py")), "--out", str(folder), "--train",
               str(per), "--valid", "3", "--test", "1"]
        subprocess.run(cmd, check=True, capture_output=True)
    return folder / "train.extxyz"


def emt_file(work: Path, frames: int, repeat: tuple[int, int, int], seed: int = 5) -> Path:
    """EMT Cu/Au frames of ``4 * prod(repeat)`` atoms (no vacancies: a fixed size)."""
    from egnn.experiments.fit.emt import EMTConfig, write_dataset

    path = work / f"emt_{frames}_{'x'.join(map(str, repeat))}.extxyz"
    if not path.exists():
        write_dataset(path, EMTConfig(n_frames=frames, repeat=repeat, vacancy_fraction=0.0, seed=seed))
    return path


def split(path: Path, valid: int) -> tuple[Path, Path]:
    """``path`` as a training file and a ``valid``-frame validation file beside it."""
    import ase.io

    train, hold = path.with_suffix(".train.extxyz"), path.with_suffix(".valid.extxyz")
    if not train.exists():
        frames = ase.io.read(str(path), index=":")
        ase.io.write(str(hold), frames[:valid])
        ase.io.write(str(train), frames[valid:])
    return train, hold


def fit_rate(train: Path, valid: Path, keys: tuple[str, str], out: Path, procs: int, epochs: int) -> float:
    """Training epochs per minute of one ``egnn fit --threads 2 --procs P``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(egnn.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "egnn.experiments.cli", "fit", "--data", str(train), "--valid", str(valid),
           "--target", keys[0], "--forces", keys[1], "--epochs", str(epochs), "--eval-every", str(epochs + 1),
           "--no-cache", "--no-progress", "--threads", "2", "--procs", str(procs), "--out", str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    with open(out / "log.csv") as fh:
        seconds = [float(r["train_seconds"]) for r in csv.DictReader(fh)]
    return 60.0 * (len(seconds) - 1) / (seconds[-1] - seconds[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/egnn_bench_procs", help="folder of the data (reused) and the runs")
    p.add_argument("--frames", type=int, default=160, help="training frames per data set (default 160)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run (>= 2; default 4)")
    p.add_argument("--repeats", type=int, default=1, help="alternations of the two layouts (medians; default 1)")
    p.add_argument("--sets", default="molecules,4,8,16,32",
                   help="'molecules' and/or EMT cell sizes in atoms among 4, 8, 16, 32, 64 (default: "
                   "molecules,4,8,16,32)")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"code {code_version()}; {os.cpu_count()} CPU(s); load average (1, 5 min) {load[0]:.2f}, {load[1]:.2f}")
    repeats = {"4": (1, 1, 1), "8": (1, 1, 2), "16": (1, 2, 2), "32": (2, 2, 2), "64": (2, 2, 4)}
    sets: list[tuple[str, Path, tuple[str, str]]] = []
    for name in args.sets.split(","):
        if name == MOLECULES:
            path = molecules_file(work, args.frames + 16)
            if path is None:
                print("# molecules skipped: tblite is not installed (pip install --only-binary :all: tblite)")
                continue
            sets.append((name, path, ("REF_energy", "REF_forces")))
        else:
            sets.append((f"Cu/Au {name} atoms", emt_file(work, args.frames + 16, repeats[name]),
                         ("energy", "forces")))
    runs = work / f"runs_{os.getpid()}"
    print(f"# egnn fit --threads 2 --procs 1|2, default model and recipe (batch 16, cut-off 5 Å), {args.frames} "
          f"training frames, {args.epochs} epochs; auto takes processes below {PROCS_BELOW_EDGES} edges per batch")
    print(f"{'data':<18} {'atoms':>6} {'edges':>7} {'edges/batch':>11} {'procs 1 ep/min':>15} "
          f"{'procs 2 ep/min':>15} {'ratio 2/1':>9} {'auto':>5}")
    for name, path, keys in sets:
        train, valid = split(path, 16)
        atoms, edges = graph_size(train, 5.0) or (float("nan"), float("nan"))
        rates: dict[int, list[float]] = {1: [], 2: []}
        t0 = time.perf_counter()
        for r in range(args.repeats):
            for procs in ((1, 2) if r % 2 == 0 else (2, 1)):
                out = runs / f"{name.replace('/', '').replace(' ', '_')}_p{procs}_r{r}"
                rates[procs].append(fit_rate(train, valid, keys, out, procs, args.epochs))
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        auto = 2 if 16 * edges < PROCS_BELOW_EDGES else 1
        print(f"{name:<18} {atoms:>6.1f} {edges:>7.0f} {16 * edges:>11.0f} {one:>15.2f} {two:>15.2f} "
              f"{two / one:>9.2f} {auto:>5} ({time.perf_counter() - t0:.0f} s)", flush=True)
    load = os.getloadavg()
    print(f"load average (1, 5 min) at the end {load[0]:.2f}, {load[1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
