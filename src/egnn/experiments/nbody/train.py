"""Training, evaluation and rollout of N-body models on the shared trainer."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from egnn.experiments.nbody.data import FRAMES, NBodyBatch, NBodySplit, edge_features, load_nbody
from egnn.experiments.nbody.files import split_file_names
from egnn.experiments.nbody.models import NBODY_MODELS
from egnn.experiments.plots import plot_training_curve, pyplot
from egnn.experiments.registry import Registry
from egnn.experiments.run import LRRule, Preset, fingerprint_files, load_trained, train_run
from egnn.experiments.trainer import FitResult, Task, TrainConfig, evaluate_split, resolve_device
from egnn.experiments.training.distributed import agree

# Training presets. ``paper``: the reference repository's N-body settings (README of vgsatorras/egnn:
# batch 100, 10000 epochs, weight decay 1e-12, evaluation every 5 epochs, the model's own lr, 3000 samples).
# ``quick``: our faster recipe (4x the model's lr with cosine decay and weight averaging), measured in the
# README. ``demo``: the same recipe (a fixed 200 epochs), what ``egnn demo`` runs.
_QUICK = {"epochs": 200, "batch_size": 100, "weight_decay": 1e-12, "eval_every": 5, "schedule": "cosine",
          "warmup_steps": 100, "ema_decay": 0.99}
PRESETS: Registry[Preset] = Registry("N-body preset")
PRESETS.add("paper", Preset(
    "the reference's: 10000 epochs, batch 100, constant lr (the model's paper lr), evaluation every 5 epochs",
    {"epochs": 10000, "batch_size": 100, "weight_decay": 1e-12, "eval_every": 5, "schedule": "constant"}))
PRESETS.add("quick", Preset("200 epochs, 4x the paper lr with warm-up and cosine decay, EMA 0.99 of the weights",
                            _QUICK, LRRule(scale=4.0)))
PRESETS.add("demo", Preset("the quick recipe (200 epochs), run by egnn demo", _QUICK, LRRule(scale=4.0)))


def make_task(splits: dict[str, NBodySplit], predict) -> Task:
    def loss(model: nn.Module, b: NBodyBatch) -> Tensor:
        return torch.nn.functional.mse_loss(predict(model, b), b.target)

    def metric(model: nn.Module, b: NBodyBatch) -> tuple[Tensor, int]:
        # per-system MSE summed: the mean over a split equals the reference's element-wise MSE
        mse = torch.nn.functional.mse_loss(predict(model, b), b.target)
        return mse * b.num_graphs, b.num_graphs

    return Task(splits["train"], splits["valid"], splits["test"], loss, metric, "mse")


def train_config_for(model_name: str, preset: str, **overrides: Any) -> TrainConfig:
    """The preset's settings with the model's lr; ``None`` overrides mean "not given" (so to switch weight
    averaging off pass ``ema_decay=0``)."""
    return PRESETS.get(preset).train_config(NBODY_MODELS.get(model_name).lr, model_name, **overrides)


def data_fingerprint(data_dir: str | Path, dataset: str = "small",
                     valid_test_from: str | Path | None = None) -> str:
    """Content hash of the files a run reads (training split of ``dataset``, valid/test of the same or of
    ``valid_test_from``)."""
    suffix = FRAMES[dataset][0]
    vt_dir, vt_suffix = (data_dir, suffix) if valid_test_from is None else (valid_test_from, FRAMES["small"][0])
    paths = [Path(data_dir) / n for n in split_file_names("train", suffix=suffix).values()]
    for split in ("valid", "test"):
        paths += [Path(vt_dir) / n for n in split_file_names(split, suffix=vt_suffix).values()]
    return fingerprint_files(paths)


def train_nbody(
    model_name: str,
    data_dir: str | Path,
    out_dir: str | Path,
    preset: str = "paper",
    dataset: str = "small",
    max_samples: int | None = 3000,
    hparams: dict[str, Any] | None = None,
    resume: bool = False,
    valid_test_from: str | Path | None = None,
    **train_overrides: Any,
) -> FitResult:
    """Train ``model_name`` in the run folder ``out_dir`` and return the fit summary (test MSE at the best
    validation epoch). ``resume`` continues the run there (see :meth:`egnn.experiments.run.RunFolder.begin`)."""
    spec = NBODY_MODELS.get(model_name)
    cfg = train_config_for(model_name, preset, **train_overrides)
    hp = {**spec.hparams, **(hparams or {})}
    # under torchrun a missing or bad data set is reported once, by the lowest rank that met it
    splits = agree(lambda: load_nbody(data_dir, dataset, max_samples=max_samples, valid_test_from=valid_test_from))
    torch.manual_seed(cfg.seed)
    model = spec.build(**hp)
    identity = {"experiment": "nbody", "model": model_name, "hparams": hp, "dataset": dataset,
                "max_samples": max_samples, "preset": preset,
                "data": data_fingerprint(data_dir, dataset, valid_test_from)}
    result, trainer = train_run(model, make_task(splits, spec.predict), cfg, out_dir, identity, resume)
    if trainer.rank == 0:
        out = Path(out_dir)
        refs = {f"paper {model_name} {spec.paper_mse}": spec.paper_mse} if spec.paper_mse else None
        plot_training_curve(out / "log.csv", out / "training_curve.png", metric="MSE", references=refs,
                            title=f"N-body, {model_name} ({preset})")
    return result


def _build_from_meta(meta: dict[str, Any]) -> nn.Module:
    return NBODY_MODELS.get(meta["model"]).build(**meta["hparams"])


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Model and meta from a run folder (its ``best``) or a checkpoint written by :func:`train_nbody`."""
    return load_trained(checkpoint, "nbody", _build_from_meta, device, what="an N-body checkpoint")


@torch.no_grad()
def forward_time_ms(model: nn.Module, predict, split: NBodySplit, device: torch.device, batch_size: int = 100,
                    warmup: int = 5, repeats: int = 30) -> float:
    """Median wall time of one forward pass on a batch of ``batch_size`` systems (Table 2's measure)."""
    model.eval()
    n = len(split)
    times = []
    for r in range(warmup + repeats):
        start = (r * batch_size) % max(1, n - batch_size + 1)
        b = split.get(torch.arange(start, min(n, start + batch_size)), device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        predict(model, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if r >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, device: str = "auto",
                        progress: bool = False) -> dict[str, Any]:
    """Test MSE and forward time of a run folder (its ``best``) or checkpoint on the data in ``data_dir``."""
    dev = resolve_device(device)
    model, meta = load_model(checkpoint, dev)
    spec = NBODY_MODELS.get(meta["model"])
    splits = load_nbody(data_dir, meta.get("dataset", "small"), max_samples=meta.get("max_samples"))
    test_mse = evaluate_split(make_task(splits, spec.predict), splits["test"], model, dev, progress=progress,
                              desc="test")
    fwd = forward_time_ms(model, spec.predict, splits["test"], dev)
    return {"model": meta["model"], "epoch": meta.get("epoch"), "test_mse": test_mse, "forward_ms": fwd,
            "parameters": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def rollout(model: nn.Module, predict, loc, vel, charges, start: int = 30, step: int = 10, n_steps: int = 1,
            frame_dt: float = 0.1, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Apply the model repeatedly, frame ``start`` -> ``start + step`` -> ...; the velocity fed to each
    application is the finite difference of the last two positions over ``step * frame_dt`` time units
    (``frame_dt`` = sample_freq * dt = 0.1 for the ``small`` set; the model only predicts positions); the
    first one is the true velocity.

    Returns ``(predicted, true)`` positions of shape ``[n_steps + 1, M, n]`` (index 0 = the start frame).
    """
    dev = torch.device(device)
    split = NBodySplit(loc[None], vel[None], charges[None], start, start)
    b = split.get(torch.arange(1), dev)
    true = [torch.as_tensor(loc[start + k * step].T, dtype=torch.float32) for k in range(n_steps + 1)
            if start + k * step < loc.shape[0]]
    preds = [b.pos.cpu()]
    pos, v = b.pos, b.vel
    for _ in range(len(true) - 1):
        batch = NBodyBatch(h=v.norm(dim=-1, keepdim=True), pos=pos, vel=v, charges=b.charges,
                           edge_index=b.edge_index, edge_attr=edge_features(pos, b.edge_index, b.edge_attr[:, :1]),
                           target=pos, batch=b.batch, num_graphs=1, n_particles=b.n_particles)
        new = predict(model, batch)
        v = (new - pos) / (step * frame_dt)  # finite-difference velocity for the next application
        pos = new
        preds.append(pos.cpu())
    return torch.stack(preds), torch.stack(true)


def plot_rollout(pred: Tensor, true: Tensor, out_png: str | Path, title: str = "") -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 5))
    for p in range(pred.shape[1]):
        color = f"C{p}"
        ax.plot(true[:, p, 0], true[:, p, 1], "-o", color=color, ms=3, label="true" if p == 0 else None)
        ax.plot(pred[:, p, 0], pred[:, p, 1], "--x", color=color, ms=4, label="predicted" if p == 0 else None)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title or "N-body rollout (projection on x-y)")
    ax.legend()
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
