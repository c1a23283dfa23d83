"""Plots shared by the experiments (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (plots are files, never windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curve(
    log_csv: str | Path,
    out_png: str | Path,
    *,
    metric: str = "MSE",
    train_label: str = "train loss",
    train_scale: float = 1.0,
    references: dict[str, float] | None = None,
    title: str | None = None,
) -> None:
    """Training curve from a trainer's ``log.csv``: train loss per epoch (times ``train_scale``, e.g. to show a
    normalised loss in physical units), valid and test metric at each evaluation, and horizontal reference
    lines (``{"paper EGNN 0.0071": 0.0071}``), on a log scale."""
    plt = pyplot()
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot([int(r["epoch"]) for r in rows], [float(r["train_loss"]) * train_scale for r in rows], label=train_label)
    evals = [r for r in rows if r.get("valid")]
    if evals:
        ax.plot([int(r["epoch"]) for r in evals], [float(r["valid"]) for r in evals], "o-", ms=2,
                label=f"valid {metric}")
        tests = [(int(r["epoch"]), float(r["test"])) for r in evals if r.get("test")]
        if tests:
            ax.plot(*zip(*tests), "s-", ms=2, label=f"test {metric}")
    for i, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value, color="gray", ls=("--", ":", "-.")[i % 3], lw=1, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
