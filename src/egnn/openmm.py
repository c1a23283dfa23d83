"""OpenMM: a fitted model (run folder, checkpoint or compiled ``.pt2``) as an ``openmm.PythonForce``.

Needs ``openmm`` 8.5 or newer (``pip install 'egnn[openmm]'``, which pins 8.6.1); ``import egnn`` itself never
imports it. The force can act on all particles or on a listed subset (ML/MM: a ligand with the model, its
surroundings with a classical force field); OpenMM then passes only those particles' positions and expects only
their forces.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egnn.atoms.model import AtomsModel
from egnn.atoms.potential import Potential

# CODATA 2018: 1 eV = 1.602176634e-19 J (exact), N_A = 6.02214076e23 /mol (exact)
KJ_PER_MOL_PER_EV = 1.602176634e-19 * 6.02214076e23 / 1000.0
ANGSTROM_PER_NM = 10.0


def topology_numbers(topology: Any, atoms: Sequence[int] | None = None) -> np.ndarray:
    """Atomic numbers of the topology's atoms (or of the listed ones, in that order); ``ValueError`` naming an atom
    without an element (a virtual site or a dummy particle cannot go to the model)."""
    every = list(topology.atoms())
    if atoms is None:
        chosen = every
    else:
        bad = [i for i in atoms if not 0 <= int(i) < len(every)]
        if bad:
            raise ValueError(f"atoms: index {bad[0]} is not an atom of the topology (it has {len(every)})")
        if len(set(int(i) for i in atoms)) != len(atoms):
            raise ValueError("atoms: an index is listed twice")
        chosen = [every[int(i)] for i in atoms]
    if not chosen:
        raise ValueError("atoms: no atoms to compute (an empty topology or an empty list)")
    numbers = []
    for a in chosen:
        if a.element is None:
            raise ValueError(f"topology atom {a.index} ({a.name} in residue {a.residue.name}) has no element; "
                             "leave it out with atoms=[...]")
        numbers.append(a.element.atomic_number)
    return np.asarray(numbers, dtype=np.int64)


def create_force(model: str | Path | AtomsModel | Potential, topology: Any, atoms: Sequence[int] | None = None,
                 periodic: bool | None = None, skin: float = 0.0, dtype: torch.dtype = torch.float64,
                 threads: int | None = None) -> Any:
    """An ``openmm.PythonForce`` computing the model's energy and forces.

    Args:
        model: a run folder or checkpoint (evaluated eagerly in ``dtype``), a ``.pt2`` file from ``egnn export``
            (compiled), an :class:`~egnn.atoms.model.AtomsModel` or a :class:`~egnn.atoms.potential.Potential`.
        topology: the ``openmm.app.Topology``; the elements come from it.
        atoms: indices of the particles the model computes (default: all); the others do not see it.
        periodic: whether the model sees periodic images of the box (default: when the topology has box vectors).
            With a subset of particles (a solute in solvent) the images are those of the subset alone.
        skin: neighbour-list skin in Angstrom (:class:`~egnn.atoms.potential.Potential`).
        dtype: precision of an eager evaluation.
        threads: PyTorch's intra-op threads during the model's call (:class:`~egnn.atoms.potential.Potential`;
            ``None``: one for small structures). OpenMM's own CPU threads wait meanwhile: on 2 cores, an eager
            ethanol model at 2 threads ran 2.7 steps/s against 400 at one thread.

    Units are converted: positions nm -> Angstrom, energies eV -> kJ/mol, forces eV/Angstrom -> kJ/mol/nm.
    """
    import openmm

    potential = model if isinstance(model, Potential) else Potential(model, dtype=dtype, skin=skin, threads=threads)
    numbers = topology_numbers(topology, atoms)
    species = potential.species_index(numbers)  # unknown elements refused now, not at the first step
    if periodic is None:
        periodic = topology.getPeriodicBoxVectors() is not None
    if periodic and potential.backend.cutoff is None:
        raise ValueError("periodic: the model has no cut-off (complete graphs), so it cannot see periodic images")
    pbc = np.full(3, bool(periodic))
    force_unit = KJ_PER_MOL_PER_EV * ANGSTROM_PER_NM

    def compute(state: Any) -> tuple[float, np.ndarray]:
        pos = np.asarray(state.getPositions(asNumpy=True)._value, dtype=np.float64) * ANGSTROM_PER_NM
        cell = (np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value, dtype=np.float64) * ANGSTROM_PER_NM
                if periodic else None)
        ev = potential.evaluate(numbers, pos, cell, pbc, species=species)
        return ev.energy * KJ_PER_MOL_PER_EV, ev.forces * force_unit

    force = openmm.PythonForce(compute)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    if atoms is not None:
        force.setParticles([int(i) for i in atoms])
    force.setName("egnn")
    return force
