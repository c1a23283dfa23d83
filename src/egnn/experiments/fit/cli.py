"""``egnn fit`` / ``egnn predict`` / ``egnn eval`` / ``egnn example emt``: an energy/force EGNN on your own data.

Each command is an ``_add_<name>(subparsers)`` function that adds its parser and sets ``func`` to
``_run_<name>(args) -> int`` (:func:`~egnn.experiments.commands.add_command`); :func:`register` adds all of them to
the top-level ``egnn`` parser. Heavy modules are imported inside the run functions. Errors in the user's input
(``ValueError`` and friends: :class:`~egnn.atoms.data.AtomsDataError`, ``NeighborError``, ``CheckpointError``,
``RunFolderError``) become one ``egnn: error: ...`` line and exit code 2 in
:func:`~egnn.experiments.commands.run_command`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from egnn.experiments.commands import (
    ArgumentParser,
    CLIError,
    add_command,
    add_device,
    add_trainer_arguments,
    checkpoint_arg,
    float_in,
    int_in,
    nonnegative_float,
    nonnegative_int,
    out_folder,
    positive_float,
    positive_int,
    procs_arg,
    seed_int,
    trainer_overrides,
)

if TYPE_CHECKING:
    from egnn.atoms.model import AtomsModel
    from egnn.experiments.training.launch import WorkerPlan


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fit``, ``predict``, ``eval`` and ``example`` to the top-level ``egnn`` parser."""
    for add in _COMMANDS:
        add(subparsers)


def _cutoff(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a distance in Angstrom (> 0) or 'none', got {text!r}") from None


_cutoff.__name__ = "a distance in Angstrom or 'none'"


# --model NAME -> the AtomsArchitecture fields it sets (given --vectors)
MODEL_KINDS: dict[str, Callable[[int], dict]] = {
    "vector": lambda k: {"vector_channels": k},
    "invariant": lambda k: {"vector_channels": 0},
    "coords": lambda k: {"vector_channels": 0, "update_coords": True},
}


def _model_kind(kind: str, data: str) -> str:
    """``--model auto``: the invariant model for periodic data (materials), the vector model otherwise (molecules),
    as measured by benchmarks/bench_potentials.py."""
    if kind != "auto":
        return kind
    from egnn.experiments.fit.sources import first_frame_periodic

    return "invariant" if first_frame_periodic(data) else "vector"


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


# ------------------------------------------------------------------------------------------------------ fit


def _add_fit(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "fit", _run_fit, "train an energy/force EGNN on your own data (any ASE-readable file)",
        description="Fit an EGNN atoms model (--model: vector channels for molecules, distances only for periodic "
        "materials) to a graph-level "
        "target (an energy) and optionally forces (-dE/dx) read from atoms.info, atoms.arrays or the calculator "
        "results of every frame. Writes RUN/best (load with egnn.load_model or egnn.ase.EGNNCalculator), log.csv, "
        "summary.json and parity plots. Optimisation defaults: 160 epochs, batch 16, lr 5e-3 (--model vector; "
        "2e-3 for the others) with 200 warm-up steps and cosine decay to 2 %, gradient norm clipped at 5, EMA 0.99. "
        "For a property that is not a sum over atoms (HOMO, LUMO, gap, dipole moment) use --readout mlp --loss l1 "
        "--cutoff none (the paper's QM9 recipe).",
    )
    p.add_argument("--data", required=True, metavar="TRAIN",
                   help="training file (extxyz, ASE .db, .traj ...) or store (egnn data pack)")
    p.add_argument("--valid", default=None, metavar="FILE",
                   help="validation file or store (default: --valid-fraction of TRAIN)")
    p.add_argument("--valid-fraction", type=float_in(0.0, 1.0, "a fraction in (0, 1)", hi_open=True), default=0.1,
                   help="held-out fraction of TRAIN (default 0.1)")
    p.add_argument("--test", default=None, metavar="FILE", help="test file or store, evaluated with the best model")
    p.add_argument("--workers", type=nonnegative_int, default=2,
                   help="DataLoader processes that read a store's frames and build their neighbour lists while "
                   "the model trains (default 2; 0: in the training process; files are held in memory instead)")
    p.add_argument("--target", default="energy", metavar="KEY", help="graph-level target key (default: energy)")
    p.add_argument("--forces", default=None, metavar="KEY", help="per-atom forces key: train on F = -dE/dx too")
    p.add_argument("--cutoff", type=_cutoff, default=5.0, metavar="R|none",
                   help="neighbour radius in Angstrom (default 5); 'none': complete graphs (non-periodic data)")
    p.add_argument("--no-images", action="store_true",
                   help="minimum-image convention: refuse a cutoff above half the shortest cell height")
    p.add_argument("--energy-weight", type=nonnegative_float, default=10.0, help="w_E of the loss (default 10)")
    p.add_argument("--forces-weight", type=nonnegative_float, default=1.0, help="w_F of the loss (default 1)")
    p.add_argument("--model", default="auto", choices=["auto", *MODEL_KINDS],
                   help="vector: layers with --vectors equivariant vector channels per atom, so the messages see "
                   "bond angles (more accurate on molecules at equal CPU time); invariant: distances only (as "
                   "accurate on metals, and cheaper); coords: distances between positions moved by EGNN's eq. (4) "
                   "in every layer; auto (default): invariant when the first training frame is periodic, else vector")
    p.add_argument("--vectors", type=positive_int, default=8, help="vector channels per atom of --model vector "
                   "(default 8)")
    p.add_argument("--hidden", type=positive_int, default=64, help="features per layer (default 64)")
    p.add_argument("--layers", type=nonnegative_int, default=4, help="EGCL layers (default 4)")
    p.add_argument("--rbf", type=nonnegative_int, default=8, help="radial features per edge (default 8)")
    p.add_argument("--no-attention", action="store_true", help="turn edge inference off")
    p.add_argument("--readout", default="sum", choices=["sum", "mean", "mlp", "dipole", "spatial"],
                   help="sum of per-atom terms (energies, default), their mean, or mlp: node MLP, sum, graph MLP "
                   "(the paper's QM9 readout, for targets that are not sums over atoms: HOMO, LUMO, gap); "
                   "molecules only: dipole (norm of the dipole of learnt neutral charges) or spatial (electronic "
                   "spatial extent <R^2>)")
    p.add_argument("--no-reference", action="store_true",
                   help="do not fit per-element least-squares baselines (readouts sum and spatial; the others "
                   "have none)")
    p.add_argument("--loss", default="mse", choices=["mse", "l1"],
                   help="squared (default) or absolute errors (the paper's QM9 loss) in both loss terms")
    p.add_argument("--cache", default="data/cache", metavar="DIR", help="parsed-data cache folder (default data/cache)")
    p.add_argument("--no-cache", action="store_true", help="parse the files every time")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="float32 (default) or float64")
    p.add_argument("--out", required=True, type=out_folder, metavar="RUN",
                   help="run folder (one that holds no run yet, or the run to --resume)")
    p.add_argument("--eval-every", type=positive_int, default=None,
                   help="epochs between evaluations (default 5)")
    p.add_argument("--ema-decay", type=float_in(0.0, 1.0, "a decay in [0, 1)", lo_open=False, hi_open=True),
                   default=None, help="weight averaging for evaluation (default 0.99; 0: off)")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=None, help="linear learning-rate warm-up steps")
    p.add_argument("--final-lr-ratio", type=float_in(0.0, 1.0, "a ratio in [0, 1]", lo_open=False, hi_open=False),
                   default=None, help="end of the cosine decay as a fraction of --lr (default 0.02)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="train on forces through the traced energy + forces graph compiled with torch.compile (the "
                   "same gradients to rounding, about 2x the epochs per minute after a compilation of 0.5-1.5 "
                   "minutes); off by default: one long compiled run diverged where the eager one did not")
    p.add_argument("--procs", type=procs_arg, default=None, metavar="auto|N",
                   help="data-parallel processes on this machine (the same steps as one process; --threads is "
                   "shared among them). auto (default): with --threads N >= 2 on the CPU, N processes of one "
                   f"thread when a training batch is small (below {PROCS_BELOW_EDGES} edges: molecules), else one "
                   "process of N threads")
    add_trainer_arguments(p, compile_flag=False)


# `egnn fit --threads N --procs auto`: below this many edges per training batch, N processes of 1 thread. On the
# shared 2-core machine (load average 3.5-4.9) 2 processes of 1 thread took 1.10-2.0x the epochs per minute of 1
# process of 2 threads on molecules (8-9 atoms, ~1,000 edges per batch of 16), 1.04-1.37x on 4-16-atom Cu/Au cells
# (2,600-10,600 edges), 1.21-1.66x on 32-atom cells (20,500) and 1.38x on 64-atom cells (40,500)
# (benchmarks/bench_fit_procs.py; docs/benchmarks.md, "Processes or threads"). Larger batches were not measured:
# they keep one process, whose intra-op threads have more work to share.
PROCS_BELOW_EDGES = 2**16


def _worker_plan(args: argparse.Namespace) -> WorkerPlan | None:
    """``egnn fit --procs``: the worker processes to start (``None``: train in this process)."""
    from egnn.experiments.fit.sources import graph_size
    from egnn.experiments.fit.train import FIT_PRESET
    from egnn.experiments.training.distributed import dist_info
    from egnn.experiments.training.launch import WorkerPlan

    threads, procs = args.threads, args.procs
    if dist_info()[1] > 1:  # torchrun started this process: it is a worker already
        if procs not in (None, 1):
            raise CLIError(f"--procs {procs}: this process is already one of torchrun's {dist_info()[1]} workers; "
                           "leave --procs out (or run without torchrun)")
        return None
    if procs is not None:
        if threads is not None and procs > threads:
            raise CLIError(f"--procs {procs} needs at least one thread per process: give --threads >= {procs} "
                           f"(got --threads {threads}) or fewer --procs")
        if procs > 1 and _device(args.device) != "cpu":
            raise CLIError(f"--procs {procs} runs workers on the CPU; on a GPU use torchrun (one process per GPU) "
                           "or --device cpu")
        return WorkerPlan(procs, max(1, (threads or procs) // procs)) if procs > 1 else None
    if threads is None or threads < 2 or _device(args.device) != "cpu":
        return None
    size = graph_size(args.data, args.cutoff, images=not args.no_images)
    batch = args.batch_size or FIT_PRESET.train["batch_size"]
    if size is None or size[1] * batch >= PROCS_BELOW_EDGES:
        return None
    return WorkerPlan(threads, 1)


def _device(name: str) -> str:
    """``--device auto`` of predict/eval: CUDA when present, else CPU."""
    from egnn.experiments.trainer import resolve_device

    return str(resolve_device(name))


def _run_fit(args: argparse.Namespace) -> int:
    from egnn.experiments.fit import train as ft

    if args.energy_weight == 0 and (args.forces is None or args.forces_weight == 0):
        raise CLIError("the loss has no term: give --energy-weight > 0, or --forces KEY with --forces-weight > 0")
    workers = _worker_plan(args)
    if workers is not None:
        from egnn.experiments.training.launch import run_workers

        # the same command in every worker; later flags win, so these two set each worker's share
        return run_workers([*args.argv, "--threads", str(workers.threads), "--procs", "1"], workers)
    args.model = _model_kind(args.model, args.data)
    plan = ft.FitPlan(
        data=ft.DataOptions(train=args.data, target=args.target, forces=args.forces, valid=args.valid,
                            valid_fraction=args.valid_fraction, test=args.test,
                            cache_dir=None if args.no_cache else args.cache, workers=args.workers),
        model=ft.ModelOptions(cutoff=args.cutoff, images=not args.no_images, hidden_channels=args.hidden,
                              num_layers=args.layers, n_rbf=args.rbf, attention=not args.no_attention,
                              readout=args.readout, reference=not args.no_reference,
                              **MODEL_KINDS[args.model](args.vectors)),
        loss=ft.LossOptions(energy_weight=args.energy_weight, forces_weight=args.forces_weight, kind=args.loss),
    )
    overrides = {**trainer_overrides(args), "eval_every": args.eval_every, "ema_decay": args.ema_decay,
                 "warmup_steps": args.warmup_steps, "final_lr_ratio": args.final_lr_ratio,
                 "compile": None}  # fit's --compile is its own (the compiled force graph), not the trainer's
    cfg = ft.FIT_PRESET.train_config(model=args.model, **overrides)
    result, summary = ft.fit(plan, cfg, args.out, resume=args.resume, dtype=_dtype(args.dtype), compiled=args.compile)
    ft.check_finite_summary(summary)
    print(json.dumps({k: summary[k] for k in ("fit", "valid", "test") if k in summary}, indent=1, allow_nan=False))
    print(f"model: {args.out}/best (egnn.load_model, egnn.ase.EGNNCalculator, egnn predict/eval)")
    return 0


# -------------------------------------------------------------------------------------------------- predict


def _add_model_arguments(p: argparse.ArgumentParser, data_help: str) -> None:
    """The model, the data file, the batch size and the device of ``egnn eval``."""
    p.add_argument("checkpoint", type=checkpoint_arg, help="run folder (its best model) or checkpoint path")
    p.add_argument("--data", required=True, metavar="FILE", help=data_help)
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="structures per batch at most (default 64; a batch also holds at most 2^14 atoms + edges)")
    add_device(p)


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "predict", _run_predict,
        "write a copy of a file with predicted <target>_pred (info) and <forces>_pred (arrays)",
        description="Predict every structure of an ASE-readable file and write a copy with <target>_pred in "
        "atoms.info (and <forces>_pred in atoms.arrays for force models). Two forms: "
        "'egnn predict --model NAME|PATH FILE --out OUT' (NAME: a pretrained model, see "
        "egnn.pretrained.available(); $EGNN_PRETRAINED_DIR points to another folder of them; else PATH: a run "
        "folder or checkpoint) and 'egnn predict CHECKPOINT --data FILE --out OUT'.")
    p.usage = ("%(prog)s --model NAME|PATH FILE --out OUT [options]\n"
               "       %(prog)s CHECKPOINT --data FILE --out OUT [options]")
    p.add_argument("inputs", nargs="*", metavar="[CHECKPOINT] FILE",
                   help="the structures to predict (any ASE-readable file); without --model the first argument is "
                   "the model (run folder, checkpoint or pretrained name)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="pretrained model name, else a run folder (its best model) or checkpoint path (a name wins; "
                   "write ./NAME for a folder of the same name)")
    p.add_argument("--data", default=None, metavar="FILE", help="the structures to predict (instead of FILE)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="structures per batch at most (default 64; a batch also holds at most 2^14 atoms + edges)")
    add_device(p)
    p.add_argument("--out", required=True, metavar="OUT",
                   help="output file (extxyz for .extxyz/.xyz); never overwritten")
    p.add_argument("--no-forces", action="store_true", help="energies only")


def _predict_sources(args: argparse.Namespace) -> tuple[str, str]:
    """The model and the data file of either form of ``egnn predict``: exactly one of each."""
    inputs = list(args.inputs)
    if args.model is not None:
        model = args.model
    elif inputs:
        model = inputs.pop(0)  # the old form: CHECKPOINT --data FILE
    else:
        raise CLIError("no model; give --model NAME|PATH (a pretrained name, run folder or checkpoint)")
    data = inputs + ([args.data] if args.data is not None else [])
    if len(data) != 1:
        given = ", ".join(repr(d) for d in data) or "none"
        raise CLIError(f"give exactly one model (--model NAME|PATH) and one data file (FILE or --data "
                       f"FILE); data files given: {given}")
    return model, data[0]


def _load_predict_model(source: str, device: str) -> AtomsModel:
    """A pretrained model by name, else the checkpoint or run folder at ``source``."""
    from egnn import pretrained
    from egnn.atoms.model import load_model

    if pretrained.is_valid_name(source) and source in pretrained.available():
        return pretrained.load_pretrained(source, device=device)
    try:
        checkpoint_arg(source)
    except argparse.ArgumentTypeError:
        names = ", ".join(pretrained.available()) or "none shipped"
        raise CLIError(f"no pretrained model {source!r} (available: {names}) and no run folder or "
                       f"checkpoint at {source!r}") from None
    return load_model(source, device=device)


def _run_predict(args: argparse.Namespace) -> int:
    from egnn.experiments.fit import train as ft

    source, data = _predict_sources(args)
    model = _load_predict_model(source, _device(args.device))
    res = ft.predict_file(model, data, args.out, args.batch_size, forces=False if args.no_forces else None)
    print(json.dumps(res, indent=1))
    _note_domain(model, data)
    return 0


def _note_domain(model: AtomsModel, data: str) -> None:
    """One line on stderr when a pretrained model predicted structures outside its training domain."""
    import sys

    from egnn import pretrained

    name = model.meta.get("pretrained", {}).get("name")
    if name and name in pretrained.available():
        note = pretrained.file_domain_note(name, data)
        if note:
            print(note, file=sys.stderr)


# ----------------------------------------------------------------------------------------------------- eval


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "eval", _run_eval,
                    "MAE and RMSE (energy, energy per atom, forces) of a model on a file, JSON")
    _add_model_arguments(p, "labelled structures (a file or a store)")
    p.add_argument("--target", default=None, metavar="KEY", help="target key (default: the one trained on)")
    p.add_argument("--forces", default=None, metavar="KEY", help="forces key (default: the one trained on)")
    p.add_argument("--cache", default="data/cache", metavar="DIR", help="parsed-data cache folder (default data/cache)")
    p.add_argument("--no-cache", action="store_true", help="parse the file without the cache")


def _run_eval(args: argparse.Namespace) -> int:
    from egnn.atoms.model import load_model
    from egnn.experiments.fit import train as ft

    model = load_model(args.checkpoint, device=_device(args.device))
    res = ft.evaluate_model(model, args.data, args.target, args.forces,
                            cache_dir=None if args.no_cache else args.cache, batch_size=args.batch_size)
    print(json.dumps(res, indent=1, allow_nan=False))
    return 0


# -------------------------------------------------------------------------------------------------- example


def _add_example(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("example", help="worked examples that need nothing from outside",
                              description="worked examples that need nothing from outside")
    which = p.add_subparsers(dest="example", metavar="NAME", required=True, parser_class=ArgumentParser)
    emt = add_command(
        which, "emt", _run_example_emt,
        "EMT alloy: generate, fit energies+forces, predict, relax (BFGS), NVE MD, parity plots", progress=True,
        description="Generates a periodic fcc alloy data set with ASE's EMT potential (rattled, strained cells), fits "
        "an energy/force EGNN for a fixed number of epochs, evaluates it on a held-out test set beside the "
        "mean-energy / "
        "zero-force baselines, checks predict == calculator, relaxes a structure with BFGS and runs NVE MD.")
    emt.add_argument("--out", type=out_folder, default="runs/emt_example", help="output folder (new or empty)")
    emt.add_argument("--elements", default="Cu,Au", help="comma-separated fcc metals of EMT (default Cu,Au)")
    emt.add_argument("--train-frames", type=int_in(10, None, "an integer >= 10"), default=400,
                     help="training structures (default 400; 10 %% held out for validation)")
    emt.add_argument("--test-frames", type=positive_int, default=100, help="test structures (default 100)")
    emt.add_argument("--epochs", type=positive_int, default=None,
                     help="epochs of the cosine schedule (default: the fit recipe's)")
    emt.add_argument("--max-minutes", "--minutes", dest="max_minutes", type=positive_float, default=None,
                     help="a cap, not a recipe: stop the fit early once past this wall time (the summary says so)")
    emt.add_argument("--md-steps", type=positive_int, default=500, help="NVE steps of 2 fs (default 500)")
    emt.add_argument("--seed", type=seed_int, default=0, help="seed of the data and the fit (default 0)")


def _run_example_emt(args: argparse.Namespace) -> int:
    from egnn.atoms.data import require_ase

    require_ase()
    from egnn.experiments.fit import example

    elements = tuple(e.strip() for e in args.elements.split(",") if e.strip())
    summary = example.run_emt_example(
        args.out, elements=elements, train_frames=args.train_frames, test_frames=args.test_frames,
        epochs=args.epochs, max_minutes=args.max_minutes, md_steps=args.md_steps, seed=args.seed,
        progress=not args.no_progress)
    print(json.dumps(summary, indent=1, allow_nan=False))
    return 0


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_fit, _add_predict, _add_eval, _add_example)
