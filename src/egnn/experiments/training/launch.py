"""Data-parallel worker processes started by a command itself (``egnn fit --procs N``), on one machine.

The workers are the processes ``torchrun --standalone --nproc_per_node N`` would start, with the same
environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` of a store this launcher
holds, as torchrun's agent does), so they run the same code and take the same steps (:mod:`.distributed`). What
differs is what the user sees:

- one line when something goes wrong: a worker killed by a signal is named by the launcher (the other workers,
  which stop on the lost connection, stay quiet); a user error is printed by the worker that met it (exit code 2);
- Ctrl-C stops every worker (they run in their own session, so the launcher forwards exactly one SIGINT) and the
  launcher prints the one ``egnn: interrupted`` line (exit code 130);
- a launcher that dies takes its workers with it (Linux: ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from egnn.experiments.training.distributed import RankError

# set in every worker: the launcher reports lost peers and interruptions, the workers stay quiet about them
LAUNCHER_ENV = "EGNN_LAUNCHER_PID"
# after the first worker fails, how long the others get to stop by themselves (to print their own error line)
# before they are terminated: a worker computing between collectives notices a lost peer at its next one
GRACE_S = 3.0
POLL_S = 0.05


@dataclass(frozen=True)
class WorkerPlan:
    """``procs`` worker processes of ``threads`` intra-op threads each."""

    procs: int
    threads: int


class WorkerFailure(RankError):
    """A worker stopped in a way no worker reported (a signal, a crash): the launcher's one line (exit code 1,
    as a lost peer under ``torchrun``)."""


def launched() -> bool:
    """Whether this process is a worker of :func:`run_workers` (it leaves lost peers and Ctrl-C to the launcher)."""
    return LAUNCHER_ENV in os.environ


def follow_launcher() -> None:
    """In a worker: die with the launcher (Linux), and stop at once if it is already gone."""
    pid = os.environ.get(LAUNCHER_ENV)
    if pid is None:
        return
    # the launcher forwards Ctrl-C as SIGINT: take it even where the launcher was started with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != int(pid):  # the launcher died before the line above took effect
        os._exit(1)


def _package_root() -> str:
    import egnn

    return str(Path(egnn.__file__).resolve().parents[1])


def worker_env(rank: int, plan: WorkerPlan, port: int) -> dict[str, str]:
    """The environment torchrun gives a worker (one node), plus this package's folder first on the path when it is
    a source tree (an installed package is found anyway; site-packages first would shadow the standard library)."""
    root = _package_root()
    source_tree = Path(root).name not in ("site-packages", "dist-packages")
    path = os.pathsep.join(p for p in (root if source_tree else "", os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ, "PYTHONPATH": path, LAUNCHER_ENV: str(os.getpid()),
        "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "ROLE_RANK": str(rank),
        "WORLD_SIZE": str(plan.procs), "LOCAL_WORLD_SIZE": str(plan.procs), "GROUP_WORLD_SIZE": "1",
        "ROLE_WORLD_SIZE": str(plan.procs), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "TORCHELASTIC_USE_AGENT_STORE": "True", "OMP_NUM_THREADS": str(plan.threads),
    }


def run_workers(argv: list[str], plan: WorkerPlan, module: str = "egnn.experiments.cli") -> int:
    """Run ``python -m module ARGV`` as ``plan.procs`` data-parallel workers; their exit code (see the module
    docstring). Raises :class:`WorkerFailure` (one line) for a worker that died unreported, and
    ``KeyboardInterrupt`` once every worker has stopped after Ctrl-C."""
    import torch

    from egnn.experiments.training.distributed import timeout

    # the rendezvous store, on a port the OS picks (no race for a "free" port); the workers connect as clients
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timeout())
    workers: list[subprocess.Popen] = []
    signalled: set[int] = set()  # workers this launcher stopped (their signal is not the cause)
    try:
        for rank in range(plan.procs):
            workers.append(subprocess.Popen([sys.executable, "-m", module, *argv],
                                            env=worker_env(rank, plan, store.port), start_new_session=True))
        try:
            return _wait(workers, signalled)
        except KeyboardInterrupt:
            _stop(workers, signalled, signal.SIGINT, wait_s=10 * GRACE_S)
            raise
    finally:
        _stop(workers, signalled, signal.SIGKILL, wait_s=GRACE_S)
        del store


def _wait(workers: list[subprocess.Popen], signalled: set[int]) -> int:
    """Wait for every worker; after the first failure the others get :data:`GRACE_S` before SIGTERM."""
    failed_at: float | None = None
    while any(w.poll() is None for w in workers):
        if failed_at is None and any(w.returncode not in (None, 0) for w in workers):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            _stop(workers, signalled, signal.SIGTERM, wait_s=GRACE_S)
            break
        time.sleep(POLL_S)
    return _outcome(workers, signalled)


def _stop(workers: list[subprocess.Popen], signalled: set[int], sig: signal.Signals, wait_s: float) -> None:
    """Send ``sig`` to every worker still running, wait up to ``wait_s``, then kill what is left."""
    for w in workers:
        if w.poll() is None:
            signalled.add(w.pid)
            with contextlib.suppress(ProcessLookupError):
                w.send_signal(sig)
    end = time.monotonic() + wait_s
    for w in workers:
        try:
            w.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def _outcome(workers: list[subprocess.Popen], signalled: set[int]) -> int:
    """The job's exit code; a cause no worker reported becomes :class:`WorkerFailure`."""
    codes = [w.returncode for w in workers]
    for rank, w in enumerate(workers):
        if w.returncode < 0 and w.pid not in signalled:
            name = signal.Signals(-w.returncode).name
            raise WorkerFailure(f"worker process of rank {rank} was killed by {name}; the other workers stopped "
                                "(the last complete checkpoint is kept; continue with --resume)")
    for code in (2, 130):  # reported by a worker itself (a user error, an interruption)
        if code in codes:
            return code
    if any(codes):
        bad = next(rank for rank, c in enumerate(codes) if c)
        raise WorkerFailure(f"worker process of rank {bad} stopped with exit code {codes[bad]}; "
                            "the other workers stopped (the last complete checkpoint is kept; continue with --resume)")
    return 0
