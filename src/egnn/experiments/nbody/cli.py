"""``egnn nbody generate | train | eval | rollout | table | sweep``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from egnn.experiments.cli import CLIError, add_trainer_arguments


def register(sub: argparse._SubParsersAction) -> None:
    from egnn.experiments.nbody.models import NBODY_MODELS
    from egnn.experiments.nbody.train import PRESETS

    g = sub.add_parser("generate", help="simulate the charged-particle data set (reference file layout)")
    g.add_argument("--out", required=True, help="directory for the .npy files")
    g.add_argument("--preset", default="small", choices=["small", "large"])
    g.add_argument("--num-train", type=int, default=None, help="override the number of training trajectories")
    g.add_argument("--seed", type=int, default=None, help="override the preset's seed (small: 43)")
    g.add_argument("--dim", type=int, default=3, help="spatial dimension n >= 2")
    g.add_argument("--particles", type=int, default=5, help="number of particles")
    g.set_defaults(func=_generate)

    t = sub.add_parser("train", help="train a model; test MSE at the best validation epoch")
    t.add_argument("--model", default="egnn", help=f"one of: {', '.join(NBODY_MODELS.names())}")
    t.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    t.add_argument("--data", default="data/nbody_small", help="directory of the generated data set")
    t.add_argument("--dataset", default="small", choices=["small", "large"])
    t.add_argument("--out", default=None, help="run directory (default runs/nbody_<model>_<preset>)")
    t.add_argument("--max-samples", type=int, default=3000, help="training trajectories used (paper: 3000)")
    add_trainer_arguments(t)
    t.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="test MSE and forward time (batch of 100) of a checkpoint")
    e.add_argument("checkpoint", help="path of a checkpoint (e.g. runs/x/best or runs/x/best.json)")
    e.add_argument("--data", default="data/nbody_small")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_eval)

    r = sub.add_parser("rollout", help="apply a model repeatedly (frame 30 -> 40 -> 50 ...) and plot")
    r.add_argument("checkpoint")
    r.add_argument("--data", default="data/nbody_small")
    r.add_argument("--index", type=int, default=0, help="test trajectory")
    r.add_argument("--start", type=int, default=30, help="first frame (the model was trained on 30 -> 40)")
    r.add_argument("--steps", type=int, default=1, help="number of model applications, 10 frames each")
    r.add_argument("--out", default="rollout.png")
    r.set_defaults(func=_rollout)

    from egnn.experiments.nbody.cli_baselines import register_baselines

    register_baselines(sub)


def _generate(args: argparse.Namespace) -> int:
    from egnn.experiments.nbody.simulate import generate_to_dir

    if args.dim < 2 or args.particles < 2:
        raise CLIError("--dim must be >= 2 and --particles >= 2")
    paths = generate_to_dir(args.out, preset=args.preset, num_train=args.num_train, seed=args.seed, dim=args.dim,
                            n_particles=args.particles, progress=True)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from egnn.checkpoint import CheckpointError
    from egnn.experiments.nbody.models import NBODY_MODELS
    from egnn.experiments.nbody.train import train_nbody

    if args.model not in NBODY_MODELS:
        raise CLIError(f"unknown model {args.model!r}; choose one of: {', '.join(NBODY_MODELS.names())}")
    if not Path(args.data).is_dir():
        raise CLIError(f"data directory {args.data!r} does not exist; create it with "
                       f"`egnn nbody generate --out {args.data}`")
    out = args.out or f"runs/nbody_{args.model}_{args.preset}"
    try:
        result = train_nbody(
            args.model, args.data, out, preset=args.preset, dataset=args.dataset, max_samples=args.max_samples,
            resume=args.resume, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
            max_minutes=args.max_minutes, device=args.device, compile=args.compile or None,
            progress=not args.no_progress,
        )
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    print(json.dumps(result.summary(), indent=1))
    print(f"test MSE at best validation epoch {result.best_epoch}: {result.test_at_best:.5f}  (run: {out})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from egnn.checkpoint import CheckpointError
    from egnn.experiments.nbody.train import evaluate_checkpoint

    try:
        res = evaluate_checkpoint(args.checkpoint, args.data, args.device)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    print(json.dumps(res, indent=1))
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from egnn.checkpoint import CheckpointError
    from egnn.experiments.nbody.files import load_split
    from egnn.experiments.nbody.models import NBODY_MODELS
    from egnn.experiments.nbody.train import load_model, plot_rollout, rollout

    try:
        model, meta = load_model(args.checkpoint)
        test = load_split(args.data, "test")
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    if not 0 <= args.index < test["loc"].shape[0]:
        raise CLIError(f"--index must be in [0, {test['loc'].shape[0]})")
    i = args.index
    last = args.start + 10 * args.steps
    if args.start < 0 or args.steps < 1 or last >= test["loc"].shape[1]:
        raise CLIError(f"frames {args.start} -> {last} are outside the {test['loc'].shape[1]} stored frames")
    pred, true = rollout(model, NBODY_MODELS.get(meta["model"]).predict, test["loc"][i], test["vel"][i],
                         test["charges"][i], start=args.start, n_steps=args.steps)
    plot_rollout(pred, true, args.out, f"{meta['model']}: test trajectory {i}, frames {args.start} -> {last}")
    err = ((pred[1:] - true[1:]) ** 2).mean(dim=(1, 2)).tolist()
    print(f"MSE per step: {[round(e, 5) for e in err]}; plot: {args.out}")
    return 0
