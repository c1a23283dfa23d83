"""``egnn qm9 <action>``: QM9 sub-commands.

Each action is a ``_add_<action>(subparsers)`` function that adds its parser and sets ``func`` to a
``_run_<action>(args) -> int``; list it in ``_ACTIONS``. Heavy modules are imported inside the run functions
so ``egnn --help`` stays fast. User errors are raised as :class:`CLIError`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from egnn.experiments.cli import CLIError

DEFAULT_OUT = "data/qm9"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the QM9 actions to ``egnn qm9``."""
    for add in _ACTIONS:
        add(subparsers)


# ------------------------------------------------------------------------------------------------ prepare


def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="parse QM9 into a verified cache and write the paper's splits",
        description=(
            "Parse QM9 (default: the CSV files of the qm9pack package) into OUT/qm9.npz and write the "
            "paper's train/valid/test split (1-based GDB-9 indices) to OUT/splits.npz. A valid cache built "
            "from the same source is reused; a corrupt or outdated one is rebuilt."
        ),
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from egnn.experiments.qm9 import data as qm9

    out = Path(args.out)
    cache = out / qm9.CACHE_NAME
    before = cache.stat().st_mtime_ns if cache.exists() else None
    start = time.perf_counter()
    try:
        path = qm9.prepare(out, args.source, not args.no_progress, exclude=args.exclude, force=args.force)
        meta = qm9.cache_info(path)
        splits = qm9.load_splits(out)
    except qm9.QM9DataError as err:
        raise CLIError(str(err)) from err
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


_ACTIONS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_prepare,)
