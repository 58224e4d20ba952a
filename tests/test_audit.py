"""The audit's upper bounds are exact / guaranteed, catch broken layers, and every XS model passes."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import lipzoo
from lipzoo.cli import main as cli_main
from lipschitz import impulse_matrix, singular_values
from lipzoo.audit import (
    _adaptive_pool_factor, audit, circular_conv_norm, layer_bound, skew_taylor_bound, zero_padded_conv_bound,
)
from lipzoo.layers import LAYERS
from lipzoo.layers._linalg import gram_bound
from lipzoo.layers.cpl import CPLConv2d, CPLWeight
from lipzoo.layers.soc import SOCConv2d, taylor_tail_bound


def _operator_norm(fn, in_shape) -> float:
    """Exact l2 norm (float64) of a linear map on (C, H, W) tensors from its impulse responses."""
    n = math.prod(in_shape)
    cols = fn(torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)).reshape(n, -1)
    return float(torch.linalg.svdvals(cols.T).max())


@pytest.mark.parametrize("c_in,c_out,k,n", [(2, 3, 3, 5), (3, 2, 3, 4), (2, 2, 5, 3), (2, 3, 1, 4)])
def test_circular_fft_norm_equals_impulse_svd(c_in, c_out, k, n):
    w = torch.randn(c_out, c_in, k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k * n))
    p = k // 2
    exact = _operator_norm(lambda x: F.conv2d(F.pad(x, (p, p, p, p), mode="circular") if p else x, w), (c_in, n, n))
    assert circular_conv_norm(w, n, n) == pytest.approx(exact, rel=1e-10)
    assert float(gram_bound(w)) >= exact * (1 - 1e-12)


@pytest.mark.parametrize("k,n", [(3, 4), (5, 3), (3, 1)])
def test_zero_padded_conv_is_bounded_by_larger_circular_grid(k, n):
    """A zero-padded 'same' conv is a compression of the circular one on an (n + k - 1) grid."""
    for seed in range(5):
        w = torch.randn(3, 2, k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        zero = _operator_norm(lambda x: F.conv2d(x, w, padding=k // 2), (2, n, n))
        circ = circular_conv_norm(w, n + k - 1, n + k - 1)
        assert zero <= circ * (1 + 1e-12)
        assert zero_padded_conv_bound(w, n, n) >= zero * (1 - 1e-12)


@pytest.mark.parametrize("layer", ["cayley", "lot", "bcop", "aol", "bro", "aoc"])
def test_linear_layer_bound_vs_impulse_svd(layer):
    torch.manual_seed(0)
    m = LAYERS[layer].conv(3, 3, 3, input_size=(6, 6)).eval()
    true = float(torch.linalg.svdvals(impulse_matrix(m, (3, 6, 6))).max())
    upper, *_ = layer_bound(m, (3, 6, 6))
    assert upper >= true - 1e-5
    if layer != "lot":  # circular layers: the bound is the exact norm
        assert upper == pytest.approx(true, abs=1e-5)


@pytest.mark.parametrize("layer", ["cpl", "sll", "sandwich"])
def test_residual_layer_bound_dominates_jacobians(layer):
    torch.manual_seed(0)
    m = LAYERS[layer].conv(3, 3, 3, input_size=(5, 5)).eval()
    upper, _, _, detail = layer_bound(m, (3, 5, 5))
    assert upper <= 1 + 1e-5
    assert float(singular_values(m, (3, 5, 5), residual=True, points=2).max()) <= upper + 1e-5


def test_skew_taylor_bound():
    for terms in (2, 5, 12):
        for rho in (0.3, 1.0, 1.5):
            lam = torch.linspace(-rho, rho, 4001, dtype=torch.float64)
            series = sum((1j * lam) ** k / math.factorial(k) for k in range(terms + 1))
            dense = float(series.abs().max())
            bound = skew_taylor_bound(terms, rho)
            assert dense - 1e-12 <= bound <= dense + 1e-6  # float64 round-off of the dense evaluation
            if rho <= 1:
                assert bound <= 1 + taylor_tail_bound(terms, rho)


def test_adaptive_pool_overlap():
    assert _adaptive_pool_factor((4, 4), 1) == 1.0
    assert _adaptive_pool_factor((4, 4), (2, 2)) == 1.0
    assert _adaptive_pool_factor((5, 5), (3, 3)) > 1.0  # overlapping windows


def test_catches_soc_with_too_few_terms():
    torch.manual_seed(0)
    soc = SOCConv2d(4, 4, 3, paper_compatible=True, eval_terms=2).eval()
    with torch.no_grad():
        soc.correction.fill_(1.5)  # a large ||L_n||, where two Taylor terms are far from orthogonal
    true = float(torch.linalg.svdvals(impulse_matrix(soc, (4, 6, 6))).max())
    upper, method, _, _ = layer_bound(soc, (4, 6, 6))
    assert "skew" in method and upper >= true - 1e-5 and true > 1 + 1e-3
    res = audit(nn.Sequential(soc), input_shape=(4, 6, 6), attack_steps=5, attack_batch=2, power_iters=5)
    assert not res.ok and not res.upper_ok and res.consistent


def test_catches_scaled_up_layer():
    class BrokenCPL(CPLConv2d):  # the step size scaled up 10x: no longer 1-Lipschitz
        def compute_weight(self, size=None):
            return CPLWeight(10 * super().compute_weight(size).rescaling)

    torch.manual_seed(0)
    broken = BrokenCPL(4, 4, 3)
    with torch.no_grad():
        broken.bias.fill_(10.0)  # every ReLU active: the Jacobian is I - 10 r K^T K
    res = audit(nn.Sequential(broken), input_shape=(4, 6, 6), attack_steps=20, attack_batch=2,
                power_iters=10)
    assert res.upper > 1 + 1e-4 and not res.ok and res.consistent
    assert res.lower > 1.0  # the attack confirms the bug is real


def test_catches_standard_conv_model():
    res = audit(lipzoo.create_model("convnet_xs_standard"), lower=False)
    assert res.upper > 1 + 1e-4 and not res.ok


@pytest.mark.parametrize("layer", [lid for lid, spec in LAYERS.items() if spec.lipschitz])
def test_every_xs_lipschitz_model_passes(layer):
    torch.manual_seed(0)
    res = audit(lipzoo.create_model(f"convnet_xs_{layer}"), attack_steps=1, attack_batch=1, power_iters=1)
    assert res.ok, res.table()
    assert 0 < res.lower <= res.upper <= 1 + 1e-4


def test_cli_audit_exit_status_and_run_dir(tmp_path):
    from safetensors.torch import save_file

    from lipzoo.zoo.training import Recipe, build_model

    runner = CliRunner()
    bad = runner.invoke(cli_main, ["audit", "convnet_xs_standard", "--no-lower"])
    assert bad.exit_code == 1 and "FAIL" in bad.output
    recipe = Recipe(name="t", architecture="convnet_xs_aol", dataset="fashion_mnist", epochs=1, lr=0.1,
                    weight_decay=0.0)
    recipe.dump(tmp_path / "recipe.yaml")
    save_file(build_model(recipe).state_dict(), str(tmp_path / "model.safetensors"))
    good = runner.invoke(cli_main, ["audit", str(tmp_path), "--no-lower", "--json"])
    assert good.exit_code == 0, good.output
    data = json.loads(good.output)
    assert data["ok"] and data["input_shape"] == [1, 32, 32] and len(data["layers"]) > 10


# --- exact dense norm of zero-padded convolutions (small maps) ----------------------------------
@pytest.mark.parametrize("c_in,c_out,k,n", [(2, 3, 3, 4), (3, 2, 3, 2), (2, 2, 5, 3), (2, 3, 1, 4), (1, 2, 3, 1)])
def test_zero_padded_dense_norm_is_exact_and_tighter(c_in, c_out, k, n):
    from lipzoo.audit import DENSE_MARGIN, zero_padded_conv_norm

    w = torch.randn(c_out, c_in, k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(c_in + 7 * n))
    exact = _operator_norm(lambda x: F.conv2d(x, w, padding=k // 2), (c_in, n, n))
    dense = zero_padded_conv_norm(w, n, n)
    assert dense == pytest.approx(exact, rel=1e-12)
    circ = circular_conv_norm(w, n + k - 1, n + k - 1)
    assert dense <= circ * (1 + 1e-12)
    bound = zero_padded_conv_bound(w, n, n)
    assert exact <= bound <= min(dense * (1 + DENSE_MARGIN), circ, float(gram_bound(w)))


def test_zero_padded_dense_norm_threshold_and_bad_input(monkeypatch):
    audit_mod = importlib.import_module("lipzoo.audit")
    norms_mod = importlib.import_module("lipzoo.layers._norms")  # where the threshold is read

    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = audit_mod.zero_padded_conv_norm(w, 4, 4)
    circ = circular_conv_norm(w, 6, 6)
    assert exact < circ * (1 - 1e-3)  # a 4x4 map: the circular bound is visibly loose
    monkeypatch.setattr(norms_mod, "DENSE_EXACT_MAX", 2 * 4 * 4 - 1)  # just below this operator's size
    assert zero_padded_conv_bound(w, 4, 4) == min(circ, float(gram_bound(w)))
    monkeypatch.setattr(norms_mod, "DENSE_EXACT_MAX", 2 * 4 * 4)
    assert zero_padded_conv_bound(w, 4, 4) == pytest.approx(exact, rel=1e-8)
    with pytest.raises(ValueError, match="odd kernel sizes"):
        audit_mod.zero_padded_conv_norm(torch.randn(2, 2, 2, 2), 4, 4)
    with pytest.raises(ValueError, match="kernel"):
        audit_mod.zero_padded_conv_norm(torch.randn(2, 3, 3), 4, 4)


def test_paper_cpl_at_4x4_audits_at_one(monkeypatch):
    """The paper's power-iteration step uses the zero-padded norm: exact at 4x4, the old bound is loose."""
    norms_mod = importlib.import_module("lipzoo.layers._norms")  # where the threshold is read

    torch.manual_seed(0)
    m = CPLConv2d(4, 4, 3, input_size=4, paper_compatible=True, val_niter=100).eval()
    upper, _, _, detail = layer_bound(m, (4, 4, 4))
    assert detail["G_norm_method"] == "exact dense norm"
    assert 1.0 <= upper <= 1 + 1e-3
    true = float(singular_values(m, (4, 4, 4), residual=True, points=2).max())
    assert true <= upper + 1e-5
    monkeypatch.setattr(norms_mod, "DENSE_EXACT_MAX", 0)  # the circular (n + k - 1) bound only
    old, _, _, _ = layer_bound(m, (4, 4, 4))
    assert old > 1 + 1e-2


def test_dense_norm_is_cached_within_one_audit(monkeypatch):
    audit_mod = importlib.import_module("lipzoo.audit")

    calls = []
    real = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    layer = CPLConv2d(2, 2, 3, input_size=4, paper_compatible=True)  # a step the cheap bounds cannot certify
    res = audit(nn.Sequential(layer, layer), input_shape=(2, 4, 4), lower=False)
    assert len(calls) == 1 and res.upper <= 1 + 1e-3
    assert len(res.layers) == 2  # a reused module counts twice in the product
    assert res.layers[0].detail["G_norm_method"] == res.layers[1].detail["G_norm_method"] == "exact dense norm"
    assert audit_mod._NORM_CACHE.get() is None  # the cache lives only for the audit call
