"""Tests specific to the Cayley family (CayleyConv2d, CayleyLinear)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lipzoo
from lipzoo.layers._fourier import conv_kernel_rfft
from lipzoo.layers._linalg import cayley_transform
from lipzoo.layers.cayley import CayleyConv2d, CayleyLinear, cayley_frequency_weight

from lipschitz import circular_conv_matrix, impulse_matrix, n_trainable




def dense_cayley(m: torch.Tensor, n_in: int) -> torch.Tensor:
    """Cayley transform of a real tall matrix [U; V] (U: n_in x n_in), written out directly."""
    u, v = m[:n_in], m[n_in:]
    a = u - u.T + v.T @ v
    eye = torch.eye(n_in, dtype=m.dtype)
    inv = torch.linalg.inv(eye + a)
    return torch.cat([inv @ (eye - a), -2 * v @ inv])


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("c,k", [(16, 1), (16, 3), (8, 3)])
def test_conv_parameters(c, k):
    layer = CayleyConv2d(c, c, k)
    assert n_trainable(layer) == c * c * k * k + c + 1
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {
        "weight": (c, c, k, k), "bias": (c,), "alpha": ()}
    assert all(p.requires_grad for p in layer.parameters())
    assert not list(layer.buffers())


def test_linear_parameters():
    layer = CayleyLinear(12, 7)
    assert n_trainable(layer) == 12 * 7 + 7 + 1
    assert tuple(layer.alpha.shape) == (1,)
    bound = 1 / math.sqrt(12)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    torch.testing.assert_close(layer.alpha, layer.weight.detach().norm().reshape(1))


@pytest.mark.parametrize("name,count", [("convnet_xs_cayley", 1_572_315), ("convnet_s_cayley", 6_283_163)])
def test_model_parameter_count(name, count):
    model = lipzoo.create_model(name)
    assert n_trainable(model) == count
    assert sum(1 for n, _ in model.named_parameters() if n.endswith("alpha")) == 27


def test_conv_init_is_nn_conv2d_default_and_alpha_is_spectrum_norm():
    torch.manual_seed(3)
    ref = nn.Conv2d(6, 6, 3)
    torch.manual_seed(3)
    layer = CayleyConv2d(6, 6, 3)  # input_size None -> 32
    torch.testing.assert_close(layer.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.bias, ref.bias, rtol=0, atol=0)
    assert layer.input_size == (32, 32)
    want = torch.fft.rfft2(ref.weight.detach(), (32, 32)).norm()
    torch.testing.assert_close(layer.alpha.detach(), want)
    # alpha depends on the size it is computed at
    small = CayleyConv2d(6, 6, 3, input_size=8)
    assert small.input_size == (8, 8)
    assert not torch.isclose(small.alpha, layer.alpha)


def test_alpha_is_trained():
    torch.manual_seed(0)
    layer = CayleyConv2d(4, 4, 3, input_size=8)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # built BEFORE any forward
    before = layer.alpha.detach().clone()
    x = torch.randn(2, 4, 8, 8)
    (layer(x) * torch.randn(2, 4, 8, 8)).sum().backward()
    assert layer.alpha.grad is not None and layer.alpha.grad.abs() > 0
    opt.step()
    assert not torch.equal(layer.alpha.detach(), before)


def test_state_dict_loads_strictly_before_any_forward():
    torch.manual_seed(0)
    a, b = CayleyConv2d(4, 4, 3, input_size=8), CayleyConv2d(4, 4, 3, input_size=8)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        CayleyConv2d(4, 4, 2)
    with pytest.raises(ValueError, match="does not fit"):
        CayleyConv2d(4, 4, 5, input_size=3)


# --- maths --------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(3, 8), (1, 4), (5, 7)])
def test_paper_phase_convention_is_circular_cross_correlation(k, n):
    """The paper's shift(u+v) * conj(rfft2(W)) equals lipzoo's circular 'same' F.conv2d form."""
    torch.manual_seed(0)
    w = torch.randn(3, 2, k, k, dtype=torch.float64)
    s = -((k - 1) // 2)
    idx = torch.arange(n, dtype=torch.float64)
    shift = torch.exp(1j * 2 * math.pi * s * (idx[:, None] + idx[None, :]) / n)[:, : n // 2 + 1]
    paper = shift[:, :, None, None] * torch.fft.rfft2(w, (n, n)).conj().permute(2, 3, 0, 1)
    torch.testing.assert_close(conv_kernel_rfft(w, n, n), paper)


@pytest.mark.parametrize("cin,cout,size,k", [(3, 3, (4, 4), 3), (2, 3, (3, 5), 3), (3, 2, (4, 3), 3), (3, 3, (3, 4), 1)])
def test_conv_equals_dense_cayley_of_the_circular_convolution(cin, cout, size, k):
    """The layer is the Cayley transform of the (rescaled) circular convolution operator itself."""
    torch.manual_seed(1)
    h, w = size
    layer = CayleyConv2d(cin, cout, k, input_size=size).double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.alpha.fill_(2.5)
        layer.bias.zero_()
    scale = 2.5 / conv_kernel_rfft(layer.weight.detach(), h, w).norm()
    m = scale * circular_conv_matrix(layer.weight.detach(), h, w)
    want = dense_cayley(m, cin * h * w) if cout >= cin else dense_cayley(m.T, cout * h * w).T
    got = impulse_matrix(layer, (cin, h, w), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cin,cout,size", [(5, 5, (2, 2)), (4, 6, (7, 5)), (6, 4, (1, 1)), (3, 3, (32, 32))])
def test_1x1_shortcut_equals_per_frequency_cayley(cin, cout, size):
    """1x1 kernels transform one shared matrix: same result as transforming every frequency."""
    torch.manual_seed(4)
    w, alpha = torch.randn(cout, cin, 1, 1, dtype=torch.float64), torch.tensor(3.7, dtype=torch.float64)
    wf = conv_kernel_rfft(w, *size)
    want = cayley_transform(alpha * wf / wf.norm())
    got = cayley_frequency_weight(w, alpha, size)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("cin,cout,size", [(4, 4, (7, 5)), (3, 5, (6, 6)), (5, 3, (5, 8))])
def test_conv_is_orthogonal_at_any_size(cin, cout, size):
    torch.manual_seed(2)
    layer = CayleyConv2d(cin, cout, 3, input_size=8)
    with torch.no_grad():
        layer.alpha.mul_(3.0)
    sv = torch.linalg.svdvals(impulse_matrix(layer, (cin, *size)))
    torch.testing.assert_close(sv, torch.ones_like(sv), rtol=0, atol=1e-4)
    assert sv.numel() == min(cin, cout) * size[0] * size[1]


def test_any_input_size_and_eval_cache_per_size():
    torch.manual_seed(0)
    layer = CayleyConv2d(4, 4, 3, input_size=8)
    xa, xb = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 6, 10)
    ya_train, yb_train = layer(xa), layer(xb)
    layer.eval()
    for _ in range(2):
        torch.testing.assert_close(layer(xa), ya_train, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer(xb), yb_train, rtol=1e-5, atol=1e-6)
        assert layer(xb).shape == xb.shape


def test_linear_is_cayley_of_scaled_weight_and_orthogonal():
    torch.manual_seed(0)
    for n_in, n_out in [(6, 6), (4, 7), (7, 4)]:
        layer = CayleyLinear(n_in, n_out).double()
        with torch.no_grad():
            layer.alpha.fill_(3.0)
        m = 3.0 * layer.weight.detach() / layer.weight.detach().norm()
        want = dense_cayley(m, n_in) if n_out >= n_in else dense_cayley(m.T, n_out).T
        torch.testing.assert_close(layer.compute_weight(), want)
        x = torch.randn(5, n_in, dtype=torch.float64)
        torch.testing.assert_close(layer(x), x @ want.T + layer.bias)
        sv = torch.linalg.svdvals(want)
        torch.testing.assert_close(sv, torch.ones_like(sv))


def test_paper_compatible_is_the_same_function():
    torch.manual_seed(0)
    a = CayleyConv2d(4, 4, 3, input_size=8)
    b = CayleyConv2d(4, 4, 3, input_size=8, paper_compatible=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    la, lb = CayleyLinear(5, 5), CayleyLinear(5, 5, paper_compatible=True)
    lb.load_state_dict(la.state_dict())
    x = torch.randn(3, 5)
    torch.testing.assert_close(la(x), lb(x), rtol=0, atol=0)
