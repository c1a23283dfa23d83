"""The state a run keeps in its folder: ``last`` (everything to resume exactly), ``best`` (the weights used for
evaluation at the best validation epoch) and ``log.csv`` (one row per epoch, rewritten from the checkpoint on
resume). Only rank 0 writes; the other ranks never touch the run folder."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

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
from egnn.experiments.training.task import RESUME_FREE, TrainConfig

LOG_FIELDS = ["epoch", "step", "lr", "train_loss", "valid", "test", "best_epoch", "best_valid", "test_at_best",
              "train_seconds"]


class RunState:
    """Progress counters, best epoch and history of a run, and the modules and optimizer whose state it saves.

    Args:
        out: the run folder.
        model, optimizer, ema: what a checkpoint holds (``ema`` an ``AveragedModel`` or ``None``).
        cfg: the optimisation settings (checked on resume).
        meta: JSON-able run description stored in every checkpoint and checked on resume.
        rank: this process's rank (only rank 0 writes).
    """

    def __init__(self, out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 ema: torch.optim.swa_utils.AveragedModel | None, cfg: TrainConfig, meta: dict[str, Any],
                 rank: int) -> None:
        self.out, self.model, self.opt, self.ema, self.cfg, self.meta, self.rank = (
            out, model, optimizer, ema, cfg, meta, rank)
        self.epoch = 0
        self.step = 0
        self.train_seconds = 0.0
        self.best: dict[str, Any] = {"epoch": -1, "valid": float("inf"), "test": None}
        self.time_to_target: float | None = None
        self.history: list[dict[str, Any]] = []

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # --- checkpoints ------------------------------------------------------------------------------------------
    def _tree(self) -> dict[str, Any]:
        # the torch RNG state too: models that sample noise in forward (e.g. the autoencoders) resume exactly
        tree: dict[str, Any] = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                                "torch_rng": torch.get_rng_state()}
        if self.ema is not None:
            tree["ema"] = self.ema.state_dict()
        return tree

    def _meta(self) -> dict[str, Any]:
        return {**self.meta, "train_config": asdict(self.cfg), "epoch": self.epoch, "step": self.step,
                "train_seconds": self.train_seconds, "best": self.best, "time_to_target": self.time_to_target,
                "history": self.history}

    def save(self, name: str) -> None:
        if self.rank == 0:
            save_checkpoint(self.out / name, self._tree(), self._meta())

    def save_best(self) -> None:
        """Weights used for evaluation (EMA if on) as a stand-alone model checkpoint."""
        if self.rank == 0:
            meta = {**self._meta(), "weights": "ema" if self.ema is not None else "model"}
            save_checkpoint(self.out / "best", {"model": self.eval_model().state_dict()}, meta)

    def resume(self, device: torch.device) -> None:
        """Load ``out/last``; the run's meta and optimisation settings must match (any number of ranks)."""
        tree, meta = load_checkpoint(self.out / "last", map_location=device)
        for key, value in self.meta.items():
            if meta.get(key) != value:
                raise CheckpointError(
                    f"checkpoint in {self.out} was made with {key}={json.dumps(meta.get(key))}, "
                    f"not {json.dumps(value)}; use another --out or the same settings")
        saved = TrainConfig.from_dict(meta.get("train_config", {}))
        diffs = [f.name for f in fields(TrainConfig) if f.name not in RESUME_FREE
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
            # regenerated from the checkpoint, so rows after it (from a killed run) and a torn last line are dropped
            atomic_write(self.out / "log.csv", _csv(self.history, header=True))

    # --- log ----------------------------------------------------------------------------------------------------
    def log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.rank == 0:
            path = self.out / "log.csv"
            append_text(path, _csv([row], header=not path.exists()))


def warm_ema(decay: float):
    """EMA whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so short runs are
    not dominated by the initial weights."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


def _csv(rows: list[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS)
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
