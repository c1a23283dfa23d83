"""Batches built on the fly (per-batch neighbour lists, from a store or from memory, in DataLoader workers) equal
the batches of the precomputed in-memory path; the statistics of a streamed set equal the in-memory ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ase")
import ase.io  # noqa: E402

from egnn.atoms.data import read_dataset  # noqa: E402
from egnn.atoms.graphs import AtomsBatch, AtomsGraphs  # noqa: E402
from egnn.atoms.loader import FrameRows, OnTheFlyGraphs  # noqa: E402
from egnn.atoms.model import fit_statistics  # noqa: E402
from egnn.atoms.packing import pack  # noqa: E402
from egnn.atoms.store import open_store  # noqa: E402
from egnn.experiments.fit.emt import EMTConfig, generate  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    frames = generate(EMTConfig(elements=("Cu", "Au"), n_frames=20, repeat=(1, 1, 2), seed=4))
    ase.io.write(str(root / "a.extxyz"), frames)
    pack([root / "a.extxyz"], root / "a.store", "energy", "forces", progress=False)
    return read_dataset(root / "a.extxyz", "energy", "forces"), open_store(root / "a.store")


def assert_same_batch(a: AtomsBatch, b: AtomsBatch) -> None:
    assert a.num_graphs == b.num_graphs
    for name in ("z", "pos", "edge_index", "edge_shift", "batch", "n_atoms", "energy", "forces"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)


def index_batches(n: int, seed: int) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [order[s : s + 6] for s in range(0, n, 6)]


@pytest.mark.parametrize("source", ["memory", "store"])
def test_on_the_fly_batches_equal_precomputed_ones(data, source):
    memory, store = data
    rows = np.array([3, 0, 7, 11, 19, 2, 5, 8, 13, 17])  # a subset in its own order, as a split
    frames = FrameRows(memory if source == "memory" else store, rows)
    fly = OnTheFlyGraphs(frames, cutoff=4.0)
    fixed = AtomsGraphs(memory.subset(rows), cutoff=4.0)
    for idx in index_batches(len(rows), 1):
        assert_same_batch(fly.get(idx), fixed.get(idx))
    got = list(fly.loader(index_batches(len(rows), 2), torch.device("cpu")))
    for idx, batch in zip(index_batches(len(rows), 2), got):
        assert_same_batch(batch, fixed.get(idx))
        assert torch.equal(batch.rows, idx)


@pytest.mark.timing
def test_worker_processes_serve_several_passes(data):
    """Two DataLoader workers, kept between passes: each pass yields its own batches, in order."""
    memory, store = data
    fly = OnTheFlyGraphs(FrameRows(store), cutoff=4.0, workers=2)
    fixed = AtomsGraphs(memory, cutoff=4.0)
    for seed in (5, 6, 7):
        batches = index_batches(len(memory), seed)
        got = list(fly.loader(batches, torch.device("cpu")))
        assert len(got) == len(batches)
        for idx, batch in zip(batches, got):
            assert_same_batch(batch, fixed.get(idx))


class ThreeAtATime(FrameRows):
    def chunks(self, size: int = 4096):  # several chunks even for a small set
        return super().chunks(3)


def test_streamed_statistics_equal_in_memory_ones(data):
    memory, store = data
    rows = np.arange(1, 20, 2)
    for readout in ("sum", "mlp"):
        a = fit_statistics(memory.subset(rows), readout=readout)
        b = fit_statistics(ThreeAtATime(store, rows), readout=readout)
        assert a["species"] == b["species"]
        np.testing.assert_allclose(a["ref_energies"], b["ref_energies"], rtol=1e-10, atol=1e-10)
        assert a["shift"] == pytest.approx(b["shift"], rel=1e-10)
        assert a["scale"] == pytest.approx(b["scale"], rel=1e-10)
