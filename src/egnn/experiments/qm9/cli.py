"""``egnn qm9 prepare | train | eval | table``: QM9 sub-commands.

Heavy modules are imported inside the run functions so ``egnn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from egnn.experiments.commands import (
    CLIError,
    add_command,
    add_trainer_arguments,
    checkpoint_arg,
    float_in,
    nonnegative_int,
    out_folder,
    positive_int,
    trainer_overrides,
)

DEFAULT_OUT = "data/qm9"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the QM9 actions to ``egnn qm9``."""
    for add in (_add_prepare, _add_train, _add_eval, _add_table):
        add(subparsers)


# ------------------------------------------------------------------------------------------------ prepare


def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "prepare", _run_prepare,
        "parse QM9 into a verified cache and write the paper's splits", progress=True,
        description=(
            "Parse QM9 (default: the CSV files of the qm9pack package) into OUT/qm9.npz and write the "
            "paper's train/valid/test split (1-based GDB-9 indices) to OUT/splits.npz. A valid cache built "
            "from the same source is reused; a corrupt or outdated one is rebuilt."
        ),
    )
    p.add_argument("--out", type=out_folder, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument(
        "--source",
        default=None,
        help="dsgdb9nsd.xyz.tar.bz2, a folder of its .xyz files, or qm9pack-style CSV file(s) "
        "(default: the installed qm9pack package)",
    )
    p.add_argument(
        "--exclude",
        default="auto",
        metavar="auto|none|FILE",
        help="xyz sources only: which uncharacterized molecules to drop: 'auto' (uncharacterized.txt next to "
        "the source, else the complement of qm9pack), 'none', or the path of uncharacterized.txt",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if a valid cache exists")


def _run_prepare(args: argparse.Namespace) -> int:
    from egnn.experiments.qm9 import data as qm9

    out = Path(args.out)
    cache = out / qm9.CACHE_NAME
    before = cache.stat().st_mtime_ns if cache.exists() else None
    start = time.perf_counter()
    path = qm9.prepare(out, args.source, not args.no_progress, exclude=args.exclude, force=args.force)
    meta = qm9.cache_info(path)
    splits = qm9.load_splits(out)
    elapsed = time.perf_counter() - start
    reused = before is not None and path.stat().st_mtime_ns == before
    print(
        f"QM9: {meta['n_molecules']:,} molecules, {meta['n_atoms']:,} atoms ({meta['source']['kind']} source)"
    )
    print(f"cache: {path} ({path.stat().st_size / 1e6:.1f} MB){' - existing cache reused' if reused else ''}")
    sizes = " / ".join(f"{name} {len(idx):,}" for name, idx in splits.items())
    print(f"splits: {out / qm9.SPLITS_NAME} ({sizes})")
    print(f"time: {elapsed:.1f} s")
    return 0


# -------------------------------------------------------------------------------------------------- train


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from egnn.experiments.qm9.data import TARGET_NAMES
    from egnn.experiments.qm9.train import PRESETS

    p = add_command(
        subparsers, "train", _run_train,
        "train the paper's EGNN on one property; test MAE at the best validation epoch",
        description="Train on the paper's split (100,000 / 17,748 / 13,083). Presets: 'paper' (7 x 128, batch 96, "
        "1000 epochs: GPU work) and 'quick' (a smaller model for about 2 hours on 2 CPU cores).",
    )
    p.add_argument("--target", required=True, choices=TARGET_NAMES, metavar="NAME",
                   help=f"one of: {', '.join(TARGET_NAMES)}")
    p.add_argument("--preset", default="quick", choices=PRESETS.names(), help="training recipe (default: quick)")
    p.add_argument("--max-train", type=positive_int, default=None, help="use only the first N training molecules")
    p.add_argument("--data", default=DEFAULT_OUT, help=f"folder of the prepared cache (default: {DEFAULT_OUT})")
    p.add_argument("--out", type=out_folder, default=None, help="run folder (default: runs/qm9_<target>_<preset>)")
    p.add_argument("--eval-every", type=positive_int, default=None, help="evaluate valid/test every E epochs")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=None, help="linear learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=float_in(0.0, 1.0, "a decay in [0, 1)", lo_open=False, hi_open=True),
                   default=None, help="weight averaging for evaluation (0: off)")
    add_trainer_arguments(p)


def _run_train(args: argparse.Namespace) -> int:
    import json

    from egnn.experiments.qm9 import data as qm9
    from egnn.experiments.qm9 import train as qt

    out = args.out or f"runs/qm9_{args.target}_{args.preset}"
    result = qt.train_qm9(
        args.target, args.preset, out, data_dir=args.data, max_train=args.max_train, resume=args.resume,
        eval_every=args.eval_every, warmup_steps=args.warmup_steps, ema_decay=args.ema_decay,
        **trainer_overrides(args),
    )
    print(json.dumps(result.summary(), indent=1))
    unit = qm9.TARGETS[qm9.target_index(args.target)].unit
    mae = f"{result.test_at_best:.4g}" if result.test_at_best is not None else "n/a"
    print(f"{args.target}: test MAE {mae} {unit} at best validation epoch {result.best_epoch} "
          f"(paper EGNN: {qt.PAPER_MAE[args.target]:g}; run: {out})")
    return 0


# --------------------------------------------------------------------------------------------------- eval


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "eval", _run_eval, "test MAE (paper unit) of a run or checkpoint, recomputed from "
                    "the data", device=True, progress=True)
    p.add_argument("checkpoint", type=checkpoint_arg, help="run folder (its best checkpoint) or checkpoint path")
    p.add_argument("--target", default=None, help="fail unless the checkpoint was trained for this target")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split (default: test)")
    p.add_argument("--data", default=DEFAULT_OUT, help=f"folder of the prepared cache (default: {DEFAULT_OUT})")


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from egnn.experiments.qm9 import train as qt

    res = qt.evaluate_checkpoint(args.checkpoint, args.data, args.device, target=args.target, split=args.split,
                                 progress=not args.no_progress)
    print(json.dumps(res, indent=1, allow_nan=False))
    return 0


# -------------------------------------------------------------------------------------------------- table


def _add_table(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "table", _run_table, "markdown table of finished runs beside the paper's Table 3")
    p.add_argument("--runs", default="runs", help="folder searched for runs (default: runs)")
    p.add_argument("--all", action="store_true", help="also list unfinished runs")


def _run_table(args: argparse.Namespace) -> int:
    from egnn.experiments.qm9 import train as qt

    if not Path(args.runs).is_dir():
        raise CLIError(f"runs folder {args.runs!r} does not exist")
    print(qt.table(args.runs, include_unfinished=args.all))
    return 0

