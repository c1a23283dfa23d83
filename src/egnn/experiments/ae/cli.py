"""``egnn ae train | table | overfit``: the graph autoencoder experiment (paper Section 5.2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from egnn.experiments.commands import (
    CLIError,
    add_command,
    add_trainer_arguments,
    out_folder,
    positive_int,
    trainer_overrides,
)


def register(sub: argparse._SubParsersAction) -> None:
    from egnn.experiments.ae.datasets import AE_DATASETS
    from egnn.experiments.ae.models import AE_MODELS
    from egnn.experiments.ae.train import OVERFIT_P, OVERFIT_PRESETS, PRESETS

    t = add_command(sub, "train", _train, "train one autoencoder; test BCE / %% error / F1 at the best validation "
                    "epoch")
    t.add_argument("--model", default="egnn", choices=AE_MODELS.names(), help="model (default: egnn)")
    t.add_argument("--dataset", default="community", choices=AE_DATASETS.names(), help="data set")
    t.add_argument("--preset", default="quick", choices=PRESETS.names(), help="training recipe (default: quick)")
    t.add_argument("--out", type=out_folder, default=None,
                   help="run folder (default runs/ae_<dataset>_<model>_<preset>)")
    t.add_argument("--graphs", type=positive_int, default=None, metavar="N",
                   help="graphs per split: N training, N // 10 (at least 10) validation and test graphs (default: "
                   "the paper's 5000 / 500 / 500; to try things out quickly)")
    add_trainer_arguments(t, compile_flag=False)

    tb = add_command(sub, "table", _table, "train the four models on both data sets; print the table next to the "
                     "paper's", device=True, progress=True)
    tb.add_argument("--preset", default="quick", choices=PRESETS.names(), help="training recipe (default: quick)")
    tb.add_argument("--out", type=out_folder, default=None,
                    help="root folder of the runs (default runs/ae_table_<preset>)")
    tb.add_argument("--models", default=",".join(AE_MODELS.names()), help="comma-separated model names")
    tb.add_argument("--datasets", default=",".join(AE_DATASETS.names()), help="comma-separated data set names")

    o = add_command(sub, "overfit", _overfit, "F1 vs edge probability p when overfitting 100 Erdos-Renyi graphs "
                    "(plot)", device=True, progress=True)
    o.add_argument("--preset", default="quick", choices=OVERFIT_PRESETS.names(), help="recipe (default: quick)")
    o.add_argument("--out", type=out_folder, default=None, help="root folder (default runs/ae_overfit_<preset>)")
    o.add_argument("--p", default=",".join(f"{p:g}" for p in OVERFIT_P), help="comma-separated edge probabilities")
    o.add_argument("--models", default="gnn,noise_gnn,egnn", help="comma-separated model names")
    o.add_argument("--epochs", type=positive_int, default=None, help="override the preset's number of epochs")


def _check_names(value: str, registry, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise CLIError(f"no {what} given")
    for name in names:
        registry.get(name)  # a clear error for an unknown name
    return names


def _train(args: argparse.Namespace) -> int:
    from egnn.experiments.ae.train import train_ae

    out = args.out or f"runs/ae_{args.dataset}_{args.model}_{args.preset}"
    overrides = trainer_overrides(args)
    overrides.pop("compile")
    sizes = None if args.graphs is None else {"train": args.graphs, "valid": max(10, args.graphs // 10),
                                               "test": max(10, args.graphs // 10)}
    run = train_ae(args.model, args.dataset, out, preset=args.preset, resume=args.resume, split_sizes=sizes,
                   **overrides)
    print(json.dumps(run.test, indent=1))
    print(f"test BCE {run.test['bce']:.3f}  % error {run.test['error_percent']:.3f}  F1 {run.test['f1']:.4f}  "
          f"(best epoch {run.fit['best_epoch']}; run: {out})")
    return 0


def _table(args: argparse.Namespace) -> int:
    from egnn.checkpoint import atomic_write
    from egnn.experiments.ae.datasets import AE_DATASETS
    from egnn.experiments.ae.models import AE_MODELS
    from egnn.experiments.ae.train import format_table, run_table

    models = _check_names(args.models, AE_MODELS, "model")
    datasets = _check_names(args.datasets, AE_DATASETS, "data set")
    out = Path(args.out or f"runs/ae_table_{args.preset}")
    runs = run_table(out, preset=args.preset, models=models, datasets=datasets, device=args.device,
                     progress=not args.no_progress)
    from egnn.experiments.run import code_version

    text = format_table(runs, args.preset) + f"\n\nPrinted by {code_version()}."
    atomic_write(out / "table.md", text + "\n")
    print(text)
    return 0


def _overfit(args: argparse.Namespace) -> int:
    from egnn.experiments.ae.models import AE_MODELS
    from egnn.experiments.ae.train import run_overfit

    models = _check_names(args.models, AE_MODELS, "model")
    try:
        ps = [float(v) for v in args.p.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"--p must be comma-separated numbers, got {args.p!r}") from None
    if not ps or any(not 0.0 <= p <= 1.0 for p in ps):
        raise CLIError(f"--p values must be in [0, 1], got {args.p!r}")
    out = Path(args.out or f"runs/ae_overfit_{args.preset}")
    rows = run_overfit(out, preset=args.preset, ps=ps, models=models, epochs=args.epochs, device=args.device,
                       progress=not args.no_progress)
    print("| p | " + " | ".join(AE_MODELS.get(m).label + " F1" for m in models) + " |")
    print("|---|" + "---|" * len(models))
    for p in ps:
        f1 = {r["model"]: r["f1"] for r in rows if r["p"] == p}
        print(f"| {p:g} | " + " | ".join(f"{f1[m]:.3f}" for m in models) + " |")
    print(f"plot: {out / 'overfit.png'}")
    return 0
