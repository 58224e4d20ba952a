"""Tests specific to AOC (AOCConv2d, AOCLinear, aoc_kernel, compose_kernels)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipzoo.audit import circular_conv_norm, layer_bound
from lipzoo.export import to_plain
from lipzoo.layers._fourier import conv_kernel_fft
from lipzoo.layers.aoc import AOCConv2d, AOCLinear, aoc_kernel, compose_kernels
from lipzoo.layers.bcop import norm_bound

from lipschitz import impulse_matrix, push_norm_up

TOL_MAX, TOL_MIN = 1e-4, 1e-3


def sv(module: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.linalg.svdvals(impulse_matrix(module, shape))


def exact_orthonormal(c: int, r: int, n: int, seed: int) -> torch.Tensor:
    """n exactly column-orthonormal (c, r) float64 matrices (QR)."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, c, r, dtype=torch.float64, generator=g))[0]


@pytest.mark.parametrize("a,b", [(3, 2), (1, 2), (2, 3)])
def test_compose_kernels_is_the_composition_of_the_convolutions(a, b):
    g = torch.Generator().manual_seed(a * 7 + b)
    first = torch.randn(3, 2, a, a, dtype=torch.float64, generator=g)
    second = torch.randn(4, 3, b, b, dtype=torch.float64, generator=g)
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64, generator=g)
    both = compose_kernels(first, second)
    assert both.shape == (4, 2, a + b - 1, a + b - 1)
    # full (zero-padded) convolutions compose exactly
    chained = F.conv2d(F.conv2d(x, first, padding=a - 1), second, padding=b - 1)
    torch.testing.assert_close(F.conv2d(x, both, padding=a + b - 2), chained)


@pytest.mark.parametrize("cin,cout,k", [(4, 4, 3), (3, 6, 3), (6, 3, 3), (5, 5, 5), (4, 4, 1), (1, 1, 3)])
@pytest.mark.parametrize("n", [5, 8])
def test_kernel_from_orthonormal_matrices_is_orthogonal_at_every_frequency(cin, cout, k, n):
    """The maths without Bjorck: exact projectors give an exactly orthogonal circular convolution."""
    c = max(cin, cout)
    kernel = aoc_kernel(exact_orthonormal(c, max(1, c // 2), 2 * k, seed=c + k), cin, cout, k)
    assert kernel.shape == (cout, cin, k, k)
    s = torch.linalg.svdvals(conv_kernel_fft(kernel, n, n))  # all frequencies, any grid size
    assert s.max() <= 1 + 1e-12 and s.min() >= 1 - 1e-12
    if cin == cout:  # square: the Schur bound used for the rescale is 1 up to round-off
        assert float(norm_bound(kernel)) == pytest.approx(1.0, abs=1e-12)


def test_block_kernels_are_orthogonal_without_the_1x1_factor():
    """Each 2x2 factor [P + (I-P) z1][Q + (I-Q) z2] is unitary at every frequency on its own."""
    from lipzoo.layers.aoc import _two_by_two

    m = exact_orthonormal(6, 3, 2, seed=5)
    p = m @ m.transpose(-1, -2)
    s = torch.linalg.svdvals(conv_kernel_fft(_two_by_two(p[0], p[1]), 5, 5))
    assert torch.allclose(s, torch.ones_like(s), atol=1e-12)


@pytest.mark.parametrize("cin,cout,k", [(4, 4, 3), (3, 6, 3), (6, 3, 3), (4, 4, 5), (6, 6, 1), (8, 8, 3)])
@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
def test_conv_orthogonal_after_adversarial_steps(cin, cout, k, train_mode):
    torch.manual_seed(0)
    layer = AOCConv2d(cin, cout, k)
    layer.train(train_mode)
    push_norm_up(layer, (cin, 6, 6))
    for mode in (True, False):
        layer.train(mode)
        s = sv(layer, (cin, 6, 6))
        assert s.max() <= 1 + TOL_MAX, f"sigma_max={s.max():.6f}"
        assert s[: min(cin, cout) * 36].min() >= 1 - TOL_MIN, f"sigma_min={s[: min(cin, cout) * 36].min():.6f}"


def test_rescale_makes_too_few_bjorck_iterations_sound():
    """With 1 Bjorck iteration the projectors are far from exact: the guaranteed rescale still holds."""
    torch.manual_seed(0)
    layer = AOCConv2d(4, 4, 3, bjorck_iters=1)
    with torch.no_grad():
        layer.param_matrices.normal_()  # not orthonormal: Bjorck(1) leaves it far from it
    push_norm_up(layer, (4, 6, 6), steps=5)
    layer.eval()
    s = sv(layer, (4, 6, 6))
    assert s.max() <= 1 + TOL_MAX
    kernel = layer.effective_weight().detach().double()
    assert float(norm_bound(kernel)) <= 1 + 1e-5  # the applied kernel satisfies the bound it was rescaled by
    assert s.min() < 1 - TOL_MIN  # and is visibly not orthogonal: the test above is not vacuous


def test_audit_bound_is_the_exact_norm_and_plain_form_is_a_circular_conv():
    torch.manual_seed(0)
    layer = AOCConv2d(3, 3, 3)
    push_norm_up(layer, (3, 6, 6))
    layer.eval()
    true = float(sv(layer, (3, 6, 6)).max())
    upper, method, gram, _ = layer_bound(layer, (3, 6, 6))
    assert upper == pytest.approx(true, abs=1e-5) and "circular" in method and gram >= upper - 1e-9
    assert upper == pytest.approx(circular_conv_norm(layer.effective_weight(), 6, 6))
    plain = to_plain(nn.Sequential(layer), input_shape=(3, 6, 6))
    assert isinstance(plain[0], nn.Conv2d) and plain[0].padding_mode == "circular"
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), layer(x))


def test_weight_does_not_depend_on_input_size():
    torch.manual_seed(0)
    layer = AOCConv2d(4, 4, 3).eval()
    assert not layer.size_dependent
    a = impulse_matrix(layer, (4, 5, 5))
    b = impulse_matrix(layer, (4, 8, 8))
    assert torch.linalg.svdvals(a).min() >= 1 - TOL_MIN and torch.linalg.svdvals(b).min() >= 1 - TOL_MIN


@pytest.mark.parametrize("fin,fout", [(12, 12), (12, 7), (7, 12)])
def test_linear_orthogonal_after_adversarial_steps(fin, fout):
    torch.manual_seed(0)
    layer = AOCLinear(fin, fout)
    push_norm_up(layer, (fin,))
    for mode in (True, False):
        s = torch.linalg.svdvals(layer.train(mode).effective_weight().detach().double())
        assert s.max() <= 1 + TOL_MAX and s.min() >= 1 - TOL_MIN


@pytest.mark.parametrize("cin,cout,k", [(16, 16, 3), (16, 16, 1), (6, 10, 3), (10, 6, 3), (1, 1, 3)])
def test_conv_parameters(cin, cout, k):
    layer = AOCConv2d(cin, cout, k)
    c = max(cin, cout)
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {
        "param_matrices": (2 * k, c, max(1, c // 2)), "bias": (cout,)}
    assert not list(layer.buffers())


def test_bad_arguments():
    with pytest.raises(ValueError, match="only stride 1"):
        AOCConv2d(4, 4, 3, stride=2)
    with pytest.raises(ValueError, match="odd"):
        AOCConv2d(4, 4, 4)
    with pytest.raises(ValueError, match="bjorck_iters"):
        AOCConv2d(4, 4, 3, bjorck_iters=0)
    with pytest.raises(ValueError, match="bjorck_iters"):
        AOCLinear(4, 4, bjorck_iters=0)
