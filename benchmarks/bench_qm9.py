"""QM9 training throughput (molecules/s of forward + backward + Adam) and peak memory of three batch layouts.

    python benchmarks/bench_qm9.py [--data data/qm9] [--steps 20] [--threads 2] [--batch 96]

Model: the paper's QM9 EGNN (arXiv:2102.09844, Section 5.3: 7 layers, hidden 128, SiLU, attention, node
attributes, sum pooling), batch 96 real molecules of the training split, identical batches and weights for
every variant:

* ``fast``: ``egnn.nn.EGNN`` on molecules concatenated without padding, per-node projections of the first edge
  linear map (``fast=True``);
* ``concat``: the same unpadded batches, first edge linear map on the per-edge concatenation ``[h_i, h_j, r_ij]``
  (``fast=False``, the reference implementation's form);
* ``padded``: every molecule padded to 29 atoms with node and edge masks, all 29 x 29 pairs computed and masked
  (how the reference code, vgsatorras/egnn ``qm9/models.py``, batches QM9), written below as a compact dense
  EGCL on ``[B, 29, 29, *]`` tensors with the per-pair concatenation;
* ``padded_proj`` (extra, to separate the two effects): the padded layout with the per-node projection;
* ``reference``: the paper's own code, ``qm9/models.py`` ``EGNN`` from ``shared/reference_egnn`` beside the
  repository (see ``benchmarks/reference_code.py``), on the reference trainer's padded layout (every molecule
  padded to the batch's largest, node and edge masks), with our weights; skipped with a note when the reference
  code is absent. The ratio columns are then against it.

The dense model is loaded with the EGNN's weights and checked to give the same predictions (float64) before
timing. Timing is round-robin over the variants, step by step, so a change in machine load affects all of them
alike; wall-clock and process CPU time are both recorded. On an oversubscribed machine neither is reliable with
more than one thread (OpenMP threads wait for descheduled peers and spin): measure on idle cores. Peak memory is
measured in a fresh child process per variant: the growth of the peak resident set size (``VmHWM``, reset after
setup) over three training steps on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from egnn.experiments.qm9 import data as qm9
from egnn.experiments.qm9.model import build_model, predict
from egnn.experiments.qm9.train import Normalizer, QM9Batch, QM9Split
from egnn.nn import EGNN
from egnn.runtime import tune_cpu_allocator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_code  # noqa: E402

MAX_ATOMS = 29  # largest QM9 molecule
VARIANTS = ("fast", "concat", "padded", "padded_proj", "reference")


# --------------------------------------------------------------------------------------- padded dense EGCL


class DenseEGCL(nn.Module):
    """One invariant EGCL (eq. 3, 5, 6 of arXiv:2102.09844, no coordinate update) on padded dense tensors.

    ``m_ij = phi_e(h_i, h_j, ||x_i - x_j||^2)``, ``e_ij = sigmoid(Linear(m_ij))``,
    ``h_i <- h_i + phi_h(h_i, sum_j mask_ij e_ij m_ij, h0_i)``; all ``N x N`` pairs are computed and the edge
    mask removes self pairs and padding. ``project`` evaluates the first linear map as per-node projections
    instead of on the concatenation.

    Shapes: ``h`` ``[B, N, H]``, ``radial`` ``[B, N, N, 1]``, ``edge_mask`` ``[B, N, N, 1]``, ``h0`` ``[B, N, F]``.
    """

    def __init__(self, hidden: int, node_attr_dim: int, project: bool = False) -> None:
        super().__init__()
        self.project = project
        self.edge1 = nn.Linear(2 * hidden + 1, hidden)
        self.edge2 = nn.Linear(hidden, hidden)
        self.att = nn.Linear(hidden, 1)
        self.node1 = nn.Linear(2 * hidden + node_attr_dim, hidden)
        self.node2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, radial: Tensor, edge_mask: Tensor, h0: Tensor) -> Tensor:
        b, n, hid = h.shape
        if self.project:
            w = self.edge1.weight
            e = (h @ w[:, :hid].t()).unsqueeze(2) + (h @ w[:, hid : 2 * hid].t()).unsqueeze(1)
            e = e + radial * w[:, 2 * hid] + self.edge1.bias
        else:
            hi = h.unsqueeze(2).expand(b, n, n, hid)  # target i along dim 1
            hj = h.unsqueeze(1).expand(b, n, n, hid)  # source j along dim 2
            e = self.edge1(torch.cat([hi, hj, radial], dim=-1))
        m = self.act(self.edge2(self.act(e)))
        m = m * torch.sigmoid(self.att(m)) * edge_mask
        agg = m.sum(dim=2)
        return h + self.node2(self.act(self.node1(torch.cat([h, agg, h0], dim=-1))))


class DenseQM9(nn.Module):
    """The QM9 model (embedding, layers, node head, masked sum, graph head) on padded batches."""

    def __init__(self, in_nf: int = 15, hidden: int = 128, n_layers: int = 7, project: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Linear(in_nf, hidden)
        self.layers = nn.ModuleList(DenseEGCL(hidden, in_nf, project) for _ in range(n_layers))
        self.node_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.graph_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, h0: Tensor, pos: Tensor, node_mask: Tensor, edge_mask: Tensor) -> Tensor:
        diff = pos.unsqueeze(2) - pos.unsqueeze(1)
        radial = (diff * diff).sum(-1, keepdim=True)
        h = self.embedding(h0)
        for layer in self.layers:
            h = layer(h, radial, edge_mask, h0)
        h = self.node_head(h) * node_mask.unsqueeze(-1)
        return self.graph_head(h.sum(dim=1)).squeeze(-1)

    @torch.no_grad()
    def load_from(self, model: EGNN) -> DenseQM9:
        """Copy the weights of a :func:`~egnn.experiments.qm9.model.build_model` EGNN."""
        pairs = [(self.embedding, model.embedding), (self.node_head[0], model.node_head[0]),
                 (self.node_head[2], model.node_head[1]), (self.graph_head[0], model.graph_head[0]),
                 (self.graph_head[2], model.graph_head[1])]
        for dense, layer in zip(self.layers, model.layers):
            pairs += [(dense.edge1, layer.edge_mlp[0]), (dense.edge2, layer.edge_mlp[1]), (dense.att, layer.att_mlp[0]),
                      (dense.node1, layer.node_mlp[0]), (dense.node2, layer.node_mlp[1])]
        for dst, src in pairs:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        return self


def pad(b: QM9Batch, n_max: int = MAX_ATOMS) -> dict[str, Tensor]:
    """Padded ``[B, n_max, *]`` tensors, node mask and edge mask (no self pairs, no padding) of a batch."""
    sizes = torch.bincount(b.batch, minlength=b.num_graphs)
    first = torch.cumsum(sizes, 0) - sizes
    slot = torch.arange(b.batch.numel(), device=b.batch.device) - first[b.batch]
    h0 = b.h.new_zeros(b.num_graphs, n_max, b.h.shape[1])
    pos = b.pos.new_zeros(b.num_graphs, n_max, 3)
    node_mask = b.h.new_zeros(b.num_graphs, n_max)
    h0[b.batch, slot] = b.h
    pos[b.batch, slot] = b.pos
    node_mask[b.batch, slot] = 1.0
    eye = torch.eye(n_max, dtype=b.h.dtype, device=b.h.device)
    edge_mask = (node_mask.unsqueeze(2) * node_mask.unsqueeze(1) * (1 - eye)).unsqueeze(-1)
    return {"h0": h0, "pos": pos, "node_mask": node_mask, "edge_mask": edge_mask}


# ------------------------------------------------------------------------------------------------ setup


def make_batches(data_dir: str, n_batches: int, batch: int, seed: int = 0) -> tuple[list[QM9Batch], Normalizer]:
    data = qm9.load(data_dir, progress=False)
    rows = data.rows_of(qm9.load_splits(data_dir)["train"])
    split = QM9Split(data, rows, "homo")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=gen)[: n_batches * batch]
    batches = [split.get(order[i * batch : (i + 1) * batch]) for i in range(n_batches)]
    return batches, Normalizer.fit(split.y.numpy())


def make_runner(name: str, hidden: int, layers: int, batches: list[QM9Batch], norm: Normalizer, device):
    """(model, step(i) -> None) for one variant; step does forward, L1 loss, backward and an Adam update."""
    torch.manual_seed(0)
    ours = build_model(hidden_nf=hidden, n_layers=layers, fast=(name != "concat"))
    if name == "reference":
        ref = reference_code.qm9_module().EGNN(in_node_nf=15, in_edge_nf=0, hidden_nf=hidden, n_layers=layers,
                                               attention=True, node_attr=1)
        reference_code.port_qm9_weights(ref, ours)
        ref.to(device)
        padded = [{k: (v.to(device) if isinstance(v, Tensor) else [e.to(device) for e in v] if isinstance(v, list)
                       else v) for k, v in reference_code.padded_qm9_inputs(b.h, b.pos, b.batch, b.num_graphs).items()}
                  for b in batches]
        targets = [norm.normalize(b.y).to(device) for b in batches]
        opt = torch.optim.Adam(ref.parameters(), lr=1e-4, weight_decay=1e-16)

        def ref_step(i: int) -> None:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.l1_loss(ref(**padded[i % len(padded)]), targets[i % len(targets)])
            loss.backward()
            opt.step()

        return ref, ref_step
    if name.startswith("padded"):
        model: nn.Module = DenseQM9(15, hidden, layers, project=(name == "padded_proj")).load_from(ours)
        inputs = [{k: v.to(device) for k, v in pad(b).items()} for b in batches]
    else:
        model = ours
        inputs = [b for b in batches]
    model.to(device)
    targets = [norm.normalize(b.y).to(device) for b in batches]
    gpu_inputs = [b for b in inputs] if name.startswith("padded") else [
        QM9Batch(b.h.to(device), b.pos.to(device), b.edge_index.to(device), b.batch.to(device), b.y, b.num_graphs)
        for b in inputs
    ]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-16)

    def forward(i: int) -> Tensor:
        x = gpu_inputs[i % len(gpu_inputs)]
        if name.startswith("padded"):
            return model(**x)
        return predict(model, x.h, x.pos, x.edge_index, x.batch, x.num_graphs)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.l1_loss(forward(i), targets[i % len(targets)])
        loss.backward()
        opt.step()

    return model, step


def check_equivalence(batches: list[QM9Batch], hidden: int, layers: int) -> float:
    """Largest |prediction difference| between the EGNN and the padded dense models (ours and, when present, the
    reference code's), float64, same weights."""
    torch.manual_seed(0)
    ours = build_model(hidden_nf=hidden, n_layers=layers).double()
    worst = 0.0
    for project in (False, True):
        dense = DenseQM9(15, hidden, layers, project).double().load_from(ours)
        b = batches[0]
        b64 = QM9Batch(b.h.double(), b.pos.double(), b.edge_index, b.batch, b.y.double(), b.num_graphs)
        with torch.no_grad():
            a = predict(ours, b64.h, b64.pos, b64.edge_index, b64.batch, b64.num_graphs)
            d = dense(**pad(b64))
        worst = max(worst, float((a - d).abs().max()))
    mod = reference_code.qm9_module()
    if mod is not None:  # the reference code's own model on its padded layout
        ref = mod.EGNN(in_node_nf=15, in_edge_nf=0, hidden_nf=hidden, n_layers=layers, attention=True,
                       node_attr=1).double()
        reference_code.port_qm9_weights(ref, ours)
        with torch.no_grad():
            r = ref(**reference_code.padded_qm9_inputs(b64.h, b64.pos, b64.batch, b64.num_graphs))
        worst = max(worst, float((a - r).abs().max()))
    return worst


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_rss_bytes() -> int:
    """Peak resident set size: ``VmHWM`` (Linux, resettable through ``clear_refs``), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child_memory(args: argparse.Namespace) -> None:
    """Run in a fresh process: peak memory growth over three training steps of one variant.

    On CPU the peak RSS is reset after loading data and building the model (so loading QM9 does not mask the
    training peak) where Linux allows it; ``growth_mb`` is then the training steps' own working memory.
    """
    device = torch.device(args.device)
    batches, norm = make_batches(args.data, 3, args.batch)
    _, step = make_runner(args.child, args.hidden, args.layers, batches, norm, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak_rss()
        base = _peak_rss_bytes()
    for i in range(3):
        step(i)
    sync(device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
    result = {"variant": args.child, "peak_mb": peak / 1e6, "growth_mb": (peak - base) / 1e6}
    if device.type != "cuda" and not reset:
        result["note"] = "peak RSS could not be reset: growth includes data loading"
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/qm9", help="folder of the prepared QM9 cache")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory child processes")
    parser.add_argument("--child", default=None, choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tune_cpu_allocator()  # every variant alike: freed buffers are reused, not page-faulted in again
    if "reference" in args.variants and reference_code.reference_dir() is None:
        print(f"NOTE: {reference_code.ABSENT_NOTE}; the 'reference' variant is skipped")
        args.variants = [v for v in args.variants if v != "reference"]
    torch.set_num_threads(args.threads)
    if args.child:
        child_memory(args)
        return
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, device {device}, "
          f"{args.threads} threads; batch {args.batch}, hidden {args.hidden}, {args.layers} layers")

    n_batches = args.steps + args.warmup
    batches, norm = make_batches(args.data, n_batches, args.batch)
    atoms = [int(b.h.shape[0]) for b in batches]
    edges = [int(b.edge_index.shape[1]) for b in batches]
    print(f"{n_batches} batches of real training molecules: {np.mean(atoms):.0f} atoms, {np.mean(edges):.0f} edges "
          f"per batch unpadded; padded to {MAX_ATOMS} atoms: {args.batch * MAX_ATOMS} nodes, "
          f"{args.batch * MAX_ATOMS * MAX_ATOMS} pairs")
    print(f"equivalence (float64, same weights): max |EGNN - padded dense (and reference)| = "
          f"{check_equivalence(batches, args.hidden, args.layers):.2e}")

    # batch construction cost of the unpadded layout (gather + features + fully connected edges)
    data = qm9.load(args.data, progress=False)
    split = QM9Split(data, data.rows_of(qm9.load_splits(args.data)["train"]), "homo")
    split.get(torch.arange(args.batch))  # warm-up
    t0 = time.perf_counter()
    for i in range(20):
        split.get(torch.arange(i * args.batch, (i + 1) * args.batch))
    print(f"unpadded batch construction: {(time.perf_counter() - t0) / 20 * 1e3:.1f} ms / batch (not in the timings)")

    runners = {name: make_runner(name, args.hidden, args.layers, batches, norm, device)[1] for name in args.variants}
    times: dict[str, list[float]] = {name: [] for name in args.variants}
    cpu: dict[str, list[float]] = {name: [] for name in args.variants}
    for i in range(n_batches):
        for name, step in runners.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            step(i)
            sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)

    memory: dict[str, dict] = {}
    if not args.no_memory:
        for name in args.variants:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--data", args.data,
                   "--batch", str(args.batch), "--hidden", str(args.hidden), "--layers", str(args.layers),
                   "--threads", str(args.threads), "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            memory[name] = json.loads(out.strip().splitlines()[-1])

    ref = "reference" if "reference" in times else "padded" if "padded" in times else args.variants[-1]
    ref_rate = args.batch * len(times[ref]) / sum(times[ref])
    ref_cpu = args.batch * len(cpu[ref]) / sum(cpu[ref])
    print()
    print("Wall rate: molecules per wall-clock second; CPU rate: molecules per CPU-second of this process x threads")
    print("(the two agree on idle cores; see the module docstring for shared machines).")
    print(f"| variant | molecules/s (wall) | x {ref} | molecules/s (CPU, x threads) | x {ref} | median step (ms) | "
          "peak memory growth (MB) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        rate = args.batch * len(times[name]) / sum(times[name])
        crate = args.batch * len(cpu[name]) / sum(cpu[name])
        mem = memory.get(name, {})
        growth = f"{mem['growth_mb']:.0f}" if mem else "-"
        peak = f"{mem['peak_mb']:.0f}" if mem else "-"
        print(f"| {name} | {rate:.1f} | {rate / ref_rate:.2f} | {crate * args.threads:.1f} | {crate / ref_cpu:.2f} | "
              f"{statistics.median(times[name]) * 1e3:.0f} | {growth} | {peak} |")


if __name__ == "__main__":
    main()
