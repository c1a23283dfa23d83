import numpy as np
import pytest

from egnn.atoms.neighbors import NeighborError, cell_heights, edge_vectors, neighbor_list
from egnn.testing import random_orthogonal

pytest.importorskip("ase")
from ase import Atoms  # noqa: E402
from ase.neighborlist import neighbor_list as ase_neighbor_list  # noqa: E402


def random_structure(rng, n, pbc, skew=0.3):
    cell = np.diag(rng.uniform(3.0, 6.0, 3)) + skew * rng.normal(size=(3, 3))
    frac = rng.uniform(-0.5, 1.5, (n, 3))  # partly outside the cell
    return Atoms(numbers=np.full(n, 29), positions=frac @ cell, cell=cell, pbc=pbc)


def as_set(edge_index, shifts):
    return {(int(i), int(j), tuple(int(v) for v in s)) for j, i, s in zip(edge_index[0], edge_index[1], shifts)}


PBCS = [(True, True, True), (True, False, True), (False, False, True), (False, False, False)]


@pytest.mark.parametrize("pbc", PBCS)
@pytest.mark.parametrize("seed", range(4))
def test_same_pairs_and_distances_as_ase(pbc, seed):
    rng = np.random.default_rng(seed)
    atoms = random_structure(rng, int(rng.integers(1, 12)), pbc)
    cutoff = float(rng.uniform(1.5, 7.0))  # often larger than the cell: several images
    i, j, s, d = ase_neighbor_list("ijSd", atoms, cutoff)
    edge_index, shifts = neighbor_list(atoms.positions, cutoff, atoms.cell.array, atoms.pbc)
    assert as_set(edge_index, shifts) == set(zip(i.tolist(), j.tolist(), map(tuple, s.tolist())))
    assert len(edge_index[0]) == len(i)  # no duplicates
    ours = np.linalg.norm(edge_vectors(atoms.positions, edge_index, shifts, atoms.cell.array), axis=1)
    ref = dict(zip(zip(i.tolist(), j.tolist(), map(tuple, s.tolist())), d))
    keys = zip(edge_index[1].tolist(), edge_index[0].tolist(), map(tuple, shifts.tolist()))
    expected = np.array([ref[k] for k in keys])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    assert (ours < cutoff).all()


def test_slab_with_zero_vacuum_vector_matches_ase():
    rng = np.random.default_rng(5)
    pos = rng.uniform(0, 4, (6, 3))
    cell = np.array([[4.0, 0, 0], [1.0, 4.0, 0], [0, 0, 0]])  # no third vector: a slab
    atoms = Atoms("Cu6", positions=pos, cell=cell, pbc=(True, True, False))
    i, j, s = ase_neighbor_list("ijS", atoms, 4.7)
    edge_index, shifts = neighbor_list(pos, 4.7, cell, atoms.pbc)
    assert as_set(edge_index, shifts) == set(zip(i.tolist(), j.tolist(), map(tuple, s.tolist())))


def test_complete_graph_without_cutoff():
    pos = np.random.default_rng(0).normal(size=(5, 3))
    edge_index, shifts = neighbor_list(pos, None)
    assert edge_index.shape == (2, 20) and not (edge_index[0] == edge_index[1]).any() and not shifts.any()
    with pytest.raises(NeighborError, match="needs a cutoff"):
        neighbor_list(pos, None, np.eye(3) * 5, True)


def test_wrapping_and_translation_do_not_change_the_graph():
    rng = np.random.default_rng(1)
    atoms = random_structure(rng, 9, (True, True, True))
    cutoff = 4.0
    e0, s0 = neighbor_list(atoms.positions, cutoff, atoms.cell.array, atoms.pbc)
    d0 = sorted(np.linalg.norm(edge_vectors(atoms.positions, e0, s0, atoms.cell.array), axis=1))
    wrapped = atoms.copy()
    wrapped.wrap()
    wrapped.positions += 0.37  # and translated
    e1, s1 = neighbor_list(wrapped.positions, cutoff, wrapped.cell.array, wrapped.pbc)
    d1 = sorted(np.linalg.norm(edge_vectors(wrapped.positions, e1, s1, wrapped.cell.array), axis=1))
    assert sorted(zip(e0[1].tolist(), e0[0].tolist())) == sorted(zip(e1[1].tolist(), e1[0].tolist()))
    np.testing.assert_allclose(d0, d1, atol=1e-10)


def test_rotating_positions_and_cell_rotates_the_shift_vectors():
    rng = np.random.default_rng(2)
    atoms = random_structure(rng, 7, (True, True, True))
    q = random_orthogonal(3, reflect=True).numpy()
    pos_r, cell_r = atoms.positions @ q.T, atoms.cell.array @ q.T
    e0, s0 = neighbor_list(atoms.positions, 4.5, atoms.cell.array, True)
    e1, s1 = neighbor_list(pos_r, 4.5, cell_r, True)
    # the same integer images (lattice coordinates are invariant), vectors rotated
    assert as_set(e0, s0) == as_set(e1, s1)
    expected = edge_vectors(atoms.positions, e0, s0, atoms.cell.array) @ q.T
    np.testing.assert_allclose(edge_vectors(pos_r, e1, s1, cell_r), expected, atol=1e-10)


def test_minimum_image_mode():
    atoms = Atoms("Cu4", positions=np.random.default_rng(3).uniform(0, 5, (4, 3)), cell=np.eye(3) * 5, pbc=True)
    e_img, s_img = neighbor_list(atoms.positions, 2.4, atoms.cell.array, True, images=True)
    e_min, s_min = neighbor_list(atoms.positions, 2.4, atoms.cell.array, True, images=False)
    assert as_set(e_img, s_img) == as_set(e_min, s_min)
    with pytest.raises(NeighborError, match=r"half the shortest cell height \(5 / 2\)"):
        neighbor_list(atoms.positions, 2.6, atoms.cell.array, True, images=False)


def test_zero_volume_cell_and_bad_input():
    pos = np.zeros((2, 3))
    pos[1, 0] = 1.0
    flat = np.array([[3.0, 0, 0], [0, 3.0, 0], [3.0, 3.0, 0]])
    with pytest.raises(NeighborError, match="zero volume"):
        neighbor_list(pos, 2.0, flat, True)
    with pytest.raises(NeighborError, match="NaN"):
        neighbor_list(np.full((2, 3), np.nan), 2.0)
    with pytest.raises(NeighborError, match="positive"):
        neighbor_list(pos, -1.0)


def test_cell_heights():
    np.testing.assert_allclose(cell_heights(np.diag([2.0, 3.0, 4.0])), [2, 3, 4])
    hexagonal = np.array([[2.0, 0, 0], [-1.0, np.sqrt(3), 0], [0, 0, 5.0]])
    np.testing.assert_allclose(cell_heights(hexagonal), [np.sqrt(3), np.sqrt(3), 5.0])


def test_dense_path_for_molecules_equals_the_tree(monkeypatch):
    """Molecules up to DENSE_MAX_ATOMS take all pairs from one distance matrix: the same edges, in the same order."""
    import egnn.atoms.neighbors as nb

    rng = np.random.default_rng(0)
    for n in (1, 2, 9, 60, nb.DENSE_MAX_ATOMS):
        pos = rng.uniform(0, 2.0 * n ** (1 / 3), (n, 3))
        dense = nb.neighbor_list(pos, 3.0, None, np.zeros(3, bool), True)
        with monkeypatch.context() as m:
            m.setattr(nb, "DENSE_MAX_ATOMS", 0)
            tree = nb.neighbor_list(pos, 3.0, None, np.zeros(3, bool), True)
        assert np.array_equal(dense[0], tree[0]) and np.array_equal(dense[1], tree[1])
        assert n < 9 or dense[0].shape[1] > 0
