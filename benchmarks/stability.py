"""Stability study: does a deep EGNN stay finite while training on large, variable-size point clouds?

    python benchmarks/stability.py --out DIR [--quick] [--steps S] [--layers 4 8 16] [--options NAME ...]

For every option set (the paper's plain EGCL -- :math:`C = 1/\\deg(i)` mean aggregation, no ``normalize``,
no ``tanh``, which is also the reference code's ``E_GCL`` default -- and every combination of
``normalize``, ``tanh`` with ``coords_range`` and ``sum`` aggregation) and every depth (4, 8, 16 layers,
hidden 64, float32), an :class:`egnn.nn.EGNN` is trained with Adam (lr 1e-3, no gradient clipping) to map
charged point clouds to their positions after a few steps of a softened Coulomb simulation (an equivariant
target: rotating, reflecting, translating or permuting the input does the same to the target).

Data: each graph has ``n`` nodes, ``n`` log-uniform in ``[n_min, n_max]`` (10 to 1000), uniform in a cube at
unit density (so a 1000-node cloud spans ~10 units), charges +-1 as the node feature; its edges are a radius
graph (r = 1.6, at most 24 neighbours) or a kNN graph (k = 12), drawn per graph, so every batch mixes sizes
and graph types. The simulation moves every particle under the forces of its graph neighbours,
:math:`F_i = \\sum_j q_i q_j (x_i - x_j) / (\\|x_i - x_j\\|^2 + s^2)^{3/2}`, from rest, with ``sim_steps``
leapfrog steps of ``dt``; the model predicts the displaced positions (loss: mean squared error per node).

Per run the CSV records: steps with a non-finite loss, output or gradient (``nan_steps``) and the first such
step, the largest ``|x|`` of the output positions and the largest gradient norm over training, the final
training loss (mean of the last 5 % of steps with a finite loss) and, on a held-out set that always contains
a 1000-node graph, the loss, ``max |x|`` and whether every output is finite. When the parameters themselves
become non-finite the run stops and the remaining steps count as non-finite. A PNG plots the loss curves and
the summary. ``--scale`` multiplies all lengths (positions and targets; same graphs): the same task in
other units, which is where an unnormalised layer is fragile. ``--quick`` runs a reduced sweep (fewer steps,
smaller graphs) for a smoke check.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from egnn.nn import EGNN
from egnn.ops import Graph, collate, knn_graph, radius_graph

# ------------------------------------------------------------------------------------------------ options
# The three switches studied; "paper" is the plain layer of arXiv:2102.09844 eq. (3)-(6) with the
# reference implementation's defaults (coords_agg='mean', normalize=False, tanh=False).
SWITCHES: dict[str, dict[str, object]] = {
    "normalize": {"normalize": True},
    "tanh": {"tanh": True, "coords_range": 3.0},
    "sum": {"coord_agg": "sum"},
}


def option_sets() -> dict[str, dict[str, object]]:
    """Every combination of :data:`SWITCHES`, keyed ``paper`` (none) or ``a+b+...``."""
    sets: dict[str, dict[str, object]] = {}
    names = list(SWITCHES)
    for k in range(len(names) + 1):
        for combo in itertools.combinations(names, k):
            opts: dict[str, object] = {}
            for name in combo:
                opts.update(SWITCHES[name])
            sets["+".join(combo) or "paper"] = opts
    return sets


# --------------------------------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    """Synthetic charged point clouds (see the module docstring)."""

    n_min: int = 10
    n_max: int = 1000
    graphs_per_batch: int = 2
    radius: float = 1.6
    max_neighbors: int = 24
    k: int = 12
    softening: float = 0.3
    dt: float = 0.05
    sim_steps: int = 10
    train_batches: int = 64
    scale: float = 1.0
    seed: int = 0


def simulate(pos: Tensor, charge: Tensor, edge_index: Tensor, cfg: DataConfig) -> Tensor:
    """Positions after ``cfg.sim_steps`` leapfrog steps of the softened Coulomb forces along the edges."""
    src, dst = edge_index
    x = pos.double().clone()
    q = charge.double().flatten()
    v = torch.zeros_like(x)

    def force(x: Tensor) -> Tensor:
        d = x[dst] - x[src]
        w = (q[dst] * q[src]) / (d.pow(2).sum(-1) + cfg.softening**2).pow(1.5)
        return torch.zeros_like(x).index_add_(0, dst, d * w[:, None])

    a = force(x)
    for _ in range(cfg.sim_steps):
        v = v + 0.5 * cfg.dt * a
        x = x + cfg.dt * v
        a = force(x)
        v = v + 0.5 * cfg.dt * a
    return x.to(pos.dtype)


def make_graph(n: int, use_knn: bool, cfg: DataConfig, gen: torch.Generator) -> Graph:
    """One charged cloud of ``n`` nodes at unit density with its graph and simulated target.

    Positions and target are then multiplied by ``cfg.scale`` (the same physics in other length units).
    """
    side = n ** (1.0 / 3.0)
    pos = torch.rand(n, 3, generator=gen) * side
    charge = torch.randint(0, 2, (n, 1), generator=gen).float() * 2 - 1
    if n == 1:
        edge_index = torch.empty(2, 0, dtype=torch.long)
    elif use_knn:
        edge_index = knn_graph(pos, cfg.k)
    else:
        edge_index = radius_graph(pos, cfg.radius, max_num_neighbors=cfg.max_neighbors)
    target = simulate(pos, charge, edge_index, cfg)
    return Graph(h=charge, pos=pos * cfg.scale, edge_index=edge_index, y=target * cfg.scale)


def sample_size(cfg: DataConfig, gen: torch.Generator) -> int:
    lo, hi = math.log(cfg.n_min), math.log(cfg.n_max)
    return int(round(math.exp(lo + (hi - lo) * float(torch.rand(1, generator=gen)))))


def make_batches(cfg: DataConfig, count: int, seed: int, include_sizes: tuple[int, ...] = ()) -> list[Graph]:
    """``count`` batches of ``cfg.graphs_per_batch`` graphs; ``include_sizes`` forces some graph sizes first."""
    gen = torch.Generator().manual_seed(seed)
    forced = list(include_sizes)
    batches = []
    for _ in range(count):
        graphs = []
        for _ in range(cfg.graphs_per_batch):
            n = forced.pop(0) if forced else sample_size(cfg, gen)
            graphs.append(make_graph(n, bool(torch.rand(1, generator=gen) < 0.5), cfg, gen))
        batches.append(collate(graphs))
    return batches


# -------------------------------------------------------------------------------------------------- train
@dataclass
class RunResult:
    """One row of the CSV."""

    options: str
    layers: int
    steps: int
    nan_steps: int = 0
    first_nan_step: int = -1
    max_abs_x: float = 0.0
    max_grad_norm: float = 0.0
    final_loss: float = float("nan")
    eval_loss: float = float("nan")
    eval_max_abs_x: float = float("nan")
    eval_finite: bool = False
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list, repr=False)


def _loss(model: EGNN, g: Graph) -> tuple[Tensor, Tensor]:
    out = model(g.h, g.pos, g.edge_index, batch=g.batch, num_graphs=g.num_graphs)
    return (out.pos - g.y).pow(2).sum(-1).mean(), out.pos


def train_one(
    name: str, opts: dict[str, object], layers: int, steps: int, train: list[Graph], evals: list[Graph],
    hidden: int = 64, lr: float = 1e-3, seed: int = 0, progress: bool = True,
) -> RunResult:
    """Train one model for ``steps`` Adam steps, cycling through ``train``; see :class:`RunResult`."""
    torch.manual_seed(seed)
    model = EGNN(1, hidden, layers, **opts)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    res = RunResult(options=name, layers=layers, steps=steps)
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=f"{name} L={layers}", leave=False, disable=not progress)
    for step in bar:
        g = train[step % len(train)]
        loss, pos = _loss(model, g)
        opt.zero_grad(set_to_none=True)
        bad = not bool(torch.isfinite(loss)) or not bool(torch.isfinite(pos).all())
        if not bad:
            loss.backward()
            sq = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
            bad = not math.isfinite(sq)
            if not bad:
                res.max_grad_norm = max(res.max_grad_norm, math.sqrt(sq))
        finite_x = pos.detach()[torch.isfinite(pos.detach())]
        if finite_x.numel():
            res.max_abs_x = max(res.max_abs_x, float(finite_x.abs().max()))
        if bad:
            res.nan_steps += 1
            if res.first_nan_step < 0:
                res.first_nan_step = step
            res.losses.append(float("nan"))
        else:
            opt.step()  # a non-finite step is skipped, as a guarded training loop would
            res.losses.append(float(loss))
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            res.nan_steps += steps - step - 1  # parameters are gone: every later step is non-finite too
            res.losses.extend([float("nan")] * (steps - step - 1))
            break
        if step % 25 == 0:
            bar.set_postfix(loss=f"{res.losses[-1]:.3g}", x=f"{res.max_abs_x:.3g}")
    tail = [v for v in res.losses[-max(1, steps // 20) :] if math.isfinite(v)]
    res.final_loss = float(np.mean(tail)) if tail else float("nan")
    with torch.no_grad():
        total, nodes, finite, max_x = 0.0, 0, True, 0.0
        for g in evals:
            loss, pos = _loss(model, g)
            finite &= bool(torch.isfinite(pos).all()) and bool(torch.isfinite(loss))
            total += float(loss) * g.num_nodes
            nodes += g.num_nodes
            fx = pos[torch.isfinite(pos)]
            max_x = max(max_x, float(fx.abs().max()) if fx.numel() else float("inf"))
        res.eval_loss, res.eval_max_abs_x, res.eval_finite = total / nodes, max_x, finite
    res.seconds = time.perf_counter() - t0
    return res


# ---------------------------------------------------------------------------------------------- reporting
CSV_FIELDS = [f for f in RunResult.__dataclass_fields__ if f != "losses"]


def write_csv(path: Path, results: list[RunResult]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in results:
            row = asdict(r)
            row.pop("losses")
            w.writerow(row)


def write_losses(path: Path, results: list[RunResult]) -> None:
    """Per-step training losses, one column per run (long format: options, layers, step, loss)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["options", "layers", "step", "loss"])
        for r in results:
            for i, v in enumerate(r.losses):
                w.writerow([r.options, r.layers, i, f"{v:.6g}"])


def read_results(out: Path) -> list[RunResult]:
    """Rebuild the results from ``stability.csv`` and ``stability_losses.csv`` (for ``--replot``)."""
    types = {f.name: f.type for f in RunResult.__dataclass_fields__.values()}
    results = []
    with (out / "stability.csv").open() as f:
        for row in csv.DictReader(f):
            kw = {}
            for k, v in row.items():
                t = types[k]
                kw[k] = v == "True" if t in ("bool", bool) else int(v) if t in ("int", int) else (
                    float(v) if t in ("float", float) else v)
            results.append(RunResult(**kw))
    by_key = {(r.options, r.layers): r for r in results}
    with (out / "stability_losses.csv").open() as f:
        for row in csv.DictReader(f):
            by_key[(row["options"], int(row["layers"]))].losses.append(float(row["loss"]))
    return results


def plot(path: Path, results: list[RunResult], baseline: float) -> None:
    from egnn.experiments.plots import pyplot

    plt = pyplot()

    depths = sorted({r.layers for r in results})
    names = list(dict.fromkeys(r.options for r in results))
    ncol = len(depths) + 2
    fig, axes = plt.subplots(1, ncol, figsize=(4.6 * ncol, 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, depth in zip(axes[0], depths):
        for i, name in enumerate(names):
            for r in results:
                if r.options == name and r.layers == depth:
                    y = np.array(r.losses, dtype=float)
                    k = max(1, len(y) // 50)
                    smooth = np.convolve(y, np.ones(k) / k, mode="valid")
                    ax.plot(np.arange(len(smooth)) + k - 1, smooth, color=cmap(i % 10), label=name, lw=1.2)
                    bad = np.flatnonzero(~np.isfinite(y))
                    if bad.size:
                        ax.plot(bad[0], baseline, "x", color=cmap(i % 10), ms=9, mew=2)
        ax.axhline(baseline, color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{depth} layers: training loss (x = first NaN/Inf)", fontsize=9)
        ax.set_xlabel("Adam step")
    axes[0][0].legend(fontsize=7)
    width = 0.8 / max(1, len(depths))

    def bars(ax, value, ylabel: str, title: str, log: bool) -> None:
        for j, depth in enumerate(depths):
            vals = []
            for name in names:
                r = next((r for r in results if r.options == name and r.layers == depth), None)
                vals.append(value(r) if r else np.nan)
            ax.bar(np.arange(len(names)) + j * width, vals, width, label=f"{depth} layers")
        ax.set_xticks(np.arange(len(names)) + width * (len(depths) - 1) / 2)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
        ax.legend(fontsize=7)

    bars(axes[0][-2], lambda r: r.nan_steps / max(1, r.steps), "fraction of steps", "steps with NaN/Inf", False)
    bars(axes[0][-1], lambda r: max(r.max_grad_norm, 1e-3), "max gradient norm", "largest gradient norm", True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (CSV + PNG)")
    parser.add_argument("--quick", action="store_true", help="reduced sweep: 60 steps, graphs of 10-120 nodes")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps per run (default 1000; quick 60)")
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--options", nargs="+", default=None, help=f"subset of {list(option_sets())}")
    parser.add_argument("--n-max", type=int, default=None, help="largest training graph (default 1000)")
    parser.add_argument("--graphs-per-batch", type=int, default=None)
    parser.add_argument("--scale", type=float, default=1.0, help="length unit: multiply positions and targets")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the CSVs in --out")
    args = parser.parse_args(argv)
    if args.replot:
        results = read_results(args.out)
        # the first step's loss is the identity map's (the coordinate MLP starts near zero)
        baseline = float(np.nanmedian([r.losses[0] for r in results if r.losses]))
        plot(args.out / "stability.png", results, baseline=baseline)
        print(f"wrote {args.out / 'stability.png'}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = option_sets()
    names = args.options or list(sets)
    unknown = [n for n in names if n not in sets]
    if unknown:
        parser.error(f"unknown option set(s) {unknown}; choose from {list(sets)}")
    cfg = DataConfig(seed=args.seed, scale=args.scale)
    steps = args.steps or (60 if args.quick else 1000)
    if args.quick:
        cfg.n_max = 120
    if args.n_max:
        cfg.n_max = args.n_max
    if args.graphs_per_batch:
        cfg.graphs_per_batch = args.graphs_per_batch
    args.out.mkdir(parents=True, exist_ok=True)

    train = make_batches(cfg, cfg.train_batches, cfg.seed, include_sizes=(cfg.n_max,))
    eval_cfg = DataConfig(**{**asdict(cfg), "n_max": 1000, "graphs_per_batch": 2})
    evals = make_batches(eval_cfg, 4, cfg.seed + 1, include_sizes=(1000, 10))
    # the trivial prediction "nothing moves" as a reference loss
    baseline = float(np.mean([float((g.pos - g.y).pow(2).sum(-1).mean()) for g in train]))
    mean_nodes = np.mean([g.num_nodes for g in train])
    mean_edges = np.mean([g.num_edges for g in train])
    print(f"{len(train)} training batches: {mean_nodes:.0f} nodes, {mean_edges:.0f} edges on average; "
          f"loss of the identity map {baseline:.4g}; {len(names)} option sets x {args.layers} layers x {steps} steps")

    results: list[RunResult] = []
    runs = [(n, d) for d in args.layers for n in names]
    for name, depth in tqdm(runs, desc="runs"):
        r = train_one(name, sets[name], depth, steps, train, evals, lr=args.lr, seed=args.seed)
        results.append(r)
        tqdm.write(
            f"{name:24s} L={depth:2d}  nan_steps={r.nan_steps:4d}  max|x|={r.max_abs_x:9.3g}  "
            f"max|grad|={r.max_grad_norm:9.3g}  final={r.final_loss:.4g}  eval={r.eval_loss:.4g}  "
            f"eval_finite={r.eval_finite}  {r.seconds:.0f}s"
        )
        write_csv(args.out / "stability.csv", results)  # rewritten after every run: partial results survive
    write_losses(args.out / "stability_losses.csv", results)
    plot(args.out / "stability.png", results, baseline)
    print(f"wrote {args.out / 'stability.csv'}, {args.out / 'stability_losses.csv'}, {args.out / 'stability.png'}")


if __name__ == "__main__":
    main()
