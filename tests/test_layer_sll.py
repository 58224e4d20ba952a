"""SLL-specific tests: parameters, the rescaling formula, the SDP condition, options (golden logits: test_convert.py)."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import lipzoo
from lipzoo.layers._linalg import autocorrelation
from lipzoo.layers.sll import SLLConv2d, SLLLinear, sll_rescaling

from lipschitz import impulse_matrix, jacobian_matrix, n_trainable, push_norm_up



def perturbed_conv(c: int = 4, k: int = 3, seed: int = 0, **kw) -> SLLConv2d:
    torch.manual_seed(seed)
    m = SLLConv2d(c, c, k, **kw)
    with torch.no_grad():  # move away from the initial values, incl. small/negative q
        m.kernel.add_(0.3 * torch.randn_like(m.kernel))
        m.bias.add_(0.5 * torch.randn_like(m.bias))
        m.q.copy_(torch.randn_like(m.q) * 2)
    return m


def conv_matrix(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Dense matrix of the zero-padded 'same' convolution on an h x w input (float64)."""
    k = kernel.double()
    conv = torch.nn.Conv2d(k.shape[1], k.shape[0], k.shape[-1], padding=k.shape[-1] // 2, bias=False).double()
    conv.weight.data.copy_(k)
    return impulse_matrix(conv, (k.shape[1], h, w), dtype=torch.float64)


# --- parameters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("c,k", [(4, 3), (16, 1), (8, 3)])
def test_trainable_parameters_per_layer(c, k):
    m = SLLConv2d(c, c, k)
    assert {n: tuple(p.shape) for n, p in m.named_parameters()} == {
        "kernel": (c, c, k, k), "bias": (c,), "q": (c,)}
    assert n_trainable(m) == c * c * k * k + 2 * c
    assert not list(m.buffers())
    lin = SLLLinear(c, c)
    assert {n: tuple(p.shape) for n, p in lin.named_parameters()} == {"weights": (c, c), "bias": (c,), "q": (c,)}
    assert n_trainable(lin) == c * c + 2 * c


def test_model_trainable_counts_match_the_paper():
    assert n_trainable(lipzoo.create_model("convnet_xs_sll")) == 1_575_296
    assert n_trainable(lipzoo.create_model("convnet_s_sll")) == 6_289_152


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    m = SLLConv2d(64, 64, 3)
    fan_in = 64 * 9
    assert m.bias.abs().max() <= 1 / fan_in**0.5
    assert abs(m.kernel.std().item() - (2 / (2 * fan_in)) ** 0.5) < 0.003  # xavier normal
    assert m.q.min() < 0 < m.q.max()  # randn, not rand
    # the paper draws q first, then the kernel, then the bias
    torch.manual_seed(0)
    q = torch.randn(64)
    kernel = torch.empty(64, 64, 3, 3)
    torch.nn.init.xavier_normal_(kernel)
    assert torch.equal(q, m.q) and torch.equal(kernel, m.kernel)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="as many channels as its input"):
        SLLConv2d(4, 8, 3)
    with pytest.raises(ValueError, match="as many channels as its input"):
        SLLLinear(4, 8)
    with pytest.raises(ValueError, match="odd"):
        SLLConv2d(4, 4, 2)
    with pytest.raises(ValueError, match="q_param"):
        SLLConv2d(4, 4, 3, q_param="softplus")
    with pytest.raises(ValueError, match="paper_compatible"):
        SLLLinear(4, 4, paper_compatible=True, q_param="exp")


# --- the maths -----------------------------------------------------------------------------------

def test_rescaling_matches_explicit_formula():
    m = perturbed_conv(5, 3)
    kkt = autocorrelation(m.kernel.detach().double(), over="out")  # (out, out, 5, 5)
    q = m.q.detach().double().abs() + 1e-6
    s = torch.einsum("ijab,j->i", kkt.abs(), q) / q
    torch.testing.assert_close(m.compute_weight().double(), 2 / (s + 1e-6), rtol=1e-5, atol=0)
    # the autocorrelation over output channels is K K^T: check one tap by hand
    k = m.kernel.detach().double()
    tap = (k[1, :, :-1, :] * k[3, :, 1:, :]).sum()  # row offset -1: sum_p K[1, :, p - 1] K[3, :, p]
    torch.testing.assert_close(kkt[1, 3, 1, 2], tap)


@pytest.mark.parametrize("q_param", ["abs", "exp"])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 5)])
def test_sdp_condition_holds_for_zero_padding_at_every_size(q_param, size):
    """diag(2/t) - K_z K_z^T is PSD for the zero-padded operator, even on tiny inputs."""
    m = perturbed_conv(3, 3, seed=1, q_param=q_param)
    kz = conv_matrix(m.kernel.detach(), *size)  # (out*H*W, in*H*W)
    t = m.compute_weight().detach().double().repeat_interleave(size[0] * size[1])
    gap = torch.diag(2 / t) - kz @ kz.T
    assert torch.linalg.eigvalsh(gap).min() >= -1e-9


def test_forward_equals_dense_formula():
    m = perturbed_conv(3, 3, seed=2).eval()
    h, w = 5, 4
    kz = conv_matrix(m.kernel.detach(), h, w)
    x = torch.randn(2, 3, h, w)
    t = m.compute_weight().detach().double().repeat_interleave(h * w)
    b = m.bias.detach().double().repeat_interleave(h * w)
    xf = x.double().flatten(1)
    ref = xf - F.relu(xf @ kz.T + b) * t @ kz
    torch.testing.assert_close(m(x).double().flatten(1), ref, rtol=1e-5, atol=1e-5)


def test_zero_padding_not_circular():
    m = perturbed_conv(2, 3, seed=3).eval()
    x = torch.zeros(1, 2, 6, 6)
    x[..., 0, 0] = 1.0  # an impulse in the corner: circular padding would wrap it around
    out = m(x) - m(torch.zeros_like(x))
    assert out[..., -1, :].abs().max() == 0 and out[..., :, -1].abs().max() == 0


def test_kernel_size_one_equals_linear():
    conv = perturbed_conv(6, 1, seed=4)
    lin = SLLLinear(6, 6)
    with torch.no_grad():
        lin.weights.copy_(conv.kernel[:, :, 0, 0])
        lin.bias.copy_(conv.bias)
        lin.q.copy_(conv.q)
    x = torch.randn(2, 6, 3, 3)
    y_lin = lin(x.permute(0, 2, 3, 1).reshape(-1, 6)).reshape(2, 3, 3, 6).permute(0, 3, 1, 2)
    torch.testing.assert_close(conv(x), y_lin, rtol=1e-5, atol=1e-6)


def test_paper_compatible_conv_is_the_default():
    torch.manual_seed(5)
    a = SLLConv2d(4, 4, 3)
    torch.manual_seed(5)
    b = SLLConv2d(4, 4, 3, paper_compatible=True)
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(a(x), b(x))


def test_paper_compatible_linear_uses_the_papers_dense_formula():
    torch.manual_seed(6)
    a = SLLLinear(5, 5)
    b = SLLLinear(5, 5, paper_compatible=True)
    b.load_state_dict(a.state_dict())
    w, q = a.weights.detach().double(), a.q.detach().double().abs()
    gram = (w @ w.T).abs()
    paper = 2 / ((gram * q[None, :]).sum(1) / (q + 1e-6) + 1e-6)
    ours = 2 / ((gram * (q + 1e-6)[None, :]).sum(1) / (q + 1e-6) + 1e-6)
    torch.testing.assert_close(b.compute_weight().double(), paper, rtol=1e-5, atol=0)
    torch.testing.assert_close(a.compute_weight().double(), ours, rtol=1e-5, atol=0)


def test_paper_dense_formula_is_unsound_for_tiny_q_but_default_is_not():
    """With W = I and |q_0| = eps the paper's dense formula gives t_0 = 4: slope -3 on x_0."""
    a, b = SLLLinear(3, 3), SLLLinear(3, 3, paper_compatible=True)
    for m in (a, b):
        with torch.no_grad():
            m.weights.copy_(torch.eye(3))
            m.bias.zero_()
            m.q.copy_(torch.tensor([1e-6, 0.5, 0.7]))
    torch.testing.assert_close(a.compute_weight(), torch.full((3,), 2.0), rtol=1e-5, atol=0)
    assert b.compute_weight()[0] > 3.9
    x = torch.tensor([[1.0, 1.0, 1.0]])
    assert torch.linalg.svdvals(jacobian_matrix(a, x)).max() <= 1 + 1e-6
    assert torch.linalg.svdvals(jacobian_matrix(b, x)).max() > 2.9


# --- the exp option ------------------------------------------------------------------------------

def test_exp_option_formula_and_q_matters():
    m = perturbed_conv(4, 3, seed=7, q_param="exp")
    kkt = autocorrelation(m.kernel.detach().double(), over="out").abs().sum((2, 3))
    q = m.q.detach().double()
    s = (kkt * torch.exp(q[None, :] - q[:, None])).sum(1)
    torch.testing.assert_close(m.compute_weight().double(), 2 / s, rtol=1e-5, atol=0)
    t0 = m.compute_weight()
    with torch.no_grad():
        m.q.mul_(3.0)
    assert not torch.allclose(m.compute_weight(), t0), "q must weight the bound"


def test_exp_option_safe_reciprocal_and_large_q():
    m = SLLConv2d(3, 3, 3, q_param="exp")
    with torch.no_grad():
        m.kernel[1].zero_()
        m.q.copy_(torch.tensor([-40.0, 0.0, 40.0]))
    t = m.compute_weight()
    assert torch.isfinite(t).all() and t[1] == 0
    x = torch.randn(2, 3, 5, 5)
    assert torch.isfinite(m(x)).all()
    # the abs form with the same zero row stays finite as well (t = 2 / eps)
    g = torch.zeros(3, 3)
    assert torch.isfinite(sll_rescaling(g, torch.zeros(3))).all()


@pytest.mark.parametrize("form", ["conv", "linear"])
def test_exp_option_is_one_lipschitz_after_adversarial_steps(form):
    torch.manual_seed(8)
    if form == "conv":
        m, shape = SLLConv2d(3, 3, 3, q_param="exp"), (3, 5, 5)
    else:
        m, shape = SLLLinear(8, 8, q_param="exp"), (8,)
    push_norm_up(m, shape, steps=10, lr=0.1)
    for mode in (True, False):
        m.train(mode)
        for _ in range(2):
            sv = torch.linalg.svdvals(jacobian_matrix(m, torch.randn(1, *shape)))
            assert sv.max() <= 1 + 1e-4
