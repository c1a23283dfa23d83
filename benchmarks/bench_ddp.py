"""Data parallelism on CPU: one ``egnn fit`` timed as 1 process x 1 thread, 1 process x 2 threads and 2 processes
x 1 thread (``torchrun``), plus a two-node job simulated on this machine, all in one invocation.

    python benchmarks/bench_ddp.py [--work /tmp/egnn_bench_ddp] [--epochs 6] [--frames 400]

Data: ``--frames`` EMT frames (:func:`egnn.experiments.fit.emt.generate`, 32-atom Cu/Au cells, seed 3; 10 %
held out for validation) and a ``--test-frames`` test set (seed 4), written once under ``--work``. Every run is
the same command: ``egnn fit`` with the default model and the fit recipe, a fixed global ``--batch-size 16`` (each
of N processes takes every N-th frame of each global batch, so N processes take the same steps as one) and
``--eval-every 1`` (so the validation loss is known after every epoch).

Reported per run: steps/s (``step`` / ``train_seconds`` of the last ``log.csv`` row; ``train_seconds`` holds the
steps and the per-epoch validation and test passes, not the start-up), the whole command's wall time, the final
validation loss (the last row's ``valid``, the EMA weights' weighted MSE), the test force MAE of the best model
(``summary.json``), and the time to a common loss: the ``train_seconds`` of the first epoch whose ``valid`` is at
or below the largest of the three runs' final validation losses. The three final validation losses are checked
against ``--rtol`` (same global batches: the same course up to float rounding), and a table of the validation loss
after every epoch shows where the runs part: 1 or 2 threads and 1 or 2 ranks sum in different orders, and a
chaotic stretch of training (the force fit's loss spike as it leaves its plateau) can amplify those differences.
The load average is printed beside each run: on a shared machine it, not the code, may set a ratio.

The two-node job: two ``torchrun --nnodes 2 --nproc_per_node 1 --node_rank 0|1 --rdzv-backend c10d
--rdzv-endpoint localhost:PORT --rdzv-id ID`` launches of the same command (same ``--out``: only global rank 0
writes the run folder), started together. Its final validation loss and ``last.safetensors`` weights are
compared with the single-node 2 x 1 run's. With the c10d rendezvous the global ranks are assigned by the
rendezvous, not by ``--node_rank``; which launch got global rank 0 (and so wrote the run folder) is printed from
torchrun's log.

Speed ratios are only comparable within one run (the machine may be shared); the header gives the commit.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_store import emt_file  # the EMT data files both benchmarks use (this folder is on sys.path)

from egnn.checkpoint import load_checkpoint
from egnn.experiments.run import code_version


def torchrun() -> list[str]:
    """This environment's ``torchrun`` (the module when the script is not beside the interpreter)."""
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def show(cmd: list[str], threads: int) -> str:
    return f"OMP_NUM_THREADS={threads} " + shlex.join(cmd)


def read_run(out: Path) -> dict[str, Any]:
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((out / "summary.json").read_text())
    last = rows[-1]
    return {"rows": rows, "steps": int(last["step"]), "train_s": float(last["train_seconds"]),
            "valid": float(last["valid"]), "test_forces_mae": summary["test"]["forces_mae"],
            "weights": load_checkpoint(out / "last")[0]}


def run(cmds: list[list[str]], threads: int, timeout: float) -> tuple[float, list[str]]:
    """Start ``cmds`` together (one per simulated node), wait for all; wall time and each one's stderr."""
    # LOGLEVEL=INFO: torchrun logs the ranks its rendezvous assigned (read below for the two-node job)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), LOGLEVEL="INFO")
    t = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in cmds]
    outs = [p.communicate(timeout=timeout) for p in procs]
    wall = time.perf_counter() - t
    for c, p, (_, err) in zip(cmds, procs, outs):
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {show(c, threads)}\n{err[-3000:]}")
    return wall, [err for _, err in outs]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/egnn_bench_ddp", help="folder of the data (reused) and the runs")
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--test-frames", type=int, default=100)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (the same in every run)")
    p.add_argument("--rtol", type=float, default=1e-4, help="agreement asked of the final validation losses")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed to each run")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"code {code_version()}; torch {torch.__version__}; {os.cpu_count()} CPU(s); load average (1, 5 min) "
          f"{os.getloadavg()[0]:.2f}, {os.getloadavg()[1]:.2f}")
    train = emt_file(work, args.frames, 3)
    test = emt_file(work, args.test_frames, 4)
    runs = Path(tempfile.mkdtemp(dir=work, prefix="runs_"))

    def fit(out: Path, threads: int) -> list[str]:
        return ["-m", "egnn.experiments.cli", "fit", "--data", str(train), "--test", str(test), "--target", "energy",
                "--forces", "forces", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                "--eval-every", "1", "--no-cache", "--no-progress", "--threads", str(threads), "--out", str(out)]

    port, rdzv_id = free_port(), f"egnn-bench-{os.getpid()}"
    plans: list[tuple[str, int, list[list[str]]]] = [
        ("1 proc x 1 thread", 1, [[sys.executable, *fit(runs / "p1t1", 1)]]),
        ("1 proc x 2 threads", 2, [[sys.executable, *fit(runs / "p1t2", 2)]]),
        ("2 procs x 1 thread", 1, [[*torchrun(), "--standalone", "--nproc_per_node", "2",
                                    *fit(runs / "p2t1", 1)]]),
        ("2 nodes x 1 proc", 1, [[*torchrun(), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(r),
                                  "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id",
                                  rdzv_id, *fit(runs / "n2", 1)] for r in (0, 1)]),
    ]
    results: dict[str, dict[str, Any]] = {}
    for name, threads, cmds in plans:
        print(f"# {name}:", flush=True)
        for c in cmds:
            print(f"#   {show(c, threads)}", flush=True)
        wall, errs = run(cmds, threads, args.timeout)
        out = Path(cmds[0][cmds[0].index("--out") + 1])
        results[name] = {**read_run(out), "wall": wall, "stderr": errs}
        print(f"#   done in {wall:.1f} s; load average (1, 5 min) now {os.getloadavg()[0]:.2f}, "
              f"{os.getloadavg()[1]:.2f}", flush=True)

    main3 = [n for n, _, _ in plans[:3]]
    threshold = max(results[n]["valid"] for n in main3)
    print(f"\n## {args.frames} EMT frames (10 % held out) + {args.test_frames} test, default model, global batch "
          f"{args.batch_size}, {args.epochs} epochs, eval every epoch; threshold = largest final valid loss "
          f"{threshold:.6g}")
    print(f"{'run':<20} {'steps':>5} {'train s':>8} {'steps/s':>8} {'vs 1x1':>7} {'wall s':>7} {'final valid':>12} "
          f"{'rel. diff':>10} {'test F MAE':>11} {'to threshold':>13}")
    ref = results[main3[0]]
    for name, r in results.items():
        rate = r["steps"] / r["train_s"]
        hit = next((row for row in r["rows"] if row["valid"] and float(row["valid"]) <= threshold), None)
        reach = f"{float(hit['train_seconds']):.1f} s (ep {hit['epoch']})" if hit else "not reached"
        rel = abs(r["valid"] - ref["valid"]) / ref["valid"]
        speedup = rate * ref["train_s"] / ref["steps"]
        print(f"{name:<20} {r['steps']:>5} {r['train_s']:>8.1f} {rate:>8.2f} {speedup:>6.2f}x {r['wall']:>7.1f}"
              f" {r['valid']:>12.7g} {rel:>10.2e} {r['test_forces_mae']:>11.5f} {reach:>13}")
    worst = max(abs(results[n]["valid"] - ref["valid"]) / ref["valid"] for n in main3)
    print(f"final validation losses of the 3 single-node runs agree to {worst:.2e} relative: "
          f"{'yes' if worst <= args.rtol else 'NO'} (asked: {args.rtol:g})")
    # epoch by epoch: where the runs part (float rounding differs with threads and ranks; a chaotic stretch of
    # training, such as a loss spike, can amplify it)
    names = list(results)
    print(f"{'epoch':>5} " + " ".join(f"{n:>20}" for n in names) + f" {'max rel. diff (3 single-node runs)':>36}")
    for e in range(len(ref["rows"])):
        values = [float(results[n]["rows"][e]["valid"]) for n in names]
        single_values = [float(results[n]["rows"][e]["valid"]) for n in main3]
        diff = max(abs(v - single_values[0]) for v in single_values) / single_values[0]
        print(f"{e + 1:>5} " + " ".join(f"{v:>20.9g}" for v in values) + f" {diff:>36.2e}")
    for name in main3[1:]:
        print(f"last.safetensors weights, {name} vs 1 x 1: max |diff| "
              f"{max_abs_diff(results[name]['weights']['model'], ref['weights']['model']):.3g}")

    single, multi = results["2 procs x 1 thread"], results["2 nodes x 1 proc"]
    d_w = max_abs_diff(multi["weights"]["model"], single["weights"]["model"])
    d_ema = (max_abs_diff(multi["weights"]["ema"], single["weights"]["ema"])
             if "ema" in multi["weights"] else float("nan"))
    same_valid = multi["valid"] == single["valid"]
    print("\n## two nodes simulated (2 x torchrun --nnodes 2 --nproc_per_node 1) vs 2 procs x 1 thread on one node:")
    print(f"final valid {multi['valid']!r} vs {single['valid']!r}: {'identical' if same_valid else 'DIFFERENT'}; "
          f"last.safetensors model weights max |diff| {d_w:.3g}, EMA weights max |diff| {d_ema:.3g}")
    for r, err in enumerate(multi["stderr"]):
        found = re.findall(r"global_ranks=\[([\d, ]*)\]", err)
        rank = found[-1].strip() if found else "?"
        print(f"launch --node_rank {r}: torchrun's rendezvous gave its process global rank {rank}"
              + (" (it wrote the run folder)" if rank == "0" else ""))
    print("multi-node recipe (run the same line on each node, NODE = 0, 1; HOST:PORT = an address of the first "
          "node that every node can reach):")
    print("  OMP_NUM_THREADS=T torchrun --nnodes 2 --nproc_per_node P --node_rank NODE --rdzv-backend c10d "
          "--rdzv-endpoint HOST:PORT --rdzv-id JOB -m egnn.experiments.cli fit ... --threads T --out RUN")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
