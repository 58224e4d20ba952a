"""CPL-specific tests: parameters, the sound default vs the paper's power iteration (golden logits: test_convert.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import lipzoo
from lipzoo.layers import InputError
from lipzoo.layers._linalg import gram_bound
from lipzoo.layers.cpl import EPS, CPLConv2d, CPLLinear


def trainable(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def conv_matrix(layer: CPLConv2d, c: int, n: int) -> torch.Tensor:
    """The (c n n) x (c n n) matrix of the zero-padded 'same' convolution K."""
    eye = torch.eye(c * n * n).view(-1, c, n, n)
    with torch.no_grad():
        return layer._op(eye).reshape(c * n * n, -1).T.double()


def rescaling(layer, size=None) -> torch.Tensor:
    with torch.no_grad():
        return layer.effective_weight(size).rescaling


@pytest.mark.parametrize("c,k", [(4, 3), (16, 1), (8, 5)])
def test_parameters_and_buffers(c, k):
    m = CPLConv2d(c, c, k, input_size=8)
    assert trainable(m) == c * c * k * k + c
    assert dict(m.named_parameters()).keys() == {"kernel", "bias"}
    assert list(m.state_dict()) == ["kernel", "bias"]  # the sound default keeps no power-iteration state
    p = CPLConv2d(c, c, k, input_size=(8, 6), paper_compatible=True)
    assert trainable(p) == c * c * k * k + c
    assert p.u.shape == (1, c, 8, 6) and not p.u.requires_grad
    assert set(p.state_dict()) == {"kernel", "bias", "u"}
    lin = CPLLinear(12, 12)
    assert trainable(lin) == 12 * 12 + 12
    assert CPLLinear(12, 12, paper_compatible=True).u.shape == (1, 12)
    assert abs(m.bias).max() <= 1 / (c * k * k) ** 0.5


def test_bad_constructions():
    with pytest.raises(ValueError, match="in == out"):
        CPLConv2d(4, 8, 3)
    with pytest.raises(ValueError, match="in == out"):
        CPLLinear(4, 8)
    with pytest.raises(ValueError, match="odd"):
        CPLConv2d(4, 4, 2)
    with pytest.raises(ValueError, match="input_size"):
        CPLConv2d(4, 4, 3, paper_compatible=True)
    with pytest.raises(ValueError, match="val_niter"):
        CPLConv2d(4, 4, 3, input_size=8, paper_compatible=True, val_niter=0)
    with pytest.raises(TypeError):
        CPLConv2d(4, 4, 3, padding_mode="circular")  # options are explicit: typos fail


def test_forward_is_the_formula_with_the_exact_adjoint():
    """y = x - r M^T relu(M x + b) with M the explicit zero-padded conv matrix (checks conv_transpose)."""
    torch.manual_seed(0)
    c, n = 3, 5
    m = CPLConv2d(c, c, 3)
    M = conv_matrix(m, c, n)
    x = torch.randn(2, c, n, n)
    r = rescaling(m).double()
    b = m.bias.detach().double().repeat_interleave(n * n)
    xf = x.flatten(1).double()
    expected = xf - r * torch.relu(xf @ M.T + b) @ M
    torch.testing.assert_close(m(x).detach().flatten(1).double(), expected, rtol=1e-5, atol=1e-5)


def test_sound_rescaling_is_a_true_bound_and_paper_estimate_is_close():
    torch.manual_seed(1)
    c, n = 4, 8
    m = CPLConv2d(c, c, 3, input_size=n, paper_compatible=True)
    sigma = torch.linalg.svdvals(conv_matrix(m, c, n))[0]
    paper = rescaling(m.eval(), (n, n))
    default = CPLConv2d(c, c, 3)
    default.load_state_dict({"kernel": m.kernel, "bias": m.bias})
    sound = rescaling(default)
    torch.testing.assert_close(sound, 2 / (gram_bound(m.kernel.detach()) ** 2 + EPS))
    assert sound <= 2 / sigma**2  # provably safe step
    # 100 eval power iterations find ||K|| to high accuracy: r = 2 / (sigma^2 + 1e-6)
    torch.testing.assert_close(paper.double(), 2 / (sigma**2 + EPS), rtol=1e-3, atol=0)
    assert paper > sound  # the modes differ: the guaranteed bound is looser than the estimate


def test_paper_training_step_can_break_the_bound():
    """One power iteration from a random u underestimates ||K||: the paper's r is too large."""
    torch.manual_seed(0)
    c, n = 4, 8
    m = CPLConv2d(c, c, 3, input_size=n, paper_compatible=True).train()
    sigma = torch.linalg.svdvals(conv_matrix(m, c, n))[0]
    assert rescaling(m, (n, n)) > 2 / sigma**2


def test_paper_power_iteration_state():
    torch.manual_seed(0)
    c, n = 4, 6
    m = CPLConv2d(c, c, 3, input_size=n, paper_compatible=True)
    u0 = m.u.clone()
    x = torch.randn(2, c, n, n)
    # training: exactly one iteration (norm eps 1e-6), u written back, r differentiable in K
    m.train()
    y1 = m(x)
    with torch.no_grad():
        v = m._op(u0)
        v = v / (v.norm() + 1e-6)
        u1 = m._op_t(v)
        u1 = u1 / (u1.norm() + 1e-6)
    torch.testing.assert_close(m.u, u1)
    r = m.effective_weight((n, n)).rescaling
    assert r.requires_grad
    # updating u in place must not break autograd of earlier forwards
    y2 = m(x)
    (y1.sum() + y2.sum()).backward()
    assert m.kernel.grad is not None and torch.isfinite(m.kernel.grad).all()
    # eval: u is not updated, r is cached until a parameter or u changes
    m.eval()
    u_before = m.u.clone()
    with torch.no_grad():
        ye = m(x)
        assert torch.equal(m(x), ye)
    assert torch.equal(m.u, u_before)
    calls = []
    orig = m.compute_weight
    m.compute_weight = lambda size=None: calls.append(size) or orig(size)
    with torch.no_grad():
        m(x)
        m(x)
    assert calls == []  # served from the cache
    # a training forward moves u, so the next eval recomputes (from the new u)
    m.train()
    m(x)
    m.eval()
    with torch.no_grad():
        m(x)
    assert len(calls) == 2  # one train compute, one eval recompute


def test_paper_mode_rejects_other_input_sizes_but_default_does_not():
    p = CPLConv2d(4, 4, 3, input_size=8, paper_compatible=True)
    with pytest.raises(InputError, match="8, 8"):
        p(torch.randn(1, 4, 16, 16))
    model = lipzoo.create_model("convnet_xs_cpl", paper_compatible=True)
    with pytest.raises(InputError, match="sound"):
        model(torch.randn(1, 3, 64, 64))
    assert lipzoo.create_model("convnet_xs_cpl")(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("paper", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_linear_equals_1x1_conv_on_1x1_maps(paper, mode):
    torch.manual_seed(0)
    n = 10
    conv = CPLConv2d(n, n, 1, input_size=1, paper_compatible=paper)
    lin = CPLLinear(n, n, paper_compatible=paper)
    state = {"weight": conv.kernel.detach()[:, :, 0, 0], "bias": conv.bias.detach()}
    if paper:
        state["u"] = conv.u.view(1, n)
    lin.load_state_dict(state)
    conv.train(mode == "train")
    lin.train(mode == "train")
    x = torch.randn(5, n)
    torch.testing.assert_close(lin(x), conv(x[:, :, None, None]).flatten(1), rtol=1e-5, atol=1e-6)
    if paper:
        torch.testing.assert_close(lin.u, conv.u.view(1, n))


def test_paper_state_dict_round_trip():
    torch.manual_seed(0)
    m = CPLConv2d(4, 4, 3, input_size=6, paper_compatible=True)
    m.train()(torch.randn(2, 4, 6, 6))
    fresh = CPLConv2d(4, 4, 3, input_size=6, paper_compatible=True)
    fresh.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), m.eval()(x))
        torch.testing.assert_close(copy.deepcopy(m)(x), m(x))


def test_model_parameter_counts():
    assert trainable(lipzoo.create_model("convnet_xs_cpl")) == 1_572_288
    assert trainable(lipzoo.create_model("convnet_xs_cpl", paper_compatible=True)) == 1_572_288


def test_sound_step_size_value_is_the_full_schur_test_and_its_gradient_the_maxs():
    """The step size's bound is computed without autograd and differentiated through its maximal
    row only: the value equals the full Schur test bit for bit, the gradient the full autograd's."""
    from lipzoo.layers._linalg import gram_row_sums
    from lipzoo.layers.cpl import cpl_sound_rescaling

    torch.manual_seed(5)
    for layer in (CPLConv2d(6, 6, 3), CPLLinear(7, 7), CPLConv2d(64, 64, 3)):  # the last takes the DFT path
        w = (layer.kernel if hasattr(layer, "kernel") else layer.weight).detach().double().requires_grad_()
        full = 2.0 / (gram_row_sums(w, "in").max().sqrt() ** 2 + EPS)
        assert cpl_sound_rescaling(w).item() == full.item()
        got, = torch.autograd.grad(cpl_sound_rescaling(w), w)
        want, = torch.autograd.grad(full, w)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
        assert got.abs().sum() > 0
