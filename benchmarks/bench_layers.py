"""Layer benchmark: our EGNN (fast path), our concatenated form and egnn-pytorch 0.2.8, same run.

Workloads (4 layers, hidden 64):
  nbody  -- the N-body batch: 100 graphs x 5 nodes, fully connected, 2 edge attributes, velocity layers
            (egnn-pytorch has no velocity variant: its plain layer with the same width and depth);
  r1e4   -- one radius graph of 10^4 random points, ~32 neighbours per node;
  r1e5   -- the same with 10^5 points.
Each (peer, workload) runs in its own subprocess, so the peak RSS printed is that run's own.
Medians of forward (no grad) and train step (forward + backward + Adam) after warm-up. Every peer runs with
``THP_MEM_ALLOC_ENABLE=1`` and :func:`egnn.runtime.tune_cpu_allocator` (as the ``egnn`` command does).

    python benchmarks/bench_layers.py [--threads 2] [--repeats 30] [--workloads nbody,r1e4,r1e5]

Prints a table and the ratios against our fast path (>1 means slower than ours).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

# every peer alike, as the egnn command runs: buffers above 32 MiB on transparent huge pages (set before torch is
# imported) and glibc's allocator keeping freed memory (egnn.runtime). Without them a train step on the 10^4-point
# graph spends half its time in page faults (1.3 M per step; 3.8 s instead of 2.0 s, measured).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

from egnn.runtime import tune_cpu_allocator  # noqa: E402

WORKLOADS = ("nbody", "r1e4", "r1e5")
PEERS = ("ours", "ours_concat", "egnn_pytorch")


def _radius_for_degree(n: int, dim: int, degree: float) -> float:
    # points uniform in the unit cube: expected neighbours = n * volume of the ball
    unit_ball = math.pi ** (dim / 2) / math.gamma(dim / 2 + 1)
    return (degree / (n * unit_ball)) ** (1.0 / dim)


def _build_inputs(workload: str):
    from egnn.ops import fully_connected_edges, radius_graph

    g = torch.Generator().manual_seed(0)
    if workload == "nbody":
        n = 500
        ei = fully_connected_edges([5] * 100)
        return {"h": torch.rand(n, 1, generator=g), "pos": torch.randn(n, 3, generator=g),
                "vel": torch.randn(n, 3, generator=g), "edge_index": ei,
                "edge_attr": torch.randn(ei.shape[1], 2, generator=g), "graphs": 100, "nodes": 5}
    n = {"r1e4": 10_000, "r1e5": 100_000}[workload]
    pos = torch.rand(n, 3, generator=g)
    ei = radius_graph(pos, _radius_for_degree(n, 3, 32.0), max_num_neighbors=64)
    return {"h": torch.rand(n, 1, generator=g), "pos": pos, "vel": None, "edge_index": ei, "edge_attr": None,
            "graphs": 1, "nodes": n}


def _ours(inp, fast: bool):
    from egnn.nn import EGNN

    vel = inp["vel"] is not None
    model = EGNN(1, 64, 4, edge_dim=2 if inp["edge_attr"] is not None else 0, velocity=vel, fast=fast)

    def forward():
        return model(inp["h"], inp["pos"], inp["edge_index"], inp["edge_attr"], inp["vel"]).pos

    return model, forward


def _egnn_pytorch(inp):
    from egnn_pytorch import EGNN as Layer  # dense O(N^2) layers

    b, n = inp["graphs"], inp["nodes"]
    edge_dim = 2 if inp["edge_attr"] is not None else 0
    if b * n * n * 64 * 4 > 8 * 2**30:  # the dense [B, N, N, hidden] messages alone
        raise MemoryError(f"dense layout needs {b * n * n * 64 * 4 / 2**30:.0f} GiB for one message tensor")
    layers = torch.nn.ModuleList(Layer(dim=64, edge_dim=edge_dim, m_dim=64) for _ in range(4))
    embed = torch.nn.Linear(1, 64)
    feats0 = inp["h"].view(b, n, 1)
    coors0 = inp["pos"].view(b, n, 3)
    edges = None
    if edge_dim:
        # dense [B, N, N, 2] edge attributes (zeros on the diagonal)
        dense = torch.zeros(b, n, n, edge_dim)
        ei = inp["edge_index"]
        gi, li, lj = ei[1] // n, ei[1] % n, ei[0] % n
        dense[gi, li, lj] = inp["edge_attr"]
        edges = dense
    model = torch.nn.ModuleList([embed, *layers])

    def forward():
        feats, coors = embed(feats0), coors0
        for layer in layers:
            feats, coors = layer(feats, coors, edges=edges)
        return coors

    return model, forward


def run_one(peer: str, workload: str, repeats: int, threads: int) -> dict:
    tune_cpu_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    inp = _build_inputs(workload)
    if peer == "egnn_pytorch":
        model, forward = _egnn_pytorch(inp)
    else:
        model, forward = _ours(inp, fast=(peer == "ours"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    target = torch.randn_like(inp["pos"]).reshape(forward().shape)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = (forward() - target).pow(2).mean()
        loss.backward()
        opt.step()

    reps = repeats if workload == "nbody" else max(3, repeats // 10)
    out = {"peer": peer, "workload": workload, "edges": int(inp["edge_index"].shape[1])}
    with torch.no_grad():
        for _ in range(3):
            forward()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            forward()
            ts.append(time.perf_counter() - t0)
    out["forward_ms"] = 1e3 * statistics.median(ts)
    for _ in range(2):
        step()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    out["step_ms"] = 1e3 * statistics.median(ts)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--child", nargs=2, metavar=("PEER", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        try:
            res = run_one(args.child[0], args.child[1], args.repeats, args.threads)
        except MemoryError as err:
            res = {"peer": args.child[0], "workload": args.child[1], "error": str(err)}
        print(json.dumps(res))
        return 0
    results: dict[tuple[str, str], dict] = {}
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"{'workload':8} {'peer':13} {'edges':>9} {'forward ms':>11} {'step ms':>10} {'peak RSS GiB':>13}")
    for w in args.workloads.split(","):
        for p in args.peers.split(","):
            proc = subprocess.run([sys.executable, __file__, "--child", p, w, "--repeats", str(args.repeats),
                                   "--threads", str(args.threads)], capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                res = {"peer": p, "workload": w, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
            else:
                res = json.loads(lines[-1])
            results[(w, p)] = res
            if "error" in res:
                print(f"{w:8} {p:13} {'':>9} {'n/a: ' + res['error']}")
            else:
                print(f"{w:8} {p:13} {res['edges']:>9} {res['forward_ms']:>11.2f} {res['step_ms']:>10.2f} "
                      f"{res['peak_rss_gib']:>13.2f}")
    print("\nratios (peer time / ours; > 1 means ours is faster):")
    for w in args.workloads.split(","):
        base = results.get((w, "ours"), {})
        for p in args.peers.split(","):
            r = results.get((w, p), {})
            if p == "ours" or "error" in r or "error" in base or not base:
                continue
            print(f"  {w:8} {p:13} forward x{r['forward_ms'] / base['forward_ms']:.2f}   "
                  f"train step x{r['step_ms'] / base['step_ms']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
