"""Every layer id of the table proven 1-Lipschitz (or orthogonal) on small inputs.

The exact operator (impulse responses, or full Jacobians at random points for the non-linear
residual layers) is built and its largest singular value compared with 1 + 1e-4, before and
after optimizer steps that try to push the norm up, in train and eval mode, and after a
state_dict round trip. ``standard`` must FAIL the same check: it proves the check can fail.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lipzoo.layers import LAYERS, InputError, get_layer
from lipzoo.layers.activations import MaxMin
from lipzoo.layers.structural import FirstChannels, ZeroChannelConcatenation

from lipschitz import impulse_matrix, push_norm_up, singular_values

TOL_MAX = 1e-4
TOL_MIN = 1e-3
C, H, W = 4, 8, 8
FEATURES = 12


def make_conv(layer_id: str, k: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return get_layer(layer_id).conv(C, C, k, input_size=(H, W))


def make_linear(layer_id: str, seed: int = 0):
    torch.manual_seed(seed)
    return get_layer(layer_id).linear(FEATURES, FEATURES)


FORMS = [(lid, form) for lid in LAYERS for form in ("conv", "linear") if form == "conv" or LAYERS[lid].linear]


def build(layer_id: str, form: str, k: int = 3):
    if form == "conv":
        return make_conv(layer_id, k), (C, H, W)
    return make_linear(layer_id), (FEATURES,)


def check_bound(module, shape, spec, mode: str) -> torch.Tensor:
    module.train(mode == "train")
    sv = singular_values(module, shape, spec.residual)
    return sv


@pytest.mark.parametrize("layer_id,form", [f for f in FORMS if LAYERS[f[0]].lipschitz])
@pytest.mark.parametrize("k", [1, 3])
def test_operator_norm_at_most_one(layer_id, form, k):
    if form == "linear" and k == 3:
        pytest.skip("kernel size does not apply to dense layers")
    spec = LAYERS[layer_id]
    module, shape = build(layer_id, form, k)
    for mode in ("train", "eval"):
        sv = check_bound(module, shape, spec, mode)
        assert sv.max() <= 1 + TOL_MAX, f"{layer_id} {form} {mode}: sigma_max={sv.max():.6f}"
        if spec.orthogonal and mode == "eval":
            assert sv.min() >= 1 - TOL_MIN, f"{layer_id} {form}: sigma_min={sv.min():.6f} (should be orthogonal)"


@pytest.mark.parametrize("layer_id,form", [f for f in FORMS if LAYERS[f[0]].lipschitz])
@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
def test_bound_survives_adversarial_training(layer_id, form, train_mode):
    spec = LAYERS[layer_id]
    module, shape = build(layer_id, form)
    module.train(train_mode)
    push_norm_up(module, shape)
    for mode in ("train", "eval"):
        sv = check_bound(module, shape, spec, mode)
        assert sv.max() <= 1 + TOL_MAX, f"{layer_id} {form} after steps ({mode}): sigma_max={sv.max():.6f}"
    # state_dict round trip into a fresh layer
    fresh, _ = build(layer_id, form)
    fresh.load_state_dict(module.state_dict(), strict=True)
    fresh.eval()
    module.eval()
    x = torch.randn(3, *shape)
    torch.testing.assert_close(fresh(x), module(x), rtol=1e-5, atol=1e-5)
    sv = check_bound(fresh, shape, spec, "eval")
    assert sv.max() <= 1 + TOL_MAX, f"{layer_id} {form} after round trip: sigma_max={sv.max():.6f}"


@pytest.mark.parametrize("form", ["conv", "linear"])
def test_standard_fails_the_check(form):
    """The unconstrained baseline must be caught: proof that the check can fail."""
    module, shape = build("standard", form)
    push_norm_up(module, shape)
    sv = singular_values(module, shape, residual=False)
    assert sv.max() > 1 + TOL_MAX


@pytest.mark.parametrize("layer_id,form", FORMS)
def test_eval_cache_never_stale(layer_id, form):
    module, shape = build(layer_id, form)
    module.train()
    push_norm_up(module, shape, steps=2)
    module.eval()
    x = torch.randn(2, *shape)
    y1 = module(x)
    assert torch.equal(module(x), y1), "eval mode must be deterministic"
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.mul_(0.9).add_(0.01)
    y2 = module(x)
    reference = copy.deepcopy(module).eval()
    torch.testing.assert_close(y2, reference(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y1, y2), "a parameter change must change the output (stale cache?)"
    # train() drops the cache; back in eval the output is recomputed
    module.train()
    module.eval()
    torch.testing.assert_close(module(x), y2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer_id,form", FORMS)
def test_bad_input_is_rejected(layer_id, form):
    module, shape = build(layer_id, form)
    good = torch.randn(2, *shape)
    wrong_channels = torch.randn(2, shape[0] + 1, *shape[1:])
    with pytest.raises(InputError, match="expects"):
        module(wrong_channels)
    with pytest.raises(InputError, match="floating-point"):
        module(good.to(torch.int64))
    bad = good.clone()
    bad.view(-1)[3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        module(bad)


def test_maxmin_and_structural_are_exactly_one_lipschitz():
    act = MaxMin()
    x = torch.tensor([[-1.0, 0.0, 1.0, -2.0, 5.0]])
    assert act(x).tolist() == [[0.0, -1.0, 1.0, -2.0, 5.0]]
    x4 = torch.randn(1, 5, 3, 3)
    assert torch.allclose(act(x4).norm(), x4.norm())
    sv = torch.linalg.svdvals(
        torch.autograd.functional.jacobian(lambda v: act(v.view(1, 6, 2, 2)).flatten(), torch.randn(24)).double()
    )
    assert torch.allclose(sv, torch.ones_like(sv))
    zc = ZeroChannelConcatenation(6)
    assert zc(torch.ones(1, 2, 3, 3)).shape == (1, 6, 3, 3)
    m = impulse_matrix(zc, (2, 3, 3))
    assert torch.allclose(torch.linalg.svdvals(m), torch.ones(18, dtype=torch.float64))
    fc = FirstChannels(2)
    assert torch.linalg.svdvals(impulse_matrix(fc, (5,))).max() <= 1


def test_maxmin_gradient_follows_the_permutation_even_at_ties():
    # the backward must be the transpose of the forward's permutation: same gradient as
    # torch.maximum/minimum away from ties, and a whole (not halved) gradient at a tie
    x = torch.tensor([[3.0, 1.0, -2.0, 4.0, 0.5, 0.5, 7.0]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])
    (MaxMin()(x) * g).sum().backward()
    assert x.grad.tolist() == [[1.0, 2.0, 4.0, 3.0, 5.0, 6.0, 7.0]]
    assert torch.isclose(x.grad.norm(), g.norm())  # norm preserved, also at the tie
    x4 = torch.randn(3, 6, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(MaxMin(), (x4,))
    assert torch.autograd.gradgradcheck(MaxMin(), (x4,))  # the audit differentiates through the backward
    with torch.no_grad():  # the no-grad path gives the same values
        assert torch.equal(MaxMin()(x4), MaxMin()(x4.detach().requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fast_maxmin_matches_the_reference_routing_bit_for_bit(dtype, layout):
    # even channel counts take the fast Function (max/min written in place, gradients routed by
    # bit operations); it must give exactly the values and gradients of the reference Function,
    # ties included, and keep the input's memory layout (also for the input's gradient)
    from lipzoo.layers.activations import _MaxMinPairs

    gen = torch.Generator().manual_seed(0)
    base = torch.randint(-3, 4, (4, 8, 5, 5), generator=gen).to(dtype)  # many ties
    base = base + torch.randn(base.shape, generator=gen).to(dtype) * (torch.rand(base.shape, generator=gen) < 0.5)
    other = torch.contiguous_format if layout == torch.channels_last else torch.channels_last
    g = torch.randn(base.shape, generator=gen).to(dtype).contiguous(memory_format=other)  # the layout may differ
    x = base.clone().contiguous(memory_format=layout).requires_grad_()
    y = MaxMin()(x)
    assert y.is_contiguous(memory_format=layout)
    y.backward(g)
    ref_x = base.clone().requires_grad_()
    a, b = ref_x.unflatten(1, (4, 2)).unbind(2)
    ref = _MaxMinPairs.apply(a, b).flatten(1, 2)
    ref.backward(g.contiguous())
    assert torch.equal(y, ref)
    assert torch.equal(x.grad, ref_x.grad)
    assert x.grad.is_contiguous(memory_format=layout)
    with torch.no_grad():
        assert torch.equal(MaxMin()(x), ref)


def test_fast_maxmin_gradient_at_a_tie_is_whole():
    x = torch.tensor([[3.0, 1.0, -2.0, 4.0, 0.5, 0.5]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    (MaxMin()(x) * g).sum().backward()
    assert x.grad.tolist() == [[1.0, 2.0, 4.0, 3.0, 5.0, 6.0]]


def test_dense_complex_matmul_has_the_gradients_of_plain_matmul():
    from lipzoo.layers._linalg import matmul

    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, 4, dtype=torch.complex128, generator=g).requires_grad_()
    b = torch.randn(5, 4, 2, dtype=torch.complex128, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(matmul, (a, b.permute(0, 1, 2)))
    assert torch.autograd.gradcheck(lambda u: matmul(u, u.mH), (a,))  # conjugated operand
    wide = torch.randn(4, 2, dtype=torch.complex128, generator=g).requires_grad_()  # broadcast batch
    assert torch.autograd.gradcheck(matmul, (a, wide))
    assert torch.autograd.gradgradcheck(matmul, (a, b))
    assert torch.allclose(matmul(a, b), a @ b)


def test_unknown_layer_lists_close_matches():
    with pytest.raises(KeyError, match="Did you mean: sll"):
        get_layer("slll")
