"""SOC's ``max_angle``: layers that may rotate further than 1 rad, still 1-Lipschitz."""

from __future__ import annotations

import math

import pytest
import torch

from lipzoo.audit import layer_bound
from lipzoo.layers._norms import skew_taylor_bound, taylor_tail_bound, zero_padded_conv_norm
from lipzoo.layers.soc import SOCConv2d, SOCLinear

from lipschitz import assert_model_audits_at_one_and_exports, impulse_matrix, push_norm_up

TOL_MAX = 1e-4
TOL_MIN = 1e-3  # eval mode: 12 Taylor terms at 2 rad are within ~1e-5 of exp


@pytest.mark.parametrize("bound", ["gram", "spectral"])
@pytest.mark.parametrize("angle", [0.5, 2.0, math.pi])
def test_the_normalised_filter_is_the_default_times_the_angle(bound, angle):
    torch.manual_seed(0)
    base = SOCConv2d(4, 4, 3, skew_bound=bound).eval()
    wide = SOCConv2d(4, 4, 3, skew_bound=bound, max_angle=angle).eval()
    wide.load_state_dict(base.state_dict())
    size = (5, 5) if bound == "spectral" else None
    torch.testing.assert_close(wide.effective_weight(size), angle * base.effective_weight(size))
    kernel = wide.effective_weight(size)
    assert torch.equal(kernel, -kernel.transpose(0, 1).flip(2, 3)), "the scaled kernel must stay exactly skew"
    assert zero_padded_conv_norm(kernel.double(), 5, 5) <= angle * (1 + 1e-6)


@pytest.mark.parametrize("k,n,stride,angle,terms", [(3, 6, 1, 2.0, 6), (3, 4, 2, 2.0, 5), (1, 3, 1, math.pi, 7),
                                                    (3, 5, 1, 1.5, 3)])
@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
def test_operator_norm_at_most_one_after_steps_that_try_to_break_it(k, n, stride, angle, terms, train_mode):
    """The exact operator norm (impulse responses) stays <= 1 in both modes, with few training terms
    too, after Adam steps that maximise ||f(x) - f(y)|| / ||x - y||; eval mode stays orthogonal."""
    torch.manual_seed(k * 10 + n + stride)
    c = 2
    m = SOCConv2d(c, c * stride * stride, k, stride=stride, skew_bound="spectral", max_angle=angle,
                  train_terms=terms).train(train_mode)
    push_norm_up(m, (c, n, n), steps=25, lr=0.1)
    for mode in (True, False):
        m.train(mode)
        sv = torch.linalg.svdvals(impulse_matrix(m, (c, n, n)))
        assert sv.max().item() <= 1 + TOL_MAX, f"k={k} n={n} angle={angle} train={mode}: {sv.max().item():.6f}"
        if not mode:
            assert sv.min().item() >= 1 - TOL_MIN, f"k={k} n={n} angle={angle}: sigma_min={sv.min().item():.6f}"


def test_a_wide_layer_rotates_further_than_one_radian():
    """With a 1x1 kernel the layer is the matrix ``exp(L_n)``: its largest eigen-angle is the cap."""
    torch.manual_seed(0)
    for angle in (1.0, 2.5):
        m = SOCConv2d(6, 6, 1, skew_bound="spectral", max_angle=angle).eval()
        x = torch.eye(6).view(6, 6, 1, 1)
        with torch.no_grad():
            matrix = (m(x) - m.bias.view(1, -1, 1, 1))[:, :, 0, 0].T.double()
        angles = torch.linalg.eigvals(matrix).angle().abs()
        assert angles.max().item() == pytest.approx(angle, rel=2e-3)


def test_the_scale_is_the_guaranteed_maximum_of_the_truncated_series():
    m = SOCConv2d(2, 2, 3, max_angle=2.0)
    for terms in (3, 5, 6, 12):
        assert m.taylor_scale(terms) == pytest.approx(1 / skew_taylor_bound(terms, 2.0))
        lam = torch.linspace(0, 2, 2001, dtype=torch.float64)
        series = sum((1j * lam) ** i / math.factorial(i) for i in range(terms + 1))
        assert series.abs().max().item() * m.taylor_scale(terms) <= 1 + 1e-12
    assert SOCConv2d(2, 2, 3).taylor_scale(5) == 1 / (1 + taylor_tail_bound(5))  # the default is unchanged


def test_the_tail_bound_holds_beyond_radius_one():
    for terms, r in [(5, 2.0), (6, 2.0), (12, math.pi), (3, 4.0)]:
        exact = sum(r**i / math.factorial(i) for i in range(terms + 1, terms + 60))
        assert exact <= taylor_tail_bound(terms, r) <= exact * (1 + r / (terms + 2 - r))
    with pytest.raises(ValueError, match=r"radius must be in \[0, 7\) for 5 terms, got 7.5"):
        taylor_tail_bound(5, 7.5)


def test_the_audit_proves_a_wide_layer_and_its_bound_is_the_angle():
    torch.manual_seed(0)
    m = SOCConv2d(4, 4, 3, skew_bound="spectral", max_angle=2.0, train_terms=6).eval()
    for n in (2, 5):
        upper, _, _, detail = layer_bound(m, (4, n, n))
        assert upper <= 1.0 + 1e-9
        assert 1.0 < detail["rho"] <= 2.0 * (1 + 1e-6)


@pytest.mark.parametrize("bad", [0, -1.0, 3.5, float("nan"), float("inf"), "wide"])
def test_bad_angles_are_one_clear_error(bad):
    for cls, args in ((SOCConv2d, (4, 4, 3)), (SOCLinear, (4, 4))):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: max_angle must be a number of radians in \(0, pi\]"):
            cls(*args, max_angle=bad)
    with pytest.raises(ValueError, match="paper_compatible=True scales by the paper's correction"):
        SOCConv2d(4, 4, 3, paper_compatible=True, max_angle=2.0)


def test_a_wide_spectral_model_audits_at_one_and_exports_to_the_same_function():
    assert_model_audits_at_one_and_exports("convnet_xs_soc", skew_bound="spectral", max_angle=2.5)
