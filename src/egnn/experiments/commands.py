"""What every ``egnn`` command shares: the parser class, validated argument types, the shared flags, and the
one place where a user's mistake becomes one ``egnn: error: ...`` line with exit code 2.

An experiment's ``cli`` module adds its actions with :func:`add_command` and declares arguments with the
types below, so every numeric argument is checked when it is parsed, before any work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


class UserError(Exception):
    """A problem with what the user gave (arguments, files, data): printed as one line, exit code 2."""


class CLIError(UserError):
    """A user error found by a command itself."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with a one-line error (``egnn: error: <command>: <message>``) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        where = "" if self.prog == "egnn" else f"{self.prog}: "  # the top-level parser: no "egnn: egnn:"
        print(f"egnn: error: {where}{message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


# ----------------------------------------------------------------------------------------- argument types


def _number(text: str, kind: type, what: str) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def int_in(lo: int | None = None, hi: int | None = None, what: str = "an integer") -> Callable[[str], int]:
    """An ``int`` argument type accepting ``lo <= value <= hi`` (either bound optional)."""

    def parse(text: str) -> int:
        value = _number(text, int, what)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def float_in(lo: float | None = None, hi: float | None = None, what: str = "a number",
             lo_open: bool = True, hi_open: bool = False) -> Callable[[str], float]:
    """A finite ``float`` type in the interval from ``lo`` to ``hi`` (open at ``lo`` by default)."""

    def parse(text: str) -> float:
        value = _number(text, float, what)
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if hi is not None and (value > hi or (hi_open and value == hi)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_int = int_in(1, None, "a positive integer")
nonnegative_int = int_in(0, None, "an integer >= 0")
positive_float = float_in(0.0, None, "a positive number")
nonnegative_float = float_in(0.0, None, "a number >= 0", lo_open=False)
# torch, numpy and Python's random all accept seeds in [0, 2^32)
seed_int = int_in(0, 2**32 - 1, "a seed in [0, 2^32)")


def procs_arg(text: str) -> int | None:
    """``auto`` (``None``: the command chooses) or a positive number of processes."""
    if text.strip().lower() == "auto":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}") from None


procs_arg.__name__ = "'auto' or a number of processes"


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` — and the device must exist here."""
    import torch

    name = text.strip().lower()
    if name in ("auto", "cpu"):
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    if dev.type != "cuda":
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    if not torch.cuda.is_available():
        why = ("this PyTorch build has no CUDA support (a CPU wheel)" if torch.version.cuda is None
               else "no CUDA GPU is visible to PyTorch")
        raise argparse.ArgumentTypeError(f"{text!r} is not available: {why}; use --device cpu (or auto)")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name


def out_folder(text: str) -> str:
    """A folder to write into: absent (it will be created) or an existing folder, never a file."""
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    return text


def out_file(text: str) -> str:
    """A file to write: its folder must exist and the name must not be a folder."""
    p = Path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, expected a file name")
    if not p.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text!r} does not exist")
    return text


def existing_folder(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"folder {text!r} does not exist")
    return text


def checkpoint_arg(text: str) -> str:
    """A run folder (meaning its best checkpoint) or a checkpoint path with or without its suffix."""
    p = Path(text)
    base = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    if not (p.is_dir() or base.with_name(base.name + ".safetensors").is_file()):
        raise argparse.ArgumentTypeError(f"no run folder or checkpoint at {text!r}")
    return text


# ------------------------------------------------------------------------------------------- shared flags


def add_threads(p: argparse.ArgumentParser) -> None:
    # on a shared machine torch's default (one thread per core) can oversubscribe the cores, and spin-waiting
    # OpenMP threads then slow a job down many times over
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: torch's own choice, usually one per core)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_trainer_arguments(p: argparse.ArgumentParser, compile_flag: bool = True) -> None:
    """The flags every training action shares (they map onto :class:`~egnn.experiments.trainer.TrainConfig`)."""
    p.add_argument("--epochs", type=positive_int, default=None, help="override the preset's number of epochs")
    p.add_argument("--lr", type=positive_float, default=None, help="override the preset's learning rate")
    p.add_argument("--batch-size", type=positive_int, default=None, help="override the preset's batch size")
    p.add_argument("--seed", type=seed_int, default=None, help="random seed of initialisation and data order")
    p.add_argument("--max-minutes", type=positive_float, default=None,
                   help="a cap, not a recipe: stop (after an evaluation and a checkpoint) once past this wall time; "
                        "the output says when it cut the schedule short")
    p.add_argument("--grad-clip", type=nonnegative_float, default=None, metavar="NORM",
                   help="clip the gradient norm to NORM (0: off; default: the preset's)")
    p.add_argument("--time-to-target", type=float_in(None, None, "a number"), default=None, metavar="VALUE",
                   help="record the wall time at which the best-validation test metric first reaches VALUE "
                        "(reported as time_to_target)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (or restart it if it has none)")
    if compile_flag:
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the model for training (default: the preset's; --no-compile: eager)")
    add_device(p)
    add_progress(p)


def trainer_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` overrides given by :func:`add_trainer_arguments` flags (``None``: not given)."""
    return {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
            "max_minutes": args.max_minutes, "target_metric": args.time_to_target, "device": args.device,
            "grad_clip": args.grad_clip,
            "compile": getattr(args, "compile", None), "progress": not args.no_progress}


def add_command(sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int | None],
                help: str, *, device: bool = False, progress: bool = False,
                description: str | None = None) -> argparse.ArgumentParser:
    """Add an action: its parser (the one-line-error kind), ``--threads`` and, if asked, ``--device`` and
    ``--no-progress``; ``func(args)`` runs it."""
    p = sub.add_parser(name, help=help, description=description or help)
    p.set_defaults(func=func)
    add_threads(p)
    if device:
        add_device(p)
    if progress:
        add_progress(p)
    return p


# -------------------------------------------------------------------------------------------- running


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong" (arguments, files, data, checkpoints), not "egnn is broken"."""
    return (UserError, ValueError, LookupError, OSError, FloatingPointError)


def run_command(func: Callable[[], int | None]) -> int:
    """Run a command; a user error becomes one ``egnn: error: ...`` line and exit code 2 (a traceback only with
    ``EGNN_TRACEBACK=1``), an interruption exit code 130.

    Under ``torchrun`` the line names the rank (``egnn: error: rank 1: ...``) and is printed once: by the rank
    that failed, or by rank 0 when every rank fails the same way (a non-finite loss); a rank stopped by another
    rank's failure exits quietly with the same code.
    """
    from egnn.experiments.training.distributed import PeerFailure, RankError, dist_info
    from egnn.experiments.training.launch import launched

    rank, world = dist_info()
    # a worker of `egnn fit --procs N`: its launcher reports lost peers and Ctrl-C, once for the whole job
    launcher_reports = launched()
    where = f"rank {rank}: " if world > 1 else ""
    try:
        if rank > 0:  # one copy of the results: rank 0 prints them (errors still come from any rank)
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                return int(func() or 0)
        return int(func() or 0)
    except PeerFailure:
        return 2
    except RankError as err:
        if not launcher_reports:
            print(f"egnn: error: {_message(err)}", file=sys.stderr)
        return 1
    except user_error_types() as err:
        if os.environ.get("EGNN_TRACEBACK"):
            raise
        if not (rank > 0 and isinstance(err, FloatingPointError)):  # the same on every rank: rank 0 says it
            print(f"egnn: error: {where}{_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not launcher_reports:
            print("egnn: interrupted (the last complete checkpoint is kept; continue with --resume)", file=sys.stderr)
        return 130
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """Leave the ``torchrun`` process group before the interpreter exits: its communication threads, left
    running, can abort the process at exit ("terminate called without an active exception")."""
    torch = sys.modules.get("torch")  # never imported: no process group (and no reason to import it now)
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.destroy_process_group()
        except (RuntimeError, ValueError):  # a peer already gone: nothing left to close cleanly
            pass


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or err}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())  # one line
