"""The training loop shared by every experiment: Adam, schedules, evaluation at the best validation epoch,
CSV log, safe checkpoints with exact resume, tqdm, CPU/CUDA at run time, optional torch.compile and
multi-process data parallel training (DDP under ``torchrun``).

An experiment supplies a :class:`Task`: its data splits (objects with ``__len__`` and
``get(indices, device)`` returning a batch) and two functions, the training loss and the evaluation metric.

Determinism and resume: the order of training samples in epoch ``e`` is a permutation drawn from a generator
seeded with ``(seed, e)`` alone, the learning rate is a function of the step, and the checkpoint holds the
model, optimizer and weight-average states. A run killed and resumed from its last checkpoint therefore
continues exactly as if it had not stopped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from egnn.checkpoint import (
    CheckpointError,
    append_text,
    atomic_write,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)


class DataSplit(Protocol):
    def __len__(self) -> int: ...

    def get(self, indices: Tensor, device: torch.device) -> Any: ...


@dataclass
class Task:
    """What the trainer needs from an experiment.

    ``loss(model, batch)`` returns the mean training loss of a batch. ``metric(model, batch)`` returns
    ``(sum of the metric over the batch's samples, number of samples)``; lower is better; the trainer reports
    its mean over a split (e.g. MSE, MAE in physical units).
    """

    train: DataSplit
    valid: DataSplit
    test: DataSplit | None
    loss: Callable[[nn.Module, Any], Tensor]
    metric: Callable[[nn.Module, Any], tuple[Tensor, int]]
    metric_name: str = "mse"
    # the metric differentiates the model (e.g. forces as -dE/dx): evaluate with autograd on
    metric_needs_grad: bool = False


@dataclass
class TrainConfig:
    """Optimisation settings (stored in checkpoints; a resumed run must use the same values)."""

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


# settings that may differ between a run and its resumption without changing its course
_RESUME_FREE = {"epochs", "max_minutes", "progress", "device", "compile", "target_metric", "checkpoint_every"}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if dist_info()[1] > 1 and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` outside ``torchrun``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    rank, world = dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return rank, world


def epoch_order(num_samples: int, seed: int, epoch: int) -> Tensor:
    """The training order of an epoch: depends only on ``(seed, epoch)``, so resume is exact."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=gen)


def shard_batches(order: Tensor, batch_size: int, rank: int, world: int) -> list[Tensor]:
    """Global batches of ``order``; each rank takes every ``world``-th sample of each (a distributed sampler
    whose union over ranks is exactly the single-process batch)."""
    batches = []
    for start in range(0, order.numel(), batch_size):
        b = order[start : start + batch_size]
        if world > 1:
            if b.numel() < world:
                continue  # a tail too small to give every rank a sample
            b = b[rank::world]
        batches.append(b)
    return batches


def _warm_ema(decay: float):
    """EMA whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so short runs are
    not dominated by the initial weights."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


def evaluate_split(
    task: Task, split: DataSplit, model: nn.Module, device: torch.device, batch_size: int = 500,
    progress: bool = False, desc: str = "eval",
) -> float:
    """Mean of ``task.metric`` over a split, in eval mode (under ``torch.inference_mode`` unless the metric
    needs gradients), with an optional progress bar over the batches."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    n = len(split)
    starts = range(0, n, batch_size)
    context = torch.enable_grad if task.metric_needs_grad else torch.inference_mode
    with context(), tqdm(total=len(starts), desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                         disable=not progress or len(starts) < 2) as bar:
        for start in starts:
            idx = torch.arange(start, min(n, start + batch_size))
            s, c = task.metric(model, split.get(idx, device))
            total += float(s)
            count += c
            bar.update(1)
    model.train(was_training)
    return total / max(count, 1)


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


class Trainer:
    """Train ``model`` on ``task``; writes ``log.csv``, ``last.*`` and ``best.*`` checkpoints in ``out_dir``.

    ``meta`` (JSON-able: experiment, model name and config, data description) is stored in every checkpoint
    and checked on resume.
    """

    def __init__(
        self, model: nn.Module, task: Task, cfg: TrainConfig, out_dir: str | Path, meta: dict[str, Any]
    ) -> None:
        self.cfg = cfg
        self.task = task
        self.out = Path(out_dir)
        self.meta = meta
        self.rank, self.world = init_distributed()
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        # fused: one kernel for the whole update instead of several per parameter (same update, other rounding)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.ema = (
            torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=_warm_ema(cfg.ema_decay))
            if cfg.ema_decay
            else None
        )
        self.train_model: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # some models leave parameters unused by the loss (e.g. the last node MLP when only positions count)
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                   find_unused_parameters=True)
        if cfg.compile:
            # one graph for every batch size: node and edge counts are marked dynamic from the first call
            self.train_model = torch.compile(self.train_model, dynamic=True)
        self.epoch = 0
        self.step = 0
        self.train_seconds = 0.0
        self.best = {"epoch": -1, "valid": math.inf, "test": None}
        self.time_to_target: float | None = None
        self.history: list[dict[str, Any]] = []
        self._steps_per_epoch = len(shard_batches(torch.arange(len(task.train)), cfg.batch_size, 0, self.world))

    # --- schedule ---------------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return self._steps_per_epoch

    def lr_at(self, step: int) -> float:
        c = self.cfg
        total = max(1, c.epochs * self.steps_per_epoch())
        if c.warmup_steps and step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return c.lr
        if c.schedule == "cosine":
            t = min(1.0, (step - c.warmup_steps) / max(1, total - c.warmup_steps))
            return c.lr * (c.final_lr_ratio + (1 - c.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {c.schedule!r}")

    # --- evaluation ---------------------------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self, split: DataSplit, model: nn.Module | None = None, desc: str = "eval") -> float:
        return evaluate_split(self.task, split, model or self.eval_model(), self.device, self.cfg.eval_batch_size,
                              progress=self.cfg.progress and self.rank == 0, desc=desc)

    # --- checkpoints --------------------------------------------------------------------------------------
    def _tree(self) -> dict[str, Any]:
        # the torch RNG state too: models that sample noise in forward (e.g. the autoencoders) resume exactly
        tree: dict[str, Any] = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                                "torch_rng": torch.get_rng_state()}
        if self.ema is not None:
            tree["ema"] = self.ema.state_dict()
        return tree

    def _meta(self) -> dict[str, Any]:
        return {
            **self.meta,
            "train_config": asdict(self.cfg),
            "epoch": self.epoch,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "best": self.best,
            "time_to_target": self.time_to_target,
            "history": self.history,
        }

    def save(self, name: str) -> None:
        if self.rank != 0:
            return
        save_checkpoint(self.out / name, self._tree(), self._meta())

    def save_best(self) -> None:
        """Weights used for evaluation (EMA if on) as a stand-alone model checkpoint."""
        if self.rank != 0:
            return
        meta = {**self._meta(), "weights": "ema" if self.ema is not None else "model"}
        save_checkpoint(self.out / "best", {"model": self.eval_model().state_dict()}, meta)

    def resume(self) -> None:
        """Load ``out_dir/last``; the run's meta and optimisation settings must match this trainer's."""
        tree, meta = load_checkpoint(self.out / "last", map_location=self.device)
        for key, value in self.meta.items():
            if meta.get(key) != value:
                raise CheckpointError(
                    f"checkpoint in {self.out} was made with {key}={json.dumps(meta.get(key))}, "
                    f"not {json.dumps(value)}; use another --out or the same settings"
                )
        saved = TrainConfig.from_dict(meta.get("train_config", {}))
        diffs = [f.name for f in fields(TrainConfig) if f.name not in _RESUME_FREE
                 and getattr(saved, f.name) != getattr(self.cfg, f.name)]
        if diffs:
            raise CheckpointError(f"cannot resume with changed training settings: {', '.join(diffs)}")
        load_state_dict_strict(self.model, tree["model"])
        try:
            self.opt.load_state_dict(tree["optimizer"])
            if self.ema is not None:
                self.ema.load_state_dict(tree["ema"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"optimizer/EMA state in {self.out / 'last'} does not match: {err}") from None
        if "torch_rng" in tree:
            torch.set_rng_state(tree["torch_rng"].cpu())
        self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        self.train_seconds = float(meta["train_seconds"])
        self.best = meta["best"]
        self.time_to_target = meta.get("time_to_target")
        self.history = list(meta.get("history", []))
        if self.rank == 0:
            self._rewrite_log()

    # --- logging ---------------------------------------------------------------------------------------
    _LOG_FIELDS = ["epoch", "step", "lr", "train_loss", "valid", "test", "best_epoch", "best_valid",
                   "test_at_best", "train_seconds"]

    def _csv(self, rows: list[dict[str, Any]], header: bool) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self._LOG_FIELDS)
        if header:
            w.writeheader()
        w.writerows(rows)
        return buf.getvalue()

    def _rewrite_log(self) -> None:
        # regenerated from the checkpoint, so rows after it (from a killed run) and a torn last line are dropped
        atomic_write(self.out / "log.csv", self._csv(self.history, header=True))

    def _append_log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.rank != 0:
            return
        path = self.out / "log.csv"
        append_text(path, self._csv([row], header=not path.exists()))

    # --- the loop --------------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        cfg = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        from tqdm.auto import tqdm

        show = cfg.progress and self.rank == 0
        bar = tqdm(total=cfg.epochs, initial=self.epoch, disable=not show, desc="train", unit="ep",
                   dynamic_ncols=True)
        # a second bar inside long epochs (more than a few dozen steps), refreshed at most 10 times a second
        inner = tqdm(total=self._steps_per_epoch, disable=not show or self._steps_per_epoch < 50, leave=False,
                     desc="epoch", unit="step", dynamic_ncols=True, mininterval=0.1)
        self.model.train()
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            order = epoch_order(len(self.task.train), cfg.seed, self.epoch)
            loss_sum, loss_n = 0.0, 0
            inner.reset()
            inner.set_description(f"epoch {self.epoch + 1}")
            for idx in shard_batches(order, cfg.batch_size, self.rank, self.world):
                batch = self.task.train.get(idx, self.device)
                for group in self.opt.param_groups:
                    group["lr"] = self.lr_at(self.step)
                self.opt.zero_grad(set_to_none=True)
                loss = self.task.loss(self.train_model, batch)
                value = float(loss.detach())
                if not math.isfinite(value):  # stop before a bad step reaches the weights
                    raise FloatingPointError(
                        f"training loss became {value} at step {self.step + 1} (epoch {self.epoch + 1}); "
                        f"last good checkpoint: {self.out / 'last'}; try a lower lr or the tanh/normalize options"
                    )
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.opt.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.step += 1
                loss_sum += value * idx.numel()
                loss_n += idx.numel()
                inner.update(1)
            self.epoch += 1
            elapsed = self.train_seconds + time.perf_counter() - t0
            out_of_time = cfg.max_minutes is not None and elapsed >= 60 * cfg.max_minutes
            last = self.epoch >= cfg.epochs or out_of_time
            row: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "lr": self.lr_at(max(0, self.step - 1)),
                                   "train_loss": loss_sum / max(loss_n, 1)}
            if self.epoch % cfg.eval_every == 0 or last:
                valid = self.evaluate(self.task.valid, desc="valid")
                test = self.evaluate(self.task.test, desc="test") if self.task.test is not None else None
                row.update(valid=valid, test=test)
                if valid < self.best["valid"]:
                    self.best = {"epoch": self.epoch, "valid": valid, "test": test}
                    self.save_best()
                # wall time of training and evaluation so far (checkpoint writes excluded)
                now = self.train_seconds + time.perf_counter() - t0
                if (cfg.target_metric is not None and self.time_to_target is None and test is not None
                        and self.best["test"] is not None and self.best["test"] <= cfg.target_metric):
                    self.time_to_target = now
                bar.set_postfix({f"valid_{self.task.metric_name}": f"{valid:.5g}",
                                 f"best_test_{self.task.metric_name}": f"{self.best['test'] or float('nan'):.5g}"})
            self.train_seconds += time.perf_counter() - t0
            row.update(best_epoch=self.best["epoch"], best_valid=self.best["valid"], test_at_best=self.best["test"],
                       train_seconds=round(self.train_seconds, 3))
            self._append_log(row)
            if self.epoch % cfg.checkpoint_every == 0 or last:
                self.save("last")
            bar.update(1)
            if out_of_time:
                break
        inner.close()
        bar.close()
        cut = self.epoch < cfg.epochs
        if cut and self.rank == 0:
            print(f"egnn: note: the time cap (--max-minutes {cfg.max_minutes:g}) stopped the run after "
                  f"{self.epoch} of its {cfg.epochs} epochs: the learning-rate schedule was cut short, so the "
                  f"results are not the recipe's (continue with --resume and a larger cap)", file=sys.stderr)
        return FitResult(
            best_epoch=self.best["epoch"], best_valid=self.best["valid"], test_at_best=self.best["test"],
            epochs_done=self.epoch, train_seconds=self.train_seconds, time_to_target=self.time_to_target,
            history=self.history, epochs_planned=cfg.epochs, cut_by_time_cap=cut,
        )
