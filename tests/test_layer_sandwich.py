"""Sandwich (Wang & Manchester 2023) specific tests.

There is no golden file (the paper never trained Sandwich), so the layers are checked against an
independent, straightforward implementation: explicit dense matrices of the circular
convolution, an explicit DFT for the normalisation, and the Cayley transform of the real dense
operator; plus the paper's own FFT conventions written out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

import lipzoo
from lipzoo.layers import InputError
from lipzoo.layers.sandwich import SandwichConv2d, SandwichLinear

SQRT2 = math.sqrt(2.0)


# --- the independent reference ---------------------------------------------------------------
def dense_circular_conv(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The (out*h*w, in*h*w) matrix of circular 'same' cross-correlation, built tap by tap."""
    out_c, in_c, kh, kw = kernel.shape
    ch, cw = (kh - 1) // 2, (kw - 1) // 2
    m = torch.zeros(out_c * h * w, in_c * h * w, dtype=kernel.dtype)
    rows_h, rows_w = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for o in range(out_c):
        for i in range(in_c):
            for p in range(kh):
                for q in range(kw):
                    src_h = (rows_h + p - ch) % h
                    src_w = (rows_w + q - cw) % w
                    rows = o * h * w + rows_h * w + rows_w
                    cols = i * h * w + src_h * w + src_w
                    m[rows.flatten(), cols.flatten()] += kernel[o, i, p, q]
    return m


def half_spectrum_norm(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """||W_hat||_F over the rfft2 half spectrum (frequencies u < h, v <= w//2) by an explicit DFT."""
    _, _, kh, kw = kernel.shape
    u = torch.arange(h, dtype=torch.float64)[:, None] * torch.arange(kh, dtype=torch.float64)[None, :] / h
    v = torch.arange(w // 2 + 1, dtype=torch.float64)[:, None] * torch.arange(kw, dtype=torch.float64)[None, :] / w
    fu = torch.exp(-2j * math.pi * u)  # (h, kh)
    fv = torch.exp(-2j * math.pi * v)  # (w//2+1, kw)
    what = torch.einsum("oipq,up,vq->uvoi", kernel.to(torch.complex128), fu, fv)
    return what.abs().square().sum().sqrt()


def dense_cayley_rows(m: torch.Tensor) -> torch.Tensor:
    """Cayley transform of a wide real matrix (out, in+out): a matrix with orthonormal rows."""
    t = m.T  # tall
    n = t.shape[1]
    u, v = t[:n], t[n:]
    eye = torch.eye(n, dtype=m.dtype)
    a = u - u.T + v.T @ v
    inv = torch.linalg.inv(eye + a)
    return torch.cat([inv @ (eye - a), -2 * v @ inv], dim=0).T


def reference_sandwich(x, a, b, psi, bias, reps: int = 1):
    """y = sqrt(2) A^T Psi ReLU(sqrt(2) Psi^{-1} B x + b), rows of x are samples."""
    e = torch.exp(psi).repeat_interleave(reps)
    z = SQRT2 * (x @ b.T) / e + bias.repeat_interleave(reps)
    return SQRT2 * ((torch.relu(z) * e) @ a)


def reference_conv(layer: SandwichConv2d, x: torch.Tensor) -> torch.Tensor:
    n_b, c_in, h, w = x.shape
    kernel = layer.weight.detach().double()
    m = dense_circular_conv(kernel, h, w)
    scaled = layer.alpha.detach().double() * m / half_spectrum_norm(kernel, h, w)
    q = dense_cayley_rows(scaled)
    n = layer.out_channels * h * w
    a, b = q[:, :n], q[:, n:]
    y = reference_sandwich(x.double().reshape(n_b, -1), a, b, layer.psi.detach().double(),
                           layer.bias.detach().double(), reps=h * w)
    return y.reshape(n_b, layer.out_channels, h, w)


def randomise(layer) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        layer.psi.normal_(0, 0.5)
        layer.bias.normal_(0, 0.5)
        layer.alpha.mul_(1.7)


# --- parameters --------------------------------------------------------------------------------
@pytest.mark.parametrize("c_in,c_out,k", [(4, 4, 3), (3, 5, 1), (16, 16, 3)])
def test_conv_parameters(c_in, c_out, k):
    layer = SandwichConv2d(c_in, c_out, k)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == {"weight": (c_out, c_in + c_out, k, k), "bias": (c_out,), "psi": (c_out,), "alpha": ()}
    assert all(p.requires_grad for p in layer.parameters())
    assert sum(p.numel() for p in layer.parameters()) == c_out * (c_in + c_out) * k * k + 2 * c_out + 1
    assert torch.equal(layer.psi, torch.zeros(c_out))
    # alpha = ||W_hat||_F at the default input size 32 (the phase has modulus one)
    expected = torch.fft.rfft2(layer.weight.detach(), s=(32, 32)).norm()
    torch.testing.assert_close(layer.alpha.detach(), expected, rtol=1e-5, atol=0)
    small = SandwichConv2d(c_in, c_out, k, input_size=(8, 6))
    torch.testing.assert_close(small.alpha.detach(), torch.fft.rfft2(small.weight.detach(), s=(8, 6)).norm())


def test_linear_parameters():
    layer = SandwichLinear(12, 7)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == {"weight": (7, 19), "bias": (7,), "alpha": (), "psi": (7,)}
    assert sum(p.numel() for p in layer.parameters()) == 7 * 19 + 2 * 7 + 1
    torch.testing.assert_close(layer.alpha.detach(), layer.weight.detach().norm())


@pytest.mark.parametrize("size,count", [("xs", 3_144_603), ("s", 12_566_299)])
def test_model_parameter_counts(size, count):
    model = lipzoo.create_model(f"convnet_{size}_sandwich")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    assert sum(1 for n, _ in model.named_parameters() if n.endswith("alpha")) == 27
    assert isinstance(model.ClassificationHead[1], SandwichLinear)


# --- fidelity --------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(8, 3), (8, 5), (6, 1), (7, 3)])
def test_weight_fft_follows_the_paper_convention(n, k):
    """The paper's W_hat: conj(rfft2(W)) times exp(-2 pi i s (u+v) / n), s = (k-1)//2, flattened u-major."""
    torch.manual_seed(0)
    layer = SandwichConv2d(3, 2, k, input_size=n)
    s = (k - 1) // 2
    grid = torch.arange(n).repeat((n, 1))
    grid = grid + grid.T
    shift = torch.exp(1j * 2 * math.pi * (-s) * grid / n)[:, : n // 2 + 1].reshape(-1, 1, 1)
    w = layer.weight.detach()
    paper = shift * torch.fft.rfft2(w, s=(n, n)).reshape(2, 5, -1).permute(2, 0, 1).conj()
    ours = layer.weight_fft((n, n)).reshape(-1, 2, 5)
    torch.testing.assert_close(ours, paper.to(ours.dtype), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c_in,c_out,k,h,w", [(2, 2, 3, 4, 4), (3, 2, 3, 5, 6), (2, 3, 1, 4, 3), (2, 2, 2, 4, 4)])
def test_conv_equals_dense_reference(c_in, c_out, k, h, w):
    torch.manual_seed(0)
    layer = SandwichConv2d(c_in, c_out, k, input_size=(h, w)).double()
    randomise(layer)
    x = torch.randn(3, c_in, h, w, dtype=torch.float64)
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(x), reference_conv(layer, x), rtol=1e-9, atol=1e-10)


def test_conv_at_other_sizes_equals_dense_reference():
    """alpha is fixed at construction; the normalisation ||W_hat|| is taken at the actual size."""
    torch.manual_seed(0)
    layer = SandwichConv2d(2, 2, 3, input_size=8).double()
    randomise(layer)
    alpha = layer.alpha.detach().clone()
    for h, w in [(4, 4), (3, 5), (8, 8)]:
        x = torch.randn(2, 2, h, w, dtype=torch.float64)
        torch.testing.assert_close(layer(x), reference_conv(layer, x), rtol=1e-9, atol=1e-10)
    assert torch.equal(layer.alpha.detach(), alpha)


def test_dense_reference_has_orthonormal_rows():
    """The theorem's premise, A A^T + B B^T = I, holds for the real operators."""
    torch.manual_seed(0)
    layer = SandwichConv2d(3, 2, 3, input_size=(4, 5)).double()
    kernel = layer.weight.detach()
    m = layer.alpha.detach() * dense_circular_conv(kernel, 4, 5) / half_spectrum_norm(kernel, 4, 5)
    q = dense_cayley_rows(m)
    torch.testing.assert_close(q @ q.T, torch.eye(q.shape[0], dtype=torch.float64), rtol=0, atol=1e-10)


def test_linear_equals_dense_reference():
    torch.manual_seed(0)
    layer = SandwichLinear(5, 3).double()
    randomise(layer)
    q = dense_cayley_rows(layer.alpha.detach() * layer.weight.detach() / layer.weight.detach().norm())
    a, b = q[:, :3], q[:, 3:]
    x = torch.randn(4, 5, dtype=torch.float64)
    ref = reference_sandwich(x, a, b, layer.psi.detach(), layer.bias.detach())
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-12)


# --- options ---------------------------------------------------------------------------------
def test_numerical_stable_and_paper_compatible_give_the_same_function():
    for make in (lambda **kw: SandwichConv2d(3, 4, 3, input_size=8, **kw), lambda **kw: SandwichLinear(6, 4, **kw)):
        torch.manual_seed(0)
        base = make()
        randomise(base)
        x = torch.randn(2, 3, 8, 8) if isinstance(base, SandwichConv2d) else torch.randn(2, 6)
        for kw in ({"numerical_stable": True}, {"paper_compatible": True}):
            other = make(**kw)
            other.load_state_dict(base.state_dict(), strict=True)
            torch.testing.assert_close(other(x), base(x), rtol=1e-5, atol=1e-6)


def test_scale_option():
    with pytest.raises(ValueError, match="paper_compatible"):
        SandwichConv2d(2, 2, 3, scale=2.0)
    with pytest.raises(ValueError, match="scale"):
        SandwichLinear(2, 2, scale=0.0)
    torch.manual_seed(0)
    base = SandwichLinear(4, 4)
    scaled = SandwichLinear(4, 4, scale=2.0, paper_compatible=True)
    scaled.load_state_dict(base.state_dict())
    x = torch.randn(3, 4)
    torch.testing.assert_close(scaled(x), base(2.0 * x))
    assert "scale=2.0" in repr(scaled)


def test_no_bias_option():
    layer = SandwichConv2d(2, 2, 3, input_size=4, bias=False)
    assert layer.bias is None and "bias" not in dict(layer.named_parameters())
    assert layer(torch.randn(1, 2, 4, 4)).shape == (1, 2, 4, 4)
    assert SandwichLinear(3, 2, bias=False)(torch.randn(2, 3)).shape == (2, 2)


def test_kernel_larger_than_input_is_rejected():
    with pytest.raises(ValueError, match="does not fit"):
        SandwichConv2d(2, 2, 5, input_size=4)
    layer = SandwichConv2d(2, 2, 3, input_size=8)
    with pytest.raises(InputError, match="at least"):
        layer(torch.randn(1, 2, 2, 8))


# --- training --------------------------------------------------------------------------------
def test_every_parameter_gets_a_gradient():
    for layer, x in ((SandwichConv2d(2, 2, 3, input_size=6), torch.randn(2, 2, 6, 6)),
                     (SandwichLinear(4, 4), torch.randn(2, 4))):
        randomise(layer)
        layer.train()
        layer(x).square().sum().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bound_holds_for_extreme_parameters():
    """Large alpha and psi: the Jacobian norm stays <= 1 (float64, exact theorem)."""
    torch.manual_seed(0)
    layer = SandwichConv2d(2, 2, 3, input_size=4).double()
    with torch.no_grad():
        layer.alpha.mul_(30.0)
        layer.psi.normal_(0, 3.0)
        layer.bias.normal_(0, 1.0)
    for _ in range(3):
        x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.view(1, 2, 4, 4)).flatten(), x.flatten())
        assert torch.linalg.matrix_norm(jac, ord=2) <= 1 + 1e-10
