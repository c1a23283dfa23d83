"""The run layer every experiment uses: presets, run folders, checkpoint -> model, resumable grids, tables.

- :class:`Preset` turns a named recipe into a :class:`~egnn.experiments.trainer.TrainConfig` (trainer
  overrides, model hyper-parameters and the learning-rate rule, all as data).
- :class:`RunFolder` guards an output folder: any trace of a run (log, checkpoint, temporary file) makes it
  "hold a run"; starting over it needs ``--resume``, and resuming checks that data, model and recipe are the
  ones the run was started with.
- :func:`load_trained` rebuilds a model from a checkpoint after checking the metadata against the stored
  tensor shapes, so a tampered or mismatched file fails before anything large is allocated.
- :func:`grid_cell` makes a grid of runs (tables, sweeps) resumable cell by cell.
- :func:`markdown_table` and :func:`ratio` format results the same way everywhere (plots live in
  :mod:`egnn.experiments.plots`).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from egnn.checkpoint import (
    CheckpointError,
    atomic_write,
    check_state_shapes,
    checkpoint_path,
    is_temp_file,
    load_checkpoint,
    load_state_dict_strict,
    read_checkpoint_info,
)
from egnn.experiments.training import RESUME_FREE, FitResult, Task, TrainConfig, Trainer
from egnn.experiments.training.distributed import on_rank0

RUN_FILE = "run.json"
LOG_FILE = "log.csv"
RESULT_FILE = "result.json"
# files the run layer and the trainer write into a run folder (and so may remove when a run restarts)
RUN_OUTPUTS = (RUN_FILE, LOG_FILE, "last.safetensors", "best.safetensors", "last.json", "best.json")


class RunFolderError(ValueError):
    """An output folder cannot be used for this run (it holds another run, or is not a folder)."""


# ---------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class LRRule:
    """How a preset sets the learning rate, as data.

    ``lr = value`` when ``value`` is set, else ``scale`` times the experiment's base learning rate (a model's
    or target's paper value); ``per_model`` fixes it for named models (e.g. one that diverges at the
    preset's rate).
    """

    value: float | None = None
    scale: float = 1.0
    per_model: Mapping[str, float] = field(default_factory=dict)

    def resolve(self, base: float | None, model: str | None = None) -> float:
        if model is not None and model in self.per_model:
            return float(self.per_model[model])
        if self.value is not None:
            return float(self.value)
        if base is None:
            raise ValueError("this preset scales the model's learning rate, but none is known")
        return float(base) * self.scale


@dataclass(frozen=True)
class Preset:
    """A named training recipe.

    Attributes:
        description: one line for ``--help`` and the README.
        train: :class:`TrainConfig` fields (``lr`` excluded: see ``lr``).
        lr: the learning-rate rule.
        model: model hyper-parameters (overriding the model's defaults).
        data: experiment-specific data settings (e.g. ``max_train``).
    """

    description: str
    train: Mapping[str, Any]
    lr: LRRule = LRRule()
    model: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = {f.name for f in fields(TrainConfig)} - {"lr"}
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ValueError(f"preset train settings {unknown} are not TrainConfig fields")

    def train_config(self, base_lr: float | None = None, model: str | None = None, **overrides: Any) -> TrainConfig:
        """The recipe's settings with the non-``None`` ``overrides`` applied (``ema_decay=0``: no average;
        ``grad_clip=0``: no clipping)."""
        cfg = TrainConfig(lr=self.lr.resolve(base_lr, model), **dict(self.train))
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        return replace(cfg, ema_decay=cfg.ema_decay or None, grad_clip=cfg.grad_clip or None)


# ---------------------------------------------------------------------------------------------- provenance


def code_version() -> str:
    """``egnn VERSION`` and, when the package runs from a git checkout, ``commit SHORT_SHA`` (``+dirty`` when
    tracked files differ from it): what results and tables print beside their figures."""
    from egnn import __version__

    text = f"egnn {__version__}"
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return text
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()

        sha = git("rev-parse", "--short=7", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return text
    return f"{text}, commit {sha}{'+dirty' if dirty else ''}"


# ------------------------------------------------------------------------------------------ run folders


def fingerprint_files(paths: Iterable[str | Path]) -> str:
    """SHA-256 (first 16 hex digits) of the contents of ``paths`` in order: identifies a data set's content
    wherever it lives."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _as_json(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists), so stored and current values compare equal."""
    return json.loads(json.dumps(dict(obj), default=str))


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def identity_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: run X, now Y"`` for every key whose value differs."""
    return [f"{k}: run {_short(stored.get(k))}, now {_short(current.get(k))}"
            for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]


class RunFolder:
    """The output folder of one training run.

    Args:
        path: the folder (created when the run starts).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def traces(self) -> list[Path]:
        """Files that show a run was started here: logs, checkpoints, run records, temporary files."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir()
                      if p.is_file() and (p.name in RUN_OUTPUTS or is_temp_file(p)))

    def holds_run(self) -> bool:
        return bool(self.traces())

    def has_checkpoint(self) -> bool:
        return checkpoint_path(self.path / "last").is_file()

    def stored_identity(self) -> dict[str, Any] | None:
        """The identity recorded when the run started (``run.json``), else that of its last checkpoint."""
        run = self.path / RUN_FILE
        if run.is_file():
            try:
                data = json.loads(run.read_text())
            except (OSError, ValueError):
                raise RunFolderError(f"{run} is not valid JSON; move the folder aside or choose another --out") \
                    from None
            if isinstance(data, dict) and isinstance(data.get("identity"), dict):
                return data["identity"]
        for name in ("last", "best"):
            try:
                meta = read_checkpoint_info(self.path / name).meta
            except CheckpointError:
                continue
            return meta.get("identity") if isinstance(meta.get("identity"), dict) else None
        return None

    def begin(self, identity: Mapping[str, Any], resume: bool) -> bool:
        """Open the folder for a run with ``identity`` (JSON-able: experiment, model, data fingerprint, recipe).

        Without ``resume`` the folder must not hold a run (nothing is changed otherwise). With ``resume`` the
        stored identity must equal ``identity``; leftover temporary files of interrupted writes are removed,
        and a run killed before its first checkpoint restarts cleanly (its own log and best checkpoint are
        removed too). Returns whether there is a checkpoint to resume from.

        Raises:
            RunFolderError: the path is a file, holds another run, or holds a run with another identity.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--out {str(self.path)!r} exists and is not a folder")
        traces = self.traces()
        if traces and not resume:
            names = ", ".join(p.name for p in traces[:4]) + (" ..." if len(traces) > 4 else "")
            raise RunFolderError(f"{self.path} already holds a run ({names}); pass --resume to continue it or "
                                 f"choose another --out")
        identity = _as_json(identity)
        if traces:
            stored = self.stored_identity()
            if stored is not None:
                diffs = identity_differences(stored, identity)
                if diffs:
                    raise RunFolderError(f"cannot resume the run in {self.path}: it was started with other "
                                         f"settings ({'; '.join(diffs)}); use the same ones or another --out")
        if self.has_checkpoint():
            for p in traces:  # temporary files of writes a kill interrupted
                if is_temp_file(p):
                    p.unlink()
            return True
        for p in traces:  # a run killed before its first checkpoint: start it again from nothing
            p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"identity": identity, "code": code_version()}  # the code that started the run (provenance)
        atomic_write(self.path / RUN_FILE, json.dumps(record, indent=1) + "\n")
        return False


def train_run(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    out: str | Path,
    identity: Mapping[str, Any],
    resume: bool = False,
    meta: Mapping[str, Any] | None = None,
) -> tuple[FitResult, Trainer]:
    """Train ``model`` on ``task`` in the run folder ``out`` (see :meth:`RunFolder.begin`).

    ``identity`` names what makes two runs the same run (experiment, model and hyper-parameters, data
    fingerprint, preset); the recipe's settings that change a run's course are added to it. It is stored in
    ``run.json`` and in every checkpoint with ``meta`` (everything else a checkpoint should carry, e.g. a
    target normaliser). Returns the fit summary and the trainer (its ``device``, ``eval_model()`` ...).
    """
    recipe = {k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE}
    ident = _as_json({**identity, "recipe": recipe})
    identity, meta = _as_json(identity), _as_json(meta or {})
    folder = RunFolder(out)
    # rank 0 alone opens the folder (the others never touch it); a refusal is reported once, by rank 0
    from_checkpoint = on_rank0(lambda: folder.begin(ident, resume))
    trainer = Trainer(model, task, cfg, out, {**meta, **identity, "identity": ident})
    if from_checkpoint:
        trainer.resume()
    return trainer.fit(), trainer


# -------------------------------------------------------------------------------------- checkpoint -> model


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder means its ``best`` checkpoint; ``x.safetensors`` / ``x.json`` mean ``x``."""
    p = Path(path)
    if p.is_dir():
        return p / "best"
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


def load_trained(
    path: str | Path,
    experiment: str,
    build: Callable[[dict[str, Any]], nn.Module],
    device: torch.device | str = "cpu",
    what: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a checkpoint (a run folder means its ``best``) and the checkpoint's metadata.

    ``build(meta)`` makes the untrained model from the metadata. It is first called on PyTorch's ``meta``
    device, where it allocates nothing, and the resulting parameter shapes are checked against the shapes
    stored in the file; only then are the tensors read, verified and loaded.

    Raises:
        CheckpointError: missing or corrupt file, another experiment's checkpoint, metadata that do not
            describe a model, shapes that do not match, or non-finite weights.
    """
    ck = resolve_checkpoint(path)
    info = read_checkpoint_info(ck)
    what = what or f"a checkpoint of the {experiment!r} experiment"
    if info.meta.get("experiment") != experiment:
        raise CheckpointError(f"{ck} is not {what} (experiment={info.meta.get('experiment')!r})")
    try:
        with torch.device("meta"):
            skeleton = build(info.meta)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, NotImplementedError) as err:
        raise CheckpointError(f"{ck}: its metadata do not describe a valid model ({type(err).__name__}: {err})") \
            from None
    check_state_shapes(skeleton.state_dict(), info.state_shapes("model"), what=str(info.path))
    del skeleton
    tree, meta = load_checkpoint(ck)
    model = build(meta)
    state = tree.get("model") if isinstance(tree, dict) else None
    load_state_dict_strict(model, state, what=str(info.path))
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{ck} holds non-finite weights ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
    return model.to(device).eval(), meta


# ------------------------------------------------------------------------------------------------ grids


def read_json(path: str | Path) -> Any:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else None


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomic JSON write (never a half-written result file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(p, json.dumps(obj, indent=1, allow_nan=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def finite_or_none(value: float | None) -> float | None:
    """``value`` if it is a finite number, else ``None`` (JSON has no NaN; a diverged run reports null)."""
    return value if value is not None and math.isfinite(value) else None


def grid_cell(out: str | Path, compute: Callable[[bool], dict[str, Any]]) -> dict[str, Any]:
    """One cell of a resumable grid of runs (a table row, a sweep point).

    A finished cell's result is read from ``out/result.json``; otherwise ``compute(resume)`` trains it —
    ``resume`` is true when ``out`` already holds a run, so an interrupted cell continues — and its result
    is written atomically.
    """
    done = read_json(Path(out) / RESULT_FILE)
    if isinstance(done, dict):
        return done
    row = compute(RunFolder(out).holds_run())
    write_json(Path(out) / RESULT_FILE, row)
    return row


# ---------------------------------------------------------------------------------------- tables, plots


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; ``None`` cells print as ``-``."""
    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(ours: float | None, paper: float | None, digits: int = 2) -> str | None:
    """``ours / paper`` formatted, or ``None`` when either is missing."""
    if ours is None or not paper or not math.isfinite(ours):
        return None
    return f"{ours / paper:.{digits}f}"

