"""The training loop shared by every experiment: Adam, the learning-rate schedule, weight averaging, evaluation
at the best validation epoch, and data parallelism over ``torchrun`` processes (DDP).

Determinism: the samples of each global batch depend only on ``(seed, epoch)`` (:mod:`.distributed`), the
learning rate only on the step, and the loss is normalised by counts summed over all ranks, so N processes
take the same steps as one (to float rounding) and a run killed and resumed — with the same or another N —
continues as if it had not stopped.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from egnn.experiments.training.distributed import (
    RankError,
    all_reduce_sum,
    broadcast_object,
    epoch_order,
    global_batches,
    global_loss,
    init_distributed,
    peer_lost,
    rank_share,
    reduce_device,
    resolve_device,
)
from egnn.experiments.training.evaluation import evaluate_split
from egnn.experiments.training.state import RunState, warm_ema
from egnn.experiments.training.task import (
    DataSplit,
    FitResult,
    LossTerms,
    Task,
    TrainConfig,
    as_terms,
    iter_batches,
    learning_rate,
)


class Trainer:
    """Train ``model`` on ``task``; writes ``log.csv``, ``last.*`` and ``best.*`` checkpoints in ``out_dir``
    (rank 0 only). ``meta`` (JSON-able) is stored in every checkpoint and checked on resume."""

    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, out_dir: str | Path,
                 meta: dict[str, Any]) -> None:
        self.cfg, self.task, self.out, self.meta = cfg, task, Path(out_dir), meta
        self.rank, self.world = init_distributed()
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        # fused: one kernel for the whole update instead of several per parameter (same update, other rounding)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.ema = (torch.optim.swa_utils.AveragedModel(self.model, multi_avg_fn=warm_ema(cfg.ema_decay))
                    if cfg.ema_decay else None)
        self.state = RunState(self.out, self.model, self.opt, self.ema, cfg, meta, self.rank)
        self.train_model: nn.Module = task.wrap(self.model) if task.wrap is not None else self.model
        if self.world > 1:
            # a [1, k] weight's gradient comes out of the matmul as [k, 1]-strided: DDP copies it into its bucket
            # (a few bytes) and says so once per process; not worth a line on every rank's stderr
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            ids = [self.device.index] if self.device.type == "cuda" else None
            # some models leave parameters unused by the loss (e.g. the last node MLP when only positions count):
            # DDP must then search the autograd graph for them every step; the others skip that traversal
            unused = task.unused_parameters
            self.find_unused = self._unused_parameters() if unused is None else unused
            self.train_model = nn.parallel.DistributedDataParallel(self.train_model, device_ids=ids,
                                                                   find_unused_parameters=self.find_unused)
        if cfg.compile:
            # one graph for every batch size: node and edge counts are marked dynamic from the first call
            self.train_model = torch.compile(self.train_model, dynamic=True)
        self._steps_per_epoch = len(global_batches(torch.arange(len(task.train)), cfg.batch_size))

    def _unused_parameters(self) -> bool:
        """Whether the loss of this rank's share of the first global batch leaves some parameter without a
        gradient, on any rank (a function of the model and the data, not of the timing; the RNG state is restored,
        so the run takes the same course as without this check)."""
        first = global_batches(epoch_order(len(self.task.train), self.cfg.seed, 0), self.cfg.batch_size)[0]
        share = rank_share(first, self.rank, self.world)
        (batch,) = list(iter_batches(self.task.train, [share if share.numel() else first[:1]], self.device))
        params = [p for p in self.model.parameters() if p.requires_grad]
        was_training = self.model.training
        self.model.train()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            out = self.task.loss(self.train_model, batch)
            loss = sum(w * t for w, t in zip(out.weights, out.sums)) if isinstance(out, LossTerms) else out
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        self.model.train(was_training)
        unused = torch.tensor([float(any(g is None for g in grads))], device=reduce_device(self.device))
        return bool(all_reduce_sum(unused).item() > 0)

    # --- progress counters live in the run state ----------------------------------------------------------------
    epoch = property(lambda self: self.state.epoch)
    step = property(lambda self: self.state.step)
    best = property(lambda self: self.state.best)
    history = property(lambda self: self.state.history)

    def steps_per_epoch(self) -> int:
        return self._steps_per_epoch

    def lr_at(self, step: int) -> float:
        return learning_rate(self.cfg, step, self.cfg.epochs * self._steps_per_epoch)

    def eval_model(self) -> nn.Module:
        return self.state.eval_model()

    def evaluate(self, split: DataSplit, model: nn.Module | None = None, desc: str = "eval") -> float:
        return evaluate_split(self.task, split, model or self.eval_model(), self.device, self.cfg.eval_batch_size,
                              progress=self.cfg.progress and self.rank == 0, desc=desc,
                              budget=self.cfg.eval_batch_budget)

    def save(self, name: str) -> None:
        self.state.save(name)

    def resume(self) -> None:
        """Load ``out_dir/last`` (written by a run with the same meta and settings, any number of ranks)."""
        self.state.resume(self.device)

    # --- one step ---------------------------------------------------------------------------------------------
    def _loss(self, batch: Any, share: int) -> tuple[Tensor, float]:
        """The loss to differentiate on this rank and the global batch's loss (for the log)."""
        out = self.task.loss(self.train_model, batch)
        if self.world == 1 and not isinstance(out, LossTerms):
            return out, float(out.detach())
        return global_loss(as_terms(out, max(share, 1)), share, self.world, reduce_device(self.device))

    def _train_epoch(self, inner: Any) -> float:
        cfg = self.cfg
        batches = global_batches(epoch_order(len(self.task.train), cfg.seed, self.epoch), cfg.batch_size)
        shares = [rank_share(b, self.rank, self.world) for b in batches]
        loss_sum, loss_n = 0.0, 0
        reads = [s if s.numel() else b[:1] for s, b in zip(shares, batches)]
        for share, full, batch in zip(shares, batches, iter_batches(self.task.train, reads, self.device)):
            for group in self.opt.param_groups:
                group["lr"] = self.lr_at(self.step)
            self.opt.zero_grad(set_to_none=True)
            loss, value = self._loss(batch, int(share.numel()))
            if not math.isfinite(value):  # stop before a bad step reaches the weights (every rank sees it)
                raise FloatingPointError(
                    f"training loss became {value} at step {self.step + 1} (epoch {self.epoch + 1}); "
                    f"last good checkpoint: {self.out / 'last'}; try a lower lr or the tanh/normalize options")
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.state.step += 1
            loss_sum += value * full.numel()
            loss_n += full.numel()
            inner.update(1)
        return loss_sum / max(loss_n, 1)

    # --- the loop -----------------------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train to ``cfg.epochs`` (from the resumed epoch); under ``torchrun``, a peer lost inside DDP's own
        gradient reduction becomes :class:`~egnn.experiments.training.distributed.RankError` (one line)."""
        try:
            return self._fit()
        except (torch.distributed.DistError, RuntimeError) as err:
            # gloo reports a peer lost inside DDP's gradient reduction (in ``loss.backward()``) as a RuntimeError
            if not (isinstance(err, torch.distributed.DistError) or (self.world > 1 and peer_lost(err))):
                raise
            raise RankError(f"rank {self.rank}: another rank stopped or did not answer in time "
                            f"({(str(err).strip().splitlines() or [''])[0][:200]})") from None

    def _fit(self) -> FitResult:
        from tqdm.auto import tqdm

        cfg, st = self.cfg, self.state
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        show = cfg.progress and self.rank == 0
        bar = tqdm(total=cfg.epochs, initial=st.epoch, disable=not show, desc="train", unit="ep", dynamic_ncols=True)
        # a second bar inside long epochs (more than a few dozen steps), refreshed at most 10 times a second
        inner = tqdm(total=self._steps_per_epoch, disable=not show or self._steps_per_epoch < 50, leave=False,
                     desc="epoch", unit="step", dynamic_ncols=True, mininterval=0.1)
        self.model.train()
        while st.epoch < cfg.epochs:
            t0 = time.perf_counter()
            inner.reset()
            inner.set_description(f"epoch {st.epoch + 1}")
            train_loss = self._train_epoch(inner)
            st.epoch += 1
            elapsed = st.train_seconds + time.perf_counter() - t0
            # every rank must stop at the same epoch: rank 0's clock decides
            out_of_time = cfg.max_minutes is not None and broadcast_object(elapsed >= 60 * cfg.max_minutes)
            last = st.epoch >= cfg.epochs or out_of_time
            row: dict[str, Any] = {"epoch": st.epoch, "step": st.step, "lr": self.lr_at(max(0, st.step - 1)),
                                   "train_loss": train_loss}
            if st.epoch % cfg.eval_every == 0 or last:
                self._evaluate_epoch(row, t0, bar)
            st.train_seconds += time.perf_counter() - t0
            row.update(best_epoch=st.best["epoch"], best_valid=st.best["valid"], test_at_best=st.best["test"],
                       train_seconds=round(st.train_seconds, 3))
            st.log(row)
            if st.epoch % cfg.checkpoint_every == 0 or last:
                st.save("last")
            bar.update(1)
            if out_of_time:
                break
        inner.close()
        bar.close()
        cut = st.epoch < cfg.epochs
        if cut and self.rank == 0:
            print(f"egnn: note: the time cap (--max-minutes {cfg.max_minutes:g}) stopped the run after "
                  f"{st.epoch} of its {cfg.epochs} epochs: the learning-rate schedule was cut short, so the "
                  f"results are not the recipe's (continue with --resume and a larger cap)", file=sys.stderr)
        return FitResult(best_epoch=st.best["epoch"], best_valid=st.best["valid"], test_at_best=st.best["test"],
                         epochs_done=st.epoch, train_seconds=st.train_seconds, time_to_target=st.time_to_target,
                         history=st.history, epochs_planned=cfg.epochs, cut_by_time_cap=cut)

    def _evaluate_epoch(self, row: dict[str, Any], t0: float, bar: Any) -> None:
        cfg, st, name = self.cfg, self.state, self.task.metric_name
        valid = self.evaluate(self.task.valid, desc="valid")
        test = self.evaluate(self.task.test, desc="test") if self.task.test is not None else None
        row.update(valid=valid, test=test)
        if valid < st.best["valid"]:
            st.best = {"epoch": st.epoch, "valid": valid, "test": test}
            st.save_best()
        # wall time of training and evaluation so far (checkpoint writes excluded)
        now = st.train_seconds + time.perf_counter() - t0
        if (cfg.target_metric is not None and st.time_to_target is None and test is not None
                and st.best["test"] is not None and st.best["test"] <= cfg.target_metric):
            st.time_to_target = now
        best_test = st.best["test"] if st.best["test"] is not None else float("nan")
        bar.set_postfix({f"valid_{name}": f"{valid:.5g}", f"best_test_{name}": f"{best_test:.5g}"})
