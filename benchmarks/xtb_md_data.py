"""Molecular MD data for the potentials benchmark: GFN2-xTB (tblite) Langevin dynamics of small organic molecules.

Each molecule gets two trajectories with their own seeds and temperatures drawn from 300-600 K: the first gives the
training and validation frames, the second the test frames (so test geometries are never neighbours in time of a
training frame). Frames are taken every ``--stride`` steps of 0.5 fs after ``--equilibrate`` steps. Energies (eV) and
forces (eV/A) are written as ``REF_energy`` (info) and ``REF_forces`` (arrays), the keys MACE reads reliably.

    pip install --only-binary :all: tblite==0.8.0
    python benchmarks/xtb_md_data.py --out data/xtb_md

Writes ``train.extxyz``, ``valid.extxyz``, ``test.extxyz`` and ``info.json`` (molecules, temperatures, seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# ASE's g2 names: an alcohol, an acid, an aromatic ring, an N-heterocycle, an amide, a chain
MOLECULES = ("CH3CH2OH", "CH3COOH", "C6H6", "C5H5N", "CH3CONH2", "trans-butane")


def trajectory(name: str, temperature: float, frames: int, stride: int, equilibrate: int, seed: int) -> list:
    """``frames`` snapshots (with ``REF_energy`` / ``REF_forces``) of one Langevin trajectory."""
    from ase import units
    from ase.build import molecule
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from tblite.ase import TBLite

    atoms = molecule(name)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.01 / units.fs, rng=rng)
    dyn.run(equilibrate)
    out = []
    for _ in range(frames):
        dyn.run(stride)
        snap = atoms.copy()
        snap.calc = None
        snap.info["REF_energy"] = float(atoms.get_potential_energy())
        snap.arrays["REF_forces"] = atoms.get_forces().copy()
        snap.info["molecule"] = name
        snap.info["temperature_K"] = float(temperature)
        out.append(snap)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    p.add_argument("--train", type=int, default=200, help="training frames per molecule (default 200)")
    p.add_argument("--valid", type=int, default=25, help="validation frames per molecule (default 25)")
    p.add_argument("--test", type=int, default=50, help="test frames per molecule (default 50)")
    p.add_argument("--stride", type=int, default=20, help="MD steps of 0.5 fs between frames (default 20)")
    p.add_argument("--equilibrate", type=int, default=400, help="steps before the first frame (default 400)")
    p.add_argument("--molecules", default=",".join(MOLECULES), help="comma-separated ASE g2 names")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import ase.io
        import tblite.ase  # noqa: F401
    except ImportError as err:
        print(f"xtb_md_data: error: {err}; pip install --only-binary :all: tblite==0.8.0 ase==3.29.0", file=sys.stderr)
        return 2
    if args.out.exists():
        print(f"xtb_md_data: error: --out {args.out} exists; give a new folder", file=sys.stderr)
        return 2
    tmp = args.out.with_name(f".{args.out.name}.partial")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    splits: dict[str, list] = {"train": [], "valid": [], "test": []}
    info = {"method": "GFN2-xTB (tblite)", "timestep_fs": 0.5, "stride": args.stride, "molecules": []}
    t0 = time.perf_counter()
    for name in args.molecules.split(","):
        t_fit, t_test = rng.uniform(300, 600, size=2)
        s_fit, s_test = (int(s) for s in rng.integers(0, 2**31, size=2))
        fit = trajectory(name, t_fit, args.train + args.valid, args.stride, args.equilibrate, s_fit)
        test = trajectory(name, t_test, args.test, args.stride, args.equilibrate, s_test)
        order = np.random.default_rng(s_fit).permutation(len(fit))
        splits["train"] += [fit[i] for i in order[: args.train]]
        splits["valid"] += [fit[i] for i in order[args.train:]]
        splits["test"] += test
        info["molecules"].append({"name": name, "atoms": len(fit[0]), "T_fit_K": round(float(t_fit), 1),
                                  "T_test_K": round(float(t_test), 1), "seed_fit": s_fit, "seed_test": s_test})
        print(f"{name}: {len(fit[0])} atoms, T = {t_fit:.0f} K / {t_test:.0f} K ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    for split, frames in splits.items():
        ase.io.write(tmp / f"{split}.extxyz", frames, format="extxyz")
        forces = np.concatenate([a.arrays["REF_forces"] for a in frames])
        info[f"{split}_frames"] = len(frames)
        info[f"{split}_mean_abs_force"] = float(np.abs(forces).mean())
    (tmp / "info.json").write_text(json.dumps(info, indent=1))
    os.replace(tmp, args.out)
    print(json.dumps({k: v for k, v in info.items() if k != "molecules"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
