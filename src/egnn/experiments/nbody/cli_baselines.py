"""``egnn nbody table | sweep``: Table 2 side by side and the data-efficiency sweep (registered from
:mod:`egnn.experiments.nbody.cli` with :func:`register_baselines`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from egnn.experiments.cli import CLIError


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CLIError(f"--sizes must be comma-separated integers, got {text!r}") from None


def register_baselines(sub: argparse._SubParsersAction) -> None:
    from egnn.experiments.nbody.table import SWEEP_MODELS, TABLE_MODELS, TABLE_PRESETS

    t = sub.add_parser("table", help="train all Table 2 models and write a markdown table beside the paper's")
    t.add_argument("--preset", default="quick", choices=TABLE_PRESETS.names(),
                   help="quick: ~30 min on 2 CPU cores (reduced budget); paper: 10000 epochs per model")
    t.add_argument("--data", default="data/nbody_small", help="directory of the seed-43 small set")
    t.add_argument("--out", default=None, help="output directory (default runs/nbody_table_<preset>)")
    t.add_argument("--models", default=None, help=f"comma-separated subset of: {', '.join(TABLE_MODELS)}")
    t.add_argument("--device", default="auto")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_table)

    s = sub.add_parser("sweep", help="data-efficiency sweep: test MSE vs training samples (paper Fig. 2)")
    s.add_argument("--data", default="data/nbody_large", help="directory of the large set (training)")
    s.add_argument("--small", default="data/nbody_small", help="directory of the small set (valid/test)")
    s.add_argument("--out", default="runs/nbody_sweep", help="output directory")
    s.add_argument("--models", default=None, help=f"comma-separated (default: {','.join(SWEEP_MODELS)})")
    s.add_argument("--sizes", default=None, help="comma-separated training sizes (default: 100,200,...,50000)")
    s.add_argument("--epoch-scale", type=float, default=1.0,
                   help="multiply the reference's epochs per size (e.g. 0.01 for a reduced run)")
    s.add_argument("--preset", default="paper", choices=["paper", "quick", "demo"],
                   help="optimiser recipe of `egnn nbody train` (epochs come from the sweep)")
    s.add_argument("--device", default="auto")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_sweep)


def _check_dir(path: str, hint: str) -> None:
    if not Path(path).is_dir():
        raise CLIError(f"data directory {path!r} does not exist; create it with `{hint}`")


def _table(args: argparse.Namespace) -> int:
    from egnn.checkpoint import CheckpointError
    from egnn.experiments.nbody.table import run_table

    _check_dir(args.data, f"egnn nbody generate --out {args.data}")
    out = args.out or f"runs/nbody_table_{args.preset}"
    try:
        res = run_table(args.data, out, preset=args.preset, models=_names(args.models), device=args.device,
                        progress=not args.no_progress)
    except ModuleNotFoundError as err:
        raise CLIError(f"{err}") from None
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as err:
        raise CLIError(str(err.args[0] if isinstance(err, KeyError) else err)) from None
    print(res.markdown)
    print(f"wrote {Path(out) / 'table.md'} and {Path(out) / 'table.csv'}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from egnn.checkpoint import CheckpointError
    from egnn.experiments.nbody.table import run_sweep

    _check_dir(args.data, f"egnn nbody generate --out {args.data} --preset large")
    _check_dir(args.small, f"egnn nbody generate --out {args.small}")
    try:
        rows = run_sweep(args.data, args.small, args.out, models=_names(args.models), sizes=_sizes(args.sizes),
                         epoch_scale=args.epoch_scale, preset=args.preset, device=args.device,
                         progress=not args.no_progress)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as err:
        raise CLIError(str(err.args[0] if isinstance(err, KeyError) else err)) from None
    for r in rows:
        print(f"{r['model']:>6} {r['samples']:>6} samples  {r['epochs']:>5} epochs  test MSE {r['test_mse']:.5f}")
    print(f"wrote {Path(args.out) / 'sweep.csv'} and {Path(args.out) / 'sweep.png'}")
    return 0
