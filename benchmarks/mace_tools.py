"""The MACE side of ``bench_potentials.py``, run with the MACE environment's interpreter (it imports only mace, ase
and torch, never egnn: mace-torch 0.3.16 pins e3nn 0.4.4, which our own environment does not hold).

    python mace_tools.py eval SKELETON CHECKPOINT TEST.extxyz      # JSON: test MAE of a training checkpoint
    python mace_tools.py time MODEL STRUCTURES.extxyz --threads 2 [--index K]  # JSON: ms per energy + forces call

``SKELETON`` is a ``.model`` file of the same architecture (a probe run's), whose weights are replaced by the
checkpoint's (MACE saves the EMA weights at each improvement of the validation loss).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4's constants file is a pickle


def calculator(model_path: str, dtype: str):
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=model_path, device="cpu", default_dtype=dtype)


def test_errors(calc, frames) -> dict[str, float]:
    import numpy as np

    de, df = [], []
    for atoms in frames:
        ref_e, ref_f = atoms.info["REF_energy"], atoms.arrays["REF_forces"]
        a = atoms.copy()
        a.calc = calc
        de.append(abs(a.get_potential_energy() - ref_e) / len(a))
        df.append(np.abs(a.get_forces() - ref_f).ravel())
    return {"energy_per_atom_mae_meV": 1000 * float(np.mean(de)),
            "forces_mae_meV_per_A": 1000 * float(np.mean(np.concatenate(df)))}


def cmd_eval(args: argparse.Namespace) -> dict:
    import ase.io
    import torch

    model = torch.load(args.skeleton, map_location="cpu", weights_only=False)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["model"]
    model.load_state_dict(state)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.model")
        torch.save(model, path)
        calc = calculator(path, "float64")
        return test_errors(calc, ase.io.read(args.test, index=":"))


def cmd_time(args: argparse.Namespace) -> dict:
    import ase.io
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    out = {}
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        calc = calculator(args.model, dtype)
        frames = ase.io.read(args.structures, index=":")
        for k in [args.index] if args.index is not None else range(len(frames)):
            a = frames[k].copy()
            a.calc = calc
            base = a.positions.copy()
            times = []
            for i in range(args.warmup + args.calls):
                a.positions = base + rng.normal(0, 0.01, base.shape)  # a new geometry: no cached result
                t = time.perf_counter()
                a.get_forces()
                if i >= args.warmup:
                    times.append(time.perf_counter() - t)
            out[f"{k}:{len(a)}:{dtype}"] = 1000 * float(np.median(times))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval")
    e.add_argument("skeleton")
    e.add_argument("checkpoint")
    e.add_argument("test")
    t = sub.add_parser("time")
    t.add_argument("model")
    t.add_argument("structures")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--calls", type=int, default=30)
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--index", type=int, default=None, help="time only this structure of the file")
    args = p.parse_args(argv)
    result = {"eval": cmd_eval, "time": cmd_time}[args.cmd](args)
    print(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
