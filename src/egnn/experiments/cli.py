"""The ``egnn`` command: ``egnn <experiment> <action> ...``.

Each experiment package has a ``cli`` module with ``register(subparsers)`` that adds its own sub-commands;
the modules are imported lazily so a missing optional extra only affects its own experiment.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# experiment name -> module holding ``register(subparsers)``
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "nbody": ("egnn.experiments.nbody.cli", "charged-particle N-body dynamics (paper Table 2)"),
    "ae": ("egnn.experiments.ae.cli", "graph autoencoder (paper Section 5.2)"),
    "qm9": ("egnn.experiments.qm9.cli", "QM9 molecular property prediction (paper Table 3)"),
}
# modules whose ``register(subparsers)`` adds top-level commands (``egnn fit``, ``egnn predict`` ...)
COMMANDS: tuple[str, ...] = ("egnn.experiments.fit.cli",)


class CLIError(Exception):
    """A user error: printed without a traceback, exit code 2."""


def add_trainer_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every ``train`` action shares (they map onto :class:`egnn.experiments.trainer.TrainConfig`)."""
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--lr", type=float, default=None, help="override the learning rate")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (after an evaluation) past this wall time")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    demo = sub.add_parser("demo", help="the main job on a small built-in default (N-body)")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--minutes", type=float, default=4.0, help="training budget in minutes")
    demo.set_defaults(func=_demo)
    _add_threads(demo)
    for name, (module, help_text) in EXPERIMENTS.items():
        p = sub.add_parser(name, help=help_text)
        actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
        try:
            importlib.import_module(module).register(actions)
        except ModuleNotFoundError as err:  # an optional extra is missing
            p.set_defaults(func=_missing(name, err))
        for leaf in actions.choices.values():
            _add_threads(leaf)
    for module in COMMANDS:
        before = set(sub.choices)
        importlib.import_module(module).register(sub)
        for name in set(sub.choices) - before:
            _add_threads_to_leaves(sub.choices[name])
    return parser


def _add_threads_to_leaves(p: argparse.ArgumentParser) -> None:
    nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        _add_threads(p)
    for action in nested:
        for leaf in action.choices.values():
            _add_threads_to_leaves(leaf)


def _add_threads(p: argparse.ArgumentParser) -> None:
    # Every command takes it: on a shared machine, torch's default (one thread per core) can oversubscribe the
    # cores, and spin-waiting OpenMP threads then slow a job down many times over.
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's own choice, usually one per core)")


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise CLIError(f"--threads must be a positive integer, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _missing(name: str, err: Exception):
    def run(args: argparse.Namespace) -> int:
        raise CLIError(f"the '{name}' experiment is unavailable: {err}. Install with: pip install -e '.[all]'")

    return run


def _demo(args: argparse.Namespace) -> int:
    from egnn.experiments.nbody.demo import run_demo

    return run_demo(out=args.out, minutes=args.minutes)


def main(argv: Sequence[str] | None = None) -> int:
    # the canonical class, also when this file runs as __main__ (python -m egnn.experiments.cli)
    from egnn.experiments.cli import CLIError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _set_threads(getattr(args, "threads", None))
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"egnn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("egnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
