import numpy as np
import pytest
import torch

import egnn
from egnn.atoms.data import AtomsData
from egnn.atoms.graphs import AtomsGraphs
from egnn.atoms.model import (
    AtomsModel,
    AtomsModelConfig,
    check_species,
    fit_statistics,
    polynomial_envelope,
    save_model,
)
from egnn.atoms.neighbors import neighbor_list
from egnn.testing import assert_equivariant, random_orthogonal

# the three layer kinds of AtomsModel: distances only, eq. (4) position updates, vector channels
VARIANTS = {"invariant": {}, "coords": {"update_coords": True}, "vector": {"vector_channels": 3, "vector_scale": 0.5}}
variant = pytest.mark.parametrize("variant", list(VARIANTS))


def tiny_model(dtype=torch.float64, cutoff=3.5, seed=0, variant="invariant", **kw):
    kw = {**VARIANTS[variant], **kw}
    torch.manual_seed(seed)
    refs = [-0.5, -2.0, -3.0] if kw.get("readout", "sum") in ("sum", "spatial") else []
    if kw.get("readout") == "spatial":
        kw.setdefault("ref_spatial", [0.4, 1.1, 2.0])
    cfg = AtomsModelConfig(species=[1, 8, 29], cutoff=cutoff, hidden_channels=8, num_layers=2, n_rbf=4,
                           ref_energies=refs, scale=0.7, shift=0.1, **kw)
    model = AtomsModel(cfg).to(dtype)
    # the node head starts at ordinary init; perturb so no output is trivially zero
    return model


def periodic_data(n_frames=3, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 7, n_frames)
    cells = np.stack([np.diag(rng.uniform(3.0, 4.5, 3)) + 0.3 * rng.normal(size=(3, 3)) for _ in sizes])
    pos = np.concatenate([rng.uniform(-0.2, 1.2, (n, 3)) @ c for n, c in zip(sizes, cells)])
    z = rng.choice([1, 8, 29], int(sizes.sum()))
    pbc = np.ones((n_frames, 3), bool)
    pbc[-1, 2] = False
    return AtomsData(z=z, pos=pos, offsets=np.concatenate([[0], np.cumsum(sizes)]), cell=cells, pbc=pbc,
                     energy=rng.normal(size=n_frames), forces=rng.normal(size=(int(sizes.sum()), 3)))


# (the dipole and spatial readouts need whole molecules: a periodic cell has no centroid)
@pytest.mark.parametrize(("cutoff", "readout"), [(3.5, "sum"), (3.5, "mlp"), (None, "sum"), (None, "mlp"),
                                                 (None, "dipole"), (None, "spatial")])
@variant
def test_equivariance_energy_invariant_forces_rotate(dtype, cutoff, readout, variant):
    model = tiny_model(dtype, cutoff, readout=readout, variant=variant)
    data = periodic_data() if cutoff else AtomsData(
        z=np.array([1, 8, 29, 8, 1]), pos=np.random.default_rng(1).normal(size=(5, 3)) * 1.5,
        offsets=np.array([0, 2, 5]), cell=np.zeros((2, 3, 3)), pbc=np.zeros((2, 3), bool))
    b = AtomsGraphs(data, cutoff, dtype=dtype).get(torch.arange(len(data)))
    assert b.num_graphs == len(data) and (b.edge_shift.abs().sum() > 0) == (cutoff is not None)

    def fn(h, pos, edge_index, edge_shift, batch):
        e, f = model.energy_and_forces(h[:, 0].long(), pos, edge_index, edge_shift, batch, b.num_graphs)
        return {"energy": e, "forces": f}

    inputs = {"h": b.z.to(dtype).unsqueeze(-1), "pos": b.pos, "edge_index": b.edge_index,
              "edge_shift": b.edge_shift, "batch": b.batch}
    errors = assert_equivariant(fn, inputs, {"energy": "graph", "forces": "vector"}, trials=4)
    assert set(errors) == {"energy", "forces"}
    out = fn(**inputs)
    assert out["forces"].abs().max() > 1e-5  # not trivially zero


def predict_structure(model, pos, cell, pbc, z):
    e_idx, s = neighbor_list(pos, model.cutoff, cell, pbc)
    t = torch.float64
    e, f = model.energy_and_forces(torch.as_tensor(z), torch.as_tensor(pos, dtype=t), torch.as_tensor(e_idx),
                                   torch.as_tensor(s @ cell, dtype=t))
    return float(e[0]), f.numpy()


@variant
def test_rotating_cell_with_positions_wrapping_and_translation(variant):
    model = tiny_model(variant=variant)
    d = periodic_data(1, seed=3)
    pos, cell, z = d.pos, d.cell[0], d.z
    e0, f0 = predict_structure(model, pos, cell, True, z)
    for reflect in (False, True):
        q = random_orthogonal(3, reflect=reflect, generator=torch.Generator().manual_seed(int(reflect))).numpy()
        e1, f1 = predict_structure(model, pos @ q.T + np.array([0.3, -1.0, 2.0]), cell @ q.T, True, z)
        assert e1 == pytest.approx(e0, abs=1e-10)
        np.testing.assert_allclose(f1, f0 @ q.T, atol=1e-10)
    frac = np.linalg.solve(cell.T, pos.T).T
    wrapped = (frac % 1.0) @ cell
    assert np.abs(wrapped - pos).max() > 0.1  # some atoms really moved by a lattice vector
    e2, f2 = predict_structure(model, wrapped, cell, True, z)
    assert e2 == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(f2, f0, atol=1e-10)


@pytest.mark.parametrize("readout", ["sum", "mean", "mlp"])
@variant
def test_batched_equals_one_frame_at_a_time(readout, variant):
    model = tiny_model(readout=readout, variant=variant)
    data = periodic_data(5, seed=4)
    graphs = AtomsGraphs(data, model.cutoff, dtype=torch.float64)
    whole = model.predict(graphs, forces=True, batch_size=5)
    single = [model.predict(graphs.data.subset([i]), forces=True) for i in range(5)]
    np.testing.assert_allclose(whole["energy"], [s["energy"][0] for s in single], atol=1e-12)
    np.testing.assert_allclose(whole["forces"], np.concatenate([s["forces"] for s in single]), atol=1e-12)
    mixed = model.predict(graphs, forces=True, batch_size=2)
    np.testing.assert_allclose(mixed["energy"], whole["energy"], atol=1e-12)


def test_envelope_value_and_derivative_vanish_at_cutoff():
    x = torch.tensor([0.0, 0.5, 1.0 - 1e-6, 1.0, 1.2], dtype=torch.float64, requires_grad=True)
    u = polynomial_envelope(x)
    (du,) = torch.autograd.grad(u.sum(), x)
    u = u.detach()
    assert u[0] == 1.0 and u[1] > 0 and abs(float(u[2])) < 1e-12 and u[3] == 0 and u[4] == 0
    assert abs(float(du[2])) < 1e-8 and du[3] == 0 and du[4] == 0 and du[1] < 0


@variant
def test_energy_and_forces_continuous_when_an_atom_crosses_the_cutoff(variant):
    model = tiny_model(cutoff=3.0, variant=variant)
    # a third atom bonded to the first: the crossing pair's direction reaches the vector channels of both
    z = np.array([8, 29, 1])
    values = []
    for r in (3.0 - 1e-4, 3.0 + 1e-4):
        pos = np.array([[0.0, 0, 0], [r, 0, 0], [-0.6, 0.8, 0.0]])
        values.append(predict_structure(model, pos, np.zeros((3, 3)), False, z))
    (e_in, f_in), (e_out, f_out) = values
    assert np.abs(f_out[1]).max() == 0.0  # no edge beyond R
    assert abs(e_in - e_out) < 1e-9 and np.abs(f_in - f_out).max() < 1e-6
    # and inside, the pair does interact
    near = np.array([[0.0, 0, 0], [2.0, 0, 0], [-0.6, 0.8, 0.0]])
    e_near, f_near = predict_structure(model, near, np.zeros((3, 3)), False, z)
    assert abs(e_near - e_out) > 1e-5 and np.abs(f_near[1]).max() > 1e-5


@variant
def test_forces_are_minus_the_gradient_by_finite_differences(variant):
    model = tiny_model(variant=variant)
    d = periodic_data(1, seed=7)
    pos, cell, z = d.pos.copy(), d.cell[0], d.z
    _, f = predict_structure(model, pos, cell, True, z)
    h = 1e-5
    for atom, k in [(0, 0), (1, 2), (len(z) - 1, 1)]:
        plus, minus = pos.copy(), pos.copy()
        plus[atom, k] += h
        minus[atom, k] -= h
        fd = -(predict_structure(model, plus, cell, True, z)[0] - predict_structure(model, minus, cell, True, z)[0])
        assert f[atom, k] == pytest.approx(fd / (2 * h), abs=1e-7)


def test_reference_energies_by_least_squares():
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 9, 30)
    z = rng.choice([1, 6, 8], int(sizes.sum()))
    ref = {1: -0.5, 6: -37.8, 8: -75.0}
    frame = np.repeat(np.arange(30), sizes)
    energy = np.bincount(frame, weights=[ref[v] for v in z]) + 0.01 * sizes  # + 0.01 eV per atom
    data = AtomsData(z=z, pos=rng.normal(size=(len(z), 3)), offsets=np.concatenate([[0], np.cumsum(sizes)]),
                     cell=np.zeros((30, 3, 3)), pbc=np.zeros((30, 3), bool), energy=energy)
    stats = fit_statistics(data)
    assert stats["species"] == [1, 6, 8]
    # the per-atom offset is absorbed by the references (equal counts offset), the residual is ~0
    recon = [ref[1] + 0.01, ref[6] + 0.01, ref[8] + 0.01]
    np.testing.assert_allclose(stats["ref_energies"], recon, atol=1e-9)
    assert abs(stats["shift"]) < 1e-9 and stats["scale"] == 1.0  # no spread left: scale falls back to 1


def test_save_load_round_trip_and_unseen_elements(tmp_path):
    model = tiny_model(torch.float32)
    data = periodic_data(3, seed=2)
    before = model.predict(data, forces=True)
    save_model(model, tmp_path / "m")
    loaded = egnn.load_model(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    after = loaded.predict(data, forces=True)
    np.testing.assert_array_equal(before["energy"], after["energy"])
    np.testing.assert_array_equal(before["forces"], after["forces"])
    bad = periodic_data(3, seed=2)
    bad.z[int(bad.offsets[1]) + 1] = 79
    bad.source = "new.extxyz"
    with pytest.raises(ValueError, match=r"^new.extxyz: frame 1: key 'numbers': element Au \(Z=79\) is not in the "
                                         r"training set \(trained on: H, O, Cu\)$"):
        check_species(bad, model.species)
    with pytest.raises(ValueError, match="Au"):
        model.predict(bad)
    nan = periodic_data(3, seed=2)
    nan.pos[int(nan.offsets[2])] = np.nan
    with pytest.raises(ValueError, match=r"frame 2: key 'positions': positions contain NaN/Inf"):
        model.predict(nan)
    from egnn.checkpoint import CheckpointError, save_checkpoint

    save_checkpoint(tmp_path / "other", {"model": {}}, {"experiment": "qm9"})
    with pytest.raises(CheckpointError, match="not an egnn atoms model"):
        egnn.load_model(tmp_path / "other")


def test_mlp_readout_applies_the_graph_head_to_the_summed_node_features():
    model = tiny_model(readout="mlp")
    data = periodic_data(2, seed=5)
    b = AtomsGraphs(data, model.cutoff, dtype=torch.float64).get(torch.arange(2))
    with torch.no_grad():
        feats, _ = model._node_outputs(b.z, b.pos, b.edge_index, b.edge_shift)
        assert feats.shape == (len(b.z), 8)  # features, not one number per atom
        expected = []
        for g in range(2):
            pooled = feats[b.batch == g].sum(0)
            y = model.graph_head[1](torch.nn.functional.silu(model.graph_head[0](pooled)))
            expected.append(0.7 * float(y) + 0.1)
        got = model(b.z, b.pos, b.edge_index, b.edge_shift, b.batch, 2)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    # not a sum of per-atom terms: two frames side by side (no edges between them) != the sum of their energies
    with torch.no_grad():
        both = model(b.z, b.pos, b.edge_index, b.edge_shift, torch.zeros_like(b.batch), 1)
    assert abs(float(both) - float(got.sum() - 0.1)) > 1e-6
    with pytest.raises(ValueError, match="per-atom"):
        model.atom_energies(b.z, b.pos, b.edge_index, b.edge_shift)


def molecules(n_frames=6, seed=0, species=(1, 8, 29)):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, n_frames)
    z = rng.choice(list(species), int(sizes.sum()))
    return AtomsData(z=z, pos=rng.normal(size=(len(z), 3)) * 1.5, offsets=np.concatenate([[0], np.cumsum(sizes)]),
                     cell=np.zeros((n_frames, 3, 3)), pbc=np.zeros((n_frames, 3), bool),
                     energy=rng.normal(size=n_frames))


@pytest.mark.parametrize("readout", ["dipole", "spatial"])
def test_batched_equals_one_molecule_at_a_time(readout):
    model = tiny_model(cutoff=None, readout=readout)
    data = molecules(5, seed=4)
    whole = model.predict(data, forces=True, batch_size=5)
    single = [model.predict(data.subset([i]), forces=True) for i in range(5)]
    np.testing.assert_allclose(whole["energy"], [s["energy"][0] for s in single], atol=1e-12)
    np.testing.assert_allclose(whole["forces"], np.concatenate([s["forces"] for s in single]), atol=1e-12)


def test_spatial_readout_fits_per_element_coefficients_about_the_charge_centre():
    data = molecules(40, seed=5)
    alpha, beta = {1: 3.6, 8: 28.6, 29: 100.0}, {1: 3.5, 8: 10.4, 29: -2.0}
    frame = np.repeat(np.arange(len(data)), data.n_atoms)
    w = data.z.astype(float)
    centre = np.stack([np.bincount(frame, w * data.pos[:, k]) for k in range(3)], 1) / np.bincount(frame, w)[:, None]
    r2 = ((data.pos - centre[frame]) ** 2).sum(1)
    data.energy = np.bincount(frame, [alpha[v] * d + beta[v] for v, d in zip(data.z, r2)])
    stats = fit_statistics(data, readout="spatial")
    np.testing.assert_allclose(stats["ref_spatial"], [alpha[v] for v in (1, 8, 29)], rtol=1e-9)
    np.testing.assert_allclose(stats["ref_energies"], [beta[v] for v in (1, 8, 29)], atol=1e-7)
    assert stats["shift"] == 0.0
    cfg = AtomsModelConfig(**stats, cutoff=None, hidden_channels=8, num_layers=1, readout="spatial")
    model = AtomsModel(cfg).double()
    with torch.no_grad():  # no network correction: the prediction is the least-squares baseline
        model.head[1].weight.zero_()
        model.head[1].bias.zero_()
    np.testing.assert_allclose(model.predict(data)["energy"], data.energy, rtol=1e-9)
    # about the centroid the same coefficients do not reproduce the targets (the centre matters)
    unweighted = np.stack([np.bincount(frame, data.pos[:, k]) for k in range(3)], 1) / data.n_atoms[:, None]
    r2c = ((data.pos - unweighted[frame]) ** 2).sum(1)
    assert np.abs(np.bincount(frame, [alpha[v] * d + beta[v] for v, d in zip(data.z, r2c)]) - data.energy).max() > 1
    with pytest.raises(ValueError, match="need the readout 'spatial'"):
        AtomsModelConfig(species=[1, 8], readout="sum", ref_spatial=[1.0, 2.0])
    with pytest.raises(ValueError, match="2 spatial coefficients for 3 species"):
        AtomsModelConfig(species=[1, 8, 9], readout="spatial", ref_spatial=[1.0, 2.0])


def test_reference_energies_need_the_sum_readout():
    with pytest.raises(ValueError, match="readout 'sum'"):
        AtomsModelConfig(species=[1, 8], readout="mlp", ref_energies=[1.0, 2.0])
    with pytest.raises(ValueError, match="readout 'sum'"):
        AtomsModelConfig(species=[1, 8], readout="dipole", ref_energies=[1.0, 2.0])
    with pytest.raises(ValueError, match="readout must be one of"):
        AtomsModelConfig(species=[1, 8], readout="max")
    stats = fit_statistics(periodic_data(4), readout="mlp")
    assert stats["ref_energies"] == [0.0, 0.0, 0.0]


def test_old_field_names_read_from_old_checkpoints():
    """Configs written before the fields followed EGNN's names (``hidden_nf``, ``n_layers``) still load; the
    constructor itself takes only the new names."""
    old = {"species": [1, 8], "cutoff": 4.0, "hidden_nf": 8, "n_layers": 2}
    cfg = AtomsModelConfig.from_dict(old)
    assert (cfg.hidden_channels, cfg.num_layers) == (8, 2)
    assert "hidden_nf" not in cfg.to_dict() and cfg.to_dict()["hidden_channels"] == 8
    with pytest.raises(TypeError):
        AtomsModelConfig(species=[1], hidden_nf=8)
    # written before the vector model existed: no vector_channels / update_coords, and a distances-only model
    assert (cfg.vector_channels, cfg.update_coords) == (0, False)


def test_vector_options_are_checked():
    with pytest.raises(ValueError, match="vector_channels must be an integer >= 0"):
        AtomsModelConfig(species=[1], vector_channels=-1)
    with pytest.raises(ValueError, match="update_coords is an option of the invariant model"):
        AtomsModelConfig(species=[1], vector_channels=2, update_coords=True)
    with pytest.raises(ValueError, match="vector_scale must be positive"):
        AtomsModelConfig(species=[1], vector_channels=2, vector_scale=0.0)


@variant
def test_predict_batches_by_a_budget_of_atoms_and_edges(variant, monkeypatch):
    """Batches hold at most ``budget`` atoms + edges (a larger frame alone): the predictions are those of
    batches by frames."""
    model = tiny_model(variant=variant)
    data = periodic_data(7, seed=5)
    graphs = AtomsGraphs(data, model.cutoff, dtype=torch.float64)
    sizes = graphs.sizes()
    assert sizes.tolist() == [int(data.n_atoms[f] + graphs.edge_offsets[f + 1] - graphs.edge_offsets[f])
                              for f in range(7)]
    budget = int(np.sort(sizes)[-2])  # some pairs of frames fit, the largest frame does not fit at all
    seen = []
    get = AtomsGraphs.get
    monkeypatch.setattr(AtomsGraphs, "get", lambda self, idx, device="cpu": seen.append(idx.tolist())
                        or get(self, idx, device))
    by_budget = model.predict(graphs, forces=True, budget=budget)
    assert [i for b in seen for i in b] == list(range(7)) and len(seen) > 1
    assert all(len(b) == 1 or sizes[b].sum() <= budget for b in seen)
    by_frames = model.predict(graphs, forces=True, batch_size=7, budget=None)
    np.testing.assert_allclose(by_budget["energy"], by_frames["energy"], atol=1e-12)
    np.testing.assert_allclose(by_budget["forces"], by_frames["forces"], atol=1e-12)
