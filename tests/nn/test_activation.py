import pytest
import torch

from egnn.nn.egcl import ACTIVATIONS, SiLU, make_activation


def test_silu_matches_torch_in_value_gradient_and_second_derivative():
    x = torch.linspace(-30, 30, 2001, dtype=torch.float64, requires_grad=True)
    ours, ref = SiLU()(x), torch.nn.functional.silu(x)
    torch.testing.assert_close(ours, ref, rtol=1e-15, atol=1e-15)
    (g1,) = torch.autograd.grad(ours.sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(ref.sum(), x, create_graph=True)
    torch.testing.assert_close(g1, g2, rtol=1e-13, atol=1e-15)
    (h1,) = torch.autograd.grad(g1.sum(), x)
    (h2,) = torch.autograd.grad(g2.sum(), x)
    torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradgradcheck(SiLU(), (x[::100].detach().clone().requires_grad_(True),))


@pytest.mark.parametrize("grad", [False, True])
def test_silu_float32_within_round_off(grad):
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 8
    x.requires_grad_(grad)
    torch.testing.assert_close(SiLU()(x), torch.nn.functional.silu(x), rtol=2e-7, atol=1e-7)


def test_silu_is_the_registered_activation_and_an_nn_silu():
    assert ACTIVATIONS["silu"] is SiLU and isinstance(make_activation("silu"), torch.nn.SiLU)
