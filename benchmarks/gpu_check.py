"""GPU readiness: the core correctness checks, short trainings and the layer timings on one device, one table.

    python benchmarks/gpu_check.py [--device cuda] [--qm9-data data/qm9]      # full form, <= 8 min on one GPU
    python benchmarks/gpu_check.py --device cpu --ci                          # CI-sized form (seconds)

Checks, each a row of the printed table (``ok`` / ``FAIL`` / ``skipped``):

* ``equivariance``: :func:`egnn.testing.assert_equivariant` of the N-body EGNN (velocity layers, dense and
  sparse paths) and of the invariant QM9-style EGNN, float64 and float32, on the device;
* ``batched == per graph``: a batch of graphs of different sizes against each graph alone;
* ``chunked == unchunked``: ``chunk_size`` (with and without ``checkpoint_chunks``): outputs and gradients;
* ``dense == sparse``: the dense path for equal-size fully connected batches against the sparse path;
* ``radius graph``: ``radius_graph`` / ``knn_graph`` computed on the device (blockwise search) equal to the CPU
  k-d tree result;
* ``nbody train``: 20 epochs (CI: 2) of the N-body EGNN on synthetic systems (target: ``x + 0.5 v`` plus a
  pairwise term), the loss must fall;
* ``qm9 epoch``: one epoch on 10 000 training molecules (CI: 200) of the prepared QM9 cache (``--qm9-data``;
  skipped with a note when absent), then the test MAE of 1 000 molecules;
* ``layer timing``: forward and train step of the N-body EGNN (100 x 5) and of a 10^4-node radius graph.

Exit status 1 if any check fails. CUDA has not been run yet in this project (no GPU was available): the first run
on a GPU is the test of this script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from egnn.nn import EGNN
from egnn.ops import collate, fully_connected_edges, knn_graph, radius_graph
from egnn.ops.batch import Graph
from egnn.runtime import tune_cpu_allocator
from egnn.testing import assert_equivariant

ROWS: list[tuple[str, str, str, float]] = []


def row(name: str, fn: Callable[[], str]) -> None:
    t0 = time.perf_counter()
    try:
        detail = fn()
        status = "skipped" if detail.startswith("skipped") else "ok"
    except Exception as err:  # noqa: BLE001 - every failure becomes a table row
        status, detail = "FAIL", f"{type(err).__name__}: {err}"[:200]
    ROWS.append((name, status, detail, time.perf_counter() - t0))
    print(f"  {name}: {status} ({detail})", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def nbody_inputs(b: int, n: int, device, dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    num = b * n
    ei = fully_connected_edges([n] * b)
    vel = torch.randn(num, 3, generator=g, dtype=torch.float64)
    out = {"h": vel.norm(dim=-1, keepdim=True), "pos": torch.randn(num, 3, generator=g, dtype=torch.float64),
           "edge_index": ei, "edge_attr": torch.randn(ei.shape[1], 2, generator=g, dtype=torch.float64), "vel": vel}
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in out.items()}


def visible(model: EGNN) -> EGNN:
    for layer in model.layers:
        if layer.coord_mlp is not None:
            torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.3)
    return model


def check_equivariance(device) -> str:
    worst = {}
    for dtype in (torch.float64, torch.float32):
        for dense in (True, False):
            torch.manual_seed(0)
            model = visible(EGNN(1, 32, 3, edge_dim=2, velocity=True, dense=dense)).to(device, dtype)
            inp = nbody_inputs(4, 5, device, dtype)
            worst[(str(dtype), dense)] = max(assert_equivariant(model, inp, trials=2, permute=not dense).values())
        torch.manual_seed(0)
        qm9 = EGNN(5, 32, 3, update_coords=False, attention=True, node_attr=True, out_channels=32,
                   graph_out_channels=1).to(device, dtype)
        sizes = [5, 9, 3]
        pos = torch.randn(17, 3, dtype=torch.float64).to(device, dtype)
        inp = {"h": torch.randn(17, 5, dtype=torch.float64).to(device, dtype), "pos": pos,
               "edge_index": fully_connected_edges(sizes).to(device),
               "batch": torch.arange(3).repeat_interleave(torch.tensor(sizes)).to(device), "num_graphs": 3}
        worst[(str(dtype), "qm9")] = max(assert_equivariant(qm9, inp, trials=2).values())
    return "max error " + ", ".join(f"{k[0][6:]}/{k[1]} {v:.1e}" for k, v in worst.items())


def check_batched(device) -> str:
    torch.manual_seed(0)
    model = visible(EGNN(4, 32, 3, graph_out_channels=2)).to(device, torch.float64)
    g = torch.Generator().manual_seed(1)
    graphs = []
    for n in (3, 8, 5):
        pos = torch.randn(n, 3, generator=g, dtype=torch.float64)
        graphs.append(Graph(h=torch.randn(n, 4, generator=g, dtype=torch.float64), pos=pos,
                            edge_index=radius_graph(pos, 2.0)))
    b = collate(graphs).to(device)
    whole = model(b.h, b.pos, b.edge_index, batch=b.batch, num_graphs=b.num_graphs)
    err, start = 0.0, 0
    for i, gr in enumerate(graphs):
        gr = gr.to(device)
        one = model(gr.h, gr.pos, gr.edge_index)
        sl = slice(start, start + gr.num_nodes)
        err = max(err, float((one.pos - whole.pos[sl]).abs().max()), float((one.graph - whole.graph[i]).abs().max()))
        start += gr.num_nodes
    assert err < 1e-10, err
    return f"max |difference| {err:.1e} (float64)"


def check_chunked(device) -> str:
    torch.manual_seed(0)
    base = visible(EGNN(1, 32, 3, edge_dim=2, velocity=True, dense=False)).to(device, torch.float64)
    inp = nbody_inputs(6, 7, device, torch.float64)
    inp["pos"].requires_grad_(True)
    ref = base(**inp)
    (g_ref,) = torch.autograd.grad(ref.pos.square().sum(), inp["pos"])
    err = 0.0
    for ckpt in (False, True):
        other = EGNN(1, 32, 3, edge_dim=2, velocity=True, chunk_size=17, checkpoint_chunks=ckpt)
        other = other.to(device, torch.float64)
        other.load_state_dict(base.state_dict())
        out = other(**inp)
        (g,) = torch.autograd.grad(out.pos.square().sum(), inp["pos"])
        err = max(err, float((out.pos - ref.pos).abs().max()), float((g - g_ref).abs().max()))
    assert err < 1e-10, err
    return f"max |difference| {err:.1e} (outputs and gradients, float64)"


def check_dense(device) -> str:
    torch.manual_seed(0)
    dense = visible(EGNN(1, 32, 3, edge_dim=2, velocity=True)).to(device, torch.float64)
    sparse = EGNN(1, 32, 3, edge_dim=2, velocity=True, dense=False).to(device, torch.float64)
    sparse.load_state_dict(dense.state_dict())
    inp = nbody_inputs(50, 5, device, torch.float64)
    err = float((dense(**inp).pos - sparse(**inp).pos).abs().max())
    assert err < 1e-10, err
    return f"max |difference| {err:.1e} (float64)"


def check_radius(device, n: int) -> str:
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(n, 3, generator=g)
    batch = torch.arange(4).repeat_interleave(n // 4)
    pos, batch = pos[: batch.numel()], batch
    cpu = radius_graph(pos, 0.25, batch, 16, method="kdtree")
    dev = radius_graph(pos.to(device), 0.25, batch.to(device), 16, method="blockwise").cpu()
    assert torch.equal(cpu, dev), "radius graph differs"
    assert torch.equal(knn_graph(pos, 6, batch, method="kdtree"),
                       knn_graph(pos.to(device), 6, batch.to(device), method="blockwise").cpu()), "knn differs"
    return f"{cpu.shape[1]} edges, identical"


def train_nbody(device, systems: int, epochs: int) -> str:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    b, n = 100, 5
    data = nbody_inputs(systems, n, "cpu", torch.float32)  # systems x 5 particles
    num_sys = data["pos"].shape[0] // n
    pos, vel = data["pos"].view(num_sys, n, 3), data["vel"].view(num_sys, n, 3)
    q = torch.randint(0, 2, (num_sys, n, 1), generator=g).float() * 2 - 1
    d = pos.unsqueeze(2) - pos.unsqueeze(1)
    force = (q.unsqueeze(2) * q.unsqueeze(1) * d / (d.norm(dim=-1, keepdim=True) ** 3 + 1)).sum(2)
    target = pos + 0.5 * vel + 0.1 * force
    ei = fully_connected_edges([n] * b).to(device)
    model = EGNN(1, 64, 4, edge_dim=2, velocity=True).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    losses = []
    t0 = time.perf_counter()
    for _ in range(epochs):
        total = 0.0
        for s in range(0, num_sys - b + 1, b):
            p, v, qq = pos[s : s + b].reshape(-1, 3), vel[s : s + b].reshape(-1, 3), q[s : s + b].reshape(-1, 1)
            src, dst = ei[0].cpu(), ei[1].cpu()
            attr = torch.cat([qq[dst] * qq[src], (p[dst] - p[src]).square().sum(-1, keepdim=True)], -1)
            args = [x.to(device) for x in (v.norm(dim=-1, keepdim=True), p, attr, v)]
            out = model(args[0], args[1], ei, args[2], args[3]).pos
            loss = torch.nn.functional.mse_loss(out, target[s : s + b].reshape(-1, 3).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss)
        losses.append(total / max(1, num_sys // b))
    sync(device)
    per_epoch = (time.perf_counter() - t0) / epochs
    assert losses[-1] < losses[0], f"loss did not fall: {losses}"
    return f"{epochs} epochs x {num_sys} systems: MSE {losses[0]:.4f} -> {losses[-1]:.4f}, {per_epoch:.2f} s/epoch"


def qm9_epoch(device, data_dir: str | None, molecules: int) -> str:
    if not data_dir or not Path(data_dir).is_dir():
        return f"skipped: no QM9 cache at {data_dir!r} (egnn qm9 prepare --out DIR, then --qm9-data DIR)"
    from egnn.experiments.qm9 import data as qm9
    from egnn.experiments.qm9.model import build_model, predict
    from egnn.experiments.qm9.train import Normalizer, QM9Split

    data = qm9.load(data_dir, progress=False)
    splits = qm9.load_splits(data_dir)
    train = QM9Split(data, data.rows_of(splits["train"]), "homo")
    test = QM9Split(data, data.rows_of(splits["test"]), "homo")
    norm = Normalizer.fit(train.y.numpy())
    torch.manual_seed(0)
    model = build_model().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    order = torch.randperm(len(train))[:molecules]
    t0 = time.perf_counter()
    for s in range(0, molecules, 96):
        b = train.get(order[s : s + 96])
        pred = predict(model, b.h.to(device), b.pos.to(device), b.edge_index.to(device), b.batch.to(device),
                       b.num_graphs)
        loss = torch.nn.functional.l1_loss(pred, norm.normalize(b.y).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    t_train = time.perf_counter() - t0
    errs = []
    with torch.inference_mode():
        for s in range(0, min(1000, len(test)), 256):
            b = test.get(torch.arange(s, min(s + 256, 1000, len(test))))
            pred = predict(model, b.h.to(device), b.pos.to(device), b.edge_index.to(device), b.batch.to(device),
                           b.num_graphs)
            errs.append((norm.denormalize(pred.cpu()) - b.y).abs())
    mae = float(torch.cat(errs).mean())
    assert mae == mae, "NaN test MAE"
    return f"1 epoch on {molecules} molecules in {t_train:.1f} s; test MAE (1000 molecules, cache units) {mae:.4g}"


def layer_timing(device, repeats: int, big: int) -> str:
    parts = []
    for name, inp, model in (
        ("nbody 100x5", nbody_inputs(100, 5, device, torch.float32), EGNN(1, 64, 4, edge_dim=2, velocity=True)),
        (f"radius {big}", None, EGNN(1, 64, 4)),
    ):
        if inp is None:
            pos = torch.rand(big, 3, generator=torch.Generator().manual_seed(0))
            inp = {"h": torch.ones(big, 1, device=device), "pos": pos.to(device),
                   "edge_index": radius_graph(pos, (32 * 3 / (4 * 3.14159 * big)) ** (1 / 3), max_num_neighbors=32)
                   .to(device)}
        model = model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def fwd(model=model, inp=inp):
            with torch.no_grad():
                model(**inp)

        def step(model=model, inp=inp, opt=opt):
            opt.zero_grad(set_to_none=True)
            model(**inp).pos.square().mean().backward()
            opt.step()

        res = []
        for fn in (fwd, step):
            for _ in range(3):
                fn()
            ts = []
            for _ in range(repeats):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                ts.append(time.perf_counter() - t0)
            res.append(statistics.median(ts) * 1e3)
        parts.append(f"{name}: forward {res[0]:.2f} ms, step {res[1]:.2f} ms")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ci", action="store_true", help="CI-sized form (small graphs, 2 N-body epochs, 200 molecules)")
    ap.add_argument("--qm9-data", default="data/qm9", help="prepared QM9 cache (the check is skipped without it)")
    args = ap.parse_args(argv)
    tune_cpu_allocator()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available in this torch build / on this machine; use --device cpu")
        return 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check on {device} ({name}), torch {torch.__version__}, {'CI' if args.ci else 'full'} form")
    t0 = time.perf_counter()
    row("equivariance", lambda: check_equivariance(device))
    row("batched == per graph", lambda: check_batched(device))
    row("chunked == unchunked", lambda: check_chunked(device))
    row("dense == sparse", lambda: check_dense(device))
    row("radius graph device == CPU", lambda: check_radius(device, 400 if args.ci else 20_000))
    row("nbody train", lambda: train_nbody(device, 200 if args.ci else 3000, 2 if args.ci else 20))
    row("qm9 epoch", lambda: qm9_epoch(device, args.qm9_data, 200 if args.ci else 10_000))
    row("layer timing", lambda: layer_timing(device, 3 if args.ci else 20, 2_000 if args.ci else 10_000))
    print("\n| check | result | detail | s |\n|---|---|---|---|")
    for r in ROWS:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} |")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 1 if any(r[1] == "FAIL" for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
