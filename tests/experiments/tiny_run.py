"""A tiny, fast, deterministic training run on the shared run layer, for crash/resume tests.

``python -m tests.experiments.tiny_run OUT EPOCHS [--resume] [--die-at K]`` trains it in ``OUT``. With
``--die-at K`` the process sends itself ``SIGKILL`` at its K-th *event* (0: during start-up, before the run
begins). Events are counted, never timed, so a kill point means the same instant of the run on any machine:
each training step (the loss of a batch), each evaluation batch, and each file operation of the run layer
(every step of an atomic checkpoint write, each log append, the run record; ``egnn.checkpoint.io_hook``).
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from egnn import checkpoint as ck
from egnn.experiments.run import train_run
from egnn.experiments.trainer import FitResult, Task, TrainConfig

# called with a label ("step", "eval" or the file operation's) at every event of the run; None: off
event_hook: Callable[[str], None] | None = None


def _event(label: str) -> None:
    if event_hook is not None:
        event_hook(label)


@dataclass
class Batch:
    x: Tensor
    y: Tensor


class Split:
    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=gen)
        self.y = (self.x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=gen))[:, None]

    def __len__(self) -> int:
        return self.x.shape[0]

    def get(self, idx: Tensor, device: torch.device) -> Batch:
        return Batch(self.x[idx].to(device), self.y[idx].to(device))


def _loss(model: nn.Module, b: Batch) -> Tensor:
    _event("step")
    return torch.nn.functional.mse_loss(model(b.x), b.y)


def _metric(model: nn.Module, b: Batch) -> tuple[Tensor, int]:
    _event("eval")
    return ((model(b.x) - b.y) ** 2).sum(), b.x.shape[0]


def config(epochs: int = 6, progress: bool = False) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=8, lr=3e-3, eval_every=1, checkpoint_every=2, seed=5,
                       schedule="cosine", ema_decay=0.9, progress=progress, device="cpu", eval_batch_size=8)


def run(out: str, resume: bool = False, epochs: int = 6, width: int = 16, data_seed: int = 0,
        progress: bool = False) -> FitResult:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, width), nn.SiLU(), nn.Linear(width, 1))
    task = Task(Split(48, data_seed), Split(16, data_seed + 1), Split(16, data_seed + 2), _loss, _metric)
    identity = {"experiment": "tiny", "model": "mlp", "hparams": {"width": width}, "data": data_seed}
    result, _ = train_run(model, task, config(epochs, progress), out, identity, resume)
    return result


def count_events(out: str, resume: bool = False, epochs: int = 6) -> list[str]:
    """The labels of every event of a run, in order (runs it in this process)."""
    global event_hook
    labels: list[str] = []
    event_hook = labels.append
    ck.io_hook = labels.append
    try:
        run(out, resume=resume, epochs=epochs)
    finally:
        event_hook = None
        ck.io_hook = None
    return labels


def _die_at(k: int) -> None:
    """Install hooks that SIGKILL this process at its ``k``-th event (``k = 0``: now)."""
    global event_hook
    count = 0

    def hook(label: str) -> None:
        nonlocal count
        count += 1
        if count == k:
            os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9`: no cleanup, no flush of Python's buffers

    if k == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    event_hook = hook
    ck.io_hook = hook


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("epochs", type=int, nargs="?", default=6)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--die-at", type=int, default=None)
    args = p.parse_args(argv)
    if args.die_at is not None:
        _die_at(args.die_at)
    run(args.out, resume=args.resume, epochs=args.epochs)


if __name__ == "__main__":
    main()
