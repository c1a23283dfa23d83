"""`egnn fit` on GFN2-xTB molecules: eager vs compiled force training, one process vs two, and the full recipe.

    python benchmarks/bench_fit_compiled.py --data data/xtb_md --work data/fit_compiled \\
        --out benchmarks/results/fit_compiled [--epochs 6] [--recipe] [--long]

``--data``: the folder of ``benchmarks/xtb_md_data.py`` (train/valid/test extxyz with REF_energy, REF_forces).

1. Speed: ``--epochs`` epochs of the default recipe (vector model, batch 16) for each of eager / compiled
   (``--no-compile`` / ``--compile``) x one process of 2 threads / two processes of 1 thread (``--procs``), at 2
   cores. Epochs per minute are counted from the end of the first epoch to the end of the last, from the run's own
   ``log.csv``; the whole command's wall time (data loading, compilation, final evaluation) is reported beside them.
2. ``--recipe``: ``egnn fit`` with its defaults at ``--threads 2`` (the full 160-epoch recipe): wall time and the
   test errors.
3. ``--long``: ``--epochs 400 --max-minutes 12`` at ``--threads 2``: the test errors reached in 12 minutes.

Results: ``OUT/fit_compiled.json`` and ``OUT/fit_compiled.txt``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EGNN = [sys.executable, "-m", "egnn.experiments.cli"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fit(data: Path, out: Path, extra: list[str]) -> dict:
    """One ``egnn fit`` on the data folder; its wall time, log rows and test errors."""
    if out.exists():
        shutil.rmtree(out)  # ours: this script's work folder
    cmd = [*EGNN, "fit", "--data", str(data / "train.extxyz"), "--valid", str(data / "valid.extxyz"),
           "--test", str(data / "test.extxyz"), "--target", "REF_energy", "--forces", "REF_forces",
           "--no-progress", "--out", str(out), *extra]
    log(" ".join(cmd[3:]))
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode != 0:  # e.g. a diverged run: recorded, and the other runs still go on
        last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit code {res.returncode}"
        return {"wall_s": wall, "failed": last}
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((out / "summary.json").read_text())
    test = summary.get("test", {})
    return {"wall_s": wall, "epochs": len(rows), "seconds": [float(r["train_seconds"]) for r in rows],
            "test_forces_mae_meV_A": 1000 * test.get("forces_mae", float("nan")),
            "test_energy_mae_meV_atom": 1000 * test.get("REF_energy_per_atom_mae", float("nan")),
            "cut_by_time_cap": summary["fit"].get("cut_by_time_cap")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/xtb_md"))
    p.add_argument("--work", type=Path, default=Path("data/fit_compiled"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--recipe", action="store_true", help="also the full default recipe at --threads 2")
    p.add_argument("--long", action="store_true", help="also --epochs 400 capped at 12 minutes")
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    res: dict = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                          cwd=HERE).stdout.strip()}
    lines = [f"# bench_fit_compiled at commit {res['commit']}", ""]
    if not args.skip_speed:
        speed = {}
        for mode in ("--no-compile", "--compile"):
            for procs, threads in ((1, 2), (2, 2)):
                name = f"{mode.strip('-')}, {procs} process{'es' if procs > 1 else ''}"
                r = fit(args.data, args.work / name.replace(", ", "_").replace(" ", ""),
                        ["--epochs", str(args.epochs), "--threads", str(threads), "--procs", str(procs), mode])
                s = r["seconds"]
                r["epochs_per_min"] = 60 * (len(s) - 1) / (s[-1] - s[0])
                r["first_epoch_s"] = s[0]
                speed[name] = r
                log(f"  {name}: {r['epochs_per_min']:.2f} epochs/min, first epoch {s[0]:.0f} s")
        res["speed"] = speed
        base = speed["no-compile, 1 process"]["epochs_per_min"]
        lines += [f"## {args.epochs} epochs of the default recipe, 2 cores", "",
                  "| training | epochs/min (after epoch 1) | x eager 1 process | first epoch s | whole command s |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['epochs_per_min']:.2f} | {v['epochs_per_min'] / base:.2f} | {v['first_epoch_s']:.1f} "
                  f"| {v['wall_s']:.0f} |" for k, v in speed.items()]
        lines += ["", "(The compilation happens before the first epoch, at the first batch; the whole command's time "
                  "holds it, the data loading and the final evaluation.)"]
        lines.append("")
    for flag, name, extra in (("recipe", "default recipe, --threads 2", ["--threads", "2"]),
                              ("long", "--epochs 400 --max-minutes 12, --threads 2",
                               ["--threads", "2", "--epochs", "400", "--max-minutes", "12"])):
        if getattr(args, flag):
            r = fit(args.data, args.work / flag, extra)
            res[flag] = r
            if "failed" in r:
                lines.append(f"- {name}: failed after {r['wall_s'] / 60:.1f} min: {r['failed']}")
                log(lines[-1])
                continue
            lines.append(f"- {name}: {r['epochs']} epochs in {r['wall_s'] / 60:.1f} min (wall, with data loading and "
                         f"the final evaluation); test forces {r['test_forces_mae_meV_A']:.1f} meV/A, energy "
                         f"{r['test_energy_mae_meV_atom']:.2f} meV/atom")
            log(lines[-1])
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fit_compiled.json").write_text(json.dumps(res, indent=1))
        (args.out / "fit_compiled.txt").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
