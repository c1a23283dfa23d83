"""A tiny, fast, deterministic training run on the shared run layer, for crash/resume tests.

``python -m tests.experiments.tiny_run OUT [--resume]`` trains it in ``OUT`` (used by the kill tests, which end
the process at random moments).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from egnn.experiments.run import train_run
from egnn.experiments.trainer import FitResult, Task, TrainConfig


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
    return torch.nn.functional.mse_loss(model(b.x), b.y)


def _metric(model: nn.Module, b: Batch) -> tuple[Tensor, int]:
    return ((model(b.x) - b.y) ** 2).sum(), b.x.shape[0]


def config(epochs: int = 6, progress: bool = False) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=8, lr=3e-3, eval_every=1, checkpoint_every=2, seed=5,
                       schedule="cosine", ema_decay=0.9, progress=progress, device="cpu")


def run(out: str, resume: bool = False, epochs: int = 6, width: int = 16, data_seed: int = 0,
        progress: bool = False) -> FitResult:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, width), nn.SiLU(), nn.Linear(width, 1))
    task = Task(Split(48, data_seed), Split(16, data_seed + 1), Split(16, data_seed + 2), _loss, _metric)
    identity = {"experiment": "tiny", "model": "mlp", "hparams": {"width": width}, "data": data_seed}
    result, _ = train_run(model, task, config(epochs, progress), out, identity, resume)
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], resume="--resume" in sys.argv, epochs=int(sys.argv[2]) if len(sys.argv) > 2 else 6)
