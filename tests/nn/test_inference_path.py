"""Without autograd the layers take another path (in-place activations and additions on the edges, the node
update as accumulated products instead of a concatenation, ``EGCL._node_update``): over several edge chunks it must
give what the autograd path gives, for every option."""

import copy

import pytest
import torch

from egnn.nn import EGCL, EGNN, EGCLVel
from egnn.ops import radius_graph

from .test_egcl import OPTIONS

CASES = {**{k: v for k, v in OPTIONS.items() if k != "chunked"},
         "normalize_reference": {"normalize": "reference"}, "gelu": {"act": "gelu"},
         "attention_invariant": {"attention": True, "update_coords": False, "node_attr_dim": 3}}


def graph(seed=0, n=40, feat=6, edge_dim=0, node_attr_dim=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64) * 2
    edge_index = radius_graph(pos, 0.9)
    e = edge_index.shape[1]
    return {
        "h": torch.randn(n, feat, generator=g, dtype=torch.float64),
        "pos": pos,
        "edge_index": edge_index,
        "edge_attr": torch.randn(e, edge_dim, generator=g, dtype=torch.float64) if edge_dim else None,
        "node_attr": torch.randn(n, node_attr_dim, generator=g, dtype=torch.float64) if node_attr_dim else None,
        "edge_shift": 0.1 * torch.randn(e, 3, generator=g, dtype=torch.float64),
    }


@pytest.mark.parametrize(("name", "velocity"), [
    (name, velocity) for name in sorted(CASES) for velocity in (False, True)
    if not (velocity and CASES[name].get("update_coords") is False)  # the velocity layer updates coordinates
])
def test_chunked_inference_equals_the_autograd_path(name, velocity):
    opts = CASES[name]
    torch.manual_seed(0)
    cls = EGCLVel if velocity else EGCL
    layer = cls(6, 16, **opts).double()
    for p in layer.parameters():  # visible coordinate updates and non-trivial attention
        torch.nn.init.normal_(p, std=0.3)
    chunked = copy.deepcopy(layer)
    chunked.chunk_size = 13
    x = graph(edge_dim=opts.get("edge_dim", 0), node_attr_dim=opts.get("node_attr_dim", 0))
    args = (x["h"], x["pos"], x["edge_index"], x["edge_attr"], x["node_attr"])
    vel = torch.randn_like(x["pos"])
    extra = {"vel": vel} if velocity else {}
    assert x["edge_index"].shape[1] > 5 * 13  # many chunks
    expected = layer(*args, edge_shift=x["edge_shift"], **extra)  # autograd on: the plain path
    with torch.no_grad():
        got = chunked(*args, edge_shift=x["edge_shift"], **extra)
        again = chunked(*args, edge_shift=x["edge_shift"], **extra)
    for e, g, a in zip(expected, got, again):
        torch.testing.assert_close(g, e.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(a, g, rtol=0, atol=0)  # outputs are not views of reused buffers
    assert float((got[1] - x["pos"]).abs().max()) > 1e-6 or opts.get("update_coords") is False


def test_model_inference_equals_training_mode_forward_with_chunks():
    torch.manual_seed(1)
    model = EGNN(4, 16, 3, attention=True, normalize=True, chunk_size=11, out_channels=2).double()
    x = graph(feat=4)
    expected = model(x["h"], x["pos"], x["edge_index"])
    with torch.inference_mode():
        got = model(x["h"], x["pos"], x["edge_index"])
    torch.testing.assert_close(got.h, expected.h.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(got.pos, expected.pos.detach(), rtol=0, atol=1e-12)
