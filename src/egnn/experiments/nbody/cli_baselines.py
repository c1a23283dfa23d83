"""``egnn nbody table | sweep``: Table 2 side by side and the data-efficiency sweep (registered from
:mod:`egnn.experiments.nbody.cli` with :func:`register_baselines`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from egnn.experiments.commands import CLIError, add_command, existing_folder, out_folder, positive_float


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CLIError(f"--sizes must be comma-separated positive integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise CLIError(f"--sizes must be comma-separated positive integers, got {text!r}")
    return sizes


def register_baselines(sub: argparse._SubParsersAction) -> None:
    from egnn.experiments.nbody.table import SWEEP_MODELS, TABLE_MODELS, TABLE_PRESETS
    from egnn.experiments.nbody.train import PRESETS

    t = add_command(sub, "table", _table, "train all Table 2 models and write a markdown table beside the paper's",
                    device=True, progress=True)
    t.add_argument("--preset", default="quick", choices=TABLE_PRESETS.names(),
                   help="quick: fixed reduced epochs per model (~30 min on 2 CPU cores); paper: 10000 epochs per model")
    t.add_argument("--max-minutes", type=positive_float, default=None,
                   help="a cap per model, not a recipe: stop a model's run early (its row then says `a of b` epochs)")
    t.add_argument("--data", default="data/nbody_small", type=existing_folder,
                   help="folder of the seed-43 small set (`egnn nbody generate --out DIR`)")
    t.add_argument("--out", type=out_folder, default=None, help="output folder (default runs/nbody_table_<preset>)")
    t.add_argument("--models", default=None, help=f"comma-separated subset of: {', '.join(TABLE_MODELS)}")

    s = add_command(sub, "sweep", _sweep, "data-efficiency sweep: test MSE vs training samples (paper Fig. 2)",
                    device=True, progress=True)
    s.add_argument("--data", default="data/nbody_large", type=existing_folder,
                   help="folder of the large set, for training (`egnn nbody generate --preset large`)")
    s.add_argument("--small", default="data/nbody_small", type=existing_folder,
                   help="folder of the small set (valid/test)")
    s.add_argument("--out", type=out_folder, default="runs/nbody_sweep", help="output folder")
    s.add_argument("--models", default=None, help=f"comma-separated (default: {','.join(SWEEP_MODELS)})")
    s.add_argument("--sizes", default=None, help="comma-separated training sizes (default: 100,200,...,50000)")
    s.add_argument("--epoch-scale", type=positive_float, default=1.0,
                   help="multiply the reference's epochs per size (e.g. 0.01 for a reduced run)")
    s.add_argument("--preset", default="paper", choices=PRESETS.names(),
                   help="optimiser recipe of `egnn nbody train` (epochs come from the sweep)")


def _table(args: argparse.Namespace) -> int:
    from egnn.experiments.nbody.table import run_table

    out = args.out or f"runs/nbody_table_{args.preset}"
    res = run_table(args.data, out, preset=args.preset, models=_names(args.models), device=args.device,
                    progress=not args.no_progress, max_minutes=args.max_minutes)
    print(res.markdown)
    print(f"wrote {Path(out) / 'table.md'} and {Path(out) / 'table.csv'}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from egnn.experiments.nbody.table import run_sweep

    rows = run_sweep(args.data, args.small, args.out, models=_names(args.models), sizes=_sizes(args.sizes),
                     epoch_scale=args.epoch_scale, preset=args.preset, device=args.device,
                     progress=not args.no_progress)
    for r in rows:
        mse = f"{r['test_mse']:.5f}" if r["test_mse"] is not None else "n/a"
        print(f"{r['model']:>6} {r['samples']:>6} samples  {r['epochs']:>5} epochs  test MSE {mse}")
    # a resumed sweep may hold sizes trained by older code: name every version that made a row
    codes = sorted({str(r.get("code") or "unrecorded") for r in rows})
    print(f"code: {'; '.join(codes)}")
    print(f"wrote {Path(args.out) / 'sweep.csv'} and {Path(args.out) / 'sweep.png'}")
    return 0
