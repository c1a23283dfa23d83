"""The energy + forces function of an atoms model as one traced graph (no checks, no data-dependent branches).

Inputs of the graph (all positional): ``species`` ``[N]`` int64 (the index of each atom's element in the model's
``species`` list, already checked), ``pos`` ``[N, 3]``, ``edge_index`` ``[2, E]`` int64 (``[0]`` source j, ``[1]``
target i, the library's convention), ``edge_shift`` ``[E, 3]`` (Cartesian periodic image offsets, zeros for
molecules). Outputs: per-atom energies ``[N]``, forces ``-dE/dpos`` ``[N, 3]`` and, with ``stress``, the derivative
of the energy with respect to a homogeneous symmetric strain of positions and lattice, ``[3, 3]`` (eV; divide by the
volume for the stress).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor

from egnn.atoms.model import AtomsModel

ENERGY_READOUTS = ("sum",)


def check_energy_model(model: AtomsModel, what: str) -> None:
    """``ValueError`` unless ``model`` predicts an extensive energy (readout ``"sum"``) whose gradient is a force."""
    readout = model.config.readout
    if readout not in ENERGY_READOUTS:
        raise ValueError(f"{what} is not an energy model (readout {readout!r}, target {model.config.target!r}); "
                         "only models with the extensive readout 'sum' have forces to export")


def energy_forces_function(model: AtomsModel, stress: bool = False) -> Callable[..., tuple[Tensor, ...]]:
    """``f(species, pos, edge_index, edge_shift) -> (atom_energies, forces[, virial])`` of ``model`` (see the module
    docstring). The parameters are constants of the function, not inputs."""

    def energy_forces(species: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            x = pos.detach().requires_grad_(True)
            if stress:
                strain = torch.zeros(3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
                sym = 0.5 * (strain + strain.transpose(0, 1))
                atom_e = model.atom_energies_of_index(species, x + x @ sym, edge_index, edge_shift + edge_shift @ sym)
                grads = torch.autograd.grad(atom_e.sum(), [x, strain])
            else:
                atom_e = model.atom_energies_of_index(species, x, edge_index, edge_shift)
                grads = torch.autograd.grad(atom_e.sum(), [x])
        return (atom_e.detach(), -grads[0], *grads[1:])

    return energy_forces


def example_inputs(model: AtomsModel, dtype: torch.dtype, n_atoms: int = 7, seed: int = 0
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A small structure of the model's elements, every pair an edge (tracing needs sizes other than 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    species = torch.arange(n_atoms) % len(model.config.species)
    pos = torch.randn(n_atoms, 3, generator=g, dtype=torch.float64).to(dtype) * 1.5
    i, j = torch.meshgrid(torch.arange(n_atoms), torch.arange(n_atoms), indexing="ij")
    keep = i != j
    edge_index = torch.stack([j[keep], i[keep]])
    return species, pos, edge_index, torch.zeros(edge_index.shape[1], 3, dtype=dtype)


def trace_energy_forces(model: AtomsModel, dtype: torch.dtype = torch.float64, stress: bool = False
                        ) -> torch.fx.GraphModule:
    """The graph of :func:`energy_forces_function` with symbolic numbers of atoms and edges (``make_fx``: the
    backward pass that gives the forces is part of the graph, as plain operations)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    model = copy.deepcopy(model).to(dtype).eval()  # the caller's model keeps its dtype and trainable weights
    for p in model.parameters():
        p.requires_grad_(False)
    fn = energy_forces_function(model, stress)
    # the weights are real tensors captured by the function: they become constants of the graph
    return make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example_inputs(model, dtype))
