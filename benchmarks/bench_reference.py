"""Our EGNN beside the paper's reference code, timed in one process on the same batches (ratios ours/reference).

    python benchmarks/bench_reference.py [--threads 1,2] [--repeats 40] [--skip-qm9] [--compile]

N-body (the reference trainer's batch: 100 systems x 5 particles, fully connected, node feature ``|v|``, edge
attributes ``[q_i q_j, |x_i - x_j|^2]``; hidden 64, 4 velocity layers, Adam): train step (forward + MSE +
backward + Adam) and forward (``torch.no_grad``) of

* ``ours``: ``NBODY_MODELS.get("egnn")`` built and called as the trainer does (``predict`` on an ``NBodyBatch``),
  with the optimizer the trainer should use (``Adam(fused=True)``, see ``--adam``);
* ``ours_sparse``: the same model with the dense path disabled (``dense=False``: gather / scatter over edges);
* ``reference``: ``EGNN_vel(1, 2, 64, n_layers=4, recurrent=True)`` of ``n_body_system/model.py``, default Adam.

QM9 (the paper's model, hidden 128, 7 layers, attention, node attributes; 96 random molecules of 5..29 atoms):
train step of ours (unpadded batch) and of the reference ``qm9/models.py`` ``EGNN`` on the reference trainer's
padded layout (every molecule padded to the batch's largest, node and edge masks).

The variants run alternately, step by step, and each figure is a median: machine load affects all alike, and the
ratios are from this run only. Before timing, the reference gets our weights and both outputs are compared
(float64): the printed difference shows that the two compute the same function.

Achieved GFLOP/s counts the matrix products of our model (per-node projection form of phi_e's first layer;
backward = 2x forward) and is printed beside the sgemm rate measured here on the step's largest shape
(``[E, H] x [H, H]``), which bounds what any implementation of this model can reach.

``--compile`` adds ``ours`` under ``torch.compile(dynamic=True)`` (eager / compiled factor, same run), for the
N-body and the QM9 train steps; ``--skip-nbody`` / ``--skip-qm9`` run one half only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from egnn.experiments.nbody.data import NBodySplit
from egnn.experiments.nbody.models import NBODY_MODELS
from egnn.runtime import tune_cpu_allocator

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import reference_code  # noqa: E402

B, M, HIDDEN, LAYERS = 100, 5, 64, 4


def nbody_split(seed: int = 0, systems: int = 400) -> NBodySplit:
    """Random systems in the reference data layout ``[S, frames, dim, M]`` (charges +-1)."""
    rng = np.random.default_rng(seed)
    loc = rng.normal(size=(systems, 2, 3, M)).astype(np.float32)
    vel = rng.normal(size=(systems, 2, 3, M)).astype(np.float32) * 0.5
    charges = rng.choice([-1.0, 1.0], size=(systems, M, 1)).astype(np.float32)
    return NBodySplit(loc, vel, charges, 0, 1)


def nbody_flops(n_nodes: int, n_edges: int, h: int = HIDDEN, layers: int = LAYERS, edge_dim: int = 2) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward of the N-body EGNN in the per-node projection form."""
    per_layer = (
        2 * n_nodes * h * 2 * h  # W1 h_i, W2 h_j
        + 2 * n_edges * (1 + edge_dim) * h  # w3 r_ij + W4 a_ij
        + 2 * n_edges * h * h  # phi_e second layer
        + 2 * n_edges * h * h + 2 * n_edges * h  # phi_x
        + 2 * n_nodes * 2 * h * h + 2 * n_nodes * h * h  # phi_h
        + 2 * n_nodes * h * h + 2 * n_nodes * h  # phi_v
    )
    return layers * per_layer + 2 * n_nodes * h


def sgemm_gflops(m: int, k: int, n: int, repeats: int = 200) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    for _ in range(20):
        torch.mm(a, b, out=out)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        ts.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(ts) / 1e9


def kernel_floor(n_nodes: int, n_edges: int, h: int = HIDDEN, layers: int = LAYERS) -> tuple[Callable, Callable]:
    """(forward, step) functions that run only the unavoidable kernels of the model, on its shapes: the matrix
    products above and the SiLU activations (3 on edges and 2 on nodes per layer); for the step also each
    product's two backward products (gradient of the input, gradient of the weight) and, per activation, one
    element-wise backward pass (``sigmoid_backward``: the derivative from a saved value, no exponential).
    Every layer has its own tensors, as in the model (a step's activations do not fit in the cache, and kernels
    repeated on the same cache-resident tensors would be faster than any real step). Whatever an implementation of
    this model does, it does at least this work: the ratio floor/reference bounds the ratio any implementation
    can reach on this machine."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g)

    w, w2, w2t = randn(h, h), randn(h, 2 * h), randn(2 * h, h)
    per_layer = []
    for _ in range(layers):
        products = ((randn(n_edges, h), w), (randn(n_edges, h), w), (randn(n_nodes, h), w2),
                    (randn(n_nodes, 2 * h), w2t), (randn(n_nodes, h), w), (randn(n_nodes, h), w))
        grads = [randn(a.shape[0], b.shape[1]) for a, b in products]
        acts = [randn(n_edges, h) for _ in range(3)] + [randn(n_nodes, h) for _ in range(2)]
        per_layer.append((products, grads, acts))
    silu, act_bw = torch.nn.functional.silu, torch.ops.aten.sigmoid_backward

    def forward(i: int) -> None:
        for products, _, acts in per_layer:
            for a, b in products:
                a @ b
            for x in acts:
                silu(x)

    def step(i: int) -> None:
        forward(i)
        for products, grads, acts in reversed(per_layer):
            for (a, b), gr in zip(products, grads):
                gr @ b.t(), a.t() @ gr  # gradient of the input, gradient of the weight
            for x in acts:
                act_bw(x, x)

    return forward, step


def timed_round_robin(fns: dict[str, Callable[[int], None]], repeats: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds of each function, called alternately (``fn(i)``, i = step index)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(i)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def nbody_runners(adam: str, compile_: bool) -> tuple[dict, dict, float, dict]:
    """(step functions, forward functions, max |ours - reference| in float64, sizes)."""
    split = nbody_split()
    entry = NBODY_MODELS.get("egnn")
    gen = torch.Generator().manual_seed(0)
    batches = [split.get(torch.randperm(len(split), generator=gen)[:B]) for _ in range(8)]
    ref_mod = reference_code.nbody_module()

    def make_ours(dense: bool):
        torch.manual_seed(0)
        model = entry.build(**entry.hparams, dense=dense)
        return model

    steps: dict[str, Callable[[int], None]] = {}
    fwds: dict[str, Callable[[int], None]] = {}

    def add(name: str, model: torch.nn.Module, predict: Callable, opt: torch.optim.Optimizer) -> None:
        def step(i: int) -> None:
            b = batches[i % len(batches)]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(predict(model, b), b.target)
            loss.backward()
            opt.step()

        def fwd(i: int) -> None:
            with torch.no_grad():
                predict(model, batches[i % len(batches)])

        steps[name], fwds[name] = step, fwd

    def adam_for(params, kind: str) -> torch.optim.Optimizer:
        opts = {"fused": True} if kind == "fused" else {"foreach": True} if kind == "foreach" else {}
        return torch.optim.Adam(params, lr=5e-4, **opts)

    ours = make_ours(True)
    add("ours", ours, entry.predict, adam_for(ours.parameters(), adam))
    sparse = make_ours(False)
    add("ours_sparse", sparse, entry.predict, adam_for(sparse.parameters(), adam))
    if compile_:
        comp = make_ours(True)
        compiled = torch.compile(comp, dynamic=True)
        add("ours_compiled", compiled, entry.predict, adam_for(comp.parameters(), adam))

    diff = float("nan")
    if ref_mod is not None:
        torch.manual_seed(0)
        ref = ref_mod.EGNN_vel(in_node_nf=1, in_edge_nf=2, hidden_nf=HIDDEN, n_layers=LAYERS, recurrent=True)
        rows_cols = [(b.edge_index[1], b.edge_index[0]) for b in batches]  # reference: [target, source]

        def ref_predict(model, b):
            k = next(i for i, x in enumerate(batches) if x is b)
            # the reference layer updates the coordinates it is given in place
            return model(b.h, b.pos.clone(), list(rows_cols[k]), b.vel, b.edge_attr)

        add("reference", ref, ref_predict, adam_for(ref.parameters(), "default"))
        # same weights -> same function (float64)
        ours64 = make_ours(True).double()
        ref64 = ref_mod.EGNN_vel(in_node_nf=1, in_edge_nf=2, hidden_nf=HIDDEN, n_layers=LAYERS, recurrent=True)
        ref64 = ref64.double()
        for layer in ours64.layers:  # visible coordinate updates
            torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.1)
        reference_code.port_nbody_weights(ref64, ours64)
        b = batches[0]
        with torch.no_grad():
            a = ours64(b.h.double(), b.pos.double(), b.edge_index, b.edge_attr.double(), b.vel.double()).pos
            r = ref64(b.h.double(), b.pos.double().clone(), [b.edge_index[1], b.edge_index[0]], b.vel.double(),
                      b.edge_attr.double())
        diff = float((a - r).abs().max())
    sizes = {"nodes": int(batches[0].h.shape[0]), "edges": int(batches[0].edge_index.shape[1])}
    fwds["kernel_floor"], steps["kernel_floor"] = kernel_floor(sizes["nodes"], sizes["edges"])
    return steps, fwds, diff, sizes


def qm9_runners(compile_: bool = False) -> tuple[dict, float]:
    """Train steps of our QM9 model (unpadded) and the reference QM9 model (padded), same weights."""
    from egnn.experiments.qm9.model import build_model, predict
    from egnn.ops import fully_connected_edges

    ref_mod = reference_code.qm9_module()
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(6):
        sizes = torch.randint(5, 30, (96,), generator=gen)
        n = int(sizes.sum())
        z = torch.randint(0, 5, (n,), generator=gen)
        charge = torch.tensor([1.0, 6.0, 7.0, 8.0, 9.0])[z] / 9.0
        onehot = torch.nn.functional.one_hot(z, 5).float()
        h = (onehot.unsqueeze(-1) * torch.stack([torch.ones(n), charge, charge**2], -1).unsqueeze(1)).reshape(n, 15)
        batch = torch.repeat_interleave(torch.arange(96), sizes)
        pos = torch.randn(n, 3, generator=gen) * 1.5
        y = torch.randn(96, generator=gen)
        batches.append({"h": h, "pos": pos, "edge_index": fully_connected_edges(sizes.tolist()), "batch": batch,
                        "y": y, "padded": reference_code.padded_qm9_inputs(h, pos, batch, 96)})
    def our_step(model: torch.nn.Module, params) -> Callable[[int], None]:
        opt = torch.optim.Adam(params, lr=5e-4, fused=True)

        def step(i: int) -> None:
            b = batches[i % len(batches)]
            opt.zero_grad(set_to_none=True)
            pred = predict(model, b["h"], b["pos"], b["edge_index"], b["batch"], 96)
            torch.nn.functional.l1_loss(pred, b["y"]).backward()
            opt.step()

        return step

    torch.manual_seed(0)
    ours = build_model()
    fns: dict[str, Callable[[int], None]] = {"ours": our_step(ours, ours.parameters())}
    if compile_:
        torch.manual_seed(0)
        plain = build_model()
        fns["ours_compiled"] = our_step(torch.compile(plain, dynamic=True), plain.parameters())
    diff = float("nan")
    if ref_mod is not None:
        ref = ref_mod.EGNN(in_node_nf=15, in_edge_nf=0, hidden_nf=128, n_layers=7, attention=True, node_attr=1)
        ropt = torch.optim.Adam(ref.parameters(), lr=5e-4)

        def ref_step(i: int) -> None:
            b = batches[i % len(batches)]
            ropt.zero_grad(set_to_none=True)
            pred = ref(**b["padded"])
            torch.nn.functional.l1_loss(pred, b["y"]).backward()
            ropt.step()

        fns["reference"] = ref_step
        ours64 = build_model().double()
        ref64 = ref_mod.EGNN(in_node_nf=15, in_edge_nf=0, hidden_nf=128, n_layers=7, attention=True,
                             node_attr=1).double()
        reference_code.port_qm9_weights(ref64, ours64)
        b = batches[0]
        p = {k: (v.double() if isinstance(v, Tensor) and v.is_floating_point() else v) for k, v in b["padded"].items()}
        with torch.no_grad():
            a = predict(ours64, b["h"].double(), b["pos"].double(), b["edge_index"], b["batch"], 96)
            r = ref64(**p)
        diff = float((a - r).abs().max())
    return fns, diff


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts, all in this process")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--qm9-repeats", type=int, default=6)
    ap.add_argument("--skip-qm9", action="store_true")
    ap.add_argument("--skip-nbody", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time ours under torch.compile(dynamic=True)")
    ap.add_argument("--adam", default="fused", choices=["fused", "foreach", "default"],
                    help="our optimizer implementation (the reference always gets torch's default Adam)")
    args = ap.parse_args(argv)
    tuned = tune_cpu_allocator()  # both sides alike: no page faults from freed and re-allocated buffers
    print(f"egnn.runtime.tune_cpu_allocator(): {tuned}")
    if reference_code.reference_dir() is None:
        print(f"NOTE: {reference_code.ABSENT_NOTE}; timing ours only, no ratios")
    print(f"torch {torch.__version__}; N-body {B} systems x {M} particles, hidden {HIDDEN}, {LAYERS} layers; "
          f"our Adam: {args.adam}")
    threads_list = [int(t) for t in args.threads.split(",")]
    steps, fwds, diff, sizes = nbody_runners(args.adam, args.compile) if not args.skip_nbody else ({}, {}, 0.0, {})
    if args.skip_nbody:
        threads_list_nbody: list[int] = []
    else:
        threads_list_nbody = threads_list
    if diff == diff and not args.skip_nbody:
        print(f"same weights, float64: max |ours - reference| on the output positions = {diff:.2e}")
    flops = nbody_flops(sizes["nodes"], sizes["edges"]) if sizes else 0.0
    for threads in threads_list_nbody:
        torch.set_num_threads(threads)
        st = timed_round_robin(steps, args.repeats)
        fw = timed_round_robin(fwds, args.repeats)
        peak = sgemm_gflops(sizes["edges"], HIDDEN, HIDDEN)
        shape = f"[{sizes['edges']},{HIDDEN}]x[{HIDDEN},{HIDDEN}]"
        print(f"\nN-body, {threads} thread(s): sgemm {shape} {peak:.1f} GFLOP/s; "
              f"model {flops / 1e9:.3f} GFLOP forward, {3 * flops / 1e9:.3f} GFLOP step")
        print(f"  {'variant':14} {'step ms':>8} {'GFLOP/s':>8} {'forward ms':>11} {'GFLOP/s':>8}")
        for name in steps:
            print(f"  {name:14} {st[name] * 1e3:8.2f} {3 * flops / st[name] / 1e9:8.1f} {fw[name] * 1e3:11.2f} "
                  f"{flops / fw[name] / 1e9:8.1f}")
        if "reference" in st:
            for name in (n for n in steps if n != "reference"):
                print(f"  ratio {name}/reference: step {st[name] / st['reference']:.2f}, "
                      f"forward {fw[name] / fw['reference']:.2f}")
        if "ours_compiled" in st:
            print(f"  eager/compiled: step x{st['ours'] / st['ours_compiled']:.2f}, "
                  f"forward x{fw['ours'] / fw['ours_compiled']:.2f}")
    if not args.skip_qm9:
        fns, qdiff = qm9_runners(args.compile)
        if qdiff == qdiff:
            print(f"\nQM9 model, same weights, float64: max |ours - reference (padded)| = {qdiff:.2e}")
        for threads in threads_list:
            torch.set_num_threads(threads)
            st = timed_round_robin(fns, args.qm9_repeats, warmup=2)
            line = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in st.items())
            ratio = f"; ratio ours/reference {st['ours'] / st['reference']:.2f}" if "reference" in st else ""
            if "ours_compiled" in st:
                ratio += f"; eager/compiled x{st['ours'] / st['ours_compiled']:.2f}"
            print(f"QM9 train step (96 molecules), {threads} thread(s): {line}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
