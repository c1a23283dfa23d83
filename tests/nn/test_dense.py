"""The dense path of :class:`egnn.nn.EGNN` (equal-size fully connected graphs): same answers as the sparse path."""

from unittest import mock

import pytest
import torch

from egnn.nn import EGCL, EGNN
from egnn.ops import fully_connected_edges
from egnn.testing import assert_equivariant

OPTIONS = {
    "nbody": {"edge_dim": 2, "velocity": True},
    "attention_normalize_tanh": {"attention": True, "normalize": True, "tanh": True, "coords_range": 2.0},
    "sum_agg_node_attr": {"coord_agg": "sum", "node_attr": True},
    "invariant_graph_head": {"update_coords": False, "graph_out_channels": 2, "out_channels": 3},
}


def _inputs(opts, b=4, n=5, dim=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    num = b * n
    ei = fully_connected_edges([n] * b)
    out = {"h": torch.randn(num, 3, generator=g, dtype=dtype), "pos": torch.randn(num, dim, generator=g, dtype=dtype),
           "edge_index": ei, "batch": torch.arange(b).repeat_interleave(n), "num_graphs": b}
    if opts.get("edge_dim"):
        out["edge_attr"] = torch.randn(ei.shape[1], opts["edge_dim"], generator=g, dtype=dtype)
    if opts.get("velocity"):
        out["vel"] = torch.randn(num, dim, generator=g, dtype=dtype)
    return out


def _pair(opts, dtype=torch.float64):
    torch.manual_seed(0)
    dense = EGNN(3, 16, num_layers=3, **opts).to(dtype)
    for layer in dense.layers:
        if layer.coord_mlp is not None:
            torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.3)  # visible coordinate updates
    sparse = EGNN(3, 16, num_layers=3, dense=False, **opts).to(dtype)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def _spy():
    return mock.patch.object(EGCL, "propagate_dense", autospec=True, side_effect=EGCL.propagate_dense)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_dense_equals_sparse_values_and_gradients(name):
    opts = OPTIONS[name]
    dense, sparse = _pair(opts)
    inputs = _inputs(opts)
    inputs["pos"].requires_grad_(True)
    with _spy() as spy:
        a = dense(**inputs)
    assert spy.call_count == 3  # the dense path was taken, in every layer
    b = sparse(**inputs)
    for x, y in zip(a, b):
        if x is not None:
            torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)
    if opts.get("update_coords", True):
        assert (a.pos - inputs["pos"]).abs().max() > 1e-3

    def loss(out):
        return sum(t.square().sum() for t in out if t is not None)

    ga = torch.autograd.grad(loss(a), [inputs["pos"], *dense.parameters()])
    gb = torch.autograd.grad(loss(b), [inputs["pos"], *sparse.parameters()])
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10)


def test_dense_float32_close_to_sparse():
    dense, sparse = _pair(OPTIONS["nbody"], torch.float32)
    inputs = _inputs(OPTIONS["nbody"], b=100, dtype=torch.float32)
    a, b = dense(**inputs), sparse(**inputs)
    torch.testing.assert_close(a.pos, b.pos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.h, b.h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize(("dim", "n"), [(2, 2), (3, 5), (4, 7)])
def test_dense_equivariance(name, dim, n, dtype):
    opts = OPTIONS[name]
    dense, _ = _pair(opts, dtype)
    inputs = _inputs(opts, b=3, n=n, dim=dim, dtype=dtype)
    # without permutation both calls take the dense path: rotations, reflections, translations
    with _spy() as spy:
        assert_equivariant(dense, inputs, trials=2, permute=False)
    assert spy.call_count == 3 * 3
    # with permutations the relabelled edges are no longer in canonical order: dense vs sparse answers
    assert_equivariant(dense, inputs, trials=2)


def test_dense_batched_equals_per_graph():
    opts = OPTIONS["nbody"]
    dense, _ = _pair(opts)
    inputs = _inputs(opts, b=4, n=5)
    whole = dense(**{k: v for k, v in inputs.items() if k not in ("batch", "num_graphs")})
    ei1 = fully_connected_edges([5])
    for g in range(4):
        sl = slice(5 * g, 5 * g + 5)
        one = dense(inputs["h"][sl], inputs["pos"][sl], ei1, inputs["edge_attr"][20 * g : 20 * g + 20],
                    inputs["vel"][sl])
        torch.testing.assert_close(one.pos, whole.pos[sl], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(one.h, whole.h[sl], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("case", ["unequal_sizes", "permuted_edges", "missing_edge", "edge_shift", "chunked",
                                  "disabled", "single_nodes"])
def test_dense_path_not_taken(case):
    torch.manual_seed(0)
    model = EGNN(3, 8, num_layers=2, chunk_size=7 if case == "chunked" else None, dense=case != "disabled").double()
    sizes = [4, 5] if case == "unequal_sizes" else [1, 1, 1] if case == "single_nodes" else [4, 4]
    ei = fully_connected_edges(sizes)
    if case == "permuted_edges":
        ei = ei[:, torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(0))]
    if case == "missing_edge":
        ei = ei[:, 1:]
    num = sum(sizes)
    h, pos = torch.randn(num, 3, dtype=torch.float64), torch.randn(num, 3, dtype=torch.float64)
    shift = torch.zeros(ei.shape[1], 3, dtype=torch.float64) if case == "edge_shift" else None
    with _spy() as spy:
        out = model(h, pos, ei, edge_shift=shift)
    assert spy.call_count == 0
    ref = EGNN(3, 8, num_layers=2, dense=False).double()
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(out.pos, ref(h, pos, ei).pos)


@pytest.mark.parametrize("act", ["silu", "relu", "gelu"])
@pytest.mark.parametrize("dense", [False, True])
def test_inference_in_place_path_equals_autograd_path(act, dense):
    """Without autograd the edge intermediates are overwritten in place: same values as with autograd."""
    torch.manual_seed(0)
    model = EGNN(3, 16, num_layers=2, edge_dim=2, velocity=True, act=act, dense=dense, attention=True).double()
    for layer in model.layers:
        torch.nn.init.normal_(layer.coord_mlp[1].weight, std=0.3)
    inputs = _inputs({"in_edge_nf": 2, "velocity": True})
    inputs["edge_attr"] = torch.randn(inputs["edge_index"].shape[1], 2, dtype=torch.float64)
    with_grad = model(**inputs)
    with torch.no_grad():
        no_grad = model(**inputs)
    with torch.inference_mode():
        inference = model(**inputs)
    for a, b, c in zip(with_grad, no_grad, inference):
        if a is not None:
            torch.testing.assert_close(b, a.detach(), atol=1e-13, rtol=1e-13)
            torch.testing.assert_close(c, a.detach(), atol=1e-13, rtol=1e-13)
