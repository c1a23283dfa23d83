"""``egnn nbody generate | train | eval | rollout | table | sweep``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from egnn.experiments.commands import (
    CLIError,
    add_command,
    add_trainer_arguments,
    checkpoint_arg,
    existing_folder,
    int_in,
    nonnegative_int,
    out_file,
    out_folder,
    positive_int,
    seed_int,
    trainer_overrides,
)


def register(sub: argparse._SubParsersAction) -> None:
    from egnn.experiments.nbody.models import NBODY_MODELS
    from egnn.experiments.nbody.train import PRESETS

    g = add_command(sub, "generate", _generate, "simulate the charged-particle data set (reference file layout)",
                    progress=True)
    g.add_argument("--out", required=True, type=out_folder, help="folder for the .npy files")
    g.add_argument("--preset", default="small", choices=["small", "large"],
                   help="small: the paper's seed-43 nbody_small set; large: the sweep's training set")
    g.add_argument("--num-train", type=positive_int, default=None,
                   help="override the number of training trajectories")
    g.add_argument("--num-valid", type=positive_int, default=None,
                   help="override the number of validation trajectories (default 2000)")
    g.add_argument("--num-test", type=positive_int, default=None,
                   help="override the number of test trajectories (default 2000)")
    g.add_argument("--seed", type=seed_int, default=None, help="override the preset's seed (small: 43)")
    g.add_argument("--dim", type=int_in(2, 16, "a dimension in [2, 16]"), default=3, help="spatial dimension n")
    g.add_argument("--particles", type=int_in(2, 1000, "a particle count in [2, 1000]"), default=5,
                   help="number of particles")

    t = add_command(sub, "train", _train, "train a model; test MSE at the best validation epoch")
    t.add_argument("--model", default="egnn", choices=NBODY_MODELS.names(), help="model (default: egnn)")
    t.add_argument("--preset", default="quick", choices=PRESETS.names(), help="training recipe (default: quick)")
    t.add_argument("--data", default="data/nbody_small", help="folder of the generated data set")
    t.add_argument("--dataset", default="small", choices=["small", "large"], help="which generated set --data holds")
    t.add_argument("--out", type=out_folder, default=None, help="run folder (default runs/nbody_<model>_<preset>)")
    t.add_argument("--max-samples", type=positive_int, default=3000,
                   help="training trajectories used (paper: 3000)")
    add_trainer_arguments(t)

    e = add_command(sub, "eval", _eval, "test MSE and forward time (batch of 100) of a run or checkpoint",
                    device=True, progress=True)
    e.add_argument("checkpoint", type=checkpoint_arg, help="run folder (its best checkpoint) or checkpoint path")
    e.add_argument("--data", default="data/nbody_small", type=existing_folder, help="folder of the data set")

    r = add_command(sub, "rollout", _rollout, "apply a model repeatedly (frame 30 -> 40 -> 50 ...) and plot")
    r.add_argument("checkpoint", type=checkpoint_arg, help="run folder (its best checkpoint) or checkpoint path")
    r.add_argument("--data", default="data/nbody_small", type=existing_folder, help="folder of the data set")
    r.add_argument("--index", type=nonnegative_int, default=0, help="test trajectory")
    r.add_argument("--start", type=nonnegative_int, default=30,
                   help="first frame (the model was trained on 30 -> 40)")
    r.add_argument("--steps", type=positive_int, default=1, help="number of model applications, 10 frames each")
    r.add_argument("--out", type=out_file, default="rollout.png", help="the plot (PNG)")

    from egnn.experiments.nbody.cli_baselines import register_baselines

    register_baselines(sub)


def _generate(args: argparse.Namespace) -> int:
    from egnn.experiments.nbody.simulate import generate_to_dir

    paths = generate_to_dir(args.out, preset=args.preset, num_train=args.num_train, seed=args.seed, dim=args.dim,
                            n_particles=args.particles, progress=not args.no_progress, num_valid=args.num_valid,
                            num_test=args.num_test)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from egnn.experiments.nbody.train import train_nbody
    from egnn.experiments.training.distributed import agree

    def check_data() -> None:  # under torchrun: said once, by the lowest rank that lacks the folder
        if not Path(args.data).is_dir():
            raise CLIError(f"data folder {args.data!r} does not exist; create it with "
                           f"`egnn nbody generate --out {args.data}`")

    agree(check_data)
    out = args.out or f"runs/nbody_{args.model}_{args.preset}"
    result = train_nbody(args.model, args.data, out, preset=args.preset, dataset=args.dataset,
                         max_samples=args.max_samples, resume=args.resume, **trainer_overrides(args))
    print(json.dumps(result.summary(), indent=1))
    test = f"{result.test_at_best:.5f}" if result.test_at_best is not None else "n/a"
    print(f"test MSE at best validation epoch {result.best_epoch}: {test}  (run: {out})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from egnn.experiments.nbody.train import evaluate_checkpoint

    res = evaluate_checkpoint(args.checkpoint, args.data, args.device, progress=not args.no_progress)
    print(json.dumps(res, indent=1, allow_nan=False))
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from egnn.experiments.nbody.files import load_split
    from egnn.experiments.nbody.models import NBODY_MODELS
    from egnn.experiments.nbody.train import load_model, plot_rollout, rollout

    model, meta = load_model(args.checkpoint)
    test = load_split(args.data, "test")
    if args.index >= test["loc"].shape[0]:
        raise CLIError(f"--index must be in [0, {test['loc'].shape[0]})")
    i = args.index
    last = args.start + 10 * args.steps
    if last >= test["loc"].shape[1]:
        raise CLIError(f"frames {args.start} -> {last} are outside the {test['loc'].shape[1]} stored frames")
    pred, true = rollout(model, NBODY_MODELS.get(meta["model"]).predict, test["loc"][i], test["vel"][i],
                         test["charges"][i], start=args.start, n_steps=args.steps)
    plot_rollout(pred, true, args.out, f"{meta['model']}: test trajectory {i}, frames {args.start} -> {last}")
    err = ((pred[1:] - true[1:]) ** 2).mean(dim=(1, 2)).tolist()
    print(f"MSE per step: {[round(e, 5) for e in err]}; plot: {args.out}")
    return 0
