"""An ASE calculator for a trained :class:`~egnn.atoms.model.AtomsModel`: energies and conservative forces for
relaxations (``ase.optimize``) and molecular dynamics (``ase.md``).

Needs ``ase`` (``pip install 'egnn[ase]'``); ``import egnn`` itself never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from egnn.atoms.model import AtomsModel, load_model
from egnn.atoms.neighbors import NeighborError, neighbor_list


class EGNNCalculator(Calculator):
    """ASE calculator with ``energy``, ``free_energy`` (the same value), ``forces = -dE/dpositions`` and, for cells
    periodic in all three directions, ``stress = (1/V) dE/d(strain)`` (Voigt order, ASE's convention; derived from the
    energy model, which is not trained on stresses).

    Args:
        model: a checkpoint path or run folder (its ``best``), or an :class:`~egnn.atoms.model.AtomsModel`.
        device: torch device.
        dtype: floating precision of the evaluation (default float64: forces then match finite differences of
            the energy to ~1e-8 and MD conserves energy as well as the integrator allows).

    The neighbour list is rebuilt at every call with the model's cut-off (periodic images from ``atoms.cell`` and
    ``atoms.pbc``). Elements the model was not trained on raise ``ValueError``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: str | Path | AtomsModel, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(model, AtomsModel):
            self.model = model.to(device=device, dtype=dtype).eval()
        else:
            self.model = load_model(model, device=device, dtype=dtype)
        self.device = torch.device(device)
        self.dtype = dtype

    def calculate(self, atoms: Any = None, properties: Any = None, system_changes: Any = all_changes) -> None:
        """ASE's entry point: compute every implemented property of ``atoms`` into ``self.results``."""
        super().calculate(atoms, properties or ["energy"], system_changes)
        a = self.atoms
        if len(a) == 0:
            raise ValueError("the structure has no atoms")
        pos = np.asarray(a.positions, dtype=np.float64)
        cell = np.asarray(a.cell.array, dtype=np.float64)
        pbc = np.asarray(a.pbc, dtype=bool)
        try:
            edge_index, shifts = neighbor_list(pos, self.model.cutoff, cell, pbc, self.model.config.images)
        except NeighborError as err:
            raise ValueError(f"cannot build the neighbour list: {err}") from None
        dev, dt = self.device, self.dtype
        z = torch.as_tensor(np.asarray(a.numbers), dtype=torch.long, device=dev)
        shift = torch.as_tensor(shifts.astype(np.float64) @ cell, dtype=dt, device=dev)
        want_stress = "stress" in (properties or [])
        if want_stress and not pbc.all():
            raise PropertyNotImplementedError("stress needs a cell that is periodic in all three directions")
        with torch.enable_grad():
            x = torch.as_tensor(pos, dtype=dt, device=dev).requires_grad_(True)
            edges = torch.as_tensor(edge_index, device=dev)
            inputs = [x]
            if want_stress:
                # a homogeneous strain of positions and lattice (shifts are lattice vectors): dE/d(strain) at 0
                strain = torch.zeros(3, 3, dtype=dt, device=dev, requires_grad=True)
                sym = 0.5 * (strain + strain.T)
                energy = self.model(z, x + x @ sym, edges, shift + shift @ sym)
                inputs.append(strain)
            else:  # forces alone: no strain terms in the graph (a small molecule's call is mostly per-op overhead)
                energy = self.model(z, x, edges, shift)
            grads = torch.autograd.grad(energy.sum(), inputs, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]
        e = float(energy.detach().cpu()[0])
        self.results["energy"] = e
        self.results["free_energy"] = e
        self.results["forces"] = -grads[0].detach().cpu().double().numpy()
        if want_stress:
            s = grads[1].detach().cpu().double().numpy() / abs(float(np.linalg.det(cell)))
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
