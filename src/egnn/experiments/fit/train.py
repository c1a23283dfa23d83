"""Fit, evaluate and apply an energy/force EGNN on the user's own data (any ASE-readable file), on the shared trainer.

Loss (per batch, in the model's normalised units :math:`\\sigma`, see :mod:`egnn.atoms.model`):

.. math::
    w_E \\cdot \\mathrm{mean}_b\\big((\\hat E_b - E_b) / (n_b \\sigma)\\big)^2
    + w_F \\cdot \\mathrm{mean}_{i,k}\\big((\\hat F_{ik} - F_{ik}) / \\sigma\\big)^2

with :math:`\\hat F = -\\partial \\hat E / \\partial x` by autograd (second-order gradients in training). The energy
error is divided by the number of atoms :math:`n_b` only for the extensive readout ``"sum"``. With ``loss="l1"``
the squares become absolute values (the paper's QM9 loss). The trainer's model-selection metric is the same
weighted error summed per frame (lower is better); the physical MAE/RMSE are computed by :func:`evaluate_model`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from egnn.atoms.data import DEFAULT_CACHE_DIR, AtomsData, AtomsDataError
from egnn.atoms.graphs import AtomsBatch, AtomsGraphs
from egnn.atoms.loader import FrameRows, OnTheFlyGraphs
from egnn.atoms.model import MODEL_KIND, PREDICT_BUDGET, AtomsArchitecture, AtomsModel, AtomsModelConfig, fit_statistics
from egnn.experiments.fit.sources import (
    StreamedPredictions,
    check_elements,
    content_id,
    describe,
    has_forces,
    is_store,
    open_frames,
)
from egnn.experiments.run import LRRule, Preset, write_json
from egnn.experiments.training import FitResult, LossTerms, Task, TrainConfig
from egnn.experiments.training.distributed import agree, dist_info, on_rank0
from egnn.ops.scatter import scatter_sum


class FitError(ValueError):
    """A user error in the fit/predict/eval settings (one line)."""


LOSSES = ("mse", "l1")
# Training through the compiled energy + forces graph repays its compilation after about this many optimiser steps:
# compiling took 37-165 s (machine load) and a step of 16 GFN2-xTB molecules (vector model, one thread) took 13 ms
# against 44 eager, or 59 against 133 under load, so the break-even was 1,200-2,200 steps (not yet used as a
# default: see use_compiled).
COMPILE_MIN_STEPS = 2000


# The optimisation recipe of `egnn fit` and `egnn example emt`, fixed in epochs (README, "Your own 3D data").
# Force fits sit on a plateau (loss ~1, zero forces) for a few hundred steps and then drop; at lr 3e-3 without
# clipping that drop came with gradient-norm spikes of 40-100 (typical norm 1-5) and, in a shorter schedule, a
# loss spike the run never recovered from. Hence a lower peak lr, a longer warm-up and clipping at norm 5.
FIT_PRESET = Preset(
    description="batch 16, lr 5e-3 for --model vector and 2e-3 for invariant and coords (200 warm-up steps, cosine "
    "to 2 %), gradient norm clipped at 5, EMA 0.99, 160 epochs",
    train={"epochs": 160, "batch_size": 16, "schedule": "cosine", "final_lr_ratio": 0.02, "warmup_steps": 200,
           "grad_clip": 5.0, "ema_decay": 0.99, "eval_every": 5, "checkpoint_every": 5, "eval_batch_size": 64,
           "eval_batch_budget": PREDICT_BUDGET, "weight_decay": 0.0, "seed": 0},
    # the vector model trains faster at a higher rate (benchmarks/bench_potentials.py; README "Directional model")
    lr=LRRule(value=2e-3, per_model={"vector": 5e-3}),
)


@dataclass
class ModelOptions(AtomsArchitecture):
    """Architecture options of ``egnn fit`` (:class:`~egnn.atoms.model.AtomsArchitecture`: ``cutoff``, ``images``,
    ``hidden_channels``, ``num_layers``, ``n_rbf``, ``attention``, ``readout`` ...) and whether to fit per-element
    least-squares baselines (readouts ``"sum"`` and ``"spatial"``)."""

    reference: bool = True


@dataclass
class DataOptions:
    """Where the data comes from and which keys hold the targets."""

    train: str
    target: str = "energy"
    forces: str | None = None
    valid: str | None = None
    valid_fraction: float = 0.1
    test: str | None = None
    cache_dir: str | None = DEFAULT_CACHE_DIR
    split_seed: int = 0
    workers: int = 2  # DataLoader processes building a store's batches (files: neighbour lists built once)


@dataclass
class LossOptions:
    energy_weight: float = 10.0
    forces_weight: float = 1.0
    kind: str = "mse"  # "mse" or "l1" (absolute errors, both terms)

    def __post_init__(self) -> None:
        if self.kind not in LOSSES:
            raise FitError(f"loss must be one of {', '.join(LOSSES)}, got {self.kind!r}")


@dataclass
class FitPlan:
    """Everything ``egnn fit`` needs besides the optimisation settings."""

    data: DataOptions
    model: ModelOptions = field(default_factory=ModelOptions)
    loss: LossOptions = field(default_factory=LossOptions)


# ------------------------------------------------------------------------------------------------- the task


class EnergyForces(nn.Module):
    """The module the fit's loss and metric call: energies ``[B]`` and, when asked, forces ``-dE/dx`` ``[N, 3]``
    of an :class:`~egnn.atoms.graphs.AtomsBatch`, in one forward (with the graph for a second-order backward in
    training). Under ``torchrun`` it is what DDP wraps, so the force term's gradients are synchronised too."""

    def __init__(self, model: AtomsModel, compiled: bool = False) -> None:
        super().__init__()
        self.model = model
        # training on forces through the traced, compiled graph (egnn.compiled.training); readout "sum" only
        self.compiled = None
        if compiled and model.config.readout == "sum":
            from egnn.compiled.training import CompiledEnergyForces

            self.compiled = CompiledEnergyForces(model)

    def forward(self, b: AtomsBatch, forces: bool) -> tuple[Tensor, Tensor | None]:
        if self.compiled is not None and forces and self.model.training:
            atom_e, f = self.compiled(self.model.species_index(b.z), b.pos, b.edge_index, b.edge_shift)
            return scatter_sum(atom_e, b.batch, b.num_graphs), f
        return self.model.energy_and_forces(b.z, b.pos, b.edge_index, b.edge_shift, b.batch, b.num_graphs,
                                            forces=forces, create_graph=forces and self.model.training)


def _core(model: nn.Module) -> AtomsModel:
    """The :class:`AtomsModel` inside DDP / :class:`EnergyForces` wrappers."""
    while not isinstance(model, AtomsModel):
        model = model.model if isinstance(model, EnergyForces) else model.module
    return model


def batch_errors(model: nn.Module, b: AtomsBatch, use_forces: bool) -> tuple[Tensor, Tensor | None]:
    """Per-frame ``(E_pred - E) / n`` ``[B]`` (the error itself for intensive readouts) and per-atom force
    errors ``[N, 3]`` (or ``None``); ``model`` is an :class:`EnergyForces` (possibly inside DDP)."""
    energy, forces = model(b, use_forces)
    n = b.n_atoms.to(energy.dtype)
    e_err = (energy - b.energy) / n if _core(model).config.readout == "sum" else energy - b.energy
    f_err = forces - b.forces if use_forces else None
    return e_err, f_err


def make_task(splits: dict[str, Any], scale: float, loss_opts: LossOptions, use_forces: bool,
              compiled: bool = False) -> Task:
    """Weighted MSE (or L1) loss in normalised units: a mean over frames plus a mean over force components, each
    over the global batch (:class:`~egnn.experiments.training.LossTerms`); metric: the same summed per frame.
    ``compiled``: train through the traced, compiled energy + forces graph (:class:`EnergyForces`)."""
    we, wf = loss_opts.energy_weight, loss_opts.forces_weight
    penalty = Tensor.abs if loss_opts.kind == "l1" else Tensor.square

    def loss(model: nn.Module, b: AtomsBatch) -> LossTerms:
        e_err, f_err = batch_errors(model, b, use_forces)
        terms = LossTerms().add(we, penalty(e_err / scale).sum(), b.num_graphs)
        if f_err is not None:
            terms.add(wf, penalty(f_err / scale).sum(), f_err.numel())
        return terms

    def metric(model: nn.Module, b: AtomsBatch) -> tuple[Tensor, int]:
        e_err, f_err = batch_errors(model, b, use_forces)
        per_frame = we * penalty(e_err.detach() / scale)
        if f_err is not None:
            sq = penalty(f_err.detach() / scale).sum(-1)
            per_frame = per_frame + wf * scatter_sum(sq, b.batch, b.num_graphs) / (3 * b.n_atoms.to(sq.dtype))
        return per_frame.sum(), b.num_graphs

    return Task(splits["train"], splits["valid"], splits.get("test"), loss, metric, "loss",
                metric_needs_grad=use_forces, wrap=lambda m: EnergyForces(m, compiled))


# ----------------------------------------------------------------------------------------------------- data


def _load(path: str, opts: DataOptions, progress: bool) -> AtomsData | FrameRows:
    return open_frames(path, opts.target, opts.forces, cache_dir=opts.cache_dir, progress=progress)


def load_splits(opts: DataOptions, progress: bool = False) -> dict[str, AtomsData | FrameRows | None]:
    """Train / valid / test data sets (files in memory, stores by row): ``valid`` from its own file or store, or a
    random ``valid_fraction`` of ``train``."""
    train = _load(opts.train, opts, progress)
    if opts.forces is not None and not has_forces(train):
        raise FitError(f"{opts.train}: no forces under key {opts.forces!r}")
    if opts.valid is not None:
        valid = _load(opts.valid, opts, progress)
    else:
        if not 0 < opts.valid_fraction < 1:
            raise FitError(f"--valid-fraction must be in (0, 1), got {opts.valid_fraction}")
        n_valid = max(1, int(round(opts.valid_fraction * len(train))))
        if n_valid >= len(train):
            raise FitError(f"{opts.train}: {len(train)} frame(s) are too few to hold out a validation set; "
                           "give --valid FILE")
        order = np.random.default_rng(opts.split_seed).permutation(len(train))
        valid, train = train.subset(np.sort(order[:n_valid])), train.subset(np.sort(order[n_valid:]))
    test = _load(opts.test, opts, progress) if opts.test is not None else None
    return {"train": train, "valid": valid, "test": test}


def check_split_elements(splits: dict[str, Any], species: list[int]) -> None:
    """Every element of the valid and test sets was in the training set (one line naming frame and element)."""
    for name in ("valid", "test"):
        d = splits.get(name)
        if d is not None:
            try:
                check_elements(d, species)
            except ValueError as err:
                raise FitError(f"{name} data: {err}") from None


def make_graphs(d: AtomsData | FrameRows, model_opts: ModelOptions, dtype: torch.dtype, progress: bool,
                workers: int) -> AtomsGraphs | OnTheFlyGraphs:
    """A file's frames with all neighbour lists built once (in memory, the fast path for small data); a store's
    rows with neighbour lists built per batch in ``workers`` DataLoader processes."""
    if isinstance(d, FrameRows):
        return OnTheFlyGraphs(d, model_opts.cutoff, model_opts.images, dtype, workers)
    return AtomsGraphs(d, model_opts.cutoff, model_opts.images, dtype, progress)


def check_molecules(splits: dict[str, AtomsData | FrameRows | None], readout: str) -> None:
    """The ``dipole`` and ``spatial`` readouts need molecules: name the first periodic frame."""
    if readout not in ("dipole", "spatial"):
        return
    for name, d in splits.items():
        if isinstance(d, FrameRows) and d.base.meta.get("periodic_frames", 0):
            raise FitError(f"{name} data: {d.source}: the store holds periodic frames; --readout {readout} needs "
                           "molecules (a periodic cell has no centre)")
        if isinstance(d, AtomsData) and d.pbc.any():
            frame = int(np.flatnonzero(d.pbc.any(axis=1))[0])
            raise FitError(f"{name} data: {d.source}: frame {frame} is periodic; --readout {readout} needs "
                           "molecules (a periodic cell has no centre)")


def build_model(train: AtomsData | FrameRows, model_opts: ModelOptions, data_opts: DataOptions) -> AtomsModel:
    """A fresh model whose species, reference energies and normalisation come from ``train``."""
    stats = fit_statistics(train, reference=model_opts.reference, readout=model_opts.readout)
    cfg = AtomsModelConfig(**stats, **model_opts.architecture(), target=data_opts.target, forces=data_opts.forces)
    return AtomsModel(cfg)


def check_new_folder(out: Path) -> None:
    """``out`` must be absent or an empty folder (for commands that write many files; nothing is overwritten)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FitError(f"{out} exists and is not an empty folder; choose another --out (nothing is overwritten)")


def use_compiled(choice: bool | None, use_forces: bool, readout: str, steps: int) -> bool:
    """Whether to train through the compiled energy + forces graph: only when asked (``choice``), and only where it
    applies (forces fitted with the extensive readout). Not the default although it is 2x faster per epoch: in the
    one comparison made, a compiled 400-epoch run diverged at epoch 77 where the eager run did not, and the compiled
    160-epoch recipe ended at 25.5 meV/A against 19.8 for an eager one (benchmarks/bench_fit_compiled.py). ``steps``
    is kept for a rule by run length once that is settled (:data:`COMPILE_MIN_STEPS`)."""
    del steps
    return bool(choice) and use_forces and readout == "sum"


def fit(plan: FitPlan, train_cfg: TrainConfig, out: str | Path, resume: bool = False,
        dtype: torch.dtype = torch.float32, compiled: bool | None = None) -> tuple[FitResult, dict[str, Any]]:
    """Train in the run folder ``out`` (:func:`egnn.experiments.run.train_run`: a folder holding another run is
    refused, ``resume`` continues one started with the same data and settings); writes ``log.csv``,
    ``last.safetensors``, ``best.safetensors`` (what :func:`egnn.load_model` reads), ``summary.json``,
    ``training_curve.png`` and parity plots. ``compiled``: train on forces through the traced, compiled graph
    (:mod:`egnn.compiled.training`; :func:`use_compiled`).

    Returns:
        The trainer's result and the summary (MAE/RMSE of the best model on the valid and test sets).
    """
    from egnn.experiments.run import RunFolder, RunFolderError, train_run

    out = Path(out)

    def refuse_a_held_folder() -> None:  # before any data is read
        if not resume and RunFolder(out).holds_run():
            raise RunFolderError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    on_rank0(refuse_a_held_folder)
    progress = train_cfg.progress and dist_info()[0] == 0
    mc, opts = plan.model, plan.data

    def prepare() -> tuple[dict[str, Any], AtomsModel]:
        splits = load_splits(opts, progress)
        check_molecules(splits, mc.readout)
        torch.manual_seed(train_cfg.seed)
        model = build_model(splits["train"], mc, opts).to(dtype)
        check_split_elements(splits, model.config.species)
        return splits, model

    splits, model = agree(prepare)  # a bad input is reported once, by the lowest rank that met it
    train = splits["train"]
    graphs = {name: (make_graphs(d, mc, dtype, progress, opts.workers) if d is not None else None)
              for name, d in splits.items()}
    use_forces = opts.forces is not None
    steps = train_cfg.epochs * math.ceil(len(graphs["train"]) / train_cfg.batch_size)
    task = make_task(graphs, model.config.scale, plan.loss, use_forces,
                     use_compiled(compiled, use_forces, model.config.readout, steps))
    # flat keys, so a refused --resume names exactly the setting that differs
    identity = {
        "experiment": "fit", **{f"model.{k}": v for k, v in model.config.to_dict().items()},
        # (the default loss kind is left out so that runs started before --loss existed still resume)
        "loss": {k: v for k, v in asdict(plan.loss).items() if not (k == "kind" and v == "mse")},
        "dtype": str(dtype).replace("torch.", ""),
        "data": {"train": opts.train, "valid": opts.valid, "test": opts.test, "target": opts.target,
                 "forces": opts.forces, "valid_fraction": None if opts.valid else opts.valid_fraction,
                 "split_seed": None if opts.valid else opts.split_seed,
                 "sha256": {name: content_id(d) for name, d in splits.items() if d is not None}},
    }
    result, trainer = train_run(model, task, train_cfg, out, identity, resume,
                                meta={"kind": MODEL_KIND, "model": model.config.to_dict()})
    summary: dict[str, Any] = {"fit": result.summary(),
                               "data": {name: describe(d) for name, d in splits.items() if d is not None}}
    if trainer.rank == 0:
        from egnn.atoms.model import load_model
        from egnn.experiments.plots import plot_training_curve

        best = load_model(out / "best", dtype=dtype)
        per_atom = model.config.readout == "sum"
        for name, d in splits.items():
            if d is None or name == "train":
                continue
            pred, labels = predictions(best, d, graphs[name], use_forces)
            summary[name] = error_metrics(pred, labels, opts.target, per_atom, train_baseline(train))
            parity_plots(pred, labels, out / f"parity_{name}.png", title=f"{name}: {d.source}", target=opts.target,
                         per_atom=per_atom)
        plot_training_curve(out / "log.csv", out / "training_curve.png", metric="weighted MSE (normalised)",
                            train_label="train loss (per epoch)", title=f"egnn fit: {opts.train}")
        write_json(out / "summary.json", _finite(summary))
    return result, summary


def predictions(model: AtomsModel, d: AtomsData | FrameRows, graphs: Any = None, forces: bool = True,
                batch_size: int = 64) -> tuple[dict[str, np.ndarray], AtomsData | StreamedPredictions]:
    """Predictions of a file's frames (all in memory) or of a store's (streamed), with what
    :func:`error_metrics` and :func:`parity_plots` compare them to."""
    if isinstance(d, FrameRows):
        streamed = StreamedPredictions(model, d, forces, batch_size)
        return streamed.pred, streamed
    return model.predict(graphs if graphs is not None else d, forces=forces, batch_size=batch_size), d


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj if not isinstance(obj, float) or math.isfinite(obj) else None


# ------------------------------------------------------------------------------------------------ metrics


def error_metrics(pred: dict[str, np.ndarray], data: AtomsData | StreamedPredictions, name: str = "energy",
                  per_atom: bool = True,
                  baseline: dict[str, float] | None = None) -> dict[str, Any]:
    """MAE and RMSE of the target ``name`` (and per atom when ``per_atom``: extensive targets such as energies) and
    of the force components, beside the baselines of predicting the mean (``baseline["mean"]`` /
    ``baseline["mean_per_atom"]``, default this set's own means) and zero forces.

    ``data`` may be the :class:`~egnn.experiments.fit.sources.StreamedPredictions` of a store (its force sums).

    Keys: ``<name>_mae``, ``<name>_rmse``, ``<name>_std``, ``baseline_mean_<name>_mae`` and the same with
    ``<name>_per_atom``; ``forces_mae``, ``forces_rmse``, ``baseline_zero_forces_mae``.
    """
    streamed = isinstance(data, StreamedPredictions)
    out: dict[str, Any] = ({"frames": data.frames, "atoms": data.atoms} if streamed
                           else {"frames": len(data), "atoms": int(len(data.z))})
    baseline = baseline or {}
    if data.energy is not None:
        n = data.n_atoms
        variants = [(name, pred["energy"], data.energy, baseline.get("mean"))]
        if per_atom:
            variants.append((f"{name}_per_atom", pred["energy"] / n, data.energy / n, baseline.get("mean_per_atom")))
        for key, guess, true, base in variants:
            err = guess - true
            base = float(np.mean(true)) if base is None else base
            out.update({f"{key}_mae": float(np.abs(err).mean()), f"{key}_rmse": float(np.sqrt((err**2).mean())),
                        f"{key}_std": float(true.std()), f"baseline_mean_{key}_mae": float(np.abs(true - base).mean())})
    if streamed and data.forces_sums is not None:  # every component, summed chunk by chunk
        f_abs, f_sq, f_true_abs, count = data.forces_sums
        out.update(forces_mae=f_abs / count, forces_rmse=float(np.sqrt(f_sq / count)),
                   baseline_zero_forces_mae=f_true_abs / count)
    elif data.forces is not None and "forces" in pred:
        ferr = pred["forces"] - data.forces
        out.update(
            forces_mae=float(np.abs(ferr).mean()), forces_rmse=float(np.sqrt((ferr**2).mean())),
            baseline_zero_forces_mae=float(np.abs(data.forces).mean()),
        )
    return out


def train_baseline(train: AtomsData | FrameRows) -> dict[str, float]:
    """Means of the target (total and per atom) on the training set: the baseline predictions."""
    chunks = train.chunks() if isinstance(train, FrameRows) else [train]
    total = per_atom = 0.0
    count = 0
    for c in chunks:
        if c.energy is None:
            return {}
        total += float(c.energy.sum())
        per_atom += float((c.energy / c.n_atoms).sum())
        count += len(c)
    return {"mean": total / max(count, 1), "mean_per_atom": per_atom / max(count, 1)}


def parity_plots(pred: dict[str, np.ndarray], data: AtomsData, path: str | Path, title: str = "",
                 target: str = "energy", per_atom: bool = True) -> Path | None:
    """Predicted vs true target (per atom for extensive targets) and force components (matplotlib Agg)."""
    if data.energy is None:
        return None
    from egnn.experiments.plots import pyplot

    plt = pyplot()

    scale = data.n_atoms if per_atom else 1
    label = f"{target}{' per atom' if per_atom else ''}{' (eV)' if target == 'energy' else ''}"
    panels = [(label, data.energy / scale, pred["energy"] / scale)]
    if data.forces is not None and "forces" in pred:
        panels.append(("force components (eV/Å)", data.forces.ravel(), pred["forces"].ravel()))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (label, true, guess) in zip(axes[0], panels):
        lo, hi = float(min(true.min(), guess.min())), float(max(true.max(), guess.max()))
        ax.plot([lo, hi], [lo, hi], color="gray", lw=1)
        ax.scatter(true, guess, s=3, alpha=0.5)
        mae = float(np.abs(true - guess).mean())
        ax.set_xlabel(f"true {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.set_title(f"MAE {mae:.4g}", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------------------------------ predict / eval


def evaluate_model(model: AtomsModel, path: str | Path, target: str | None = None, forces: str | None = None,
                   cache_dir: str | None = DEFAULT_CACHE_DIR, batch_size: int = 64) -> dict[str, Any]:
    """MAE/RMSE of a model on a labelled file or store (keys default to those it was trained on)."""
    target = target or model.config.target
    forces = forces if forces is not None else model.config.forces
    data = open_frames(path, target, forces, cache_dir=cache_dir)
    pred, labels = predictions(model, data, forces=forces is not None, batch_size=batch_size)
    return {"file": str(path), "target": target, "forces": forces,
            **error_metrics(pred, labels, target, model.config.readout == "sum")}


def predict_file(model: AtomsModel, path: str | Path, out: str | Path, batch_size: int = 64,
                 forces: bool | None = None) -> dict[str, Any]:
    """Write a copy of ``path`` with ``<target>_pred`` in ``atoms.info`` and ``<forces>_pred`` in
    ``atoms.arrays`` (extxyz when ``out`` ends in ``.extxyz``/``.xyz``, else ASE's choice by extension)."""
    from egnn.atoms.data import from_atoms_list, read_frames, require_ase

    require_ase()
    import ase.io

    out = Path(out)
    if out.exists():
        raise FitError(f"{out} exists; choose another --out (nothing is overwritten)")
    if Path(path).resolve() == out.resolve():
        raise FitError(f"--out {out} is the input file")
    forces = model.config.forces is not None if forces is None else forces
    e_key = f"{model.config.target}_pred"
    f_key = f"{model.config.forces or 'forces'}_pred"

    def annotated() -> Any:  # chunks of ase.Atoms with their predictions (a store is never read whole)
        chunks = (_store_atoms(path) if is_store(path) else
                  [(frames := read_frames(path),
                    from_atoms_list(frames, str(path), energy_key=None, forces_key=None, require_targets=False))])
        for frames, data in chunks:
            pred = model.predict(data, forces=forces, batch_size=batch_size)
            for i, atoms in enumerate(frames):
                atoms.info[e_key] = float(pred["energy"][i])
                if forces:
                    atoms.arrays[f_key] = pred["forces"][int(data.offsets[i]) : int(data.offsets[i + 1])].copy()
            yield frames

    fmt = "extxyz" if out.suffix.lower() in (".extxyz", ".xyz") else None
    out.parent.mkdir(parents=True, exist_ok=True)
    # write beside the target, check that the format kept the predictions, then rename (never a partial OUT)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        count = 0
        try:
            for frames in annotated():
                ase.io.write(str(tmp), frames, format=fmt, append=count > 0)
                count += len(frames)
            back = ase.io.read(str(tmp), index="-1", format=fmt)
        except Exception as err:  # ASE's writers raise many kinds
            raise FitError(f"{out}: ASE cannot write predictions in this format ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:200]}); use an .extxyz output") from None
        if e_key not in back.info or (forces and f_key not in back.arrays):
            raise FitError(f"{out}: the {out.suffix or 'chosen'} format does not keep {e_key!r} (atoms.info) "
                           f"and {f_key!r} (atoms.arrays); use an .extxyz or .xyz output")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": str(path), "out": str(out), "frames": count, "energy_key": e_key,
            "forces_key": f_key if forces else None}


def _store_atoms(path: str | Path, size: int = 1024) -> Any:
    """A store's frames as ``(list of ase.Atoms, AtomsData)`` chunks, labels under the keys it was packed with."""
    import ase

    frames_all = open_frames(path, None, None)
    assert isinstance(frames_all, FrameRows)
    for data in frames_all.chunks(size):
        atoms_list = []
        for i in range(len(data)):
            fr = data.frame(i)
            atoms = ase.Atoms(numbers=fr["z"], positions=fr["pos"], cell=fr["cell"], pbc=fr["pbc"])
            if data.energy is not None and data.energy_key:
                atoms.info[data.energy_key] = float(fr["energy"][0])
            if data.forces is not None and data.forces_key:
                atoms.arrays[data.forces_key] = fr["forces"].copy()
            atoms_list.append(atoms)
        yield atoms_list, data


def check_finite_summary(summary: dict[str, Any]) -> None:
    """Raise if any reported number is NaN/Inf (never report a false success)."""
    for split in ("valid", "test"):
        for k, v in (summary.get(split) or {}).items():
            if isinstance(v, float) and not math.isfinite(v):
                raise FloatingPointError(f"{split} {k} is {v}")


__all__ = ["AtomsDataError", "DataOptions", "FitError", "FitPlan", "LossOptions", "ModelOptions", "error_metrics",
           "evaluate_model", "fit", "predict_file"]
