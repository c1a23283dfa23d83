"""On-disk stores (``egnn data pack``, :mod:`egnn.atoms.store`) at 10^4-10^6 frames: size, pack speed, memory of a
whole-store fit, loader throughput against the train step, and the in-memory path against the store path.

    python benchmarks/bench_store.py [--sizes 10000,100000,1000000] [--work /tmp/egnn_bench_store]
                                     [--sections pack,loader,small,rss] [--fit-timeout SECONDS]

Sections (each prints a table; the first line is the code version):

- **stores**: synthetic stores of ``--sizes`` frames, written with :class:`egnn.atoms.packing.StoreWriter` in chunks
  of ``--chunk`` frames. Computing EMT for 10^6 frames would take hours, so EMT energies and forces are computed
  for ``--base-frames`` frames (32-atom rattled, strained fcc Cu/Au cells, a quarter with a vacancy:
  :func:`egnn.experiments.fit.emt.generate`) and every stored frame is a copy of a random base frame, rattled
  again (``RATTLE``), with the base frame's labels plus small Gaussian noise. **The labels are synthetic**: this
  measures memory and throughput, not accuracy. Stores under ``--work`` are reused.
- **pack**: ``egnn data pack`` of an extxyz file of ``--pack-frames`` real EMT frames (frames/s as the command
  reports it, and the command's wall time, interpreter start included). That store is the validation set of
  the fits below.
- **loader**: frames/s of ``OnTheFlyGraphs(...).loader(...)`` (read rows, neighbour lists at the default
  ``egnn fit`` cut-off 5 Å, batch assembly) with 0, 1 and 2 DataLoader workers, beside the energy+forces train
  step of the default ``egnn fit`` model (4 layers x 64, 8 radial features, batch 16, Adam, clipping, EMA) at
  1 and 2 torch threads, measured in the same run. Each is measured alone: in a fit the workers and the step
  share the cores.
- **small**: a 1-epoch fit (default model) on the same ``--small-frames`` frames from the extxyz file (in memory:
  neighbour lists built once, before training) and from its store (on the fly, ``--workers 0`` and ``2``).
- **rss**: one ``egnn fit --data STORE --valid VALID --epochs 1`` per size with a small model (``--fit-args``),
  each in its own subprocess. Peak RSS: ``ru_maxrss`` of ``os.wait4`` on the fit process, which on Linux is the
  largest peak of that process and of every descendant it waited for (its DataLoader workers, reaped at the end
  of each loader), so one number per fit covers all its processes; and, polled from ``/proc`` every 0.5 s, the
  ``VmHWM`` (peak RSS) of the fit process itself and the largest of its worker processes. A forked worker's RSS
  counts the pages it shares with its parent (copy-on-write), so the worker figure is not additional memory.
  Sizes run in the given order (the largest last); ``--fit-timeout`` stops a fit that runs longer and reports
  its peaks so far.

Speed figures are only comparable within one run (the machine may be shared: the load average is printed beside
the timings); the first line gives the commit.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# as the egnn command sets them (before torch is imported), so the in-process step timing sees what a fit sees
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from egnn.atoms.data import AtomsData  # noqa: E402
from egnn.atoms.loader import FrameRows, OnTheFlyGraphs  # noqa: E402
from egnn.atoms.packing import StoreWriter  # noqa: E402
from egnn.atoms.store import AtomsStore, is_store, open_store  # noqa: E402
from egnn.experiments.run import code_version  # noqa: E402
from egnn.runtime import tune_cpu_allocator  # noqa: E402

RATTLE = 0.02  # Angstrom: extra displacement of each copy (the base frames are already rattled by 0.1)
ENERGY_NOISE = 0.01  # eV per frame
FORCE_NOISE = 0.02  # eV/Angstrom per component
SMALL_FIT_ARGS = "--hidden 16 --layers 1 --rbf 4 --cutoff 3.0 --batch-size 256 --workers 2 --threads 1"
GIB = float(1 << 30)


def load() -> str:
    """The load average: on a shared machine it, not the code, may set a speed ratio."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def egnn_cmd(*args: str) -> list[str]:
    """The ``egnn`` command of this interpreter (same as ``.venv/bin/egnn``)."""
    return [sys.executable, "-m", "egnn.experiments.cli", *args]


def show(cmd: list[str]) -> str:
    return shlex.join(["egnn", *cmd[3:]] if cmd[1:3] == ["-m", "egnn.experiments.cli"] else cmd)


# ------------------------------------------------------------------------------------------------ data


def emt_file(work: Path, frames: int, seed: int) -> Path:
    """An extxyz file of ``frames`` real EMT frames (generated once, then reused)."""
    from egnn.experiments.fit.emt import EMTConfig, write_dataset

    path = work / f"emt_{frames}_seed{seed}.extxyz"
    if not path.exists():
        t = time.perf_counter()
        write_dataset(path, EMTConfig(n_frames=frames, seed=seed))
        print(f"# EMT: {frames} frames in {time.perf_counter() - t:.1f} s -> {path}", flush=True)
    return path


def base_frames(work: Path, frames: int, seed: int) -> AtomsData:
    """EMT-labelled base frames for the synthetic stores (from an extxyz file made once)."""
    from egnn.atoms.data import read_dataset

    return read_dataset(emt_file(work, frames, seed), "energy", "forces", progress=False)


def synthetic_store(path: Path, base: AtomsData, frames: int, seed: int, chunk: int) -> AtomsStore:
    """A store of ``frames`` rattled copies of random base frames (labels: the base frame's plus noise); an
    existing store at ``path`` with that many frames is reused."""
    if is_store(path):
        store = open_store(path, verify=False)
        if len(store) != frames:
            sys.exit(f"{path} holds {len(store)} frames, not {frames}; remove it or choose another --work")
        return store
    rng = np.random.default_rng(seed)
    sizes_b, starts_b = base.n_atoms, base.offsets[:-1]
    assert base.energy is not None and base.forces is not None
    record = {"file": f"synthetic: rattled copies of {len(base)} EMT frames (labels = base labels + noise)",
              "sha256": "", "frames": frames}
    t = time.perf_counter()
    with StoreWriter(path, "energy", "forces", sources=[record]) as w:
        for first in range(0, frames, chunk):
            m = min(chunk, frames - first)
            pick = rng.integers(len(base), size=m)
            sizes = sizes_b[pick]
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            n = int(offsets[-1])
            # the base atom behind every new atom: the base frame's start plus the atom's place in its frame
            atom = np.repeat(starts_b[pick] - offsets[:-1], sizes) + np.arange(n)
            w.append(AtomsData(
                z=base.z[atom], pos=base.pos[atom] + rng.normal(0.0, RATTLE, (n, 3)), offsets=offsets,
                cell=base.cell[pick], pbc=base.pbc[pick], energy=base.energy[pick] + rng.normal(0.0, ENERGY_NOISE, m),
                forces=base.forces[atom] + rng.normal(0.0, FORCE_NOISE, (n, 3)), source="synthetic"))
    print(f"# wrote {path} ({frames} frames) in {time.perf_counter() - t:.1f} s", flush=True)
    return open_store(path, verify=False)


# ------------------------------------------------------------------------------------------------ pack


def bench_pack(work: Path, file: Path, valid: Path) -> None:
    """``egnn data pack`` of ``file`` into a fresh folder; the result becomes ``valid`` if that is missing."""
    out = Path(tempfile.mkdtemp(dir=work, prefix="pack_")) / "store"
    cmd = egnn_cmd("data", "pack", str(file), "--out", str(out), "--forces", "forces", "--no-progress")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"failed: {show(cmd)}\n{proc.stderr[-2000:]}")
    s = json.loads(proc.stdout)
    print(f"\n## pack: {show(cmd)}")
    print(f"{'frames':>7} {'MB in':>7} {'MB store':>9} {'bytes/frame':>12} {'pack s':>7} {'frames/s':>9} "
          f"{'command wall s':>15}")
    print(f"{s['frames']:>7} {file.stat().st_size / 1e6:>7.1f} {s['bytes'] / 1e6:>9.1f} {s['bytes_per_frame']:>12.0f} "
          f"{s['seconds']:>7.2f} {s['frames_per_s']:>9.0f} {wall:>15.2f}", flush=True)
    if is_store(valid):
        shutil.rmtree(out.parent)
    else:
        out.rename(valid)
        out.parent.rmdir()


# ------------------------------------------------------------------------------------------------ loader vs step


def index_batches(frames: int, batches: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """Random batches as in an epoch (rows drawn without replacement while there are enough)."""
    rng = np.random.default_rng(seed)
    need = batches * size
    rows = rng.permutation(frames)[:need] if need <= frames else rng.integers(frames, size=need)
    return [torch.as_tensor(rows[k : k + size]) for k in range(0, need, size)]


def time_loader(graphs: OnTheFlyGraphs, batches: list[torch.Tensor]) -> tuple[float, float]:
    """Seconds to the first batch (worker start included) and steady batches/s after it."""
    t0 = time.perf_counter()
    t_first = t0
    n = 0
    for k, _ in enumerate(graphs.loader(batches, torch.device("cpu"))):
        if k == 0:
            t_first = time.perf_counter()
        n += 1
    t_end = time.perf_counter()
    return t_first - t0, (n - 1) / max(t_end - t_first, 1e-9)


def time_steps(frames: FrameRows, batch_size: int, threads: list[int], repeats: int) -> dict[int, float]:
    """Seconds per energy+forces train step of the default ``egnn fit`` model, per torch thread count."""
    from egnn.experiments.fit import train as ft

    mo = ft.ModelOptions()
    torch.manual_seed(0)
    model = ft.build_model(frames, mo, ft.DataOptions(train=frames.source, forces="forces")).to(torch.float32)
    graphs = OnTheFlyGraphs(frames, mo.cutoff, mo.images)
    batches = [graphs.get(idx) for idx in index_batches(len(frames), repeats + 3, batch_size, seed=1)]
    task = ft.make_task({"train": graphs, "valid": graphs}, model.config.scale, ft.LossOptions(), True)
    wrapped = ft.EnergyForces(model)
    model.train()
    # as the trainer does: fused Adam, norm clipping at 5, an EMA of the weights
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    ema = torch.optim.swa_utils.AveragedModel(model)
    out = {}
    for t in threads:
        torch.set_num_threads(t)
        start = time.perf_counter()
        for k, b in enumerate(batches):
            if k == 3:  # three warm-up steps (allocator, autograd caches)
                start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            terms = task.loss(wrapped, b)
            loss = sum(w * s / c for w, s, c in zip(terms.weights, terms.sums, terms.counts))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            ema.update_parameters(model)
        out[t] = (time.perf_counter() - start) / repeats
    torch.set_num_threads(1)
    return out


def bench_loader(store: AtomsStore, args: argparse.Namespace) -> None:
    frames = FrameRows(store)
    bs = args.loader_batch_size
    batches = index_batches(len(frames), args.loader_batches, bs)
    torch.set_num_threads(1)
    rows = []
    for workers in (0, 1, 2):
        first, per_s = time_loader(OnTheFlyGraphs(frames, 5.0, workers=workers), batches)
        rows.append((workers, first, per_s))
    steps = time_steps(frames, bs, [1, 2], args.step_repeats)
    print(f"\n## loader vs train step: batch {bs}, cut-off 5 A, {args.loader_batches} batches from "
          f"{store.source} ({len(store)} frames); {load()}")
    print(f"{'train step':<18} {'ms/step':>8} {'frames/s':>9}")
    for t, s in steps.items():
        print(f"{f'{t} thread(s)':<18} {1e3 * s:>8.1f} {bs / s:>9.0f}")
    head = "  ".join(f"{f'loader/step {t} thr':>18}" for t in steps)
    print(f"{'loader':<18} {'first batch s':>13} {'batches/s':>10} {'frames/s':>9}  {head}")
    for workers, first, per_s in rows:
        ratios = "  ".join(f"{per_s * s:>18.2f}" for s in steps.values())
        print(f"{f'{workers} worker(s)':<18} {first:>13.2f} {per_s:>10.1f} {per_s * bs:>9.0f}  {ratios}", flush=True)


# ------------------------------------------------------------------------------------------------ fits


def read_log(run: Path) -> dict[str, str]:
    """The last row of a run's ``log.csv`` (empty if there is none yet)."""
    path = run / "log.csv"
    if not path.exists():
        return {}
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return rows[-1] if rows else {}


def _hwm_kib(pid: int) -> int:
    """``VmHWM`` (peak resident set) of a live process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: the parent pid is the 2nd field after it
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


# Runs the command as its child and reports that child's peak RSS from wait4. A small parent matters: a child's
# ru_maxrss also counts the RSS its parent had when it forked it (recorded at exec), and this benchmark process
# holds torch and a model by then, whereas this wrapper holds ~10 MB.
_WRAPPER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\nBENCH_MAXRSS_KIB {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], timeout: float | None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` (under :data:`_WRAPPER`, in a new session), polling the peak RSS of it and of its child
    processes; stop the whole session after ``timeout`` seconds. Returns wall time, exit code, whether it
    finished, ``maxrss_kib`` (``os.wait4`` of the command: its own peak and that of every descendant it waited
    for; ``None`` if stopped), ``main_hwm_kib``, ``worker_hwm_kib`` and the number of worker processes seen."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    texts: dict[str, list[bytes]] = {"out": [], "err": []}
    # drain the pipes in threads so a chatty process never blocks on a full pipe
    pumps = [threading.Thread(target=lambda s=stream, k=key: texts[k].append(s.read()), daemon=True)
             for key, stream in (("out", proc.stdout), ("err", proc.stderr))]
    for p in pumps:
        p.start()
    main_hwm = worker_hwm = 0
    workers: set[int] = set()
    finished = True
    while proc.poll() is None:
        for fit in _children(proc.pid):  # the command itself, then its workers
            main_hwm = max(main_hwm, _hwm_kib(fit))
            for child in _children(fit):
                workers.add(child)
                worker_hwm = max(worker_hwm, _hwm_kib(child))
        if timeout and time.perf_counter() - t0 > timeout:
            finished = False
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left in the session (workers)
            except ProcessLookupError:
                pass
            proc.wait()
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    for p in pumps:
        p.join(timeout=10)
    err = b"".join(texts["err"]).decode(errors="replace")
    found = re.findall(r"BENCH_MAXRSS_KIB (\d+)", err)
    return {"wall": wall, "rc": proc.returncode, "finished": finished,
            "maxrss_kib": int(found[-1]) if found else None, "main_hwm_kib": main_hwm, "worker_hwm_kib": worker_hwm,
            "workers_seen": len(workers), "stdout": b"".join(texts["out"]).decode(errors="replace"), "stderr": err}


def bench_small(work: Path, args: argparse.Namespace) -> None:
    """The same frames from a file (in memory) and from its store (on the fly), one epoch each."""
    import ase.io

    from egnn.atoms.packing import pack

    src = emt_file(work, args.pack_frames, args.emt_seed)
    n = args.small_frames
    file = work / f"emt_{n}_first_of_{src.stem}.extxyz"
    if not file.exists():
        ase.io.write(str(file), ase.io.read(str(src), f":{n}"), format="extxyz")
    store = work / f"{file.stem}_store"
    if not is_store(store):
        pack([file], store, "energy", "forces", progress=False)
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    cases = [("file (in memory)", file, 0), ("store, 0 workers", store, 0), ("store, 2 workers", store, 2)]
    print(f"\n## in memory vs store: 1 epoch, default model, batch 16, --threads 1, {n} frames (10 % held out)")
    print(f"{'data':<18} {'steps':>5} {'train s':>8} {'steps/s':>8} {'vs file':>8} {'wall s':>7}")
    base_rate = None
    for name, data, workers in cases:
        out = Path(tempfile.mkdtemp(dir=runs, prefix="small_")) / "run"
        cmd = egnn_cmd("fit", "--data", str(data), "--target", "energy", "--forces", "forces", "--epochs", "1",
                       "--workers", str(workers), "--threads", "1", "--no-cache", "--no-progress", "--out", str(out))
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"failed: {show(cmd)}\n{proc.stderr[-2000:]}")
        row = read_log(out)
        steps, secs = int(row["step"]), float(row["train_seconds"])
        rate = steps / secs
        base_rate = base_rate or rate
        print(f"{name:<18} {steps:>5} {secs:>8.2f} {rate:>8.2f} {rate / base_rate:>7.2f}x {wall:>7.1f}  ({load()})",
              flush=True)
    print("(train s: log.csv train_seconds, the epoch's steps and its validation pass; wall: the whole command, "
          "reading the data and, for the file, building every neighbour list first)")


def bench_rss(stores: dict[int, AtomsStore], valid: Path, work: Path, args: argparse.Namespace) -> None:
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    fit_args = shlex.split(args.fit_args)
    print(f"\n## peak RSS of a 1-epoch fit over the whole store (energy + forces), validation {valid}")
    rows = []
    for frames, store in stores.items():
        out = Path(tempfile.mkdtemp(dir=runs, prefix=f"rss_{frames}_")) / "run"
        cmd = egnn_cmd("fit", "--data", store.source, "--valid", str(valid), "--target", "energy", "--forces",
                       "forces", "--epochs", "1", *fit_args, "--no-progress", "--out", str(out))
        print(f"# {show(cmd)}", flush=True)
        r = run_measured(cmd, args.fit_timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if r["finished"] and r["rc"] != 0:
            sys.exit(f"failed ({r['rc']}): {show(cmd)}\n{r['stderr'][-2000:]}")
        log = read_log(out)
        r.update(frames=frames, gb=store.meta["bytes"] / 1e9, steps=log.get("step", "-"),
                 train_s=float(log["train_seconds"]) if log else float("nan"))
        rows.append(r)
        # a finished fit: wait4's figure; a stopped one was killed before it could report, so the polled peaks
        peak = r["maxrss_kib"] if r["maxrss_kib"] is not None else max(r["main_hwm_kib"], r["worker_hwm_kib"])
        r["peak_gib"] = peak / (1 << 20)
        status = "" if r["finished"] else f"  STOPPED after {r['wall']:.0f} s (--fit-timeout): peaks so far"
        print(f"# {frames} frames: wall {r['wall']:.1f} s, peak {r['peak_gib']:.3f} GiB{status}; {load()}",
              flush=True)
    print(f"{'frames':>8} {'store GB':>9} {'steps':>6} {'train s':>8} {'wall s':>8} {'peak RSS GiB':>13} "
          f"{'fit proc GiB':>13} {'worker GiB':>11} {'workers':>8}")
    for r in rows:
        print(f"{r['frames']:>8} {r['gb']:>9.3f} {r['steps']:>6} {r['train_s']:>8.1f} {r['wall']:>8.1f} "
              f"{r['peak_gib']:>13.3f} {r['main_hwm_kib'] / (1 << 20):>13.3f} "
              f"{r['worker_hwm_kib'] / (1 << 20):>11.3f} {r['workers_seen']:>8}"
              + ("" if r["finished"] else "  (stopped, did not finish)"))
    print("(peak RSS: ru_maxrss of os.wait4 on the fit process, the largest peak of it and of the workers it "
          "reaped, or for a stopped fit the polled peaks; fit proc / worker: VmHWM polled every 0.5 s; a worker's "
          "RSS includes the pages it shares with the fit process, so the two do not add up)")
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        grow = (hi["peak_gib"] - lo["peak_gib"]) * GIB / max(hi["frames"] - lo["frames"], 1)
        ratio = hi["peak_gib"] / lo["peak_gib"]
        data_ratio = hi["gb"] / lo["gb"]
        flat = "flat" if ratio < 1.25 else "NOT flat"
        print(f"peak RSS x{ratio:.2f} for a store x{data_ratio:.0f} larger ({grow:.0f} bytes of RSS per extra frame, "
              f"vs {hi['gb'] * 1e9 / hi['frames']:.0f} bytes per frame on disk): {flat}")


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000", help="store sizes in frames (fits run in this order)")
    p.add_argument("--work", default="/tmp/egnn_bench_store", help="folder of the stores and runs (reused)")
    p.add_argument("--sections", default="pack,loader,small,rss", help="which of pack,loader,small,rss to run")
    p.add_argument("--base-frames", type=int, default=512, help="EMT frames the synthetic stores copy")
    p.add_argument("--chunk", type=int, default=4096, help="frames per StoreWriter.append")
    p.add_argument("--pack-frames", type=int, default=2000, help="real EMT frames packed (and the validation set)")
    p.add_argument("--emt-seed", type=int, default=2, help="seed of those frames (the base frames use 1)")
    p.add_argument("--loader-batches", type=int, default=200)
    p.add_argument("--loader-batch-size", type=int, default=16)
    p.add_argument("--step-repeats", type=int, default=20, help="timed train steps per thread count")
    p.add_argument("--small-frames", type=int, default=400, help="frames of the in-memory vs store comparison")
    p.add_argument("--fit-args", default=SMALL_FIT_ARGS, help="model and loader flags of the RSS fits")
    p.add_argument("--fit-timeout", type=float, default=None, help="stop an RSS fit after this many seconds")
    args = p.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tune_cpu_allocator()  # as the egnn command does
    torch.set_num_threads(1)

    print(f"code {code_version()}; torch {torch.__version__}; {os.cpu_count()} CPU(s); work {work}; {load()}")
    print(f"# synthetic stores: each frame a copy of one of {args.base_frames} EMT frames (seed 1) rattled by "
          f"{RATTLE} A, labels = the base frame's EMT energy/forces + N(0, {ENERGY_NOISE} eV) / N(0, {FORCE_NOISE} "
          "eV/A): synthetic labels; this measures memory and throughput, not accuracy", flush=True)
    base = base_frames(work, args.base_frames, seed=1)
    stores = {f: synthetic_store(work / f"synthetic_{f}", base, f, seed=f, chunk=args.chunk) for f in sizes}
    print(f"{'frames':>8} {'atoms':>10} {'GB on disk':>11} {'bytes/frame':>12}")
    for f, s in stores.items():
        print(f"{f:>8} {int(s.offsets[-1]):>10} {s.meta['bytes'] / 1e9:>11.3f} {s.meta['bytes'] / f:>12.1f}",
              flush=True)

    valid = work / f"valid_emt_{args.pack_frames}"
    if "pack" in sections or not is_store(valid):
        bench_pack(work, emt_file(work, args.pack_frames, args.emt_seed), valid)
    if "loader" in sections:
        bench_loader(stores[min(sizes)], args)
    if "small" in sections:
        bench_small(work, args)
    if "rss" in sections:
        bench_rss(stores, valid, work, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
