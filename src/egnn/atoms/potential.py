"""A fitted energy model as a potential for MD engines: structure in, energy, forces and virial out.

:class:`Potential` is what every engine binding shares (:class:`egnn.ase.EGNNCalculator`,
:func:`egnn.openmm.create_force`): it reads a run folder, checkpoint, :class:`~egnn.atoms.model.AtomsModel` or
compiled ``.pt2`` export, checks the elements, builds (and with a skin, reuses) the neighbour list and calls the
model. Units are the model's: Angstrom and eV.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from egnn.atoms.model import AtomsModel, load_model
from egnn.atoms.neighbors import NeighborError, neighbor_list

# below this many edges a call runs at one thread by default (Potential's ``threads``)
SMALL_EDGES = 10_000


class StressUnavailable(ValueError):
    """Stress was asked of a structure or a model that cannot give it."""


@dataclass
class Evaluation:
    """One call's results: total energy (eV), forces ``[N, 3]`` (eV/A) and, when asked, ``dE/d(strain)``
    ``[3, 3]`` (eV; the stress is this over the volume)."""

    energy: float
    forces: np.ndarray
    virial: np.ndarray | None = None


class _Eager:
    """The model in PyTorch's eager mode: autograd for forces and (strain) virial."""

    def __init__(self, model: AtomsModel, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.cutoff, self.images = model.cutoff, model.config.images

    def species_index(self, numbers: np.ndarray) -> Tensor:
        return self.model.species_index(torch.as_tensor(numbers, dtype=torch.long)).to(self.device)

    def __call__(self, species: Tensor, pos: Tensor, edges: Tensor, shift: Tensor, virial: bool
                 ) -> tuple[float, Tensor, Tensor | None]:
        m = self.model
        z = m.species_table.new_tensor(m.species)[species]
        with torch.enable_grad():
            x = pos.requires_grad_(True)
            inputs = [x]
            if virial:
                # a homogeneous strain of positions and lattice (shifts are lattice vectors): dE/d(strain) at 0
                strain = torch.zeros(3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
                sym = 0.5 * (strain + strain.T)
                energy = m(z, x + x @ sym, edges, shift + shift @ sym).sum()
                inputs.append(strain)
            elif m.config.readout == "sum":  # forces alone: no strain terms (a small call is mostly per-op overhead)
                energy = m.atom_energies_of_index(species, x, edges, shift).sum()
            else:  # another readout: the gradient of its forward
                energy = m(z, x, edges, shift).sum()
            grads = torch.autograd.grad(energy, inputs, allow_unused=True)
        grads = tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs))
        return float(energy.detach()), -grads[0].detach(), (grads[1].detach() if virial else None)


class _Compiled:
    """An ``egnn export`` file: one compiled call gives energies, forces and (if exported with it) the virial."""

    def __init__(self, path: str | Path) -> None:
        from egnn.compiled.loader import ExportedModel

        self.model = ExportedModel(path)
        self.device, self.dtype = torch.device("cpu"), self.model.dtype
        self.cutoff, self.images = self.model.cutoff, self.model.images

    def species_index(self, numbers: np.ndarray) -> Tensor:
        return self.model.species_index(numbers)

    def __call__(self, species: Tensor, pos: Tensor, edges: Tensor, shift: Tensor, virial: bool
                 ) -> tuple[float, Tensor, Tensor | None]:
        if virial and not self.model.stress:
            raise StressUnavailable(f"{self.model.path} was exported without stress; export it again with --stress")
        out = self.model(species, pos, edges, shift)
        return float(out[0].double().sum()), out[1], (out[2] if virial else None)


class Potential:
    """Energy, forces and virial of structures from a fitted model.

    Args:
        model: a checkpoint path or run folder (its ``best``), an :class:`~egnn.atoms.model.AtomsModel`, or a
            ``.pt2`` file written by ``egnn export`` (compiled; its dtype is the one it was exported with, and the
            virial needs ``egnn export --stress``).
        device: torch device (eager models; exports run on the CPU).
        dtype: floating precision of an eager evaluation (default float64).
        skin: extra distance in Angstrom kept in the neighbour list, which is then reused until an atom has moved
            by more than ``skin / 2`` (or the cell, periodicity or elements change). Pairs beyond the cut-off have
            an envelope weight of exactly zero, so results do not depend on it; 0 rebuilds the list at every call.
        threads: PyTorch's intra-op threads during a call (restored after it). ``None``: one thread for structures
            with fewer than ``SMALL_EDGES`` (10,000) edges, PyTorch's setting for larger ones. Compiled code runs every
            kernel in an OpenMP parallel region: on a small molecule the regions cost more than they share (an
            ethanol call took 1.2 ms at one thread, 3.4-4.2 ms at two, and with OpenMP's default spin-waiting on a
            busy machine 60-100 ms; ``OMP_WAIT_POLICY=PASSIVE``, which the ``egnn`` command sets, avoids the latter).

    Attributes:
        neighbor_builds: how many times the neighbour list was built.
    """

    def __init__(self, model: str | Path | AtomsModel, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64, skin: float = 0.0, threads: int | None = None) -> None:
        if not (np.isfinite(skin) and skin >= 0):
            raise ValueError(f"skin must be a distance >= 0 in Angstrom, got {skin}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
        self.threads = threads
        self.backend: _Eager | _Compiled
        if isinstance(model, AtomsModel):
            self.backend = _Eager(model.to(device=device, dtype=dtype).eval(), torch.device(device), dtype)
        elif str(model).endswith(".pt2"):
            self.backend = _Compiled(model)
        else:
            self.backend = _Eager(load_model(model, device=device, dtype=dtype), torch.device(device), dtype)
        self.model = self.backend.model
        self.device, self.dtype = self.backend.device, self.backend.dtype
        self.skin = float(skin)
        self._list: dict[str, Any] | None = None
        self._species: tuple[np.ndarray, Tensor] | None = None
        self.neighbor_builds = 0

    @property
    def species(self) -> list[int]:
        """The atomic numbers the model knows."""
        return list(self.model.species)

    @property
    def compiled(self) -> bool:
        """Whether the model is an ``egnn export`` file."""
        return isinstance(self.backend, _Compiled)

    def _neighbors(self, pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Edges and integer image offsets; with a skin, the list of the last build while it is still valid."""
        old = self._list
        if (old is not None and len(pos) == len(old["pos"]) and np.array_equal(cell, old["cell"])
                and np.array_equal(pbc, old["pbc"]) and np.array_equal(numbers, old["numbers"])
                and float(np.max(np.sum((pos - old["pos"]) ** 2, axis=1))) < (0.5 * self.skin) ** 2):
            return old["edges"], old["shifts"]
        reach = None if self.backend.cutoff is None else self.backend.cutoff + self.skin
        try:
            edges, shifts = neighbor_list(pos, reach, cell, pbc, self.backend.images)
        except NeighborError as err:
            raise ValueError(f"cannot build the neighbour list: {err}") from None
        self.neighbor_builds += 1
        if self.skin > 0:
            self._list = {"pos": pos.copy(), "cell": cell.copy(), "pbc": pbc.copy(), "numbers": numbers.copy(),
                          "edges": edges, "shifts": shifts}
        return edges, shifts

    def species_index(self, numbers: np.ndarray) -> Tensor:
        """Index of each atomic number in the model's species (``ValueError`` for elements it does not know)."""
        return self.backend.species_index(np.asarray(numbers))

    def evaluate(self, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray | None = None,
                 pbc: np.ndarray | None = None, virial: bool = False, species: Tensor | None = None) -> Evaluation:
        """Energy and forces (and ``virial``: ``dE/d(strain)``, which needs a cell periodic in three directions) of
        one structure; ``species`` may pass :meth:`species_index` of ``numbers`` computed once."""
        numbers = np.asarray(numbers)
        if len(numbers) == 0:
            raise ValueError("the structure has no atoms")
        pos = np.asarray(positions, dtype=np.float64)
        cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
        pbc = np.zeros(3, dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool)
        if virial and not pbc.all():
            raise StressUnavailable("stress needs a cell that is periodic in all three directions")
        if species is None:  # the last call's, while the elements are the same (MD)
            cached = self._species
            if cached is None or not np.array_equal(cached[0], numbers):
                cached = self._species = (numbers.copy(), self.species_index(numbers))
            species = cached[1]
        edge_index, shifts = self._neighbors(pos, cell, pbc, numbers)
        dev, dt = self.device, self.dtype
        shift = torch.as_tensor(shifts.astype(np.float64) @ cell, dtype=dt, device=dev)
        x = torch.as_tensor(pos, dtype=dt, device=dev)
        edges = torch.as_tensor(edge_index, device=dev).long()
        before = torch.get_num_threads()
        want = self.threads or (1 if edges.shape[1] < SMALL_EDGES else before)
        if want != before:
            torch.set_num_threads(want)
        try:
            energy, forces, vir = self.backend(species, x, edges, shift, virial)
        finally:
            if want != before:
                torch.set_num_threads(before)
        return Evaluation(energy, forces.cpu().double().numpy(),
                          None if vir is None else vir.cpu().double().numpy())
