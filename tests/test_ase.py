"""The ASE calculator: forces = -dE/dx (central finite differences), BFGS, NVE energy conservation."""

import numpy as np
import pytest
import torch

pytest.importorskip("ase")
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.optimize import BFGS  # noqa: E402

from egnn.ase import EGNNCalculator  # noqa: E402
from egnn.atoms.data import from_atoms_list  # noqa: E402
from egnn.experiments.fit import train as ft  # noqa: E402
from egnn.experiments.fit.emt import EMTConfig, generate  # noqa: E402
from egnn.experiments.trainer import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model fitted for a few seconds to EMT energies and forces of 8-atom Cu-Au cells."""
    out = tmp_path_factory.mktemp("ase_calc")
    frames = generate(EMTConfig(elements=("Cu", "Au"), n_frames=40, repeat=(1, 1, 2), rattle=0.08, seed=3))
    import ase.io

    ase.io.write(str(out / "train.extxyz"), frames)
    plan = ft.FitPlan(data=ft.DataOptions(train=str(out / "train.extxyz"), forces="forces", cache_dir=None),
                      model=ft.ModelOptions(cutoff=4.0, hidden_channels=16, num_layers=2, n_rbf=4),
                      loss=ft.LossOptions(energy_weight=1.0, forces_weight=1.0))
    cfg = TrainConfig(epochs=12, batch_size=8, lr=5e-3, schedule="cosine", eval_every=4, checkpoint_every=12,
                      progress=False, seed=0)
    _, summary = ft.fit(plan, cfg, out / "run")
    return out / "run", summary


def structure(seed=0):
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((1, 1, 2))
    atoms.symbols[[1, 4, 6]] = "Au"
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_fit_learned_something(trained):
    _, summary = trained
    v = summary["valid"]
    assert v["forces_mae"] < 0.8 * v["baseline_zero_forces_mae"]


def test_forces_equal_minus_central_finite_differences(trained):
    atoms = structure()
    atoms.calc = EGNNCalculator(trained[0])
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3
    h = 1e-4
    for atom, k in [(0, 0), (3, 1), (7, 2)]:
        energies = []
        for sign in (1, -1):
            a = atoms.copy()
            a.calc = atoms.calc
            a.positions[atom, k] += sign * h
            energies.append(a.get_potential_energy())
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert forces[atom, k] == pytest.approx(fd, abs=1e-6)
    assert atoms.get_potential_energy() == atoms.get_potential_energy(force_consistent=True)


def test_bfgs_relaxes(trained):
    atoms = structure(1)
    atoms.calc = EGNNCalculator(trained[0])
    f0 = np.linalg.norm(atoms.get_forces(), axis=1).max()
    e0 = atoms.get_potential_energy()
    assert BFGS(atoms, logfile=None).run(fmax=0.02, steps=200)
    assert atoms.get_potential_energy() < e0 and np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.02 < f0


def test_nve_energy_drift_is_bounded(trained):
    """500 VelocityVerlet steps of 2 fs (1 ps) at 300 K: total energy stays within 0.2 meV/atom of its start."""
    from egnn.experiments.fit.example import run_md

    atoms = structure(2)
    rows, md = run_md(atoms, EGNNCalculator(trained[0]), steps=500, timestep_fs=2.0, temperature_k=300.0)
    assert len(rows) == 501 and md["mean_temperature_k"] > 50  # the atoms really move
    potential = np.array([r["potential"] for r in rows])
    assert potential.std() > 1e-3
    # measured: 2.2e-5 eV/atom largest deviation of the total energy from its start (float64 calculator)
    assert md["max_deviation_per_atom_ev"] < 2e-4


def test_predict_and_calculator_agree_and_input_errors(trained):
    from egnn.atoms.model import load_model

    model = load_model(trained[0])
    frames = [structure(s) for s in range(3)]
    pred = model.predict(from_atoms_list(frames, energy_key=None, require_targets=False), forces=True)
    calc = EGNNCalculator(trained[0], dtype=torch.float32)
    for i, a in enumerate(frames):
        a.calc = calc
        assert a.get_potential_energy() == pytest.approx(pred["energy"][i], abs=1e-4)
        np.testing.assert_allclose(a.get_forces(), pred["forces"][8 * i : 8 * i + 8], atol=1e-4)
    ag = bulk("Ag", "fcc", a=4.1)
    ag.calc = calc
    with pytest.raises(ValueError, match=r"element\(s\) Ag \(Z=47\) not in the training set \(trained on: Cu, Au\)"):
        ag.get_potential_energy()
    emt_like = structure()
    emt_like.calc = EMT()
    assert np.isfinite(emt_like.get_potential_energy())


def test_stress_equals_finite_differences_of_the_energy_under_strain(trained):
    from ase.calculators.fd import calculate_numerical_stress

    atoms = structure(3)
    atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.01, 0], [0.01, 0.99, 0.02], [0, 0.02, 1.01]]),
                   scale_atoms=True)
    atoms.calc = EGNNCalculator(trained[0])
    stress = atoms.get_stress()
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-6), atol=1e-7)
    forces = atoms.get_forces()  # the same forces with and without the strain path
    plain = atoms.copy()
    plain.calc = EGNNCalculator(trained[0])
    np.testing.assert_allclose(plain.get_forces(), forces, atol=1e-12)
    slab = atoms.copy()
    slab.pbc = (True, True, False)
    slab.calc = EGNNCalculator(trained[0])
    from ase.calculators.calculator import PropertyNotImplementedError

    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        slab.get_stress()


def test_cell_relaxation_with_frechet_cell_filter(trained):
    import warnings

    from ase.filters import FrechetCellFilter

    atoms = structure(4)
    atoms.set_cell(atoms.cell.array * 1.03, scale_atoms=True)  # stretched: under tension
    atoms.calc = EGNNCalculator(trained[0])
    s0 = np.abs(atoms.get_stress()).max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's logm accuracy note inside the filter
        assert BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.01, steps=300)
    assert np.abs(atoms.get_stress()).max() < 0.1 * s0
    assert atoms.get_volume() < 1.03**3 * structure(4).get_volume()  # the cell shrank back
