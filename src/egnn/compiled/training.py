"""Training on the traced energy + forces graph: the force loss's gradient with a first-order backward.

Eager training on forces differentiates ``F = -dE/dx`` again (``create_graph=True``): a double backward through
about a thousand small autograd nodes, which ``torch.compile`` cannot compile. Here the energy and its forces are
traced once into one graph whose inputs include the parameters (``make_fx``: the force computation becomes plain
operations of the parameters), and that graph is compiled with ``torch.compile`` (dynamic numbers of atoms and
edges): the loss's gradient is then an ordinary backward through compiled code. The values equal the eager model's
to rounding (``tests/compiled/test_training.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from egnn.atoms.model import AtomsModel


class _AtomEnergies(nn.Module):
    """``forward = AtomsModel.atom_energies_of_index`` (what ``functional_call`` needs)."""

    def __init__(self, model: AtomsModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, species: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor) -> Tensor:
        return self.model.atom_energies_of_index(species, pos, edge_index, edge_shift)


class CompiledEnergyForces:
    """Per-atom energies and forces of ``model`` from its traced, compiled graph; differentiable with respect to
    the model's parameters.

    Args:
        model: the :class:`~egnn.atoms.model.AtomsModel` being trained (its parameters are read at each call, so
            optimiser steps are seen; its buffers and dtype are fixed at the first call).
        compile: ``torch.compile`` the traced graph (``False``: run it as traced, for tests).

    The graph is traced at the first call, from that call's shapes (symbolic atom and edge counts).
    """

    def __init__(self, model: AtomsModel, compile: bool = True) -> None:
        self.module = _AtomEnergies(model)
        self.names = [n for n, _ in self.module.named_parameters()]
        self.compile = compile
        self._fn: Callable[..., tuple[Tensor, Tensor]] | None = None

    def _function(self) -> Callable[..., tuple[Tensor, Tensor]]:
        module, names = self.module, self.names

        def energy_forces(params: list[Tensor], species: Tensor, pos: Tensor, edge_index: Tensor,
                          edge_shift: Tensor) -> tuple[Tensor, Tensor]:
            def total(x: Tensor) -> tuple[Tensor, Tensor]:
                atom_e = torch.func.functional_call(module, dict(zip(names, params)),
                                                    (species, x, edge_index, edge_shift))
                return atom_e.sum(), atom_e

            # torch.func.grad, not autograd.grad(create_graph=True): traced by make_fx, the latter reads saved
            # outputs (sigmoid, tanh, sqrt) as detached tensors, so the parameters' gradient through the forces
            # came out wrong (by 1e-5 relative, float64); the functional transform keeps every dependency
            grad, atom_e = torch.func.grad(total, has_aux=True)(pos)
            return atom_e, -grad

        return energy_forces

    def __call__(self, species: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None
                 ) -> tuple[Tensor, Tensor]:
        params = list(self.module.parameters())
        if edge_shift is None:
            edge_shift = pos.new_zeros(edge_index.shape[1], 3)
        if self._fn is None:
            from torch.fx.experimental.proxy_tensor import make_fx

            # buffers (species table, reference energies) are real tensors: constants of the graph
            graph = make_fx(self._function(), tracing_mode="symbolic", _allow_non_fake_inputs=True)(
                params, species, pos, edge_index.long(), edge_shift)
            self._fn = torch.compile(graph, dynamic=True) if self.compile else graph
        return self._fn(params, species, pos, edge_index.long(), edge_shift)
