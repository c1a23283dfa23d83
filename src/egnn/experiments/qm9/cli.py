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
    out_file,
    out_folder,
    positive_int,
    trainer_overrides,
)

DEFAULT_OUT = "data/qm9"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the QM9 actions to ``egnn qm9``."""
    for add in (_add_prepare, _add_train, _add_eval, _add_table, _add_ship, _add_export):
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
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="parse only the first N molecules (a small cache to try things out; default: all)")


def _run_prepare(args: argparse.Namespace) -> int:
    from egnn.experiments.qm9 import data as qm9

    out = Path(args.out)
    cache = out / qm9.CACHE_NAME
    before = cache.stat().st_mtime_ns if cache.exists() else None
    start = time.perf_counter()
    path = qm9.prepare(out, args.source, not args.no_progress, exclude=args.exclude, force=args.force,
                       limit=args.limit)
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
    from egnn.experiments.qm9 import fit as qf
    from egnn.experiments.qm9.data import TARGET_NAMES
    from egnn.experiments.qm9.train import PRESETS

    p = add_command(
        subparsers, "train", _run_train,
        "train one property on the paper's split; test MAE at the best validation epoch",
        description="Train on the paper's split (100,000 / 17,748 / 13,083). Presets: 'quick' (the atoms model of "
        "egnn fit with a recipe per target family, one target in <= 60 min at 1 thread; what egnn qm9 table runs), "
        "'paper' (the paper's QM9 model and recipe: 7 x 128, batch 96, 1000 epochs: GPU work) and "
        "'quick-paper-model' (the paper's model, 4 x 64, 20 epochs).",
    )
    p.add_argument("--target", required=True, choices=TARGET_NAMES, metavar="NAME",
                   help=f"one of: {', '.join(TARGET_NAMES)}")
    p.add_argument("--preset", default="quick", choices=qf.PRESETS.names() + PRESETS.names(),
                   help="training recipe (default: quick)")
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
    from egnn.experiments.qm9 import fit as qf
    from egnn.experiments.qm9 import train as qt

    out = args.out or f"runs/qm9_{args.target}_{args.preset}"
    train = qf.train_target if args.preset in qf.PRESETS else qt.train_qm9
    result = train(
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
    from egnn.experiments.qm9 import fit as qf

    p = add_command(
        subparsers, "table", _run_table, "train what the 12-target grid is missing, then print the table",
        description="Trains every target of the grid folder that is not finished (resumes unfinished runs; one "
        "'egnn qm9 train' process per target at --threads each, --jobs at a time; logs GRID/<target>.log), then "
        "prints the 12-row table (ours, the paper's EGNN, ratio, epochs, minutes, the command) and writes it to "
        "GRID/table.md and GRID/table.csv. Run the same command again to resume after an interruption.")
    p.add_argument("--preset", default="quick", choices=qf.PRESETS.names(), help="recipe (default: quick)")
    p.add_argument("--grid", type=out_folder, default=None, help="grid folder (default: runs/qm9_table_<preset>)")
    p.add_argument("--data", default=DEFAULT_OUT, help=f"folder of the prepared cache (default: {DEFAULT_OUT})")
    p.add_argument("--jobs", type=positive_int, default=2, help="training processes at a time (default 2)")
    p.add_argument("--job-threads", type=positive_int, default=1, help="threads per training process (default 1)")
    p.add_argument("--targets", default=None, metavar="A,B,...", help="only these targets (default: all 12)")
    p.add_argument("--no-train", action="store_true", help="only print the table of what the grid holds")
    p.add_argument("--runs", default=None, help="(old form) list every QM9 run found under this folder")
    p.add_argument("--all", action="store_true", help="with --runs: also list unfinished runs")


def _run_table(args: argparse.Namespace) -> int:
    import sys

    from egnn.checkpoint import atomic_write
    from egnn.experiments.qm9 import grid as qg
    from egnn.experiments.qm9 import train as qt
    from egnn.experiments.run import code_version

    if args.runs is not None:
        if not Path(args.runs).is_dir():
            raise CLIError(f"runs folder {args.runs!r} does not exist")
        print(qt.table(args.runs, include_unfinished=args.all))
        return 0
    grid = Path(args.grid or f"runs/qm9_table_{args.preset}")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    failure = None
    if args.no_train:
        if not grid.is_dir():
            raise CLIError(f"grid folder {str(grid)!r} does not exist")
        from egnn.experiments.qm9.data import TARGET_NAMES

        names = targets or list(TARGET_NAMES)
        planned = qg.planned_epochs(args.preset, names)
        states = qg.grid_states(grid, names, planned)
    else:
        from egnn.experiments.qm9 import data as qm9

        qm9.load(args.data, progress=False)  # a missing or broken cache fails here, in one line, before any job
        try:
            states = qg.run_grid(args.preset, grid, args.data, targets, args.jobs, args.job_threads,
                                 say=lambda m: print(m, file=sys.stderr, flush=True))
        except qg.GridError as err:  # not the user's mistake: the table of what stands, then one line, exit 1
            states, failure = err.states, str(err)
    rows = qg.table_rows(states, args.preset, args.data)
    text = qg.render_markdown(rows, code_version())
    atomic_write(grid / "table.md", text + "\n")
    atomic_write(grid / "table.csv", qg.render_csv(rows))
    print(text)
    if failure is not None:
        print(f"egnn: error: {failure}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------------- ship


def _add_ship(subparsers: argparse._SubParsersAction) -> None:
    from egnn.experiments.qm9 import fit as qf

    p = add_command(
        subparsers, "ship", _run_ship, "export the finished grid targets as pretrained models qm9-<target>",
        description="For every finished target of the grid: its best checkpoint becomes the pretrained model "
        "qm9-<target> (egnn.load_pretrained, egnn predict --model) with a card: split, recipe, test MAE, the MAE "
        "on the first 500 test molecules (checked by the test suite), the command that retrains it and the code "
        "that trained it. Existing entries are kept unless --overwrite.")
    p.add_argument("--preset", default="quick", choices=qf.PRESETS.names(), help="recipe (default: quick)")
    p.add_argument("--grid", default=None, help="grid folder (default: runs/qm9_table_<preset>)")
    p.add_argument("--data", default=DEFAULT_OUT, help=f"folder of the prepared cache (default: {DEFAULT_OUT})")
    p.add_argument("--targets", default=None, metavar="A,B,...", help="only these targets (default: all finished)")
    p.add_argument("--folder", default=None, help="models folder (default: the package's, or $EGNN_PRETRAINED_DIR)")
    p.add_argument("--overwrite", action="store_true", help="replace existing entries of the same name")


def _run_ship(args: argparse.Namespace) -> int:
    import json

    from egnn.experiments.qm9 import grid as qg
    from egnn.experiments.qm9 import ship
    from egnn.experiments.qm9.data import TARGET_NAMES

    grid = Path(args.grid or f"runs/qm9_table_{args.preset}")
    if not grid.is_dir():
        raise CLIError(f"grid folder {str(grid)!r} does not exist")
    names = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    if names is None:
        planned = qg.planned_epochs(args.preset, list(TARGET_NAMES))
        names = [t for t in TARGET_NAMES if qg.run_state(grid / t, t, planned[t]).finished]
        if not names:
            raise CLIError(f"{grid}: no finished target to ship")
    for target in names:
        card = ship.ship_target(grid, target, args.preset, args.data, folder=args.folder, overwrite=args.overwrite)
        print(json.dumps({ship.pretrained_name(target): card}, indent=1))
    return 0


# ------------------------------------------------------------------------------------------------- export


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "export", _run_export,
        "write the cached QM9 as extended XYZ (targets in paper units) for egnn fit", progress=True,
        description="One frame per molecule with the 12 targets in the paper's units (meV for energies; atomref "
        "subtracted from U0, U, H, G, Cv), gdb_index and split=train|valid|test in atoms.info.",
    )
    p.add_argument("--out", required=True, type=out_file, help="extxyz file to create (never overwritten)")
    p.add_argument("--data", default=DEFAULT_OUT, help=f"folder of the prepared cache (default: {DEFAULT_OUT})")
    p.add_argument("--split", default="all", choices=["all", "train", "valid", "test"],
                   help="which molecules (default: all)")


def _run_export(args: argparse.Namespace) -> int:
    import numpy as np

    from egnn.experiments.qm9 import data as qm9
    from egnn.experiments.qm9.export import SPLIT_NAMES, export_extxyz, split_labels

    if Path(args.out).exists():
        raise CLIError(f"{args.out} exists; choose another --out (nothing is overwritten)")
    start = time.perf_counter()
    data = qm9.load(args.data, progress=not args.no_progress)
    labels = split_labels(data, args.data)
    rows = None if args.split == "all" else np.flatnonzero(labels == SPLIT_NAMES.index(args.split))
    path = export_extxyz(data, args.out, labels, rows, progress=not args.no_progress)
    n = len(data) if rows is None else len(rows)
    print(f"{path}: {n:,} molecules ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s; "
          f"fit with: egnn fit --data {path} --target homo --cutoff none")
    return 0
