"""Whether a task's loss leaves parameters without gradients, found on the first batch (DDP's
``find_unused_parameters``): a model with an idle layer says so, one without does not, and the check leaves the
random state as it found it. Of the energy + forces fit's models only the invariant one uses every parameter (the
vector model's first layer mixes vectors that are still zero; the coords model's last position update feeds
nothing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from egnn.experiments.training import Task, TrainConfig, Trainer


class Split:
    def __init__(self, n: int) -> None:
        self.x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def get(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self.x[idx].to(device)


class Net(nn.Module):
    def __init__(self, idle: bool) -> None:
        super().__init__()
        self.used = nn.Linear(3, 1)
        self.idle = nn.Linear(3, 1) if idle else None


def trainer(idle: bool, tmp_path) -> Trainer:
    def loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        torch.rand(1)  # a model that draws noise in training (the check must not move the random state)
        return model.used(x).square().mean()

    task = Task(Split(10), Split(4), None, loss, lambda m, x: (m.used(x).sum(), len(x)))
    return Trainer(Net(idle), task, TrainConfig(batch_size=4, device="cpu", progress=False), tmp_path, {})


@pytest.mark.parametrize("idle", [False, True])
def test_unused_parameters_are_found_on_the_first_batch(idle, tmp_path):
    t = trainer(idle, tmp_path)
    before = torch.get_rng_state()
    assert t._unused_parameters() is idle
    assert torch.equal(torch.get_rng_state(), before)
    assert all(p.grad is None for p in t.model.parameters())


@pytest.mark.parametrize(("kind", "unused"), [({"vector_channels": 0}, False), ({"vector_channels": 4}, True),
                                              ({"update_coords": True}, True)], ids=["invariant", "vector", "coords"])
def test_which_energy_forces_models_leave_parameters_unused(kind, unused, tmp_path):
    pytest.importorskip("ase")
    from egnn.atoms.data import from_atoms_list
    from egnn.atoms.graphs import AtomsGraphs
    from egnn.atoms.model import AtomsModel, AtomsModelConfig
    from egnn.experiments.fit.emt import EMTConfig, generate
    from egnn.experiments.fit.train import LossOptions, make_task

    frames = generate(EMTConfig(n_frames=6, repeat=(1, 1, 2), seed=2))
    data = from_atoms_list(frames, energy_key="energy", forces_key="forces")
    graphs = AtomsGraphs(data, 4.0)
    model = AtomsModel(AtomsModelConfig(species=[29, 79], hidden_channels=8, num_layers=2, n_rbf=4, cutoff=4.0,
                                        **kind))
    task = make_task({"train": graphs, "valid": graphs}, 1.0, LossOptions(), use_forces=True)
    t = Trainer(model, task, TrainConfig(batch_size=4, device="cpu", progress=False), tmp_path, {})
    assert t._unused_parameters() is unused
