"""SOC-specific tests: skew symmetry, the Taylor series vs the exact exponential, the sound tail
rescaling, channel padding/slicing, stride, the paper-compatible power iterations (the golden
logits of the paper's ConvNet-XS: tests/test_convert.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lipzoo.layers import InputError
from lipzoo.layers._linalg import gram_bound
from lipzoo.layers.soc import (
    VECTOR_NAMES,
    SOCConv2d,
    SOCLinear,
    fantastic_four_init,
    fantastic_four_iterations,
    fantastic_four_sigma,
    skew_filter,
    taylor_tail_bound,
)

from lipschitz import impulse_matrix


def trainable(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def conv_matrix(kernel: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Dense matrix of the zero-padded 'same' convolution with ``kernel`` on (C, H, W) inputs."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    out = F.conv2d(eye, kernel.double(), padding=kernel.shape[-1] // 2)
    return out.reshape(n, -1).T


def linear_part(layer, shape):
    """The layer's matrix (affine part removed), float64."""
    return impulse_matrix(layer, shape)


# --- parameters, options ---------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout,k", [(4, 4, 3), (4, 4, 1), (3, 5, 3), (6, 2, 3)])
def test_trainable_parameter_counts(cin, cout, k):
    c = max(cin, cout)
    for paper in (False, True):
        m = SOCConv2d(cin, cout, k, paper_compatible=paper)
        assert trainable(m) == c * c * k * k + cout
        assert m.random_conv_filter.shape == (c, c, k, k) and m.bias.shape == (cout,)
    assert trainable(SOCLinear(cin, cout)) == c * c + cout
    assert trainable(SOCConv2d(cin, cout, k, bias=False)) == c * c * k * k


def test_buffers_default_vs_paper():
    assert dict(SOCConv2d(4, 4, 3).named_buffers()) == {}
    m = SOCConv2d(5, 5, 3, paper_compatible=True)
    shapes = {n: tuple(b.shape) for n, b in m.named_buffers()}
    c, k = 5, 3
    assert shapes == {
        "correction": (1,), "u1": (1, c, 1, k), "v1": (c, 1, k, 1), "u2": (1, c, k, 1), "v2": (c, 1, 1, k),
        "u3": (1, c, k, k), "v3": (c, 1, 1, 1), "u4": (c, 1, k, k), "v4": (1, c, 1, 1),
    }
    assert float(m.correction) == pytest.approx(0.7)
    assert float(SOCConv2d(5, 5, 1, paper_compatible=True).correction) == 1.0
    assert float(SOCConv2d(5, 5, 3, paper_compatible=True, correction=0.5).correction) == 0.5


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        SOCConv2d(4, 4, 2)
    with pytest.raises(ValueError, match="stride"):
        SOCConv2d(4, 4, 3, stride=3)
    with pytest.raises(InputError, match="even"):
        SOCConv2d(4, 8, 3, stride=2)(torch.randn(1, 4, 5, 6))


def test_initialisation_statistics():
    torch.manual_seed(0)
    m = SOCConv2d(64, 64, 3)
    assert m.random_conv_filter.std().item() == pytest.approx(1 / 8, rel=0.05)
    assert m.bias.abs().max() <= 1 / 8


# --- maths -----------------------------------------------------------------------------------
def test_skew_filter_gives_an_exactly_skew_symmetric_operator():
    torch.manual_seed(0)
    L = skew_filter(torch.randn(3, 3, 3, 3))
    A = conv_matrix(L, (3, 5, 4))
    assert torch.equal(A, -A.T)
    assert torch.equal(skew_filter(L), L)


def test_tail_bound_is_a_bound_and_tight():
    for t in (0, 1, 5, 12, 20):
        exact = sum(1 / math.factorial(i) for i in range(t + 1, t + 40))
        assert exact <= taylor_tail_bound(t) <= exact * (1 + 1 / (t + 2))
    assert taylor_tail_bound(5) == pytest.approx(math.e - sum(1 / math.factorial(i) for i in range(6)), rel=1e-2)
    assert taylor_tail_bound(5, radius=0.5) < taylor_tail_bound(5) * 0.5**6 * 1.01


@pytest.mark.parametrize("k", [1, 3])
def test_default_equals_scaled_matrix_exponential(k):
    """Eval output == exp(L_n) x / (1 + tail(12)) + b, L_n = L / gram_bound(L), ||L_n|| <= 1."""
    torch.manual_seed(1)
    shape = (3, 5, 5)
    m = SOCConv2d(3, 3, k).eval()
    with torch.no_grad():
        m.random_conv_filter.mul_(3.0)  # a large filter: the normalisation must do the work
        L = skew_filter(m.random_conv_filter)
        kernel = m.effective_weight()
    torch.testing.assert_close(kernel, L / gram_bound(L))
    A = conv_matrix(kernel, shape)
    assert torch.linalg.matrix_norm(A, 2) <= 1 + 1e-6
    for mode, terms in (("eval", 12), ("train", 5)):
        m.train(mode == "train")
        taylor = sum(torch.linalg.matrix_power(A, i) / math.factorial(i) for i in range(terms + 1))
        got = linear_part(m, shape)
        torch.testing.assert_close(got, taylor / (1 + taylor_tail_bound(terms)), atol=1e-5, rtol=0)
        assert (got - torch.linalg.matrix_exp(A)).abs().max() <= 2 * taylor_tail_bound(terms) + 1e-6, mode
        assert torch.linalg.svdvals(got).max() <= 1 + 1e-5
    m.eval()
    sv = torch.linalg.svdvals(linear_part(m, shape))
    assert sv.min() >= 1 - 1e-5  # orthogonal in eval


def test_channel_padding_and_slicing():
    """in < out pads the input with zero channels; in > out slices the output (paper)."""
    torch.manual_seed(2)
    shape = (3, 4, 4)
    up = SOCConv2d(3, 5, 3).eval()
    square = SOCConv2d(5, 5, 3).eval()
    square.load_state_dict({"random_conv_filter": up.random_conv_filter, "bias": up.bias})
    x = torch.randn(2, *shape)
    torch.testing.assert_close(up(x), square(F.pad(x, (0, 0, 0, 0, 0, 2))))
    sv = torch.linalg.svdvals(linear_part(up, shape))
    assert sv.min() >= 1 - 1e-5 and sv.max() <= 1 + 1e-5  # an isometry

    down = SOCConv2d(5, 3, 3).eval()
    bias = torch.cat([down.bias, torch.zeros(2)])
    square.load_state_dict({"random_conv_filter": down.random_conv_filter, "bias": bias})
    x = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(down(x), square(x)[:, :3])
    assert torch.linalg.svdvals(linear_part(down, (5, 4, 4))).max() <= 1 + 1e-5


def test_stride_two_folds_pixels_like_the_paper():
    torch.manual_seed(3)
    m = SOCConv2d(2, 8, 3, stride=2).eval()
    inner = SOCConv2d(8, 8, 3).eval()
    inner.load_state_dict(m.state_dict())
    x = torch.randn(2, 2, 6, 4)
    # the paper's einops 'b c (w k1) (h k2) -> b (c k1 k2) w h'
    folded = x.reshape(2, 2, 3, 2, 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(2, 8, 3, 2)
    y = m(x)
    assert y.shape == (2, 8, 3, 2)
    torch.testing.assert_close(y, inner(folded))


def test_linear_is_orthogonal_and_pads_or_slices():
    torch.manual_seed(4)
    m = SOCLinear(6, 6).eval()
    w = m.effective_weight().double()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0)
    up, down = SOCLinear(4, 6), SOCLinear(6, 4)
    for layer in (up, down):
        q = torch.linalg.matrix_exp(0.5 * (layer.weight - layer.weight.T))
        x = torch.randn(3, layer.in_features)
        xp = F.pad(x, (0, 6 - layer.in_features))
        ref = (xp @ q.T)[:, : layer.out_features] + layer.bias
        torch.testing.assert_close(layer(x), ref)
    sv = torch.linalg.svdvals(up.effective_weight().double())
    assert torch.allclose(sv, torch.ones_like(sv), atol=1e-5)


# --- paper-compatible mode -------------------------------------------------------------------
def _paper_iterations(w, vecs, iters):
    """The paper's broadcast-and-sum formulas, verbatim in maths."""
    n = lambda t: t / t.norm().clamp_min(1e-12)  # noqa: E731
    u1, v1, u2, v2, u3, v3, u4, v4 = (vecs[k].clone() for k in VECTOR_NAMES)
    for _ in range(iters):
        v1 = n((w * u1).sum((1, 3), keepdim=True)); u1 = n((w * v1).sum((0, 2), keepdim=True))  # noqa: E702
        v2 = n((w * u2).sum((1, 2), keepdim=True)); u2 = n((w * v2).sum((0, 3), keepdim=True))  # noqa: E702
        v3 = n((w * u3).sum((1, 2, 3), keepdim=True)); u3 = n((w * v3).sum(0, keepdim=True))  # noqa: E702
        v4 = n((w * u4).sum((0, 2, 3), keepdim=True)); u4 = n((w * v4).sum(1, keepdim=True))  # noqa: E702
    new = dict(zip(VECTOR_NAMES, (u1, v1, u2, v2, u3, v3, u4, v4)))
    sigma = min(float((w * new[f"u{i}"] * new[f"v{i}"]).sum()) for i in range(1, 5))
    return new, sigma


def test_fantastic_four_matches_the_paper_formulas():
    torch.manual_seed(5)
    w = skew_filter(torch.randn(6, 6, 3, 3, dtype=torch.float64))
    vecs = fantastic_four_init(6, 3, dtype=torch.float64)
    ref, ref_sigma = _paper_iterations(w, vecs, 7)
    got = fantastic_four_iterations(w, vecs, 7)
    for name in VECTOR_NAMES:
        torch.testing.assert_close(got[name], ref[name])
    assert float(fantastic_four_sigma(w, got)) == pytest.approx(ref_sigma, rel=1e-10)


def test_paper_mode_normalisation_and_no_tail():
    torch.manual_seed(6)
    m = SOCConv2d(4, 4, 3, paper_compatible=True).eval()
    skew = skew_filter(m.random_conv_filter)
    sigma = fantastic_four_sigma(skew, {n: getattr(m, n) for n in VECTOR_NAMES})
    torch.testing.assert_close(m.effective_weight(), 0.7 * skew / sigma)
    x = torch.randn(2, 4, 5, 5)
    y = m(x)
    ref = x
    term = x
    for i in range(1, 13):
        term = F.conv2d(term, 0.7 * skew / sigma, padding=1) / i
        ref = ref + term
    torch.testing.assert_close(y, ref + m.bias.view(1, -1, 1, 1))
    default = SOCConv2d(4, 4, 3).eval()
    default.load_state_dict({"random_conv_filter": m.random_conv_filter, "bias": m.bias})
    assert not torch.allclose(default(x), y)


def test_paper_init_quirk_is_fixed():
    """The init iterations run on the filter the layer uses: eval before training is correct."""
    torch.manual_seed(7)
    m = SOCConv2d(8, 8, 3, paper_compatible=True).eval()
    skew = skew_filter(m.random_conv_filter).detach()
    vecs = {n: getattr(m, n) for n in VECTOR_NAMES}
    converged = fantastic_four_iterations(skew, vecs, 500)
    sigma, limit = float(fantastic_four_sigma(skew, vecs)), float(fantastic_four_sigma(skew, converged))
    assert sigma == pytest.approx(limit, rel=1e-3)
    assert torch.isfinite(m(torch.randn(1, 8, 6, 6))).all()


def test_paper_power_iteration_schedule():
    torch.manual_seed(8)
    m = SOCConv2d(4, 4, 3, paper_compatible=True, init_iters=3, update_iters=1, update_freq=4)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        m.random_conv_filter.add_(torch.randn_like(m.random_conv_filter))
    expected = {n: getattr(m, n).clone() for n in VECTOR_NAMES}
    skew = skew_filter(m.random_conv_filter).detach()
    m.eval()
    m(x)
    assert m.total_iters == 0 and all(torch.equal(getattr(m, n), expected[n]) for n in VECTOR_NAMES)
    m.train()
    for step in range(6):
        expected = fantastic_four_iterations(skew, expected, 3 if step % 4 == 0 else 1)
        m(x)
        assert m.total_iters == step + 1
        for n in VECTOR_NAMES:
            torch.testing.assert_close(getattr(m, n), expected[n], rtol=1e-5, atol=1e-6)


def test_paper_mode_training_autograd_and_eval_cache():
    """Several training forwards before one backward (buffers updated in place meanwhile)."""
    torch.manual_seed(9)
    m = SOCConv2d(4, 4, 3, paper_compatible=True)
    x = torch.randn(2, 4, 5, 5)
    loss = (m(x) - m(x + 0.1)).square().sum()
    loss.backward()
    assert m.random_conv_filter.grad is not None and torch.isfinite(m.random_conv_filter.grad).all()
    m.eval()
    y1 = m(x)
    m.train()
    with torch.no_grad():
        m.random_conv_filter.add_(0.3)
        m(x)  # updates u, v
    m.eval()
    torch.testing.assert_close(m(x), copy.deepcopy(m)(x))
    assert not torch.allclose(m(x), y1)


def test_default_bound_survives_a_large_filter_in_training():
    torch.manual_seed(10)
    m = SOCConv2d(3, 3, 3).train()
    with torch.no_grad():
        m.random_conv_filter.mul_(50)
    sv = torch.linalg.svdvals(linear_part(m, (3, 4, 4)))
    assert sv.max() <= 1 + 1e-5
