"""``egnn ae train | table | overfit``: the graph autoencoder experiment (paper Section 5.2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from egnn.experiments.cli import CLIError, add_trainer_arguments


def register(sub: argparse._SubParsersAction) -> None:
    from egnn.experiments.ae.datasets import AE_DATASETS
    from egnn.experiments.ae.models import AE_MODELS
    from egnn.experiments.ae.train import OVERFIT_P, OVERFIT_PRESETS, PRESETS

    t = sub.add_parser("train", help="train one autoencoder; test BCE / %% error / F1 at the best validation epoch")
    t.add_argument("--model", default="egnn", help=f"one of: {', '.join(AE_MODELS.names())}")
    t.add_argument("--dataset", default="community", help=f"one of: {', '.join(AE_DATASETS.names())}")
    t.add_argument("--preset", default="quick", help=f"one of: {', '.join(sorted(PRESETS))}")
    t.add_argument("--out", default=None, help="run directory (default runs/ae_<dataset>_<model>_<preset>)")
    add_trainer_arguments(t)
    t.set_defaults(func=_train)

    tb = sub.add_parser("table", help="train the four models on both data sets; print the table next to the paper's")
    tb.add_argument("--preset", default="quick", help=f"one of: {', '.join(sorted(PRESETS))}")
    tb.add_argument("--out", default=None, help="root directory of the runs (default runs/ae_table_<preset>)")
    tb.add_argument("--models", default=",".join(AE_MODELS.names()), help="comma-separated model names")
    tb.add_argument("--datasets", default=",".join(AE_DATASETS.names()), help="comma-separated data set names")
    tb.add_argument("--device", default="auto")
    tb.add_argument("--no-progress", action="store_true")
    tb.set_defaults(func=_table)

    o = sub.add_parser("overfit", help="F1 vs edge probability p when overfitting 100 Erdos-Renyi graphs (plot)")
    o.add_argument("--preset", default="quick", help=f"one of: {', '.join(sorted(OVERFIT_PRESETS))}")
    o.add_argument("--out", default=None, help="root directory (default runs/ae_overfit_<preset>)")
    o.add_argument("--p", default=",".join(f"{p:g}" for p in OVERFIT_P), help="comma-separated edge probabilities")
    o.add_argument("--models", default="gnn,noise_gnn,egnn", help="comma-separated model names")
    o.add_argument("--epochs", type=int, default=None)
    o.add_argument("--device", default="auto")
    o.add_argument("--no-progress", action="store_true")
    o.set_defaults(func=_overfit)


def _check_names(value: str, registry, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise CLIError(f"no {what} given")
    for name in names:
        if name not in registry:
            raise CLIError(f"unknown {what} {name!r}; choose one of: {', '.join(registry.names())}")
    return names


def _check_preset(preset: str, presets: dict) -> None:
    if preset not in presets:
        raise CLIError(f"unknown preset {preset!r}; choose one of: {', '.join(sorted(presets))}")


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise CLIError(f"{name} must be positive, got {value}")


def _train(args: argparse.Namespace) -> int:
    from egnn.checkpoint import CheckpointError
    from egnn.experiments.ae.datasets import AE_DATASETS
    from egnn.experiments.ae.models import AE_MODELS
    from egnn.experiments.ae.train import PRESETS, train_ae

    if args.model not in AE_MODELS:
        raise CLIError(f"unknown model {args.model!r}; choose one of: {', '.join(AE_MODELS.names())}")
    if args.dataset not in AE_DATASETS:
        raise CLIError(f"unknown data set {args.dataset!r}; choose one of: {', '.join(AE_DATASETS.names())}")
    _check_preset(args.preset, PRESETS)
    for name in ("epochs", "lr", "batch_size", "max_minutes"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    out = args.out or f"runs/ae_{args.dataset}_{args.model}_{args.preset}"
    try:
        run = train_ae(args.model, args.dataset, out, preset=args.preset, resume=args.resume, epochs=args.epochs,
                       lr=args.lr, batch_size=args.batch_size, seed=args.seed, max_minutes=args.max_minutes,
                       device=args.device, progress=not args.no_progress)
    except (CheckpointError, ModuleNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    print(json.dumps(run.test, indent=1))
    print(f"test BCE {run.test['bce']:.3f}  % error {run.test['error_percent']:.3f}  F1 {run.test['f1']:.4f}  "
          f"(best epoch {run.fit['best_epoch']}; run: {out})")
    return 0


def _table(args: argparse.Namespace) -> int:
    from egnn.checkpoint import CheckpointError
    from egnn.experiments.ae.datasets import AE_DATASETS
    from egnn.experiments.ae.models import AE_MODELS
    from egnn.experiments.ae.train import PRESETS, format_table, run_table

    _check_preset(args.preset, PRESETS)
    models = _check_names(args.models, AE_MODELS, "model")
    datasets = _check_names(args.datasets, AE_DATASETS, "data set")
    out = Path(args.out or f"runs/ae_table_{args.preset}")
    try:
        runs = run_table(out, preset=args.preset, models=models, datasets=datasets, device=args.device,
                         progress=not args.no_progress)
    except (CheckpointError, ModuleNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    text = format_table(runs, args.preset)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


def _overfit(args: argparse.Namespace) -> int:
    from egnn.checkpoint import CheckpointError
    from egnn.experiments.ae.models import AE_MODELS
    from egnn.experiments.ae.train import OVERFIT_PRESETS, run_overfit

    _check_preset(args.preset, OVERFIT_PRESETS)
    models = _check_names(args.models, AE_MODELS, "model")
    _positive("--epochs", args.epochs)
    try:
        ps = [float(v) for v in args.p.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"--p must be comma-separated numbers, got {args.p!r}") from None
    if not ps or any(not 0.0 <= p <= 1.0 for p in ps):
        raise CLIError(f"--p values must be in [0, 1], got {args.p!r}")
    out = Path(args.out or f"runs/ae_overfit_{args.preset}")
    try:
        rows = run_overfit(out, preset=args.preset, ps=ps, models=models, epochs=args.epochs, device=args.device,
                           progress=not args.no_progress)
    except (CheckpointError, ModuleNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    print("| p | " + " | ".join(AE_MODELS.get(m).label + " F1" for m in models) + " |")
    print("|---|" + "---|" * len(models))
    for p in ps:
        f1 = {r["model"]: r["f1"] for r in rows if r["p"] == p}
        print(f"| {p:g} | " + " | ".join(f"{f1[m]:.3f}" for m in models) + " |")
    print(f"plot: {out / 'overfit.png'}")
    return 0
