"""Potential (what the ASE calculator and the OpenMM force share): compiled == eager through the calculator, a
neighbour-list skin changes nothing but the number of list builds, and the refusals."""

import numpy as np
import pytest
import torch

pytest.importorskip("ase")
from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.calculators.calculator import PropertyNotImplementedError  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402
from ase.units import fs  # noqa: E402

from egnn.ase import EGNNCalculator  # noqa: E402
from egnn.atoms.potential import Potential  # noqa: E402


def water_box(n=6, seed=0):
    """``n`` rattled water molecules in a periodic cube."""
    rng = np.random.default_rng(seed)
    side = 3.2 * n ** (1 / 3)
    parts = []
    for _ in range(n):
        w = molecule("H2O")
        w.rotate(rng.uniform(0, 360), rng.normal(size=3))
        w.translate(rng.uniform(0, side, 3))
        parts.append(w)
    atoms = sum(parts[1:], parts[0])
    atoms.cell, atoms.pbc = np.eye(3) * side, True
    return atoms


def compare_calculators(a, b, atoms, stress, tol):
    atoms.calc = a
    want = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress() if stress else None)
    atoms.calc = b
    got = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress() if stress else None)
    assert abs(got[0] - want[0]) <= tol * len(atoms)
    assert np.abs(got[1] - want[1]).max() <= tol
    if stress:
        assert np.abs(got[2] - want[2]).max() <= tol


def test_compiled_calculator_equals_eager(exported):
    ckpt, report = exported["vector"]
    eager, compiled = EGNNCalculator(ckpt), EGNNCalculator(str(report.path))
    assert compiled.potential.compiled and not eager.potential.compiled
    compare_calculators(eager, compiled, molecule("CH3CH2OH"), stress=False, tol=1e-10)
    compare_calculators(eager, compiled, water_box(), stress=True, tol=1e-10)
    ckpt32, report32 = exported["invariant"]
    compare_calculators(EGNNCalculator(ckpt32, dtype=torch.float32), EGNNCalculator(str(report32.path)),
                        water_box(seed=1), stress=False, tol=2e-4)


def test_compiled_md_trajectory_equals_eager_as_edges_change(exported):
    """200 steps of hot periodic MD with the compiled file; every frame recomputed eagerly agrees to 1e-8 while the
    number of edges changes (one compiled library serves all of them)."""
    ckpt, report = exported["vector"]
    atoms = water_box(seed=2)
    atoms.calc = EGNNCalculator(str(report.path))
    rng = np.random.default_rng(0)
    atoms.set_velocities(rng.normal(0, 0.02, (len(atoms), 3)))
    eager = Potential(ckpt)
    edge_counts, worst = set(), 0.0
    dyn = VelocityVerlet(atoms, 0.5 * fs)
    for _ in range(20):
        dyn.run(10)
        f = atoms.get_forces()
        ev = eager.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
        worst = max(worst, float(np.abs(ev.forces - f).max()))
        edge_counts.add(len(eager._neighbors(atoms.positions, atoms.cell.array, atoms.pbc, atoms.numbers)[0][0]))
    assert worst <= 1e-8
    assert len(edge_counts) > 3


def test_skin_changes_only_the_number_of_builds(exported):
    ckpt, report = exported["vector"]
    plain, skinned = Potential(str(report.path)), Potential(str(report.path), skin=1.0)
    atoms = water_box(seed=3)
    rng = np.random.default_rng(1)
    steps = 30
    for _ in range(steps):
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)  # ~0.09 A per step: a rebuild every few
        a = plain.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
        b = skinned.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
        assert abs(a.energy - b.energy) <= 1e-10 and np.abs(a.forces - b.forces).max() <= 1e-10
    assert plain.neighbor_builds == steps
    assert 1 < skinned.neighbor_builds < steps // 3
    cell_changed = atoms.cell.array * 1.01  # a new cell always rebuilds
    skinned.evaluate(atoms.numbers, atoms.positions, cell_changed, atoms.pbc)
    builds = skinned.neighbor_builds
    skinned.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    assert skinned.neighbor_builds == builds + 1


def test_refusals(exported):
    report32 = exported["invariant"][1]
    calc = EGNNCalculator(str(report32.path))
    with pytest.raises(ValueError, match=r"Cl \(Z=17\) not in the training set"):
        calc.get_potential_energy(Atoms("HCl", positions=[[0, 0, 0], [0, 0, 1.3]]))
    with pytest.raises(ValueError, match="no atoms"):
        calc.get_potential_energy(Atoms())
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        EGNNCalculator(str(exported["vector"][1].path)).get_stress(molecule("H2O"))
    with pytest.raises(PropertyNotImplementedError, match="exported without stress"):
        calc.get_stress(water_box())
    with pytest.raises(ValueError, match="skin must be"):
        Potential(str(report32.path), skin=-1.0)


def test_threads_one_for_small_structures_and_restored(exported, monkeypatch):
    report = exported["vector"][1]
    seen = []
    pot = Potential(str(report.path))
    call = type(pot.backend).__call__

    def spy(self, *args):
        seen.append(torch.get_num_threads())
        return call(self, *args)

    monkeypatch.setattr(type(pot.backend), "__call__", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        atoms = molecule("CH3CH2OH")
        pot.evaluate(atoms.numbers, atoms.positions)
        Potential(str(report.path), threads=2).evaluate(atoms.numbers, atoms.positions)
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        Potential(str(report.path), threads=0)


def test_calculator_recomputes_exactly_when_the_structure_changes(exported, monkeypatch):
    calc = EGNNCalculator(str(exported["vector"][1].path))
    calls = []
    evaluate = calc.potential.evaluate
    monkeypatch.setattr(calc.potential, "evaluate", lambda *a, **k: calls.append(1) or evaluate(*a, **k))
    atoms = water_box(seed=5)
    atoms.calc = calc
    atoms.get_forces()
    atoms.get_potential_energy()
    assert len(calls) == 1  # the same structure: cached
    for change in (lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-10),
                   lambda a: a.set_cell(a.cell.array * 1.001),
                   lambda a: a.set_pbc([True, True, False]),
                   lambda a: a.numbers.__setitem__(0, 8 if a.numbers[0] != 8 else 1)):
        change(atoms)
        before = len(calls)
        atoms.get_forces()
        assert len(calls) == before + 1
