"""Training through the traced energy + forces graph: the same loss gradients as eager double backward, for every
atoms model kind, and `egnn fit --compile` trains."""

import numpy as np
import pytest
import torch

from egnn.atoms.model import AtomsModel, AtomsModelConfig
from egnn.atoms.neighbors import neighbor_list
from egnn.compiled.training import CompiledEnergyForces


def batch(model, n_frames=3, seed=0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    zs, ps, es, ss, off = [], [], [], [], 0
    for k in range(n_frames):
        n = 4 + k % 5
        grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], dtype=np.float64)
        pos = grid[:n] * 1.2 + rng.normal(0, 0.1, (n, 3))  # atoms 1-2 A apart, like a molecule
        e, s = neighbor_list(pos, 3.0, np.zeros((3, 3)), np.zeros(3, bool), True)
        zs.append(rng.choice(model.species, n))
        ps.append(pos)
        es.append(e + off)
        ss.append(np.zeros((e.shape[1], 3)))
        off += n
    z = torch.as_tensor(np.concatenate(zs))
    return (model.species_index(z), torch.as_tensor(np.concatenate(ps), dtype=dtype),
            torch.as_tensor(np.concatenate(es, 1)).long(), torch.as_tensor(np.concatenate(ss), dtype=dtype))


def loss_and_grads(model, energy_forces, b):
    atom_e, forces = energy_forces(*b)
    loss = atom_e.sum().square() + forces.square().sum()
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True, materialize_grads=True)
    return loss.detach(), grads


def eager(model):
    def fn(species, pos, edge_index, edge_shift):
        x = pos.detach().requires_grad_(True)
        atom_e = model.atom_energies_of_index(species, x, edge_index, edge_shift)
        (g,) = torch.autograd.grad(atom_e.sum(), x, create_graph=True)
        return atom_e, -g
    return fn


@pytest.mark.parametrize("extra", [{"vector_channels": 2}, {}, {"update_coords": True}],
                         ids=["vector", "invariant", "coords"])
def test_traced_gradients_equal_eager_double_backward(extra):
    torch.manual_seed(0)
    model = AtomsModel(AtomsModelConfig(species=[1, 6, 8], cutoff=3.0, hidden_channels=8, num_layers=2, n_rbf=3,
                                        **extra)).double()
    traced = CompiledEnergyForces(model, compile=False)
    for seed in range(3):  # the graph traced on the first batch serves batches of other sizes
        b = batch(model, n_frames=2 + seed, seed=seed)
        l0, g0 = loss_and_grads(model, eager(model), b)
        l1, g1 = loss_and_grads(model, traced, b)
        assert torch.allclose(l0, l1, rtol=1e-12, atol=1e-12)
        for a, c in zip(g0, g1):
            assert torch.allclose(a, c, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # an optimiser step is seen at the next call
        for p in model.parameters():
            p.add_(0.01)
    b = batch(model, seed=5)
    assert torch.allclose(loss_and_grads(model, eager(model), b)[0], loss_and_grads(model, traced, b)[0],
                          rtol=1e-12)


@pytest.mark.slow
def test_compiled_gradients_equal_eager():
    """torch.compile of the traced graph (float32): the same loss and gradients to float32 rounding."""
    torch.manual_seed(0)
    model = AtomsModel(AtomsModelConfig(species=[1, 6, 8], cutoff=3.0, hidden_channels=8, num_layers=1, n_rbf=3,
                                        vector_channels=1))
    compiled = CompiledEnergyForces(model)
    for seed in range(2):
        b = batch(model, n_frames=3 + seed, seed=seed, dtype=torch.float32)
        l0, g0 = loss_and_grads(model, eager(model), b)
        l1, g1 = loss_and_grads(model, compiled, b)
        assert torch.allclose(l0, l1, rtol=1e-5)
        scale = max(float(g.abs().max()) for g in g0)
        assert max(float((a - c).abs().max()) for a, c in zip(g0, g1)) <= 1e-5 * scale
