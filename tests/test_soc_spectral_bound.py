"""SOC's ``skew_bound="spectral"``: the sound normalisation for the input size the layer sees."""

from __future__ import annotations

import pytest
import torch

from lipzoo.audit import layer_bound
from lipzoo.layers._fourier import SPECTRAL_MARGIN, spectral_bound
from lipzoo.layers._linalg import gram_bound, taylor_exp_conv2d
from lipzoo.layers._norms import zero_padded_conv_norm
from lipzoo.layers.soc import SOCConv2d, SOCLinear, skew_filter

from lipschitz import assert_model_audits_at_one_and_exports, impulse_matrix, push_norm_up

TOL_MAX = 1e-4
TOL_MIN = 1e-3  # eval mode: 12 Taylor terms, orthogonal to ~3e-10 in exact arithmetic


@pytest.mark.parametrize("c,k,n,stride", [(4, 3, 6, 1), (4, 3, 2, 1), (3, 5, 3, 1), (2, 3, 8, 2), (2, 3, 2, 2), (4, 3, 1, 1)])
def test_the_normalised_filter_has_norm_at_most_one_on_its_size_and_rotates_further(c, k, n, stride):
    """``||L_n||`` of the zero-padded operator on the (folded) input size is <= 1, within the
    margin of 1, and larger than the Schur-test normalisation gives."""
    torch.manual_seed(c * 100 + k * 10 + n)
    tight = SOCConv2d(c, c * stride * stride, k, stride=stride, skew_bound="spectral")
    loose = SOCConv2d(c, c * stride * stride, k, stride=stride)
    loose.load_state_dict(tight.state_dict())
    size = (n // stride, n // stride)
    rho = zero_padded_conv_norm(tight.eval().effective_weight(size).double(), *size)
    rho_loose = zero_padded_conv_norm(loose.eval().effective_weight().double(), *size)
    assert rho <= 1.0 + 1e-6
    assert rho_loose < rho
    if n // stride >= k:  # every tap reaches the input: the (n + k - 1)-grid bound is close to the norm
        assert rho >= 0.8


@pytest.mark.parametrize("k,n,stride", [(3, 6, 1), (3, 2, 1), (3, 4, 2), (1, 3, 1)])
@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
def test_operator_norm_at_most_one_after_steps_that_try_to_break_it(k, n, stride, train_mode):
    """The exact operator norm (impulse responses) stays <= 1 in both modes after Adam steps that
    maximise ||f(x) - f(y)|| / ||x - y||; eval mode stays orthogonal."""
    torch.manual_seed(k * 10 + n + stride)
    c = 2
    m = SOCConv2d(c, c * stride * stride, k, stride=stride, skew_bound="spectral").train(train_mode)
    push_norm_up(m, (c, n, n), steps=25, lr=0.1)
    for mode in (True, False):
        m.train(mode)
        sv = torch.linalg.svdvals(impulse_matrix(m, (c, n, n)))
        assert sv.max().item() <= 1 + TOL_MAX, f"k={k} n={n} stride={stride} train={mode}: {sv.max().item():.6f}"
        if not mode:
            assert sv.min().item() >= 1 - TOL_MIN, f"k={k} n={n} stride={stride}: sigma_min={sv.min().item():.6f}"


def test_the_weight_depends_on_the_folded_size_and_the_forward_uses_it():
    torch.manual_seed(0)
    m = SOCConv2d(2, 8, 3, stride=2, skew_bound="spectral").eval()
    assert m.size_dependent and list(m.state_dict()) == ["random_conv_filter", "bias"]
    skew = skew_filter(m.random_conv_filter.detach())
    for n in (2, 4, 8):
        got = m.effective_weight((n // 2, n // 2))
        torch.testing.assert_close(got, skew / spectral_bound(skew, (n // 2, n // 2)))
        x = torch.randn(3, 2, n, n)
        folded = torch.nn.functional.pixel_unshuffle(x, 2)
        want = taylor_exp_conv2d(folded, got, m.eval_terms) * m.taylor_scale(m.eval_terms) + m.bias.view(1, -1, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(m(x), want)
    assert not torch.equal(m.effective_weight((1, 1)), m.effective_weight((4, 4)))
    with pytest.raises(ValueError, match="needs the input size"):
        m.compute_weight()


def test_a_1x1_kernel_uses_its_matrix_norm_on_every_size():
    torch.manual_seed(0)
    m = SOCConv2d(6, 6, 1, skew_bound="spectral").eval()
    assert not m.size_dependent
    skew = skew_filter(m.random_conv_filter.detach())[:, :, 0, 0].double()
    sigma = torch.linalg.matrix_norm(skew, ord=2).item()
    got = m.effective_weight()[:, :, 0, 0].double()
    torch.testing.assert_close(got, skew / (sigma * (1 + SPECTRAL_MARGIN)), rtol=1e-5, atol=1e-7)
    assert float(gram_bound(skew[:, :, None, None])) >= sigma


def test_bad_skew_bounds_are_one_clear_error():
    with pytest.raises(ValueError, match="skew_bound must be one of gram, spectral, got 'exact'"):
        SOCConv2d(4, 4, 3, skew_bound="exact")
    with pytest.raises(ValueError, match="skew_bound must be one of gram, spectral, got 'exact'"):
        SOCLinear(4, 4, skew_bound="exact")
    with pytest.raises(ValueError, match="paper_compatible=True normalises by the paper's estimate"):
        SOCConv2d(4, 4, 3, paper_compatible=True, skew_bound="spectral")
    assert isinstance(SOCLinear(4, 4, skew_bound="spectral"), SOCLinear)  # needs no normalisation


def test_the_audit_proves_each_layer_and_the_bound_is_the_layers_own():
    torch.manual_seed(0)
    m = SOCConv2d(4, 4, 3, skew_bound="spectral").eval()
    for n in (2, 5):
        upper, _, _, detail = layer_bound(m, (4, n, n))
        assert upper <= 1.0 + 1e-9
        assert detail["rho"] <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="pass the input shape"):
        m.plain(None, "auto")


def test_a_spectral_model_audits_at_one_and_exports_to_the_same_function():
    assert_model_audits_at_one_and_exports("convnet_xs_soc", skew_bound="spectral")
