"""Training, evaluation and the results table of the QM9 experiment on the shared trainer.

Recipe of the paper (arXiv:2102.09844, Section 5.3 / Appendix C.3) and of the reference repository
(``vgsatorras/egnn``: ``main_qm9.py`` and its README): targets normalised by the training mean and mean
absolute deviation, L1 loss, Adam with weight decay 1e-16, cosine learning-rate decay over the run, batch 96,
1000 epochs, learning rate 1e-3 for gap / homo / lumo and 5e-4 for the other targets (README), test MAE in
the paper's units at the epoch of best validation MAE.

Batching: molecules are concatenated without padding. A batch of rows is gathered with one vectorised
index computation from the dataset's atom offsets, and its edges (all ordered pairs within each molecule,
no self loops) come from :func:`egnn.ops.fully_connected_edges` (no Python loop over molecules).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from egnn.checkpoint import CheckpointError, read_checkpoint_info
from egnn.experiments.plots import plot_training_curve
from egnn.experiments.qm9 import data as qm9
from egnn.experiments.qm9.model import PAPER_HPARAMS, build_model, predict
from egnn.experiments.registry import Registry
from egnn.experiments.run import LRRule, Preset, load_trained, train_run
from egnn.experiments.trainer import FitResult, Task, TrainConfig, evaluate_split, resolve_device
from egnn.experiments.training.distributed import agree
from egnn.ops import fully_connected_edges

# EGNN test MAE of arXiv:2102.09844, Table 3 (units of qm9.TARGETS).
PAPER_MAE: dict[str, float] = {
    "alpha": 0.071, "gap": 48.0, "homo": 29.0, "lumo": 25.0, "mu": 0.029, "Cv": 0.031,
    "G": 12.0, "H": 12.0, "r2": 0.106, "U": 12.0, "U0": 11.0, "zpve": 1.55,
}
# Learning rates of the reference README (vgsatorras/egnn): 1e-3 for gap, homo, lumo; 5e-4 for the rest.
FAST_LR_TARGETS = frozenset({"gap", "homo", "lumo"})


def paper_lr(target: str) -> float:
    """The reference README's learning rate for ``target``."""
    check_target(target)
    return 1e-3 if target in FAST_LR_TARGETS else 5e-4


PRESETS: Registry[Preset] = Registry("QM9 preset")
# The paper's run: GPU work (1000 epochs over 100k molecules), evaluated every epoch as the reference.
PRESETS.add("paper", Preset(
    "arXiv:2102.09844 / reference README: 7 x 128, batch 96, 1000 epochs, cosine",
    {"epochs": 1000, "batch_size": 96, "weight_decay": 1e-16, "schedule": "cosine", "eval_every": 1,
     "checkpoint_every": 1},
    model=dict(PAPER_HPARAMS)))
# A 4-layer, 64-wide model (same layout) over the full training set for 20 epochs: measured on 2 idle CPU cores,
# 36.5 min of training and evaluation, homo test MAE 54.8 meV (README). Twice the paper's learning rate with a
# short warm-up and weight averaging (EMA 0.999).
PRESETS.add("quick-paper-model", Preset(
    "2 CPU cores / ~40 min: 4 x 64, batch 32, 20 epochs, cosine, 2x lr, EMA 0.999",
    {"epochs": 20, "batch_size": 32, "weight_decay": 1e-16, "schedule": "cosine", "eval_every": 5,
     "checkpoint_every": 1, "warmup_steps": 300, "ema_decay": 0.999},
    LRRule(scale=2.0), model={**PAPER_HPARAMS, "hidden_nf": 64, "n_layers": 4}))


def check_target(target: str) -> str:
    """``target`` itself if it is a QM9 target name, else ``ValueError`` listing the valid names."""
    if target not in qm9.TARGET_NAMES:
        raise ValueError(f"unknown QM9 target {target!r}; choose one of: {', '.join(qm9.TARGET_NAMES)}")
    return target


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)


# ------------------------------------------------------------------------------------------------ batching


@dataclass(frozen=True)
class Normalizer:
    """``y_norm = (y - mean) / mad`` with the training set's mean and mean absolute deviation."""

    mean: float
    mad: float

    @classmethod
    def fit(cls, y: np.ndarray | Tensor) -> Normalizer:
        y = np.asarray(y, dtype=np.float64)
        if y.size == 0:
            raise ValueError("cannot normalise with an empty training set")
        mean = float(y.mean())
        mad = float(np.abs(y - mean).mean())
        return cls(mean, mad if mad > 0 else 1.0)

    def normalize(self, y: Tensor) -> Tensor:
        return (y - self.mean) / self.mad

    def denormalize(self, y: Tensor) -> Tensor:
        return y * self.mad + self.mean


@dataclass
class QM9Batch:
    """Molecules concatenated without padding.

    Attributes:
        h: node features ``[N, 15]``.
        pos: positions in Angstrom ``[N, 3]``.
        edge_index: all ordered pairs within each molecule, no self loops ``[2, E]``.
        batch: molecule of each atom ``[N]`` (sorted).
        y: target in the paper's unit ``[B]``.
        num_graphs: ``B``.
    """

    h: Tensor
    pos: Tensor
    edge_index: Tensor
    batch: Tensor
    y: Tensor
    num_graphs: int


class QM9Split:
    """Rows of a :class:`~egnn.experiments.qm9.data.QM9Data` for one target; ``get`` builds batches.

    Args:
        data: the molecules (all of them; ``rows`` selects).
        rows: rows of ``data`` in this split, in order.
        target: target name.
        dtype: floating dtype of features, positions and targets in the batches.
    """

    def __init__(self, data: qm9.QM9Data, rows: np.ndarray, target: str, dtype: torch.dtype = torch.float32):
        rows = np.asarray(rows, dtype=np.int64)
        self.target = check_target(target)
        self.dtype = dtype
        self.rows = rows
        self.starts = torch.from_numpy(np.ascontiguousarray(data.offsets[rows]))
        self.sizes = torch.from_numpy(np.ascontiguousarray(data.offsets[rows + 1] - data.offsets[rows]))
        self.z = torch.from_numpy(np.ascontiguousarray(data.z)).long()
        self.pos = torch.from_numpy(np.ascontiguousarray(data.pos))
        self.y = torch.from_numpy(np.ascontiguousarray(data.targets[rows, qm9.target_index(target)]))

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def atoms(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Atom rows of molecules ``indices`` (concatenated) and their sizes, without a Python loop."""
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        sizes = self.sizes[indices]
        starts = self.starts[indices]
        first = torch.cumsum(sizes, 0) - sizes  # start of each molecule in the batch
        atoms = torch.repeat_interleave(starts - first, sizes) + torch.arange(int(sizes.sum()))
        return atoms, sizes

    def get(self, indices: Tensor, device: torch.device | str = "cpu") -> QM9Batch:
        atoms, sizes = self.atoms(indices)
        h = feature_table()[self.z[atoms]]
        edge_index = fully_connected_edges(sizes)
        batch = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        return QM9Batch(
            h=h.to(device, self.dtype),
            pos=self.pos[atoms].to(device, self.dtype),
            edge_index=edge_index.to(device),
            batch=batch.to(device),
            y=self.y[indices].to(device, self.dtype),
            num_graphs=int(sizes.numel()),
        )


_FEATURE_TABLE: list[Tensor] = []


def feature_table() -> Tensor:
    """Row ``Z`` holds :func:`~egnn.experiments.qm9.data.node_features` of element ``Z`` (zeros for Z not in
    H, C, N, O, F): batches look their features up instead of recomputing them."""
    if not _FEATURE_TABLE:
        table = torch.zeros(max(qm9.SPECIES) + 1, 15)
        table[list(qm9.SPECIES)] = qm9.node_features(list(qm9.SPECIES))
        _FEATURE_TABLE.append(table)
    return _FEATURE_TABLE[0]


def load_splits_for(
    data_dir: str | Path, target: str, max_train: int | None = None, dtype: torch.dtype = torch.float32
) -> dict[str, QM9Split]:
    """The paper's train / valid / test splits of the cache in ``data_dir`` for ``target``.

    The cache is verified (and rebuilt from qm9pack if it is corrupt or outdated; a missing source raises
    :class:`~egnn.experiments.qm9.data.QM9DataError` with the install command). Split membership comes from
    ``data_dir/splits.npz`` (GDB-9 indices), or is recomputed (same seed) when that file is absent.
    """
    check_target(target)
    data = qm9.load(data_dir, progress=False)
    try:
        by_index = qm9.load_splits(data_dir)
        rows = {name: data.rows_of(idx) for name, idx in by_index.items()}
    except qm9.CacheError:
        rows = qm9.make_splits(len(data), data.index)
    except KeyError as err:
        raise qm9.QM9DataError(f"{data_dir}/splits.npz does not match the cache ({err}); run "
                               f"egnn qm9 prepare --out {data_dir} --force") from None
    if max_train is not None:
        if max_train < 1:
            raise ValueError(f"max_train must be >= 1, got {max_train}")
        rows["train"] = rows["train"][:max_train]
    return {name: QM9Split(data, r, target, dtype) for name, r in rows.items()}


# ---------------------------------------------------------------------------------------------- the task


def make_task(splits: dict[str, QM9Split], norm: Normalizer) -> Task:
    """L1 loss on normalised targets; metric: absolute error in the paper's unit (mean = MAE)."""

    def loss(model: nn.Module, b: QM9Batch) -> Tensor:
        pred = predict(model, b.h, b.pos, b.edge_index, b.batch, b.num_graphs)
        return torch.nn.functional.l1_loss(pred, norm.normalize(b.y))

    def metric(model: nn.Module, b: QM9Batch) -> tuple[Tensor, int]:
        pred = norm.denormalize(predict(model, b.h, b.pos, b.edge_index, b.batch, b.num_graphs))
        return (pred - b.y).abs().sum(), b.num_graphs

    return Task(splits["train"], splits["valid"], splits["test"], loss, metric, "mae")


def train_config_for(target: str, preset: str, **overrides: Any) -> TrainConfig:
    """The preset's :class:`TrainConfig` for ``target`` with the non-``None`` ``overrides`` applied
    (``ema_decay=0`` turns weight averaging off)."""
    return get_preset(preset).train_config(paper_lr(target), **overrides)


def train_qm9(
    target: str,
    preset: str = "paper",
    out: str | Path | None = None,
    data_dir: str | Path = "data/qm9",
    max_train: int | None = None,
    epochs: int | None = None,
    resume: bool = False,
    hparams: dict[str, Any] | None = None,
    **train_overrides: Any,
) -> FitResult:
    """Train the QM9 model on one target; returns the fit summary (test MAE at the best validation epoch).

    Args:
        target: one of :data:`~egnn.experiments.qm9.data.TARGET_NAMES`.
        preset: ``paper`` or ``quick`` (see :data:`PRESETS`).
        out: run directory (default ``runs/qm9_<target>_<preset>``); holds ``log.csv``, ``last.*``, ``best.*``
            and ``training_curve.png``.
        data_dir: folder of the cache written by ``egnn qm9 prepare``.
        max_train: use only the first ``max_train`` training molecules (default: the preset's, or all).
        epochs: override the preset's number of epochs (the cosine schedule spans the new length).
        resume: continue the run in ``out`` from its last checkpoint.
        hparams: override model hyper-parameters of the preset.
        train_overrides: any :class:`TrainConfig` field (``lr``, ``batch_size``, ``device``, ``max_minutes`` ...).
    """
    check_target(target)
    p = get_preset(preset)
    cfg = train_config_for(target, preset, epochs=epochs, **train_overrides)
    hp = {**p.model, **(hparams or {})}
    max_train = max_train if max_train is not None else p.data.get("max_train")
    out = Path(out or f"runs/qm9_{target}_{preset}")
    # under torchrun a missing or bad data set is reported once, by the lowest rank that met it
    splits = agree(lambda: load_splits_for(data_dir, target, max_train))
    norm = Normalizer.fit(splits["train"].y.numpy())
    torch.manual_seed(cfg.seed)
    model = build_model(**hp)
    identity = {"experiment": "qm9", "target": target, "preset": preset, "hparams": hp, "max_train": max_train,
                "n_train": len(splits["train"]), "data": _data_fingerprint(data_dir)}
    meta = {"normalizer": asdict(norm), "unit": _unit(target)}
    result, trainer = train_run(model, make_task(splits, norm), cfg, out, identity, resume, meta)
    if trainer.rank == 0:
        paper = PAPER_MAE[target]
        plot_training_curve(out / "log.csv", out / "training_curve.png", metric=f"{target} MAE ({_unit(target)})",
                            train_label="train MAE (running, per epoch)", train_scale=norm.mad,
                            references={f"paper EGNN {paper:g}": paper}, title=f"QM9 {target} ({preset})")
    return result


def _data_fingerprint(data_dir: str | Path) -> str:
    """Identifies the cache's content (from the checksums it records for each array)."""
    arrays = qm9.cache_info(Path(data_dir) / qm9.CACHE_NAME).get("arrays", {})
    return hashlib.sha256(json.dumps(arrays, sort_keys=True).encode()).hexdigest()[:16]


def _unit(target: str) -> str:
    return qm9.TARGETS[qm9.target_index(target)].unit


# ------------------------------------------------------------------------------------------- evaluation


def load_model(
    checkpoint: str | Path, device: torch.device | str = "cpu", target: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Model and meta of a QM9 run folder (its ``best``) or checkpoint; ``target`` (if given) must be the one it
    was trained for."""
    model, meta = load_trained(checkpoint, "qm9", lambda m: build_model(**m["hparams"]), device,
                               what="a QM9 checkpoint")
    if target is not None and meta.get("target") != check_target(target):
        raise CheckpointError(f"{checkpoint} was trained for target {meta.get('target')!r}, not {target!r}")
    return model, meta


def evaluate_checkpoint(
    checkpoint: str | Path, data_dir: str | Path = "data/qm9", device: str = "auto", target: str | None = None,
    split: str = "test", progress: bool = False,
) -> dict[str, Any]:
    """MAE (paper unit) of a checkpoint on a split, recomputed from the data.

    A run directory is evaluated at its ``best`` checkpoint (the best-validation epoch).
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be train, valid or test, got {split!r}")
    dev = resolve_device(device)
    if _is_atoms_model(checkpoint):
        return _evaluate_atoms_checkpoint(checkpoint, data_dir, dev, target, split)
    model, meta = load_model(checkpoint, dev, target)
    splits = load_splits_for(data_dir, meta["target"], meta.get("max_train"))
    norm = Normalizer(**meta["normalizer"])
    mae = evaluate_split(make_task(splits, norm), splits[split], model, dev, progress=progress, desc=split)
    name = meta["target"]
    return {"target": name, "unit": meta.get("unit", _unit(name)), f"{split}_mae": mae, "epoch": meta.get("epoch"),
            "best_epoch": meta.get("best", {}).get("epoch"), "paper_mae": PAPER_MAE[name],
            "preset": meta.get("preset"), "molecules": len(splits[split]),
            "parameters": sum(p.numel() for p in model.parameters())}


def _is_atoms_model(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` (or a run folder's best) was trained on the atoms path (``--preset quick``)."""
    from egnn.atoms.model import MODEL_KIND, resolve_checkpoint

    try:
        return read_checkpoint_info(resolve_checkpoint(checkpoint)).meta.get("kind") == MODEL_KIND
    except CheckpointError:
        return False  # the paper-model loader reports what is wrong with it


def _evaluate_atoms_checkpoint(checkpoint: str | Path, data_dir: str | Path, device: torch.device,
                               target: str | None, split: str) -> dict[str, Any]:
    from egnn.atoms.model import load_model as load_atoms_model
    from egnn.experiments.qm9.atoms import split_rows, to_atoms

    model = load_atoms_model(checkpoint, device=device)
    meta = model.meta  # type: ignore[attr-defined]
    name = meta.get("target")
    if name not in PAPER_MAE:
        raise CheckpointError(f"{checkpoint} is an atoms model but not a QM9 one (target {name!r})")
    if target is not None and name != check_target(target):
        raise CheckpointError(f"{checkpoint} was trained for target {name!r}, not {target!r}")
    data = qm9.load(data_dir, progress=False)
    atoms = to_atoms(data, split_rows(data, data_dir)[split], name)
    pred = model.predict(atoms, forces=False, batch_size=256)["energy"]
    assert atoms.energy is not None
    mae, n = float(np.abs(pred - atoms.energy).mean()), len(atoms)
    return {"target": name, "unit": _unit(name), f"{split}_mae": mae, "epoch": meta.get("epoch"),
            "best_epoch": meta.get("best", {}).get("epoch"), "paper_mae": PAPER_MAE[name],
            "preset": meta.get("preset"), "molecules": n, "parameters": sum(p.numel() for p in model.parameters())}


# ------------------------------------------------------------------------------------------------ table


def collect_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Every QM9 run (a folder with ``best.json``) under ``runs_dir``, with its progress and test MAE."""
    rows = []
    bests = {p.with_suffix("") for pattern in ("best.safetensors", "best.json") for p in Path(runs_dir).rglob(pattern)}
    for best in sorted(bests):
        try:
            meta = read_checkpoint_info(best).meta
        except CheckpointError:
            continue
        if meta.get("experiment") != "qm9":
            continue
        epoch = meta.get("epoch")
        try:
            epoch = read_checkpoint_info(best.with_name("last")).meta.get("epoch", epoch)
        except CheckpointError:
            pass
        epochs = meta.get("train_config", {}).get("epochs")
        rows.append({
            "run": str(best.parent), "target": meta.get("target"), "preset": meta.get("preset"),
            "epoch": epoch, "epochs": epochs, "finished": epoch is not None and epochs is not None and epoch >= epochs,
            "best_epoch": meta.get("best", {}).get("epoch"), "test_mae": meta.get("best", {}).get("test"),
            "n_train": meta.get("n_train"), "train_minutes": (meta.get("train_seconds") or 0.0) / 60,
        })
    return rows


def table(runs_dir: str | Path = "runs", include_unfinished: bool = False) -> str:
    """Markdown table of finished runs (test MAE at the best validation epoch) beside the paper's EGNN."""
    runs = [r for r in collect_runs(runs_dir) if r["target"] in PAPER_MAE and (r["finished"] or include_unfinished)]
    order = {name: i for i, name in enumerate(qm9.TARGET_NAMES)}
    runs.sort(key=lambda r: (order[r["target"]], r["run"]))
    lines = [
        "| target | unit | ours (test MAE) | paper EGNN | ours / paper | preset | epochs | train molecules | run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        mae = r["test_mae"]
        paper = PAPER_MAE[r["target"]]
        ours = f"{mae:.4g}" if mae is not None else "n/a"
        ratio = f"{mae / paper:.2f}" if mae is not None else "n/a"
        ep = f"{r['epoch']}/{r['epochs']}" + ("" if r["finished"] else " (unfinished)")
        lines.append(f"| {r['target']} | {_unit(r['target'])} | {ours} | {paper:g} | {ratio} | {r['preset']} | "
                     f"{ep} | {r['n_train']} | {r['run']} |")
    done = {r["target"] for r in runs}
    for name in qm9.TARGET_NAMES:
        if name not in done:
            lines.append(f"| {name} | {_unit(name)} | - | {PAPER_MAE[name]:g} | - | - | - | - | - |")
    lines.append("")
    lines.append("Paper: EGNN column of Table 3, arXiv:2102.09844 (test MAE, 100k training molecules, 1000 epochs).")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- plots


