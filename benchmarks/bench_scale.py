"""Million-node point clouds: time the neighbour search and a chunked EGNN forward (or a training step).

    python benchmarks/bench_scale.py --nodes N [--chunk 262144] [--train [--chunk-checkpoint]]

prints exactly one line::

    N nodes (order O), E edges, graph T1 s, forward T2 s, peak RSS M GiB, F TFLOP at R GFLOP/s

for a 4-layer, hidden-64 :class:`egnn.nn.EGNN` (inference, ``torch.no_grad``) on ``N`` points drawn uniformly in
the unit cube, with a radius graph of about 32 neighbours per node: the radius is chosen from the density,
``N * (4/3) pi r^3 * f(r) = target``, with ``f(r)`` the mean fraction of a ball of radius ``r`` that lies inside
the cube (boundary correction), and ``max_num_neighbors=32`` (so the k-d tree is queried with ``k = 33``).
The graph time ``T1`` (``egnn.ops.radius_graph``, k-d tree path) is measured separately from the forward
time ``T2``. Messages are computed and scattered ``--chunk`` edges at a time (``EGNNConfig.chunk_size``), so
the working memory is ``O(N H + chunk H)`` on top of the ``[2, E]`` edge index.

``--train`` runs one training step instead (forward + MSE loss on the output positions + backward + Adam),
with activation checkpointing (``EGNNConfig.checkpoint=True``) and the same chunking; the line then reads
``train step T2 s``.

``--chunk-checkpoint`` (with ``--train``) also recomputes each edge chunk's messages in the backward pass
(``EGNNConfig.checkpoint_chunks``): layer checkpointing alone still holds one layer's activations for all its
edges during that layer's backward.

By default the points are renumbered along a Z-order curve first (``--order morton``,
:func:`egnn.ops.locality_order`, timed separately, as a user would prepare a large point cloud): neighbours then
sit close in memory, so the gathers of source rows hit the cache. ``--order input`` keeps the random numbering.

``--kdtree-only`` times just ``scipy.spatial.cKDTree`` build + ``query(k=33, distance_upper_bound=r,
workers=-1)`` on the same points (the raw cost inside ``radius_graph``) and prints
``N nodes, E edges, build T0 s, query T1 s, peak RSS M GiB``.

The allocator is tuned first (:func:`egnn.runtime.tune_cpu_allocator`; ``--default-malloc`` keeps glibc's
defaults): with the defaults, each edge chunk's buffers are page-faulted in again (one layer at 3·10^5 nodes,
1 thread: 9.8 s instead of 7.7 s). The wall times depend on how busy the machine is; the CPU time of the
timed part (user + system, all threads) goes to stderr as ``# forward: C s CPU (...)``.

Peak RSS is the process's ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the whole run, graph included).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time

# before torch's first allocation: large buffers on transparent huge pages (see egnn.runtime)
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from egnn.nn import EGNN  # noqa: E402
from egnn.ops import locality_order, radius_graph  # noqa: E402
from egnn.runtime import tune_cpu_allocator  # noqa: E402


def peak_rss_gib() -> float:
    """Peak resident set size of this process in GiB (``ru_maxrss`` is in KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 30) if sys.platform == "darwin" else rss / (1 << 20)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads): a contention-independent cost measure."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def ball_fraction_in_cube(r: float, samples: int = 200_000, seed: int = 0) -> float:
    """Mean fraction of a radius-``r`` ball, centred uniformly in the unit cube, that lies inside the cube.

    Monte Carlo over (centre, offset) pairs; exact enough (~0.2 %) for choosing the radius.
    """
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(samples, 3, generator=g, dtype=torch.float64)
    u = torch.randn(samples, 3, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(samples, 1, generator=g, dtype=torch.float64).pow(1 / 3)
    p = centre + r * u
    return float(((p >= 0) & (p <= 1)).all(dim=1).double().mean())


def radius_for_degree(n: int, degree: float) -> float:
    """Radius giving ``degree`` expected neighbours per node for ``n`` uniform points in the unit cube."""
    r = (3.0 * degree / (4.0 * math.pi * max(n - 1, 1))) ** (1.0 / 3.0)
    for _ in range(3):  # fixed point of r = r_bulk / f(r)^(1/3)
        r = (3.0 * degree / (4.0 * math.pi * max(n - 1, 1) * ball_fraction_in_cube(r))) ** (1.0 / 3.0)
    return r


def capped_poisson_mean(lam: float, cap: int) -> float:
    """``E[min(X, cap)]`` for ``X ~ Poisson(lam)``: the mean degree after ``max_num_neighbors=cap``."""
    p, total, below = math.exp(-lam), 0.0, 0.0
    for k in range(cap):
        total += k * p
        below += p
        p *= lam / (k + 1)
    return total + cap * (1.0 - below)


def uncapped_degree_for(mean_degree: float, cap: int) -> float:
    """The uncapped expected degree whose capped mean is ``mean_degree`` (bisection)."""
    lo, hi = mean_degree, 4.0 * mean_degree
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if capped_poisson_mean(mid, cap) < mean_degree else (lo, mid)
    return 0.5 * (lo + hi)


def build_model(chunk: int, checkpoint: bool, checkpoint_chunks: bool, layers: int = 4, hidden: int = 64) -> EGNN:
    """The benchmarked model: ``EGNN(1, hidden, layers)`` with ``chunk_size=chunk``."""
    torch.manual_seed(0)
    return EGNN(1, hidden, layers, chunk_size=chunk, checkpoint=checkpoint, checkpoint_chunks=checkpoint_chunks)


def forward_flops(n: int, e: int, h: int = 64, layers: int = 4) -> float:
    """FLOPs (2 per multiply-add) of one forward of ``build_model``: per layer the per-node projections of
    phi_e's first map, phi_e's second map and phi_x on every edge, phi_h on every node."""
    per_layer = 2 * n * h * 2 * h + 2 * e * h + 2 * e * h * h + 2 * e * h * h + 2 * e * h + 2 * n * 2 * h * h \
        + 2 * n * h * h
    return layers * per_layer + 2 * n * h


def make_points(n: int, seed: int) -> Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed))


def kdtree_only(n: int, r: float, seed: int) -> str:
    """Raw scipy cost: cKDTree build and ``query(k=33, distance_upper_bound=r, workers=-1)``."""
    from scipy.spatial import cKDTree

    x = make_points(n, seed).double().numpy()
    t0 = time.perf_counter()
    tree = cKDTree(x)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, idx = tree.query(x, k=33, distance_upper_bound=r, workers=-1)
    t_query = time.perf_counter() - t0
    edges = int((idx < n).sum()) - n  # minus the self matches
    del tree, idx
    return f"{n} nodes, {edges} edges, build {t_build:.2f} s, query {t_query:.2f} s, peak RSS {peak_rss_gib():.2f} GiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, required=True, help="number of points N")
    parser.add_argument("--degree", type=float, default=32.0, help="target mean in-degree")
    parser.add_argument("--chunk", type=int, default=1 << 14, help="edges per message chunk (chunk_size)")
    parser.add_argument("--chunk-checkpoint", action="store_true", help="with --train: per-chunk checkpointing")
    parser.add_argument("--train", action="store_true", help="one training step with activation checkpointing")
    parser.add_argument("--no-checkpoint", action="store_true", help="with --train: disable checkpointing")
    parser.add_argument("--kdtree-only", action="store_true", help="time scipy cKDTree build + query only")
    parser.add_argument("--check", action="store_true", help="also compare against the unchunked model (small N)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", default="morton", choices=["input", "morton"],
                        help="node numbering: egnn.ops.locality_order (Z-order, default) or as drawn (random in space)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default allocator settings (see egnn.runtime.tune_cpu_allocator)")
    args = parser.parse_args(argv)
    if not args.default_malloc:
        print(f"# egnn.runtime.tune_cpu_allocator(): {tune_cpu_allocator()}", file=sys.stderr)
    if args.nodes < 2:
        parser.error("--nodes must be >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)

    cap = 32
    r = radius_for_degree(args.nodes, uncapped_degree_for(args.degree, cap))
    if args.kdtree_only:
        print(kdtree_only(args.nodes, r, args.seed), flush=True)
        return

    pos = make_points(args.nodes, args.seed)
    if args.order == "morton":
        t0 = time.perf_counter()
        pos = pos[locality_order(pos)]
        print(f"# locality_order: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    t0, c0 = time.perf_counter(), cpu_seconds()
    edge_index = radius_graph(pos, r, max_num_neighbors=cap)
    t_graph, c_graph = time.perf_counter() - t0, cpu_seconds() - c0
    num_edges = edge_index.shape[1]
    h = torch.ones(args.nodes, 1)
    model = build_model(args.chunk, checkpoint=args.train and not args.no_checkpoint,
                        checkpoint_chunks=args.train and args.chunk_checkpoint)

    if args.train:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        target = pos + 0.01
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = model(h, pos, edge_index)
        loss = (out.pos - target).pow(2).mean() + out.h.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t_run, c_run = time.perf_counter() - t0, cpu_seconds() - c0
        if not math.isfinite(loss.item()):
            raise SystemExit(f"non-finite loss {loss.item()}")
        what = "train step"
    else:
        model.eval()
        with torch.no_grad():
            t0, c0 = time.perf_counter(), cpu_seconds()
            out = model(h, pos, edge_index)
            t_run, c_run = time.perf_counter() - t0, cpu_seconds() - c0
        if not bool(torch.isfinite(out.pos).all() and torch.isfinite(out.h).all()):
            raise SystemExit("non-finite output")
        what = "forward"
        if args.check:
            other = build_model(args.nodes * 64, False, False).eval()  # one chunk: the unchunked path
            with torch.no_grad():
                ref = other(h, pos, edge_index)
            err = max(float((ref.h - out.h).abs().max()), float((ref.pos - out.pos).abs().max()))
            print(f"# max |difference| to the unchunked model: {err:.3g}", file=sys.stderr)
    threads = torch.get_num_threads()
    print(f"# graph: {c_graph:.1f} s CPU; {what}: {c_run:.1f} s CPU (user+sys, {threads} threads)", file=sys.stderr)
    flops = forward_flops(args.nodes, num_edges) * (3 if args.train else 1)
    print(
        f"{args.nodes} nodes (order {args.order}), {num_edges} edges, graph {t_graph:.2f} s, {what} {t_run:.2f} s, "
        f"peak RSS {peak_rss_gib():.2f} GiB, {flops / 1e12:.2f} TFLOP at {flops / t_run / 1e9:.1f} GFLOP/s",
        flush=True,
    )


if __name__ == "__main__":
    main()
