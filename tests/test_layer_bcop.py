"""BCOP-specific tests: parameters, exact orthogonality, the paper's kernel assembly, the sound
rescale versus paper_compatible and BjorckLinear's iteration schedule (the paper's golden logits:
tests/test_convert.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch import nn

import lipzoo
from lipzoo.layers._fourier import conv_kernel_fft
from lipzoo.layers._linalg import power_start_vector as start_vector
from lipzoo.layers.bcop import BCOPConv2d, BjorckLinear, bcop_kernel, bjorck, norm_bound

from lipschitz import impulse_matrix, n_trainable



def circular_svdvals(weight: torch.Tensor, n: int) -> torch.Tensor:
    """All singular values of the circular 'same' convolution on an n x n input (exact, by FFT)."""
    return torch.linalg.svdvals(conv_kernel_fft(weight.double(), n, n)).flatten()


def perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g, dtype=p.dtype))


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("c,k", [(8, 1), (8, 3), (6, 5)])
def test_trainable_parameters_are_the_papers(c, k):
    layer = BCOPConv2d(c, c, k)
    assert layer.param_matrices.shape == (2 * (k - 1) + 1, c, c)
    assert n_trainable(layer) == (2 * (k - 1) + 1) * c * c + c
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"param_matrices", "bias"}
    assert set(layer.state_dict()) == {"param_matrices", "bias", "mask"}
    mask = layer.mask
    assert mask.shape == (2 * (k - 1), 1, c) and not mask.requires_grad
    assert torch.equal(mask.sum(-1), torch.full((2 * (k - 1), 1), float(c // 2)))
    lin = BjorckLinear(10, 7)
    assert n_trainable(lin) == 77 and set(lin.state_dict()) == {"weight", "bias"}


def test_initialisation():
    torch.manual_seed(0)
    layer = BCOPConv2d(6, 10, 3)  # c_max = 10
    gram = layer.param_matrices @ layer.param_matrices.transpose(-1, -2)
    torch.testing.assert_close(gram, torch.eye(10).expand(5, 10, 10) / 10, atol=1e-6, rtol=0)
    assert layer.bias.abs().max() <= 1 / 10**0.5
    lin = BjorckLinear(12, 5)
    torch.testing.assert_close(lin.weight @ lin.weight.T, torch.eye(5), atol=1e-5, rtol=0)
    assert lin.bias.abs().max() <= 1 / 12**0.5


@pytest.mark.parametrize("size", ["xs"])
def test_model_parameter_count(size):
    model = lipzoo.create_model(f"convnet_{size}_bcop")
    assert n_trainable(model) == 1_137_088


# --- the maths --------------------------------------------------------------------------------


def reference_kernel(ortho: torch.Tensor, mask: torch.Tensor, cin: int, cout: int, k: int) -> torch.Tensor:
    """The paper's assembly written out with explicit loops (dicts of taps), for comparison."""
    h = ortho[0, :cin, :cout]
    flipped = cin > cout
    if flipped:
        h = h.T
    if k == 1:
        return h[:, :, None, None]
    projs = [(q * m) @ (q * m).T for q, m in zip(ortho[1:], mask)]
    eye = torch.eye(ortho.shape[-1], dtype=ortho.dtype)

    def block(p1, p2):
        return {(0, 0): p1 @ p2, (0, 1): p1 @ (eye - p2), (1, 0): (eye - p1) @ p2, (1, 1): (eye - p1) @ (eye - p2)}

    p = block(projs[0], projs[1])
    for t in range(1, k - 1):
        b, s = block(projs[2 * t], projs[2 * t + 1]), t + 1
        new = {}
        for i, j in itertools.product(range(s + 1), repeat=2):
            new[i, j] = sum(p[a, c] @ b[i - a, j - c] for a in range(s) for c in range(s)
                            if 0 <= i - a < 2 and 0 <= j - c < 2)
        p = new
    taps = torch.stack([torch.stack([h @ p[i, j] for j in range(k)]) for i in range(k)])
    return taps.permute(2, 3, 1, 0) if flipped else taps.permute(3, 2, 1, 0)


@pytest.mark.parametrize("cin,cout,k", [(6, 6, 3), (6, 6, 5), (6, 6, 7), (4, 6, 3), (6, 4, 5), (6, 6, 1), (6, 4, 1)])
def test_kernel_assembly_matches_the_papers_loops(cin, cout, k):
    torch.manual_seed(1)
    layer = BCOPConv2d(cin, cout, k).double()
    perturb(layer)
    ortho = bjorck(layer.param_matrices, 20)
    torch.testing.assert_close(
        bcop_kernel(ortho, layer.mask, cin, cout, k), reference_kernel(ortho, layer.mask, cin, cout, k)
    )


@pytest.mark.parametrize("cin,cout,k", [(6, 6, 3), (6, 6, 5), (4, 6, 3), (6, 4, 3), (5, 5, 1), (3, 5, 1), (5, 3, 1)])
@pytest.mark.parametrize("paper_compatible", [False, True])
def test_orthogonal_for_every_size(cin, cout, k, paper_compatible):
    """Square: orthogonal; in < out: an isometry; in > out: a co-isometry (all in double)."""
    torch.manual_seed(2)
    layer = BCOPConv2d(cin, cout, k, paper_compatible=paper_compatible).double().eval()
    perturb(layer, 1.0)
    weight = layer.effective_weight()
    assert weight.shape == (cout, cin, k, k)
    for n in (k, 5, 8):
        sv = circular_svdvals(weight, n)
        torch.testing.assert_close(sv, torch.ones_like(sv), atol=1e-9, rtol=0)


def test_fft_singular_values_agree_with_impulse_responses():
    torch.manual_seed(3)
    layer = BCOPConv2d(3, 3, 3).double().eval()
    perturb(layer)
    sv = torch.linalg.svdvals(impulse_matrix(layer, (3, 5, 5), dtype=torch.float64))
    torch.testing.assert_close(sv.sort().values, circular_svdvals(layer.effective_weight(), 5).sort().values)


def test_forward_is_circular_conv_and_pure():
    torch.manual_seed(4)
    layer = BCOPConv2d(4, 4, 3)
    x = torch.randn(2, 4, 6, 6)
    y1, y2 = layer(x), layer(x)
    assert torch.equal(y1, y2), "the power-iteration start is fixed: forward is a pure function"
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), layer.compute_weight(), layer.bias)
    torch.testing.assert_close(y1, ref)
    torch.testing.assert_close(y1.roll(1, -1), layer(x.roll(1, -1)), rtol=1e-5, atol=1e-5)  # circular
    y1.sum().backward()
    assert layer.param_matrices.grad.abs().sum() > 0 and layer.bias.grad is not None


def test_options_and_errors():
    torch.manual_seed(5)
    a = BCOPConv2d(4, 4, 3).double()
    perturb(a, 1.0)
    b = BCOPConv2d(4, 4, 3, bjorck_iters=2).double()
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a.compute_weight(), b.compute_weight())
    with pytest.raises(ValueError, match="stride"):
        BCOPConv2d(4, 4, 3, stride=2)
    with pytest.raises(ValueError, match="odd"):
        BCOPConv2d(4, 4, 2)
    assert "bjorck_iters=20" in repr(a) and "train_iters=3" in repr(BjorckLinear(4, 4))


# --- sound default versus paper_compatible ------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_default_is_paper_kernel_over_guaranteed_bound(k):
    torch.manual_seed(6)
    default = BCOPConv2d(16, 16, k)
    perturb(default, 1.0)
    paper = BCOPConv2d(16, 16, k, paper_compatible=True)
    paper.load_state_dict(default.state_dict())
    wp, wd = paper.compute_weight(), default.compute_weight()
    torch.testing.assert_close(wd, wp / norm_bound(wp).clamp_min(1))
    assert norm_bound(wd) <= 1 + 1e-6
    # near-orthogonal: the rescale is round-off sized, orthogonality is kept
    torch.testing.assert_close(wd, wp, atol=1e-5, rtol=0)


def adversarial_matrix(u0: torch.Tensor, top: float) -> torch.Tensor:
    """Singular values (top, 1, ..., 1), the top left singular vector orthogonal to the
    power-iteration start u0 (n, 1), so the power-iteration estimate misses ``top``."""
    g = torch.Generator().manual_seed(0)
    n = u0.shape[0]
    q, _ = torch.linalg.qr(torch.cat([u0, torch.randn(n, n - 1, generator=g, dtype=torch.float64)], 1))
    u = q[:, [1, 0, *range(2, n)]]
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.ones(n, dtype=torch.float64)
    s[0] = top
    return u @ torch.diag(s) @ v.T


def test_rescale_catches_a_failed_power_iteration():
    """The power-iteration prescaling is a heuristic: when it underestimates sigma by > 2x,
    Bjorck diverges and the paper's weight has norm >> 1. The default still has norm <= 1."""
    w = adversarial_matrix(start_vector(torch.empty(8, 8, dtype=torch.float64)), 3.0)
    default = BjorckLinear(8, 8).double()
    paper = BjorckLinear(8, 8, paper_compatible=True).double()
    for layer in (default, paper):
        with torch.no_grad():
            layer.weight.copy_(w)
    assert torch.linalg.matrix_norm(paper.compute_weight(), 2) > 10
    assert torch.linalg.matrix_norm(default.compute_weight(), 2) <= 1 + 1e-9

    conv, conv_paper = BCOPConv2d(8, 8, 3, bjorck_iters=3).double(), BCOPConv2d(8, 8, 3, bjorck_iters=3, paper_compatible=True).double()
    w = adversarial_matrix(start_vector(conv.param_matrices)[0], 3.0)  # the start of matrix 0 of the stack
    for layer in (conv, conv_paper):
        with torch.no_grad():
            layer.param_matrices[0] = w
    assert circular_svdvals(conv_paper.compute_weight(), 4).max() > 10
    assert circular_svdvals(conv.compute_weight(), 4).max() <= 1 + 1e-9


# --- BjorckLinear -------------------------------------------------------------------------------


@pytest.mark.parametrize("fin,fout", [(12, 12), (12, 5), (5, 12)])
def test_bjorck_linear_iterations_per_mode(fin, fout):
    torch.manual_seed(7)
    layer = BjorckLinear(fin, fout, paper_compatible=True).double()
    perturb(layer, 1.0)
    x = torch.randn(3, fin, dtype=torch.float64)
    layer.train()
    y_train = layer(x)
    torch.testing.assert_close(y_train, F.linear(x, bjorck(layer.weight, 3), layer.bias))
    layer.eval()
    y_eval = layer(x)
    torch.testing.assert_close(y_eval, F.linear(x, bjorck(layer.weight, 15), layer.bias))
    assert not torch.allclose(y_train, y_eval)
    sv = torch.linalg.svdvals(layer.effective_weight())
    assert sv.max() <= 1 + 1e-9 and sv.min() >= 0.99  # 15 iterations: near-orthonormal rows/columns


def test_bjorck_matches_explicit_iteration():
    torch.manual_seed(8)
    w = torch.randn(5, 7, dtype=torch.float64)
    t = w.T
    sigma = torch.linalg.matrix_norm(t, 2)
    ref = t / sigma
    for _ in range(20):
        ref = 1.5 * ref - 0.5 * ref @ ref.T @ ref
    # power iteration (10 steps) is an estimate: close to the true sigma for this matrix
    torch.testing.assert_close(bjorck(w, 20), ref.T, atol=1e-6, rtol=0)


# --- training evaluates the Bjorck polynomial by eigendecomposition ----------------------------


@pytest.mark.parametrize("shape", [(5, 7, 7), (3, 9, 4), (2, 4, 9), (6, 6)])
@pytest.mark.parametrize("scaling", [True, False])
@pytest.mark.parametrize("iters", [1, 3, 20])
def test_bjorck_eigh_equals_the_iteration_values_and_gradients(shape, scaling, iters):
    torch.manual_seed(iters)
    w = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    fast = bjorck(w, iters, power_iteration_scaling=scaling, method="eigh")
    literal = bjorck(w, iters, power_iteration_scaling=scaling)
    torch.testing.assert_close(fast, literal, rtol=1e-9, atol=1e-11)
    g = torch.randn_like(literal)
    got, = torch.autograd.grad((fast * g).sum(), w)
    want, = torch.autograd.grad((literal * g).sum(), w)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_bjorck_eigh_gradcheck_including_orthogonal_input():
    """Backward and forward mode, on a random stack and on an orthogonal matrix (every eigenvalue of
    W^T W equal: where Bjorck starts for BCOP's orthogonal initialisation)."""
    torch.manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    for w in (torch.randn(2, 5, 4, dtype=torch.float64), q[None] / 5 ** 0.5):
        assert gradcheck(lambda x: bjorck(x, 20, method="eigh"), (w.requires_grad_(),), check_forward_ad=True)


def test_power_iteration_estimate_in_closed_form():
    from lipzoo.layers._linalg import power_iteration_sigma
    from lipzoo.layers._spectral import gram_eigh
    from lipzoo.layers.bcop import _power_sigma_from_eigh

    torch.manual_seed(2)
    for w in (torch.randn(5, 16, 16, dtype=torch.float64), torch.randn(3, 9, 4, dtype=torch.float64), torch.zeros(1, 3, 3, dtype=torch.float64)):
        lam, v = gram_eigh(w)
        torch.testing.assert_close(_power_sigma_from_eigh(w, lam, v, 10), power_iteration_sigma(w, 10), rtol=1e-12, atol=1e-12)
    # the adversarial matrix of test_rescale_catches_a_failed_power_iteration: both miss sigma_max alike
    w = adversarial_matrix(start_vector(torch.empty(8, 8, dtype=torch.float64)), 3.0)[None]
    lam, v = gram_eigh(w)
    torch.testing.assert_close(_power_sigma_from_eigh(w, lam, v, 10), power_iteration_sigma(w, 10))


@pytest.mark.parametrize("cin,cout,k", [(8, 8, 3), (6, 10, 3), (10, 6, 5), (8, 8, 1)])
def test_training_kernel_equals_the_literal_one_values_and_gradients(cin, cout, k):
    """Training mode (eigendecomposition) versus eval mode (literal iteration): same kernel; and the
    same parameter gradients as training with the literal iteration."""
    torch.manual_seed(3)
    layer = BCOPConv2d(cin, cout, k).double()
    perturb(layer, 0.5)
    kernels, grads = [], []
    for fast in (True, False):
        layer._fast = lambda f=fast: f
        kernel = layer.compute_weight()
        kernels.append(kernel)
        grads.append(torch.autograd.grad((kernel * torch.linspace(-1, 1, kernel.numel(), dtype=torch.float64).view_as(kernel)).sum(), layer.param_matrices)[0])
    del layer._fast
    assert layer.training and layer._fast() and layer._bjorck_method() == "eigh"
    assert not layer.eval()._fast() and layer._bjorck_method() == "iterate"
    torch.testing.assert_close(kernels[0], kernels[1], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(layer.compute_weight(), kernels[1], rtol=0, atol=0)  # eval: the literal path


def test_norm_bound_value_is_unchanged_and_its_gradient_is_the_maxs():
    from lipzoo.layers._linalg import gram_row_sums
    from torch.func import jvp, vmap

    torch.manual_seed(4)
    for shape in [(8, 8, 3, 3), (5, 9, 3, 3), (9, 5, 5, 5), (7, 4), (4, 7), (6, 6, 1, 1)]:
        w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        over = "in" if shape[0] >= shape[1] else "out"
        old = lambda x: gram_row_sums(x, over).max().sqrt()  # noqa: E731
        assert norm_bound(w).item() == old(w).item()  # the same value, bit for bit
        got, = torch.autograd.grad(norm_bound(w), w)
        want, = torch.autograd.grad(old(w), w)
        torch.testing.assert_close(got, want)
        t = torch.randn_like(w)
        torch.testing.assert_close(jvp(norm_bound, (w.detach(),), (t,))[1], jvp(old, (w.detach(),), (t,))[1])
        torch.testing.assert_close(vmap(norm_bound)(torch.stack([w.detach(), 2 * w.detach()])),
                                   torch.stack([old(w), old(2 * w)]).detach())


@pytest.mark.parametrize("cin,cout,k", [(8, 8, 3), (6, 10, 3), (10, 6, 3), (8, 8, 5), (6, 10, 5), (10, 6, 7), (5, 3, 1)])
def test_factored_assembly_equals_the_papers(cin, cout, k):
    from lipzoo.layers.bcop import _bcop_kernel_factored

    layer = BCOPConv2d(cin, cout, k).double()
    ortho = bjorck(layer.param_matrices, 20).detach().requires_grad_()
    literal = bcop_kernel(ortho, layer.mask, cin, cout, k)
    fast = _bcop_kernel_factored(ortho, layer.mask, cin, cout, k)
    torch.testing.assert_close(fast, literal, rtol=1e-12, atol=1e-13)
    g = torch.randn_like(literal)
    torch.testing.assert_close(torch.autograd.grad((fast * g).sum(), ortho)[0],
                               torch.autograd.grad((literal * g).sum(), ortho)[0], rtol=1e-12, atol=1e-13)


def test_bjorck_steps_are_bit_identical_with_a_cheaper_backward():
    from torch.func import jvp, vmap

    from lipzoo.layers._linalg import bjorck_orthonormalize
    from lipzoo.layers.bcop import _bjorck_iterate

    torch.manual_seed(6)
    for dtype in (torch.float32, torch.float64):
        w = torch.randn(3, 7, 5, dtype=dtype) / 3
        assert torch.equal(_bjorck_iterate(w, 5, 0.5), bjorck_orthonormalize(w, 5, 0.5))
    w = (torch.randn(3, 7, 5, dtype=torch.float64) / 3).requires_grad_()
    assert gradcheck(lambda x: _bjorck_iterate(x, 3, 0.5), (w,), check_forward_ad=True)
    g = torch.randn(3, 7, 5, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad((_bjorck_iterate(w, 4, 0.5) * g).sum(), w)[0],
                               torch.autograd.grad((bjorck_orthonormalize(w, 4, 0.5) * g).sum(), w)[0])
    t = torch.randn_like(g)
    torch.testing.assert_close(jvp(lambda x: _bjorck_iterate(x, 3, 0.5), (w.detach(),), (t,))[1],
                               jvp(lambda x: bjorck_orthonormalize(x, 3, 0.5), (w.detach(),), (t,))[1])
    torch.testing.assert_close(vmap(lambda x: _bjorck_iterate(x, 3, 0.5))(w.detach()), bjorck_orthonormalize(w.detach(), 3, 0.5))
