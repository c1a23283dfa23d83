"""Compiled (``egnn export``) against eager, GFN2-xTB and MACE, every figure a ratio measured in this one run.

    python benchmarks/bench_compiled.py --model runs/xtb_vector --work data/compiled \\
        --out benchmarks/results/compiled [--sections export,calls,skin,large,md,openmm] [--mace-venv .venv-mace]

``--model``: a run folder fitted to molecules (H, C, N, O; ``benchmarks/xtb_md_data.py`` then ``egnn fit``). The
Cu-Au model is the default architecture for periodic data (``egnn fit --model auto`` on a periodic file: invariant,
64 channels, 4 layers, cut-off 5 A) with fresh weights: call times do not depend on the weights. Sections:

- ``export``: export time and file size (float64, float64 with stress, float32; one-thread kernels, the default,
  and for the large cell also kernels that follow ``--threads``).
- ``calls``: time per ASE MD step (VelocityVerlet, 0.5 fs) for ethanol (9 atoms), decane (32 atoms) and a 108-atom
  Cu-Au cell: eager, compiled float64 / float32, GFN2-xTB (tblite, molecules), MACE 0.3.16 (32x0e+32x1o) through its
  ASE calculator (``--mace-venv``; its own process, same threads). Rounds interleave the methods, medians are kept.
- ``skin``: the compiled calculator with neighbour-list skins of 0, 0.5 and 1 A (which pays).
- ``large``: a 10,976-atom Cu-Au cell: microseconds per atom and step, eager vs compiled (float32 and float64).
- ``md``: NVE of ethanol from 500 K, 0.5 fs x ``--nve-steps`` (default 20,000): drift (linear fit) and span of the
  total energy per atom for compiled, eager and GFN2-xTB.
- ``equality``: 1,000 VelocityVerlet steps (1 fs, from 1,500 K) of the 108-atom Cu-Au cell with the compiled
  float64 file; every 10th step the eager model recomputes the forces: the largest difference, and the number of
  distinct edge counts the one compiled library served (no recompilation: it is loaded once).
- ``openmm``: OpenMM steps per second (Verlet 0.5 fs, CPU platform) for ethanol on EGNN (eager, compiled), and for
  ethanol in a periodic box of TIP3P water (PME) with only ethanol on EGNN (not coupled to the water: the cost
  of the force inside a solvated system).

PyTorch gets ``--threads`` (default 2) intra-op threads; the calculator runs structures of fewer than 10,000 edges
at one (``egnn.atoms.potential.Potential``), and "eager, 2 threads (before)" is the calculator as it was.
Results: ``OUT/compiled.json`` and ``OUT/compiled.txt`` (the tables).
"""

from __future__ import annotations

import os

# as the egnn command does: idle OpenMP threads sleep (compiled kernels open a parallel region each; with spinning
# threads on a busy machine a 108-atom call took 20x longer at two threads than at one)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SECTIONS = ("export", "calls", "skin", "large", "md", "openmm", "equality")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------------------------------ structures


def decane():
    """n-decane C10H22 (32 atoms): an all-anti zig-zag chain with tetrahedral hydrogens."""
    from ase import Atoms

    cc, ch, half = 1.53, 1.09, np.deg2rad(109.5) / 2
    carbons = np.array([[k * cc * np.sin(half), (k % 2) * cc * np.cos(half), 0.0] for k in range(10)])
    symbols, pos = ["C"] * 10, list(carbons)
    for k, c in enumerate(carbons):
        out = np.array([0.0, -1.0 if k % 2 == 0 else 1.0, 0.0])  # away from the chain's neighbours
        for side in (-1, 1):
            d = out * np.cos(np.deg2rad(54.75)) + np.array([0, 0, side * np.sin(np.deg2rad(54.75))])
            pos.append(c + ch * d / np.linalg.norm(d))
            symbols.append("H")
        if k in (0, 9):  # the methyl ends' third hydrogen, along the chain
            pos.append(c + ch * np.array([-1.0 if k == 0 else 1.0, 0, 0]))
            symbols.append("H")
    return Atoms(symbols, positions=np.array(pos))


def cu_au(repeat: int, seed: int = 0):
    """A cubic fcc Cu cell repeated ``repeat`` times per direction, 25 % of the sites Au, rattled by 0.05 A."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    atoms.symbols[rng.choice(len(atoms), len(atoms) // 4, replace=False)] = "Au"
    atoms.rattle(0.05, seed=seed)
    return atoms


def metal_model(work: Path) -> Path:
    """The default periodic-data architecture for Cu-Au with fresh weights, as a checkpoint."""
    import torch

    from egnn.atoms.model import AtomsModel, AtomsModelConfig, save_model

    path = work / "cuau_model"
    if not path.with_suffix(".safetensors").exists():
        torch.manual_seed(0)
        config = AtomsModelConfig(species=[29, 79], ref_energies=[-3.5, -3.8], scale=0.3, forces="forces")
        save_model(AtomsModel(config), path)
    return path


# ------------------------------------------------------------------------------------------------- timing


def step_times(calc, atoms, steps: int, seed: int = 0) -> list[float]:
    """Seconds per VelocityVerlet step (0.5 fs, 500 K start) of ``atoms`` with ``calc``, per step."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    a = atoms.copy()
    a.calc = calc
    MaxwellBoltzmannDistribution(a, temperature_K=500, rng=np.random.default_rng(seed))
    dyn = VelocityVerlet(a, 0.5 * units.fs)
    dyn.run(3)  # warm-up (first calls allocate)
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        dyn.run(1)
        out.append(time.perf_counter() - t)
    return out


def interleaved(methods: dict, atoms, rounds: int, steps: int) -> dict[str, float]:
    """Median ms per MD step of each method, the methods taking turns ``rounds`` times (load changes hit all)."""
    times: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(rounds):
        for name, calc in methods.items():
            times[name] += step_times(calc, atoms, steps, seed=r)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


XTB_STEPS = """
import sys, time
import numpy as np
import ase.io
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from tblite.ase import TBLite
a = ase.io.read(sys.argv[1])
a.calc = TBLite(method="GFN2-xTB", verbosity=0)
MaxwellBoltzmannDistribution(a, temperature_K=500, rng=np.random.default_rng(0))
dyn = VelocityVerlet(a, 0.5 * units.fs)
dyn.run(3)
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    dyn.run(1)
    times.append(time.perf_counter() - t)
print(1000 * float(np.median(times)))
"""


def xtb_own_process(atoms, steps: int, work: Path) -> dict[str, float]:
    """GFN2-xTB's ms per MD step in a process of its own with OpenMP's default settings (this one sets
    OMP_WAIT_POLICY=PASSIVE, which may not suit tblite), at 1 and 2 OpenMP threads."""
    import ase.io

    path = work / f"xtb_struct_{len(atoms)}.extxyz"
    ase.io.write(str(path), atoms)
    out = {}
    for threads in (1, 2):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        env["OMP_NUM_THREADS"] = str(threads)
        res = subprocess.run([sys.executable, "-c", XTB_STEPS, str(path), str(steps)], capture_output=True,
                             text=True, env=env)
        if res.returncode == 0:
            out[f"GFN2-xTB, own process, {threads} thread{'s' if threads > 1 else ''}"] = float(res.stdout.split()[-1])
    return out


def mace_model(venv: Path, work: Path, name: str, frames: list) -> Path | None:
    """A MACE 32x0e+32x1o model for these frames' elements (a one-epoch ``mace_run_train``; times only)."""
    sys.path.insert(0, str(HERE))
    import ase.io
    from bench_potentials import mace_train

    folder = work / f"mace-{name}"
    model = folder / "run" / "mace.model"
    if model.exists():
        return model
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        ase.io.write(str(folder / f"{split}.extxyz"), frames)
    log(f"MACE: one-epoch fit on {name} (for its architecture and timings)")
    mace_train(venv, folder, folder / "run", 1, 2).wait()
    return model if model.exists() else None


def mace_step_ms(venv: Path, model: Path, atoms, threads: int, work: Path, calls: int = 20) -> dict[str, float]:
    """MACE's ms per energy + forces call (float32 and float64) on ``atoms``, in its own process."""
    import ase.io

    path = work / f"mace_struct_{len(atoms)}.extxyz"
    ase.io.write(str(path), atoms)
    res = subprocess.run([str(venv / "bin" / "python"), str(HERE / "mace_tools.py"), "time", str(model), str(path),
                          "--threads", str(threads), "--calls", str(calls), "--warmup", str(min(5, calls))],
                         capture_output=True, text=True)
    if res.returncode != 0:
        log(f"MACE timing failed: {res.stderr[-500:]}")
        return {}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {k.split(":")[-1]: v for k, v in out.items()}


# ------------------------------------------------------------------------------------------------- sections


def export_all(model: Path, metal: Path, work: Path) -> dict:
    from egnn.compiled.export import export_model

    out = {}
    for name, src, dtype, stress in [("mol_f64", model, "float64", False), ("mol_f32", model, "float32", False),
                                     ("mol_f64_stress", model, "float64", True),
                                     ("metal_f64", metal, "float64", False), ("metal_f32", metal, "float32", False),
                                     ("metal_f32_dyn", metal, "float32", False)]:
        path = work / f"{name}.pt2"
        if path.exists():
            path.unlink()  # ours: made by this script in its own work folder
        log(f"export {name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = export_model(src, path, dtype=dtype, stress=stress, threads=0 if name.endswith("_dyn") else 1)
        out[name] = {"seconds": round(r.seconds, 1), "MB": round(r.size_bytes / 1e6, 2),
                     "max_force_diff": max(c["max_force_diff"] for c in r.checks),
                     "relative": max(c["max_force_diff"] / max(c["max_force"], 1e-300) for c in r.checks)}
    return out


def calls(model: Path, metal: Path, work: Path, args) -> dict:
    import torch
    from ase.build import molecule

    from egnn.ase import EGNNCalculator

    out = {}
    systems = [("ethanol (9 atoms)", molecule("CH3CH2OH"), model, "mol"), ("decane (32 atoms)", decane(), model, "mol"),
               ("Cu-Au cell (108 atoms)", cu_au(3), metal, "metal")]
    for label, atoms, src, kind in systems:
        methods = {"eager float64, 2 threads (before)": EGNNCalculator(src, threads=2),
                   "eager float64": EGNNCalculator(src),
                   "eager float32": EGNNCalculator(src, dtype=torch.float32),
                   "compiled float64": EGNNCalculator(str(work / f"{kind}_f64.pt2")),
                   "compiled float32": EGNNCalculator(str(work / f"{kind}_f32.pt2"))}
        if kind == "mol":
            from tblite.ase import TBLite

            methods["GFN2-xTB (tblite)"] = TBLite(method="GFN2-xTB", verbosity=0)
        log(f"calls: {label}")
        row = interleaved(methods, atoms, args.rounds, args.steps)
        if kind == "mol":
            row.update(xtb_own_process(atoms, args.rounds * args.steps, work))
        if args.mace_venv is not None:
            frames = [atoms.copy()] if kind == "metal" else None
            m = args.mace_models.get(kind) if frames is None else args.mace_models.get("metal")
            if m is not None:
                for dt, ms in mace_step_ms(args.mace_venv, m, atoms, args.threads, work).items():
                    row[f"MACE {dt} (call)"] = ms
        out[label] = row
        log(f"  {json.dumps({k: round(v, 3) for k, v in row.items()})}")
    return out


def skin(work: Path, args) -> dict:
    from ase.build import molecule

    from egnn.ase import EGNNCalculator

    out = {}
    for label, atoms, kind in [("ethanol (9 atoms)", molecule("CH3CH2OH"), "mol"),
                               ("Cu-Au cell (108 atoms)", cu_au(3), "metal")]:
        methods = {f"skin {s:g} A": EGNNCalculator(str(work / f"{kind}_f64.pt2"), skin=s) for s in (0.0, 0.5, 1.0)}
        log(f"skin: {label}")
        out[label] = interleaved(methods, atoms, args.rounds, args.steps)
        log(f"  {json.dumps({k: round(v, 3) for k, v in out[label].items()})}")
    return out


def large(metal: Path, work: Path, args) -> dict:
    import torch

    from egnn.ase import EGNNCalculator

    atoms = cu_au(args.large_repeat)
    n = len(atoms)
    out: dict = {"atoms": n}
    for name, calc in [("compiled float32", EGNNCalculator(str(work / "metal_f32.pt2"))),
                       ("compiled float32, kernels at --threads", EGNNCalculator(str(work / "metal_f32_dyn.pt2"))),
                       ("eager float32", EGNNCalculator(metal, dtype=torch.float32)),
                       ("compiled float64", EGNNCalculator(str(work / "metal_f64.pt2"))),
                       ("eager float64", EGNNCalculator(metal))]:
        log(f"large: {name} ({n} atoms)")
        t = step_times(calc, atoms, 3)
        out[name] = {"ms_per_step": 1000 * float(np.median(t)), "us_per_atom_step": 1e6 * float(np.median(t)) / n}
        log(f"  {out[name]}")
    if args.mace_venv is not None and args.mace_models.get("metal") is not None:
        for dt, ms in mace_step_ms(args.mace_venv, args.mace_models["metal"], atoms, args.threads, work,
                                   calls=2).items():
            out[f"MACE {dt} (call)"] = {"ms_per_step": ms, "us_per_atom_step": 1000 * ms / n}
    return out


def nve(model: Path, work: Path, args) -> dict:
    from ase import units
    from ase.build import molecule
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet
    from tblite.ase import TBLite

    from egnn.ase import EGNNCalculator

    out = {}
    for name, calc in [("compiled float64", EGNNCalculator(str(work / "mol_f64.pt2"))),
                       ("eager float64", EGNNCalculator(model)),
                       ("GFN2-xTB (tblite)", TBLite(method="GFN2-xTB", verbosity=0))]:
        a = molecule("CH3CH2OH")
        a.calc = calc
        MaxwellBoltzmannDistribution(a, temperature_K=500, rng=np.random.default_rng(1))
        Stationary(a)
        ZeroRotation(a)
        dyn = VelocityVerlet(a, 0.5 * units.fs)
        log(f"nve: {name}, {args.nve_steps} steps")
        every, total, start = 10, [], time.perf_counter()
        for _ in range(args.nve_steps // every):
            dyn.run(every)
            total.append(a.get_total_energy())
        wall = time.perf_counter() - start
        e = (np.array(total) - total[0]) / len(a)
        t_ps = np.arange(1, len(e) + 1) * every * 0.5e-3
        slope = float(np.polyfit(t_ps, e, 1)[0])
        out[name] = {"drift_meV_per_atom_per_ps": 1000 * slope, "span_meV_per_atom": 1000 * float(e.max() - e.min()),
                     "final_temperature_K": float(a.get_temperature()), "wall_s": round(wall, 1)}
        log(f"  {out[name]}")
    return out


def equality(metal: Path, work: Path) -> dict:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from egnn.ase import EGNNCalculator
    from egnn.atoms.potential import Potential

    atoms = cu_au(3, seed=1)
    atoms.calc = EGNNCalculator(str(work / "metal_f64.pt2"))
    runner = atoms.calc.potential.model.runner
    eager = Potential(metal)
    MaxwellBoltzmannDistribution(atoms, temperature_K=1500, rng=np.random.default_rng(2))
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    worst_f, worst_e, edges = 0.0, 0.0, set()
    log("equality: 1,000 steps of the 108-atom cell, compiled vs eager every 10th")
    for _ in range(100):
        dyn.run(10)
        f, e = atoms.get_forces(), atoms.get_potential_energy()
        ev = eager.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
        worst_f = max(worst_f, float(np.abs(ev.forces - f).max()))
        worst_e = max(worst_e, abs(ev.energy - e))
        edges.add(int(eager._neighbors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)[0].shape[1]))
    assert atoms.calc.potential.model.runner is runner  # one loaded library throughout
    return {"steps": 1000, "max_force_diff_eV_A": worst_f, "max_energy_diff_eV": worst_e,
            "distinct_edge_counts": len(edges), "edge_range": [min(edges), max(edges)]}


def openmm_rates(model: Path, work: Path, args) -> dict:
    import openmm
    import openmm.app as app
    import openmm.unit as unit
    from ase.build import molecule

    from egnn.openmm import create_force

    eth = molecule("CH3CH2OH")

    def ethanol_topology(top: app.Topology) -> None:
        res = top.addResidue("ETH", top.addChain())
        for s in eth.get_chemical_symbols():
            top.addAtom(s, app.Element.getBySymbol(s), res)

    def rate(system, positions, steps) -> float:
        integrator = openmm.VerletIntegrator(0.5 * unit.femtoseconds)
        ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": str(args.threads)})
        ctx.setPositions(positions)
        ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
        integrator.step(10)
        t = time.perf_counter()
        integrator.step(steps)
        return steps / (time.perf_counter() - t)

    out = {}
    for name, src in [("eager float64", model), ("compiled float64", str(work / "mol_f64.pt2"))]:
        top = app.Topology()
        ethanol_topology(top)
        system = openmm.System()
        for m in eth.get_masses():
            system.addParticle(m)
        system.addForce(create_force(src, top))
        log(f"openmm: ethanol, {name}")
        out[f"ethanol, {name}"] = rate(system, eth.positions * 0.1, args.openmm_steps)

    # ethanol in TIP3P water: the water from OpenMM's force field, ethanol on EGNN and not coupled to the water (a
    # speed measurement: what the EGNN force costs inside a solvated PME system; with Lennard-Jones spheres on the
    # ethanol atoms the classical energy came out at 1.7e9 kJ/mol, not resolved)
    modeller = app.Modeller(app.Topology(), [])
    ff = app.ForceField("amber14/tip3p.xml")
    modeller.addSolvent(ff, boxSize=openmm.Vec3(2.5, 2.5, 2.5) * unit.nanometer, model="tip3p")
    wpos = np.asarray(modeller.getPositions().value_in_unit(unit.nanometer))
    centre = np.diag(np.asarray(modeller.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))) / 2
    epos = eth.positions * 0.1 - eth.positions.mean(0) * 0.1 + centre
    clash = {a.residue.index for a in modeller.topology.atoms()
             if np.min(np.linalg.norm(epos - wpos[a.index], axis=1)) < 0.3}
    modeller.delete([r for r in modeller.topology.residues() if r.index in clash])
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.9 * unit.nanometer,
                             constraints=app.HBonds, rigidWater=True)
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    first = system.getNumParticles()
    top = modeller.topology
    ethanol_topology(top)
    for m in eth.get_masses():
        system.addParticle(m)
        nb.addParticle(0.0, 0.3, 0.0)
    n_water = first // 3
    positions = np.concatenate([np.asarray(modeller.getPositions().value_in_unit(unit.nanometer)), epos])
    for name, src in [("eager float64", model), ("compiled float64", str(work / "mol_f64.pt2"))]:
        force = create_force(src, top, atoms=list(range(first, first + len(eth))), periodic=False)
        k = system.addForce(force)
        log(f"openmm: ethanol in {n_water} TIP3P waters, {name}")
        out[f"ethanol in {n_water} TIP3P waters (PME), {name}"] = rate(system, positions, args.openmm_steps // 2)
        system.removeForce(k)
    return out


# ------------------------------------------------------------------------------------------------- report


def tables(res: dict) -> str:
    lines = [f"# bench_compiled at commit {res['commit']}, {res['cpu']}, {res['threads']} threads", ""]
    if "export" in res:
        lines += ["## export", "", "| file | seconds | MB | max force diff vs eager |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['seconds']} | {v['MB']} | {v['max_force_diff']:.1e} |" for k, v in res["export"].items()]
        lines.append("")
    for sec in ("calls", "skin"):
        if sec in res:
            lines += [f"## {sec}: ms per MD step (median)", ""]
            for label, row in res[sec].items():
                lines.append(f"- {label}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()))
                if "GFN2-xTB (tblite)" in row:
                    x = min(v for k, v in row.items() if k.startswith("GFN2-xTB"))  # xtb at its best setting
                    lines.append(f"  - compiled float64 / GFN2-xTB (its fastest) = {row['compiled float64'] / x:.2f}; "
                                 f"eager float64 / GFN2-xTB = {row['eager float64'] / x:.2f}; eager 2 threads "
                                 f"(before) / GFN2-xTB = {row['eager float64, 2 threads (before)'] / x:.2f}")
                if sec == "calls":
                    ratio = row["eager float64"] / row["compiled float64"]
                    lines.append(f"  - eager / compiled (float64) = {ratio:.2f}")
            lines.append("")
    if "large" in res:
        lines += [f"## large: {res['large']['atoms']} atoms, us per atom and step", ""]
        lines += [f"- {k}: {v['us_per_atom_step']:.3g} us ({v['ms_per_step']:.4g} ms per step)"
                  for k, v in res["large"].items() if k != "atoms"]
        lines.append("")
    if "md" in res:
        lines += ["## NVE, ethanol from 500 K, 0.5 fs", "", "| method | drift meV/atom/ps | span meV/atom | wall s |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['drift_meV_per_atom_per_ps']:.3g} | {v['span_meV_per_atom']:.3g} | {v['wall_s']} |"
                  for k, v in res["md"].items()]
        lines.append("")
    if "equality" in res:
        q = res["equality"]
        lines += ["## compiled vs eager along MD (float64)", "",
                  f"- {q['steps']} steps: forces within {q['max_force_diff_eV_A']:.1e} eV/A, energy within "
                  f"{q['max_energy_diff_eV']:.1e} eV; {q['distinct_edge_counts']} distinct edge counts "
                  f"({q['edge_range'][0]}-{q['edge_range'][1]}) served by one compiled library", ""]
    if "openmm" in res:
        lines += ["## OpenMM steps/s (Verlet 0.5 fs, CPU platform)", ""]
        lines += [f"- {k}: {v:.1f}" for k, v in res["openmm"].items()]
    return "\n".join(line for line in lines if line is not None) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="run folder of a model fitted to H/C/N/O molecules")
    p.add_argument("--work", type=Path, default=Path("data/compiled"), help="exports and scratch files")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: print only)")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per system (calls, skin)")
    p.add_argument("--steps", type=int, default=40, help="MD steps per method and round")
    p.add_argument("--nve-steps", type=int, default=20_000)
    p.add_argument("--openmm-steps", type=int, default=2000)
    p.add_argument("--large-repeat", type=int, default=14, help="cubic cells per direction (4 atoms each)")
    p.add_argument("--mace-venv", type=Path, default=None, help="MACE's environment (bench_potentials.py makes it)")
    p.add_argument("--mol-frames", type=Path, default=Path("data/xtb_md/train.extxyz"),
                   help="labelled molecules (REF_energy, REF_forces) for MACE's one-epoch fit")
    args = p.parse_args(argv)
    # MACE trains in folders of its own (relative paths would not reach it)
    args.mace_venv = None if args.mace_venv is None else args.mace_venv.resolve()
    args.work = args.work.resolve()
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    metal = metal_model(args.work)
    args.mace_models = {}
    if args.mace_venv is not None:
        import ase.io

        from egnn.experiments.fit.emt import EMTConfig, generate

        mol_frames = ase.io.read(str(args.mol_frames), index=":50")
        metal_frames = generate(EMTConfig(elements=("Cu", "Au"), n_frames=50, repeat=(2, 2, 2), seed=0))
        for f in metal_frames:
            f.info["REF_energy"] = f.get_potential_energy()
            f.arrays["REF_forces"] = f.get_forces()
            f.calc = None
        args.mace_models = {"mol": mace_model(args.mace_venv, args.work, "mol", mol_frames),
                            "metal": mace_model(args.mace_venv, args.work, "metal", metal_frames)}
    res: dict = {"commit": commit(), "cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
                 "model": str(args.model)}
    if "export" in sections or not (args.work / "mol_f64.pt2").exists():
        res["export"] = export_all(args.model, metal, args.work)
    runs = {"calls": lambda: calls(args.model, metal, args.work, args), "skin": lambda: skin(args.work, args),
            "large": lambda: large(metal, args.work, args), "md": lambda: nve(args.model, args.work, args),
            "openmm": lambda: openmm_rates(args.model, args.work, args),
            "equality": lambda: equality(metal, args.work)}
    for name in sections:
        if name in runs:
            res[name] = runs[name]()
    text = tables(res)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        suffix = "" if set(sections) == set(SECTIONS) else "_" + "_".join(sections)
        (args.out / f"compiled{suffix}.json").write_text(json.dumps(res, indent=1))
        (args.out / f"compiled{suffix}.txt").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
