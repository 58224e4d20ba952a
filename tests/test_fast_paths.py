"""The speed paths of the shared numerics compute the textbook formulas (float64, round-off only).

Each fast path (hand-written backward, DFT product instead of FFT or convolution, half spectrum,
Horner scheme, matrix polynomial) is compared with the plain composition it replaces: values,
first-order gradients, a second-order gradient, and the forward-mode path that ``torch.func``
takes (where the custom Functions are bypassed).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.func import jacrev, jvp, vmap

from lipzoo.layers import _fourier, _linalg
from lipzoo.layers._fourier import conv_kernel_fft, conv_kernel_rfft, fft_conv2d, frobenius_norm, half_spectrum_map
from lipzoo.layers._linalg import autocorrelation, cayley_transform, taylor_exp_conv2d
from lipzoo.layers._padding import circular_pad

D = torch.float64
C = torch.complex128


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> None:
    scale = max(float(b.abs().max()), 1.0)
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max()) / scale


def grads(f, inputs, g):
    out = f(*inputs)
    return (out, *torch.autograd.grad(out, inputs, g))


# --- the Cayley transform ------------------------------------------------------------------------

def textbook_cayley(w: torch.Tensor) -> torch.Tensor:
    out_f, in_f = w.shape[-2:]
    if in_f > out_f:
        return textbook_cayley(w.transpose(-1, -2)).transpose(-1, -2)
    u, v = w[..., :in_f, :], w[..., in_f:, :]
    eye = torch.eye(in_f, dtype=w.dtype)
    a = u - u.mH + v.mH @ v
    inv = torch.linalg.inv(eye + a)
    return torch.cat([inv @ (eye - a), -2 * v @ inv], dim=-2)


@pytest.mark.parametrize("dtype", [D, C])
@pytest.mark.parametrize("shape", [(5, 5), (3, 7, 4), (2, 4, 7), (2, 3, 6, 6)])
def test_cayley_transform_is_the_textbook_formula(dtype, shape):
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=dtype)
    close(cayley_transform(w), textbook_cayley(w))


@pytest.mark.parametrize("grid", [(4, 4), (5, 5), (4, 5), (5, 4), (1, 1), (2, 2), (3, 1), (1, 3), (6, 8)])
@pytest.mark.parametrize("shape", [(3, 3), (3, 6)])
def test_half_spectrum_map_equals_the_transform_of_every_frequency(monkeypatch, grid, shape):
    monkeypatch.setattr(_fourier, "HALF_SPECTRUM_MIN_GAIN", 0)  # always the distinct-frequency path
    torch.manual_seed(1)
    kernel = torch.randn(*shape, 3, 3, dtype=D, requires_grad=True) if min(grid) >= 3 else \
        torch.randn(*shape, 1, 1, dtype=D, requires_grad=True)
    wf = conv_kernel_rfft(kernel, *grid)
    g = torch.randn(wf.shape, dtype=C)
    fast = grads(lambda k: half_spectrum_map(cayley_transform, conv_kernel_rfft(k, *grid), grid[1]), (kernel,), g)
    ref = grads(lambda k: cayley_transform(conv_kernel_rfft(k, *grid)), (kernel,), g)
    for a, b in zip(fast, ref):
        close(a, b, 1e-11)


# --- kernel spectra and the FFT convolution ------------------------------------------------------

@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize(("k", "grid"), [((3, 3), (4, 4)), ((3, 3), (5, 7)), ((5, 5), (8, 6)), ((2, 3), (4, 5)),
                                         ((1, 1), (2, 2)), ((3, 1), (3, 1))])
def test_kernel_spectrum_by_dft_matrix_equals_the_fft(monkeypatch, full, k, grid):
    torch.manual_seed(2)
    w = torch.randn(3, 4, *k, dtype=D)
    fast = (conv_kernel_fft if full else conv_kernel_rfft)(w, *grid)
    monkeypatch.setattr(_fourier, "DFT_MATMUL_MAX_TAPS", 0)  # the zero-padded FFT
    close(fast, (conv_kernel_fft if full else conv_kernel_rfft)(w, *grid))


def plain_fft_conv2d(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    y = w @ torch.fft.rfft2(x).permute(2, 3, 1, 0)
    return torch.fft.irfft2(y.permute(3, 2, 0, 1), s=tuple(x.shape[-2:]))


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (8, 8), (6, 5), (1, 1), (2, 2), (3, 1), (16, 16)])
def test_fft_conv2d_values_and_gradients(size):
    torch.manual_seed(3)
    x = torch.randn(3, 2, *size, dtype=D, requires_grad=True)
    w = torch.randn(size[0], size[1] // 2 + 1, 4, 2, dtype=C, requires_grad=True)
    g = torch.randn(3, 4, *size, dtype=D)
    for a, b in zip(grads(fft_conv2d, (x, w), g), grads(plain_fft_conv2d, (x, w), g)):
        close(a, b)
    # a second-order gradient through the weight gradient reaches x (X is a differentiable output)
    v = torch.randn_like(w)
    mixed = []
    for f in (fft_conv2d, plain_fft_conv2d):
        (gw,) = torch.autograd.grad((f(x, w) ** 2).sum(), w, create_graph=True)
        mixed.append(torch.autograd.grad((gw * v.conj()).real.sum(), x)[0])
    close(*mixed)


def test_fft_conv2d_under_torch_func():
    torch.manual_seed(4)
    x = torch.randn(2, 2, 5, 4, dtype=D)
    w = torch.randn(5, 3, 3, 2, dtype=C)
    single = lambda xi: fft_conv2d(xi[None], w)[0]  # noqa: E731
    plain = lambda xi: plain_fft_conv2d(xi[None], w)[0]  # noqa: E731
    close(jacrev(single)(x[0]), jacrev(plain)(x[0]))
    close(vmap(single)(x), plain_fft_conv2d(x, w))
    v = torch.randn_like(x[0])
    close(jvp(single, (x[0],), (v,))[1], jvp(plain, (x[0],), (v,))[1])
    dw = torch.randn_like(w)
    close(jvp(lambda ww: fft_conv2d(x, ww), (w,), (dw,))[1], jvp(lambda ww: plain_fft_conv2d(x, ww), (w,), (dw,))[1])


def test_frobenius_norm_of_complex_stacks_and_views():
    torch.manual_seed(5)
    w = torch.randn(4, 3, 5, 6, dtype=C)
    for t in (w, w.conj(), w.permute(2, 3, 0, 1), w.conj().permute(2, 3, 0, 1), w.real):
        close(frobenius_norm(t), torch.linalg.vector_norm(t), 1e-15)
    assert frobenius_norm(w.to(torch.complex64)).dtype == torch.float32


# --- autocorrelation ---------------------------------------------------------------------------------

def conv_autocorrelation(kernel: torch.Tensor, over: str) -> torch.Tensor:
    k = kernel.transpose(0, 1) if over == "in" else kernel
    return F.conv2d(k, k, padding=(k.shape[-2] - 1, k.shape[-1] - 1))


@pytest.mark.parametrize("over", ["in", "out"])
@pytest.mark.parametrize("shape", [(3, 4, 3, 3), (4, 3, 3, 3), (5, 2, 5, 5), (3, 3, 1, 3), (3, 3, 2, 2),
                                   (2, 5, 1, 1), (6, 6, 7, 7)])
def test_autocorrelation_paths_equal_the_convolution(monkeypatch, over, shape):
    monkeypatch.setattr(_linalg, "AUTOCORR_DFT_MIN_PAIRS", 0)  # the DFT path at any channel count
    torch.manual_seed(6)
    w = torch.randn(shape, dtype=D, requires_grad=True)
    g = torch.randn(conv_autocorrelation(w, over).shape, dtype=D)
    for a, b in zip(grads(lambda t: autocorrelation(t, over), (w,), g), grads(lambda t: conv_autocorrelation(t, over), (w,), g)):
        close(a, b)
    second = [torch.autograd.grad(torch.autograd.grad((f(w, over) ** 2).sum(), w, create_graph=True)[0].pow(2).sum(), w)[0]
              for f in (autocorrelation, conv_autocorrelation)]
    close(*second)
    v = torch.randn_like(w)
    close(jvp(lambda t: autocorrelation(t, over), (w.detach(),), (v,))[1],
          jvp(lambda t: conv_autocorrelation(t, over), (w.detach(),), (v,))[1])


# --- the Taylor series of SOC ------------------------------------------------------------------------

def term_by_term(x: torch.Tensor, kernel: torch.Tensor, terms: int) -> torch.Tensor:
    z = term = x
    for i in range(1, terms + 1):
        term = F.conv2d(term, kernel, padding=kernel.shape[-1] // 2) / i
        z = z + term
    return z


@pytest.mark.parametrize(("c", "k", "terms"), [(4, 3, 5), (4, 3, 12), (16, 1, 5), (8, 1, 12), (80, 1, 5), (3, 3, 0),
                                               (3, 3, 1), (4, 5, 3)])
def test_taylor_series_equals_the_term_by_term_sum(c, k, terms):
    torch.manual_seed(7)
    x = torch.randn(2, c, 5, 5, dtype=D, requires_grad=True)
    kernel = (0.3 * torch.randn(c, c, k, k, dtype=D)).requires_grad_()
    g = torch.randn(2, c, 5, 5, dtype=D)
    fast = grads(lambda a, b: taylor_exp_conv2d(a, b, terms) + 0 * b.sum(), (x, kernel), g)
    ref = grads(lambda a, b: term_by_term(a, b, terms) + 0 * b.sum(), (x, kernel), g)
    for a, b in zip(fast, ref):
        close(a, b)


@pytest.mark.parametrize(("c", "k", "terms"), [(4, 3, 5), (16, 1, 5), (80, 1, 4), (3, 3, 0), (3, 3, 1)])
def test_taylor_series_folds_the_output_scale_and_bias_in(c, k, terms):
    torch.manual_seed(8)
    x = torch.randn(2, c, 5, 5, dtype=D, requires_grad=True)
    kernel = (0.3 * torch.randn(c, c, k, k, dtype=D)).requires_grad_()
    bias = torch.randn(c, dtype=D, requires_grad=True)
    g = torch.randn(2, c, 5, 5, dtype=D)
    fast = grads(lambda a, b, e: taylor_exp_conv2d(a, b, terms, 0.7, e) + 0 * b.sum(), (x, kernel, bias), g)
    ref = grads(lambda a, b, e: 0.7 * term_by_term(a, b, terms) + e.view(1, -1, 1, 1) + 0 * b.sum(),
                (x, kernel, bias), g)
    for a, b in zip(fast, ref):
        close(a, b)


def test_lean_circular_pad_equals_f_pad():
    """The circular padding of the standard, AOL and BCOP convolutions: F.pad's values, gradients,
    tangents and batching, with its own backward."""
    for shape, p in [((2, 3, 5, 6), 1), ((2, 3, 4, 4), 2), ((1, 2, 2, 3), 2), ((2, 1, 1, 1), 1)]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        ref = F.pad(x, (p,) * 4, mode="circular")
        assert torch.equal(circular_pad(x, p), ref)
        assert gradcheck(lambda v: circular_pad(v, p), (x,), check_forward_ad=True)
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(circular_pad(x, p), x, g)[0], torch.autograd.grad(ref, x, g)[0])
        t = torch.randn_like(x)
        assert torch.equal(jvp(lambda v: circular_pad(v, p), (x.detach(),), (t,))[1], F.pad(t, (p,) * 4, mode="circular"))
        assert torch.equal(vmap(lambda v: circular_pad(v, p))(x.detach()[None])[0], ref.detach())
    with pytest.raises(Exception, match="more than once"):
        circular_pad(torch.randn(1, 1, 2, 2), 3)
