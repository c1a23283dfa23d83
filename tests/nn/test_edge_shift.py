"""``edge_shift``: the source node's periodic image offset, ``x_i - (x_j + s_ij)`` in every coordinate difference."""

import pytest
import torch

from egnn.nn import EGCL, EGNN, EGCLVel
from egnn.ops import fully_connected_edges
from egnn.testing import assert_equivariant


def _inputs(dim, dtype, vel=False, sizes=(4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    edge_index = fully_connected_edges(list(sizes))
    e = edge_index.shape[1]
    out = {
        "h": torch.randn(n, 6, generator=g, dtype=torch.float64).to(dtype),
        "pos": torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype),
        "edge_index": edge_index,
        # integer cell offsets times a non-orthogonal cell, as a periodic neighbour list gives
        "edge_shift": (torch.randint(-1, 2, (e, dim), generator=g).double()
                       @ (2.0 * torch.eye(dim, dtype=torch.float64) + 0.3)).to(dtype),
    }
    if vel:
        out["vel"] = torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype)
    return out


def _layer(cls, dtype, **opts):
    torch.manual_seed(0)
    layer = cls(6, 16, **opts).to(dtype)
    torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.5)  # make coordinate updates visible
    return layer


@pytest.mark.parametrize("dim", [2, 3, 5])
@pytest.mark.parametrize("cls", [EGCL, EGCLVel])
@pytest.mark.parametrize("opts", [{}, {"normalize": True, "chunk_size": 7}], ids=["plain", "normalize_chunked"])
def test_edge_shift_equivariance(cls, dim, opts, dtype):
    layer = _layer(cls, dtype, **opts)
    inputs = _inputs(dim, dtype, vel=cls is EGCLVel)
    # positions and shifts rotated (and reflected) together, positions translated, nodes permuted
    assert_equivariant(layer, inputs, trials=2)
    # the shift really changes the result
    plain = {k: v for k, v in inputs.items() if k != "edge_shift"}
    assert (layer(**inputs)[1] - layer(**plain)[1]).abs().max() > 1e-3


def test_edge_shift_translation_invariance(dtype):
    layer = _layer(EGCL, dtype)
    inputs = _inputs(3, dtype)
    h, pos = layer(**inputs)
    shifted = dict(inputs, pos=inputs["pos"] + torch.tensor([5.0, -2.0, 1.5], dtype=dtype))
    h2, pos2 = layer(**shifted)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(h2, h, atol=tol, rtol=tol)
    torch.testing.assert_close(pos2 - shifted["pos"], pos - inputs["pos"], atol=tol, rtol=tol)


@pytest.mark.parametrize("velocity", [False, True])
def test_periodic_pair_equals_unwrapped_geometry(velocity):
    """Two atoms near opposite faces of a cell of side L: the wrapped positions with image shifts give
    the same features and the same coordinate updates as the explicit unwrapped positions."""
    dtype = torch.float64
    box = 10.0
    wrapped = torch.tensor([[0.3, 1.0, 2.0], [9.6, 1.4, 2.2], [5.0, 5.0, 5.0]], dtype=dtype)
    # node 1's nearest image of node 0 is at x + L and vice versa; node 2 is central, no shift
    edge_index = torch.tensor([[0, 1, 0, 2, 1, 2], [1, 0, 2, 0, 2, 1]])
    shift = torch.zeros(6, 3, dtype=dtype)
    shift[0, 0] = box  # edge 0 -> 1: source 0 seen from 1 is at x0 + L
    shift[1, 0] = -box  # edge 1 -> 0: source 1 seen from 0 is at x1 - L
    unwrapped = wrapped.clone()
    unwrapped[1, 0] -= box  # node 1 moved to its image next to node 0: the 0 <-> 1 edges need no shift,
    shift_u = torch.zeros(6, 3, dtype=dtype)
    shift_u[4, 0] = box  # but 1 <-> 2 (direct neighbours in the wrapped cell) now need the opposite shifts
    shift_u[5, 0] = -box
    torch.manual_seed(0)
    model = EGNN(4, 16, num_layers=2, velocity=velocity).double()
    for layer in model.layers:
        torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.5)
    h = torch.randn(3, 4, dtype=dtype)
    vel = torch.randn(3, 3, dtype=dtype) if velocity else None
    a = model(h, wrapped, edge_index, vel=vel, edge_shift=shift)
    b = model(h, unwrapped, edge_index, vel=vel, edge_shift=shift_u)
    torch.testing.assert_close(a.h, b.h, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(a.pos - wrapped, b.pos - unwrapped, atol=1e-12, rtol=1e-12)
    assert (a.pos - wrapped).abs().max() > 1e-3
    # and with only nodes 0, 1: a pair across the face equals the plain unwrapped pair with no shift at all
    pair = torch.tensor([[0, 1], [1, 0]])
    c = model(h[:2], wrapped[:2], pair, vel=None if vel is None else vel[:2], edge_shift=shift[:2])
    d = model(h[:2], unwrapped[:2], pair, vel=None if vel is None else vel[:2])
    torch.testing.assert_close(c.h, d.h, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(c.pos - wrapped[:2], d.pos - unwrapped[:2], atol=1e-12, rtol=1e-12)


def test_edge_shift_model_equivariance(dtype):
    torch.manual_seed(0)
    model = EGNN(6, 16, num_layers=2, graph_out_channels=2).to(dtype)
    for layer in model.layers:
        torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.5)
    inputs = _inputs(3, dtype)
    inputs["batch"] = torch.tensor([0] * 4 + [1] * 5)
    inputs["num_graphs"] = 2
    assert_equivariant(model, inputs, trials=2)


def test_edge_shift_checkpoint_chunks_same_result():
    torch.manual_seed(0)
    plain = EGNN(6, 16, num_layers=2).double()
    chunked = EGNN(6, 16, num_layers=2, chunk_size=5, checkpoint_chunks=True).double()
    chunked.load_state_dict(plain.state_dict())
    inputs = _inputs(3, torch.float64)
    inputs["pos"].requires_grad_(True)
    a = plain(**inputs)
    b = chunked(**inputs)
    torch.testing.assert_close(a.pos, b.pos)
    (ga,) = torch.autograd.grad(a.pos.square().sum() + a.h.sum(), inputs["pos"])
    (gb,) = torch.autograd.grad(b.pos.square().sum() + b.h.sum(), inputs["pos"])
    torch.testing.assert_close(ga, gb)


def test_edge_shift_validation():
    layer = _layer(EGCL, torch.float64)
    inputs = _inputs(3, torch.float64)
    e = inputs["edge_index"].shape[1]
    with pytest.raises(ValueError, match="edge_shift must have shape"):
        layer(**dict(inputs, edge_shift=torch.zeros(e, 2, dtype=torch.float64)))
    with pytest.raises(ValueError, match="edge_shift must have shape"):
        layer(**dict(inputs, edge_shift=torch.zeros(e + 1, 3, dtype=torch.float64)))
    with pytest.raises(ValueError, match="edge_shift has dtype"):
        layer(**dict(inputs, edge_shift=torch.zeros(e, 3, dtype=torch.float32)))
    bad = torch.zeros(e, 3, dtype=torch.float64)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="edge_shift contains"):
        layer(**dict(inputs, edge_shift=bad))
