"""``egnn example emt``: the whole own-data path on a data set that needs nothing from outside.

1. generate a periodic fcc alloy data set with ASE's EMT (rattled, strained, some vacancies): train and test files;
2. fit energies and forces with the fixed-epoch recipe ``FIT_PRESET`` (``egnn fit`` with a test file; a wall-time
   cap, if given, only stops the run early and says so);
3. evaluate on the test set beside the mean-energy / zero-force baselines and the done-criterion of issue 14
   (force MAE <= 0.25 x mean |F| component, energy MAE per atom <= 0.25 x std of the energy per atom);
4. ``egnn predict`` the test file and check it against :class:`egnn.ase.EGNNCalculator`;
5. relax a new structure with BFGS and run NVE molecular dynamics (VelocityVerlet) with the calculator, EMT beside;
6. parity plots (in the run folder) and an MD energy plot.
"""

from __future__ import annotations

import csv
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egnn.experiments.fit import train as ft
from egnn.experiments.fit.emt import EMTConfig, generate, write_dataset
from egnn.experiments.run import code_version, write_json
from egnn.experiments.trainer import TrainConfig

# measured on 2 CPU cores with the default data (README, "Your own 3D data")
EXAMPLE_MODEL = ft.ModelOptions(cutoff=4.5, hidden_channels=48, num_layers=3, n_rbf=8)
EXAMPLE_TRAIN = ft.FIT_PRESET.train_config()
EXAMPLE_LOSS = ft.LossOptions(energy_weight=10.0, forces_weight=1.0)


def _md_energy_plot(rows: list[dict[str, float]], path: Path) -> None:
    from egnn.experiments.plots import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.6))
    t = [r["time_fs"] for r in rows]
    for key, label in (("egnn_total", "EGNN total"), ("egnn_potential", "EGNN potential"),
                       ("emt_total", "EMT total (own run)")):
        if key in rows[0]:
            ax.plot(t, [r[key] - rows[0][key] for r in rows], label=label, lw=1)
    ax.set_xlabel("time (fs)")
    ax.set_ylabel("energy - initial (eV)")
    ax.set_title("NVE (VelocityVerlet)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stress_check(model: str | Path, frames: list[Any]) -> dict[str, float]:
    """Stresses of the calculator (derived from the energy model, never trained on stresses) against EMT's, in GPa:
    MAE and the mean |stress component| of EMT (the zero-stress baseline)."""
    from ase import units
    from ase.calculators.emt import EMT

    from egnn.ase import EGNNCalculator

    calc, ours, ref = EGNNCalculator(model), [], []
    for a in frames:
        b, c = a.copy(), a.copy()
        b.calc, c.calc = calc, EMT()
        ours.append(b.get_stress())
        ref.append(c.get_stress())
    ours_np, ref_np = np.array(ours) / units.GPa, np.array(ref) / units.GPa
    return {"structures": len(frames), "stress_mae_gpa": float(np.abs(ours_np - ref_np).mean()),
            "baseline_zero_stress_mae_gpa": float(np.abs(ref_np).mean())}


def run_md(atoms: Any, calc: Any, steps: int, timestep_fs: float = 2.0, temperature_k: float = 300.0,
           seed: int = 0) -> tuple[list[dict[str, float]], dict[str, float]]:
    """NVE molecular dynamics; returns per-step energies and the drift summary (eV per atom)."""
    from ase import units
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_k, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    rows: list[dict[str, float]] = []

    def record() -> None:
        ep, ek = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        rows.append({"step": len(rows), "time_fs": len(rows) * timestep_fs, "potential": ep, "kinetic": ek,
                     "total": ep + ek, "temperature_k": ek / (1.5 * units.kB * len(atoms))})

    record()
    dyn.attach(record, interval=1)
    dyn.run(steps)
    rows = rows[: steps + 1]
    total = np.array([r["total"] for r in rows])
    n = len(atoms)
    summary = {"steps": steps, "timestep_fs": timestep_fs, "atoms": n,
               "drift_per_atom_ev": float(abs(total[-1] - total[0]) / n),
               "max_deviation_per_atom_ev": float(np.abs(total - total[0]).max() / n),
               "mean_temperature_k": float(np.mean([r["temperature_k"] for r in rows]))}
    return rows, summary


def run_emt_example(
    out: str | Path, elements: tuple[str, ...] = ("Cu", "Au"), train_frames: int = 400, test_frames: int = 100,
    epochs: int | None = None, max_minutes: float | None = None, md_steps: int = 500, seed: int = 0,
    progress: bool = True,
    model: ft.ModelOptions = EXAMPLE_MODEL, train_cfg: TrainConfig = EXAMPLE_TRAIN,
) -> dict[str, Any]:
    """Run the worked example in the new (or empty) folder ``out``; returns and writes ``out/summary.json``.

    ``epochs`` (default: the recipe's) fixes the schedule; ``max_minutes`` only caps the fit (the summary's
    ``fit.cut_by_time_cap`` says whether it stopped it early)."""
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    from egnn.ase import EGNNCalculator
    from egnn.atoms.data import load_dataset
    from egnn.atoms.model import load_model

    out = Path(out)
    ft.check_new_folder(out)
    summary: dict[str, Any] = {"code": code_version(), "elements": list(elements), "seed": seed}
    # 1. data
    t0 = time.perf_counter()
    train_path = write_dataset(out / "data" / "train.extxyz",
                               EMTConfig(elements=elements, n_frames=train_frames, seed=seed), progress)
    test_path = write_dataset(out / "data" / "test.extxyz",
                              EMTConfig(elements=elements, n_frames=test_frames, seed=seed + 1000), progress)
    summary["generate_seconds"] = round(time.perf_counter() - t0, 2)
    cache = out / "cache"
    timings = {}
    for attempt in ("first_read_seconds", "cached_read_seconds"):
        t0 = time.perf_counter()
        data = load_dataset(train_path, "energy", "forces", cache_dir=cache, progress=False)
        timings[attempt] = round(time.perf_counter() - t0, 3)
    timings["cache_reused"] = bool(data.meta.get("cached"))
    summary["cache"] = timings
    e_pa = data.energy / data.n_atoms
    summary["train_data"] = {"frames": len(data), "atoms": int(len(data.z)),
                             "atoms_per_frame": sorted({int(v) for v in data.n_atoms}),
                             "energy_per_atom_std_ev": float(e_pa.std()),
                             "mean_abs_force_component_ev_per_a": float(np.abs(data.forces).mean())}
    # 2. fit
    plan = ft.FitPlan(data=ft.DataOptions(train=str(train_path), target="energy", forces="forces",
                                          test=str(test_path), cache_dir=str(cache), split_seed=seed),
                      model=model, loss=EXAMPLE_LOSS)
    cfg = replace(train_cfg, epochs=epochs or train_cfg.epochs, max_minutes=max_minutes, seed=seed,
                  progress=progress)
    result, fit_summary = ft.fit(plan, cfg, out / "run")
    ft.check_finite_summary(fit_summary)
    test = fit_summary["test"]
    summary["fit"] = {"epochs_planned": cfg.epochs, "epochs_done": result.epochs_done,
                      "cut_by_time_cap": result.cut_by_time_cap, "train_seconds": round(result.train_seconds, 1),
                      "best_epoch": result.best_epoch, "threads": torch.get_num_threads()}
    summary["test"] = test
    summary["done_criterion"] = {
        "forces_mae_over_mean_abs_force": test["forces_mae"] / test["baseline_zero_forces_mae"],
        "energy_per_atom_mae_over_std": test["energy_per_atom_mae"] / test["energy_per_atom_std"],
    }
    summary["done_criterion"]["met"] = bool(max(summary["done_criterion"].values()) <= 0.25)
    # 3. predict vs calculator
    best = load_model(out / "run" / "best")
    ft.predict_file(best, test_path, out / "test_pred.extxyz")
    import ase.io

    predicted = ase.io.read(str(out / "test_pred.extxyz"), index=":")
    agree = {}
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        calc = EGNNCalculator(out / "run" / "best", dtype=dtype)
        de, df = 0.0, 0.0
        for a in predicted[:10]:
            b = a.copy()
            b.calc = calc
            de = max(de, abs(b.get_potential_energy() - a.info["energy_pred"]))
            df = max(df, float(np.abs(b.get_forces() - a.arrays["forces_pred"]).max()))
        agree[f"calculator_{name}_vs_predict_max_abs_energy_ev"] = de
        agree[f"calculator_{name}_vs_predict_max_abs_force_ev_per_a"] = df
    summary["predict_vs_calculator"] = agree
    summary["stress"] = stress_check(out / "run" / "best", predicted[:20])
    # 4. relaxation of a new structure
    calc = EGNNCalculator(out / "run" / "best")
    start = generate(EMTConfig(elements=elements, n_frames=1, seed=seed + 2000))[0]
    relax = start.copy()
    relax.calc = calc
    e0 = relax.get_potential_energy()
    opt = BFGS(relax, logfile=str(out / "relax.log"), trajectory=str(out / "relax.traj"))
    converged = opt.run(fmax=0.05, steps=300)
    emt = EMT()
    emt_start, emt_end = start.copy(), relax.copy()
    emt_start.calc, emt_end.calc = emt, EMT()
    summary["relax"] = {
        "atoms": len(relax), "converged": bool(converged), "steps": int(opt.nsteps),
        "egnn_energy_start": e0, "egnn_energy_end": relax.get_potential_energy(),
        "emt_energy_start": emt_start.get_potential_energy(), "emt_energy_end": emt_end.get_potential_energy(),
        "emt_fmax_start": float(np.linalg.norm(emt_start.get_forces(), axis=1).max()),
        "emt_fmax_end": float(np.linalg.norm(emt_end.get_forces(), axis=1).max()),
    }
    # 5. NVE MD from the relaxed structure, EGNN and EMT from the same velocities
    rows, md = run_md(relax, calc, md_steps, seed=seed)
    emt_rows, emt_md = run_md(relax, EMT(), md_steps, seed=seed)
    summary["md"] = {"egnn": md, "emt": emt_md}
    merged = [{"step": r["step"], "time_fs": r["time_fs"], "egnn_potential": r["potential"],
               "egnn_total": r["total"], "egnn_temperature_k": r["temperature_k"], "emt_total": s["total"]}
              for r, s in zip(rows, emt_rows)]
    with open(out / "md.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(merged[0]))
        w.writeheader()
        w.writerows(merged)
    _md_energy_plot(merged, out / "md_energy.png")
    write_json(out / "summary.json", summary)
    return summary
