"""What an experiment gives the trainer (:class:`Task`: data splits, loss, metric) and what it gets back
(:class:`FitResult`); the optimisation settings (:class:`TrainConfig`).

The data seam: a split is any object with ``__len__`` and either ``get(indices, device)`` returning one batch
(in-memory data) or ``loader(index_batches, device)`` returning an iterable of batches, one per index batch in
order (e.g. a ``torch.utils.data.DataLoader`` whose workers read and prepare the next batches while the current
one trains). The trainer decides which samples form each batch (:mod:`.distributed`); the split only reads them.
A split may also give ``sizes()``, the memory weight of each sample (e.g. atoms + edges of a graph), by which
evaluation batches are cut (``TrainConfig.eval_batch_budget``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class DataSplit(Protocol):
    def __len__(self) -> int: ...

    def get(self, indices: Tensor, device: torch.device) -> Any: ...


def iter_batches(split: Any, index_batches: Sequence[Tensor], device: torch.device) -> Iterator[Any]:
    """The batches of ``index_batches`` from ``split``: through its ``loader`` when it has one, else ``get``."""
    loader = getattr(split, "loader", None)
    if loader is not None:
        yield from loader(index_batches, device)
        return
    for idx in index_batches:
        yield split.get(idx, device)


@dataclass
class LossTerms:
    """A loss made of means over different things (frames, atoms ...), kept as sums and counts so that the
    mean is taken over the *global* batch when several processes each hold a share of it.

    The loss is :math:`\\sum_k w_k \\, S_k / C_k` with :math:`S_k` and :math:`C_k` summed over the ranks.
    """

    weights: list[float] = field(default_factory=list)
    sums: list[Tensor] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)

    def add(self, weight: float, total: Tensor, count: float | int | Tensor) -> LossTerms:
        self.weights.append(float(weight))
        self.sums.append(total)
        self.counts.append(float(count))
        return self


@dataclass
class Task:
    """What the trainer needs from an experiment.

    ``loss(model, batch)`` returns either the mean training loss over the batch's samples (a scalar tensor) or a
    :class:`LossTerms` (means over other units: atoms, edges). ``metric(model, batch)`` returns ``(sum of the
    metric over the batch's samples, number of samples)``; lower is better; the trainer reports its mean over a
    split (e.g. MSE, MAE in physical units). ``wrap(model)`` (optional) is the module the loss and metric are
    called with (e.g. one whose forward returns energies and forces), so that the gradients of everything the
    loss uses flow through the data-parallel wrapper. ``unused_parameters``: see the field's comment.
    """

    train: DataSplit
    valid: DataSplit
    test: DataSplit | None
    loss: Callable[[nn.Module, Any], Tensor | LossTerms]
    metric: Callable[[nn.Module, Any], tuple[Tensor, int]]
    metric_name: str = "mse"
    # the metric differentiates the model (e.g. forces as -dE/dx): evaluate with autograd on
    metric_needs_grad: bool = False
    wrap: Callable[[nn.Module], nn.Module] | None = None
    # whether the loss leaves some parameters without gradients (DDP then searches for them every step);
    # None: found out on the first batch, once (a model whose unused parameters vary by batch must say True)
    unused_parameters: bool | None = None


@dataclass
class TrainConfig:
    """Optimisation settings (stored in checkpoints; a resumed run must use the same values).

    ``batch_size`` is the global batch: under ``torchrun`` each of the N processes takes every N-th sample of it,
    so N processes follow the same course as one.
    """

    epochs: int = 100
    batch_size: int = 100
    lr: float = 5e-4
    weight_decay: float = 1e-12
    schedule: str = "constant"  # "constant" or "cosine" (per step, down to lr * final_lr_ratio)
    final_lr_ratio: float = 0.0
    warmup_steps: int = 0
    ema_decay: float | None = None  # exponential moving average of the weights, used for evaluation
    grad_clip: float | None = None
    eval_every: int = 5
    eval_batch_size: int = 500
    # evaluation batches also hold at most this much of the splits' per-sample size (``split.sizes()``: atoms +
    # edges of a frame), so that their memory depends on neither the number nor the size of the samples
    eval_batch_budget: int | None = None
    checkpoint_every: int = 5
    seed: int = 0
    # a cap, never a recipe: stop (after an evaluation and a checkpoint) once past this, and say so
    max_minutes: float | None = None
    target_metric: float | None = None  # record the wall time at which the test metric first reaches this
    compile: bool = False
    device: str = "auto"
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of ``step``: linear warm-up, then constant or cosine down to ``lr * final_lr_ratio`` at
    ``total_steps`` (a function of the step alone, so a resumed run continues the same schedule)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        t = min(1.0, (step - cfg.warmup_steps) / max(1, max(1, total_steps) - cfg.warmup_steps))
        return cfg.lr * (cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {cfg.schedule!r}")


# settings that may differ between a run and its resumption without changing its course
RESUME_FREE = {"epochs", "max_minutes", "progress", "device", "compile", "target_metric", "checkpoint_every",
               "eval_batch_budget"}


@dataclass
class FitResult:
    best_epoch: int
    best_valid: float
    test_at_best: float | None
    epochs_done: int
    train_seconds: float
    time_to_target: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_planned: int | None = None  # the recipe's epochs (``epochs_done`` is less when a cap stopped the run)
    # ``--max-minutes`` stopped the run before its schedule ended: its results are not the recipe's
    cut_by_time_cap: bool = False

    def summary(self) -> dict[str, Any]:
        """Everything but the per-epoch history (for printing)."""
        d = asdict(self)
        d.pop("history")
        return d


def as_terms(out: Tensor | LossTerms, num_samples: int) -> LossTerms:
    """A plain loss (a mean over ``num_samples`` samples) as one term."""
    if isinstance(out, LossTerms):
        return out
    return LossTerms().add(1.0, out * num_samples, num_samples)
