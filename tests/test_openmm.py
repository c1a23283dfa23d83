"""egnn.openmm.create_force: OpenMM's energies and forces equal the ASE calculator's (all particles, a listed
subset, a periodic box; eager and compiled), NVE conserves energy, and bad topologies are refused."""

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
pytest.importorskip("ase")
import openmm.app as app  # noqa: E402
import openmm.unit as unit  # noqa: E402
from ase.build import molecule  # noqa: E402

from egnn.ase import EGNNCalculator  # noqa: E402
from egnn.openmm import KJ_PER_MOL_PER_EV, create_force  # noqa: E402
from tests.atoms.test_potential import water_box  # noqa: E402

KJ_NM = unit.kilojoule_per_mole / unit.nanometer


def topology_of(atoms, box=False, extra_argon=0):
    top = app.Topology()
    res = top.addResidue("MOL", top.addChain())
    for s in atoms.get_chemical_symbols():
        top.addAtom(s, app.Element.getBySymbol(s), res)
    solvent = top.addResidue("AR", top.addChain())
    for _ in range(extra_argon):
        top.addAtom("Ar", app.Element.getBySymbol("Ar"), solvent)
    if box:
        top.setPeriodicBoxVectors(atoms.cell.array * 0.1)
    return top


def context(atoms, force, box=False, extra=None, masses=None):
    system = openmm.System()
    for m in list(atoms.get_masses()) + list(masses or []):
        system.addParticle(m)
    if box:
        system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) for row in atoms.cell.array * 0.1))
    force.setForceGroup(1)
    system.addForce(force)
    if extra is not None:
        system.addForce(extra)
    integrator = openmm.VerletIntegrator(0.25 * unit.femtoseconds)
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference")), integrator


def egnn_terms(ctx):
    s = ctx.getState(getEnergy=True, getForces=True, groups={1})
    return (s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL_PER_EV,
            s.getForces(asNumpy=True).value_in_unit(KJ_NM) / (10 * KJ_PER_MOL_PER_EV))


@pytest.mark.parametrize("kind", ["eager", "compiled"])
def test_molecule_equals_ase(exported, kind):
    ckpt, report = exported["vector"]
    source = ckpt if kind == "eager" else str(report.path)
    atoms = molecule("CH3CH2OH")
    ctx, _ = context(atoms, create_force(source, topology_of(atoms)))
    ctx.setPositions(atoms.positions * 0.1)
    energy, forces = egnn_terms(ctx)
    atoms.calc = EGNNCalculator(source)
    assert abs(energy - atoms.get_potential_energy()) < 1e-9
    assert np.abs(forces - atoms.get_forces()).max() < 1e-9


def test_periodic_box_equals_ase(exported):
    report = exported["vector"][1]
    atoms = water_box(seed=4)
    ctx, _ = context(atoms, create_force(str(report.path), topology_of(atoms, box=True)), box=True)
    ctx.setPositions(atoms.positions * 0.1)
    energy, forces = egnn_terms(ctx)
    atoms.calc = EGNNCalculator(str(report.path))
    assert abs(energy - atoms.get_potential_energy()) < 1e-9
    assert np.abs(forces - atoms.get_forces()).max() < 1e-9


def test_subset_ml_mm(exported):
    """Ethanol on the model, three argon atoms on a classical harmonic restraint: the model's energy and forces are
    those of ethanol alone, and the argon atoms feel nothing from it."""
    report = exported["vector"][1]
    atoms = molecule("CH3CH2OH")
    top = topology_of(atoms, extra_argon=3)
    restraint = openmm.CustomExternalForce("k*(x^2+y^2+z^2)")
    restraint.addGlobalParameter("k", 100.0)
    for i in range(9, 12):
        restraint.addParticle(i, [])
    ctx, _ = context(atoms, create_force(str(report.path), top, atoms=list(range(9))), extra=restraint,
                     masses=[39.9] * 3)
    ctx.setPositions(np.concatenate([atoms.positions, [[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]]]) * 0.1)
    energy, forces = egnn_terms(ctx)
    atoms.calc = EGNNCalculator(str(report.path))
    assert abs(energy - atoms.get_potential_energy()) < 1e-9
    assert np.abs(forces[:9] - atoms.get_forces()).max() < 1e-9
    assert np.abs(forces[9:]).max() == 0.0


def test_nve_conserves_energy(exported):
    """2,000 Verlet steps of 0.25 fs from 500 K: the total energy stays within a small fraction of the potential
    energy's own swing (the atoms really move)."""
    report = exported["vector"][1]
    atoms = molecule("CH3CH2OH")
    ctx, integrator = context(atoms, create_force(str(report.path), topology_of(atoms)))
    ctx.setPositions(atoms.positions * 0.1)
    ctx.setVelocitiesToTemperature(500 * unit.kelvin, 7)
    total, potential = [], []
    for _ in range(100):
        integrator.step(20)
        s = ctx.getState(getEnergy=True)
        pe = s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        potential.append(pe)
        total.append(pe + s.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole))
    swing = max(potential) - min(potential)
    assert swing > 1.0  # kJ/mol: the molecule moves
    assert max(total) - min(total) < 0.02 * swing


def test_refusals(exported):
    report = exported["vector"][1]
    atoms = molecule("CH3Cl")
    with pytest.raises(ValueError, match=r"Cl \(Z=17\) not in the training set"):
        create_force(str(report.path), topology_of(atoms))
    top = topology_of(molecule("H2O"))
    top.addAtom("EP", None, next(top.residues()))
    with pytest.raises(ValueError, match="has no element; leave it out with atoms"):
        create_force(str(report.path), top)
    create_force(str(report.path), top, atoms=[0, 1, 2])  # the virtual site left out: fine
    with pytest.raises(ValueError, match="index 7 is not an atom"):
        create_force(str(report.path), top, atoms=[0, 7])
    with pytest.raises(ValueError, match="listed twice"):
        create_force(str(report.path), top, atoms=[0, 0])
    with pytest.raises(ValueError, match="threads must be"):
        create_force(str(report.path), top, atoms=[0, 1, 2], threads=0)
