"""Evaluation batches cut by a budget of atoms + edges (``TrainConfig.eval_batch_budget``): the fit's metric (a sum
over frames) is the same as with batches of frames, from memory and from a store's rows, and every batch keeps to
the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ase")

from egnn.atoms.data import from_atoms_list  # noqa: E402
from egnn.atoms.graphs import AtomsGraphs  # noqa: E402
from egnn.atoms.loader import FrameRows, OnTheFlyGraphs  # noqa: E402
from egnn.atoms.model import AtomsModel, AtomsModelConfig  # noqa: E402
from egnn.experiments.fit.emt import EMTConfig, generate  # noqa: E402
from egnn.experiments.fit.train import LossOptions, make_task  # noqa: E402
from egnn.experiments.training import evaluate_split  # noqa: E402


@pytest.fixture(scope="module")
def data():
    frames = generate(EMTConfig(n_frames=9, repeat=(1, 1, 2), seed=3))
    return from_atoms_list(frames, energy_key="energy", forces_key="forces")


@pytest.mark.parametrize("where", ["memory", "rows"])
def test_the_metric_is_the_same_whatever_the_budget(data, where, monkeypatch):
    graphs = (AtomsGraphs(data, 4.0, dtype=torch.float64) if where == "memory"
              else OnTheFlyGraphs(FrameRows(data), 4.0, dtype=torch.float64))
    sizes = graphs.sizes()
    assert sizes.shape == (9,) and (sizes > data.n_atoms).all()
    if where == "rows":  # an estimate from the first frames' edges per atom, close to the exact sizes
        exact = AtomsGraphs(data, 4.0).sizes()
        np.testing.assert_allclose(sizes, exact, rtol=0.3)
    torch.manual_seed(0)
    model = AtomsModel(AtomsModelConfig(species=[29, 79], hidden_channels=8, num_layers=1, n_rbf=4, cutoff=4.0,
                                        forces="forces")).double()
    task = make_task({"train": graphs, "valid": graphs}, 1.0, LossOptions(), use_forces=True)
    seen: list[list[int]] = []
    get = type(graphs).get
    monkeypatch.setattr(type(graphs), "get", lambda self, idx, device="cpu": seen.append(list(map(int, idx)))
                        or get(self, idx, device))
    by_frames = evaluate_split(task, graphs, model, torch.device("cpu"), batch_size=64)
    assert seen == [list(range(9))]
    seen.clear()
    budget = int(2.5 * sizes.max())
    by_budget = evaluate_split(task, graphs, model, torch.device("cpu"), batch_size=64, budget=budget)
    assert len(seen) > 1 and [i for b in seen for i in b] == list(range(9))
    assert all(sizes[b].sum() <= budget for b in seen)
    assert by_budget == pytest.approx(by_frames, rel=1e-12)
