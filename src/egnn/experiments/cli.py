"""The ``egnn`` command: ``egnn <experiment> <action> ...``.

Each experiment package has a ``cli`` module with ``register(subparsers)`` that adds its actions with
:func:`egnn.experiments.commands.add_command`; the modules are imported lazily so a missing optional extra only
affects its own experiment. Errors in the user's input become one ``egnn: error: ...`` line and exit code 2
(:func:`egnn.experiments.commands.run_command`).
"""

from __future__ import annotations

import os

# Before torch is first imported (both are read once, so they cannot be set later; a value the user set is kept):
# back large buffers with transparent huge pages (far fewer page faults; see egnn.runtime).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
# Idle OpenMP threads sleep instead of spinning: with a busy core, 2 spinning threads made an N-body step 69 ms,
# sleeping ones 36 ms (1 thread: 29 ms). OMP_WAIT_POLICY=ACTIVE in the environment restores spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence

from egnn.experiments.commands import (  # noqa: E402
    ArgumentParser,
    CLIError,
    add_command,
    add_trainer_arguments,
    positive_float,
    positive_int,
    run_command,
)

__all__ = ["CLIError", "EXPERIMENTS", "add_trainer_arguments", "build_parser", "main"]

# experiment name -> (module holding ``register(subparsers)``, help)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "nbody": ("egnn.experiments.nbody.cli", "charged-particle N-body dynamics (paper Table 2)"),
    "ae": ("egnn.experiments.ae.cli", "graph autoencoder (paper Section 5.2)"),
    "qm9": ("egnn.experiments.qm9.cli", "QM9 molecular property prediction (paper Table 3)"),
}
# modules whose ``register(subparsers)`` adds top-level commands (``egnn fit``, ``egnn predict`` ...)
COMMANDS: tuple[str, ...] = ("egnn.experiments.fit.cli", "egnn.experiments.data_cli", "egnn.experiments.export_cli")


def build_parser() -> argparse.ArgumentParser:
    from egnn import __version__

    parser = ArgumentParser(prog="egnn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"egnn {__version__}")
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True,
                                parser_class=ArgumentParser)
    demo = add_command(sub, "demo", _demo, "the main job on a small built-in default (N-body)")
    demo.add_argument("--out", default="runs/demo",
                      help="output folder (default: runs/demo); an earlier demo's run there is kept")
    demo.add_argument("--epochs", type=positive_int, default=None,
                      help="epochs of the demo's recipe (default: its 200; the result depends on this, not on time)")
    demo.add_argument("--max-minutes", "--minutes", dest="max_minutes", type=positive_float, default=None,
                      help="a cap, not a recipe: stop training early once past this wall time (the output says so)")
    for name, (module, help_text) in EXPERIMENTS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=ArgumentParser)
        try:
            importlib.import_module(module).register(actions)
        except ModuleNotFoundError as err:  # an optional extra is missing
            p.set_defaults(func=_missing(name, err))
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def _missing(name: str, err: Exception):
    def run(args: argparse.Namespace) -> int:
        raise CLIError(f"the '{name}' experiment is unavailable: {err}. Install with: pip install -e '.[all]'")

    return run


def _demo(args: argparse.Namespace) -> int:
    from egnn.experiments.nbody.demo import run_demo

    return run_demo(out=args.out, epochs=args.epochs, max_minutes=args.max_minutes)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    from egnn.experiments.training.launch import follow_launcher
    from egnn.runtime import tune_cpu_allocator

    follow_launcher()  # a worker of `egnn fit --procs N` dies with its launcher
    tune_cpu_allocator()  # reuse freed memory instead of page-faulting it back in every step
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version (0) or a parse error (2, already printed)
        return int(stop.code or 0)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what worker processes are started with

    def run() -> int:
        _set_threads(getattr(args, "threads", None))
        return int(args.func(args) or 0)

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
