"""CPL's ``step_bound="spectral"``: the sound step size for the input size the layer sees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lipzoo
from lipzoo.audit import layer_bound
from lipzoo.layers._fourier import conv_kernel_rfft
from lipzoo.layers._linalg import gram_bound
from lipzoo.layers._norms import circular_conv_norm, zero_padded_conv_norm
from lipzoo.layers.cpl import EPS, SPECTRAL_MARGIN, CPLConv2d, CPLLinear, spectral_bound
from lipzoo.registry import PRETRAINED
from lipzoo.zoo.evaluation import evaluate_run, load_run_model
from lipzoo.zoo.publish import publish_run
from lipzoo.zoo.training import Recipe, train

from lipschitz import assert_model_audits_at_one_and_exports, jacobian_matrix, push_norm_up

TOL_MAX = 1e-4


@pytest.mark.parametrize("c,k,n", [(4, 3, 5), (4, 3, 8), (8, 3, 2), (4, 5, 2), (6, 3, 1), (3, 5, 3), (3, 1, 4)])
def test_the_bound_holds_for_the_exact_zero_padded_norm_and_is_the_grids_circular_norm(c, k, n):
    """Above the exact norm of the dense zero-padded operator, equal (up to its margin) to the
    float64 circular norm of the cropped kernel on the (n + k' - 1)-grid, below the Schur test."""
    torch.manual_seed(c * 100 + k * 10 + n)
    kernel = torch.randn(c, c, k, k)
    got = float(spectral_bound(kernel, (n, n)))
    assert got >= zero_padded_conv_norm(kernel, n, n)
    kc = min(k, 2 * n - 1)
    o = (k - kc) // 2
    grid = n + kc - 1
    want = circular_conv_norm(kernel[..., o : o + kc, o : o + kc].double(), grid, grid)
    assert got == pytest.approx(want * (1 + SPECTRAL_MARGIN), rel=1e-6)
    assert got <= float(gram_bound(kernel.double())) * (1 + SPECTRAL_MARGIN)


def test_taps_that_cannot_reach_the_input_are_cropped():
    """On 1x1 maps only the centre tap acts: the bound is that matrix's norm, not the 3x3 kernel's."""
    torch.manual_seed(0)
    kernel = torch.randn(5, 5, 3, 3)
    centre = torch.linalg.matrix_norm(kernel[:, :, 1, 1].double(), ord=2).item()
    assert float(spectral_bound(kernel, (1, 1))) == pytest.approx(centre * (1 + SPECTRAL_MARGIN), rel=1e-6)
    assert float(spectral_bound(kernel, (1, 1))) < float(spectral_bound(kernel, (3, 3)))


def test_gradient_is_the_largest_singular_values():
    torch.manual_seed(3)
    for w, size in ((torch.randn(6, 6, 3, 3), (5, 5)), (torch.randn(7, 7), None), (torch.randn(8, 4, 1, 1), (3, 3))):
        w = w.double().requires_grad_()
        got, = torch.autograd.grad(spectral_bound(w, size), w)
        mats = conv_kernel_rfft(w, size[0] + w.shape[-1] - 1, size[1] + w.shape[-1] - 1) if w.ndim == 4 else w
        want, = torch.autograd.grad(torch.linalg.svdvals(mats).max() * (1 + SPECTRAL_MARGIN), w)
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)


def test_a_convolutions_spectral_bound_needs_the_input_size():
    with pytest.raises(ValueError, match="input size"):
        spectral_bound(torch.randn(2, 2, 3, 3))


@pytest.mark.parametrize("k,n", [(3, 8), (3, 2), (5, 3), (3, 1), (1, 4)])
@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
def test_operator_norm_at_most_one_after_steps_that_try_to_break_it(k, n, train_mode):
    """The exact Jacobian norm of the layer stays <= 1 in both modes at several input sizes,
    after Adam steps that maximise ||f(x) - f(y)|| / ||x - y||."""
    torch.manual_seed(k * 10 + n)
    c = 3
    m = CPLConv2d(c, c, k, step_bound="spectral").train(train_mode)
    push_norm_up(m, (c, n, n), steps=25, lr=0.1)
    g = torch.Generator().manual_seed(1)
    for mode in (True, False):
        m.train(mode)
        for _ in range(3):
            x = torch.randn(1, c, n, n, generator=g)
            top = torch.linalg.svdvals(jacobian_matrix(m, x)).max().item()
            assert top <= 1 + TOL_MAX, f"k={k} n={n} train={mode}: sigma_max={top:.6f}"


def test_the_step_is_larger_than_the_schur_tests_and_the_audit_proves_one():
    torch.manual_seed(0)
    tight = CPLConv2d(6, 6, 3, step_bound="spectral")
    loose = CPLConv2d(6, 6, 3)
    loose.load_state_dict(tight.state_dict())
    assert list(tight.state_dict()) == ["kernel", "bias"]  # no extra state: the step is a function of K
    for n in (2, 4, 8):
        r_tight = float(tight.eval()._step_size((6, n, n)))
        r_loose = float(loose.eval()._step_size((6, n, n)))
        assert r_tight > r_loose
        assert r_tight == pytest.approx(2 / (float(spectral_bound(tight.kernel, (n, n))) ** 2 + EPS), rel=1e-6)
        upper, _, _, detail = layer_bound(tight, (6, n, n))
        assert upper == 1.0 and detail["G_norm_sq"] <= 2.0
    # the step depends on the input size: the forward uses the size it is given
    assert float(tight._step_size((6, 2, 2))) != float(tight._step_size((6, 8, 8)))
    x = torch.randn(2, 6, 4, 4)
    with torch.no_grad():
        assert torch.equal(tight.train()(x), tight.eval()(x))  # the same step in both modes


def test_linear_and_1x1_forms_use_the_matrix_norm():
    torch.manual_seed(0)
    lin = CPLLinear(9, 9, step_bound="spectral")
    conv = CPLConv2d(9, 9, 1, step_bound="spectral")
    conv.load_state_dict({"kernel": lin.weight.detach()[:, :, None, None], "bias": lin.bias.detach()})
    assert not conv.size_dependent
    x = torch.randn(4, 9)
    torch.testing.assert_close(lin(x), conv(x[:, :, None, None]).flatten(1), rtol=1e-5, atol=1e-6)
    sigma = torch.linalg.matrix_norm(lin.weight.detach().double(), ord=2).item()
    assert lin.eval().effective_weight().rescaling.item() == pytest.approx(
        2 / ((sigma * (1 + SPECTRAL_MARGIN)) ** 2 + EPS), rel=1e-6)


def test_bad_step_bounds_are_one_clear_error():
    with pytest.raises(ValueError, match="step_bound must be one of gram, spectral, got 'exact'"):
        CPLConv2d(4, 4, 3, step_bound="exact")
    with pytest.raises(ValueError, match="paper_compatible=True takes the paper's"):
        CPLLinear(4, 4, paper_compatible=True, step_bound="spectral")


def test_a_spectral_model_audits_at_one_and_exports_to_the_same_function():
    assert_model_audits_at_one_and_exports("convnet_xs_cpl", step_bound="spectral")


FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_a_recipes_layer_options_reach_the_published_model(tmp_path, monkeypatch):
    """train -> evaluate -> publish of a recipe with step_bound: spectral: the card's config keeps
    the option and the pretrained model is built with it (the same function as the run's)."""
    r = Recipe(name="convnet_xs_cpl.fashion_mnist", architecture="convnet_xs_cpl", dataset="fashion_mnist",
               epochs=1, lr=0.5, weight_decay=0.0, batch_size=64, crop_padding=0, hflip=False, schedule_step="batch",
               val_size=100, train_limit=128, seed=1, layer_options={"step_bound": "spectral"})
    run = tmp_path / "run"
    train(r, run, progress=False)
    evaluate_run(run, limit=50, speed=False, progress=False)
    entry = publish_run(run, tmp_path / "cards", force=True)
    folder = entry.folder
    assert entry.layer_kwargs == {"step_bound": "spectral"}
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    model = lipzoo.create_model(entry.name, pretrained=True, weights=folder).eval()
    assert "step_bound=spectral" in repr(model)
    trained, _ = load_run_model(run)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.eval()(x))
