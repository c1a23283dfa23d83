"""``make demo`` / ``egnn demo``: the main job on a small built-in default.

Generates the paper's seed-43 ``nbody_small`` data set (about 30 s), trains the paper's velocity EGNN with
our quick recipe (a fixed 200 epochs, a few minutes on 2 CPU cores) on 3000 trajectories, then reports the
test MSE at the best validation epoch, the forward time per batch of 100, the float64 equivariance error of the
trained model, and writes the training curve and a rollout plot.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from egnn.experiments.nbody.files import load_split, split_file_names
from egnn.experiments.nbody.models import NBODY_MODELS
from egnn.experiments.nbody.train import (
    evaluate_checkpoint,
    load_model,
    plot_rollout,
    rollout,
    train_nbody,
)
from egnn.experiments.run import RunFolder, code_version
from egnn.testing import assert_equivariant


def _fresh_run_folder(out: Path) -> Path:
    """``out/egnn``, or ``out/egnn-2``, ``-3`` ... when an earlier demo's run is there (it is kept, never
    deleted or overwritten)."""
    run, k = out / "egnn", 1
    while run.exists() and (RunFolder(run).holds_run() or not run.is_dir()):
        k += 1
        run = out / f"egnn-{k}"
    return run


def run_demo(out: str | Path = "runs/demo", epochs: int | None = None, max_minutes: float | None = None) -> int:
    """The demo; ``epochs`` overrides the recipe's, ``max_minutes`` only caps training (and is reported)."""
    t_start = time.perf_counter()
    out = Path(out)
    data = out / "data"
    if not all((data / n).is_file() for n in split_file_names("test").values()) or not (
        data / split_file_names("train")["loc"]
    ).is_file():
        from egnn.experiments.nbody.simulate import generate_to_dir

        print(f"[1/4] generating the nbody_small data set (seed 43) in {data} ...")
        generate_to_dir(data, preset="small", progress=True)
    else:
        print(f"[1/4] using the data set in {data}")
    run = _fresh_run_folder(out)
    cap = f", capped at {max_minutes:g} min" if max_minutes else ""
    print(f"[2/4] training EGNN (demo preset, {epochs or 'its'} epochs{cap}) in {run} ...")
    result = train_nbody("egnn", data, run, preset="demo", epochs=epochs, max_minutes=max_minutes)
    print("[3/4] evaluating the best-validation checkpoint ...")
    ev = evaluate_checkpoint(run / "best", data)
    model, _ = load_model(run / "best")
    predict = NBODY_MODELS.get("egnn").predict
    model64 = model.double()
    from egnn.experiments.nbody.data import NBodySplit, edge_features

    test = load_split(data, "test")
    split = NBodySplit(test["loc"], test["vel"], test["charges"], 30, 40, max_samples=20, dtype=torch.float64)
    b = split.get(torch.arange(20))

    def fn(pos, vel, h, edge_index, edge_q, batch):
        return {"pos": model64(h, pos, edge_index, edge_features(pos, edge_index, edge_q), vel).pos}

    errors = assert_equivariant(
        fn, {"pos": b.pos, "vel": b.vel, "h": b.h, "edge_index": b.edge_index, "edge_q": b.edge_attr[:, :1],
             "batch": b.batch}, {"pos": "position"},
    )
    print("[4/4] plotting a rollout ...")
    model32 = model64.float()
    # four applications, frame 8 -> 18 -> 28 -> 38 -> 48 (the dynamics do not depend on the start time)
    pred, true = rollout(model32, predict, test["loc"][0], test["vel"][0], test["charges"][0], start=8, n_steps=4)
    plot_rollout(pred, true, run / "rollout.png", "EGNN rollout: test trajectory 0, frames 8 -> 48")
    step_mse = ((pred[1:] - true[1:]) ** 2).mean(dim=(1, 2)).tolist()
    total = time.perf_counter() - t_start
    print()
    print(f"  {code_version()}")
    print(f"  test MSE at best validation epoch ({result.best_epoch} of {result.epochs_done}): "
          f"{result.test_at_best:.5f}   (paper EGNN: 0.0071; trained {result.train_seconds:.0f} s)")
    if result.cut_by_time_cap:
        print(f"  NOTE: --max-minutes stopped training after {result.epochs_done} of {result.epochs_planned} epochs;"
              f" this is not the recipe's result")
    print(f"  forward time, batch of 100: {ev['forward_ms']:.2f} ms   parameters: {ev['parameters']}")
    print(f"  equivariance error of the trained model (float64, O(3) + translation + permutation): "
          f"{errors['pos']:.2e}")
    print(f"  rollout MSE after 1, 2, 3, 4 applications: {', '.join(f'{e:.4f}' for e in step_mse)}")
    print(f"  plots: {run / 'training_curve.png'}, {run / 'rollout.png'}   log: {run / 'log.csv'}")
    print(f"  demo wall time: {total:.0f} s")
    return 0
