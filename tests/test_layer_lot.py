"""LOT-specific tests: the paper's literal forward, the Newton-Schulz maths, rfft/1x1 shortcuts (golden logits: test_convert.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import lipzoo
from lipzoo.layers.lot import LOTConv2d, LOTLinear, lot_orthogonalize

from lipschitz import impulse_matrix, push_norm_up


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small batched complex matmuls: one thread is faster on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def paper_forward(layer: LOTConv2d, x: torch.Tensor, iters: int) -> torch.Tensor:
    """The paper's forward written out literally in float64 (full fft2, explicit shift matrix)."""
    k = layer.kernel_size
    p = k // 2
    w = layer.weight.detach().double()
    xp = F.pad(x.double(), (p,) * 4)
    n_h, n_w = xp.shape[-2:]
    s = -((k - 1) // 2)
    a = torch.arange(n_h, dtype=torch.float64)[:, None] / n_h
    b = torch.arange(n_w, dtype=torch.float64)[None, :] / n_w
    shift = torch.exp(2j * math.pi * s * (a + b))
    wf = (shift * torch.fft.fft2(w, s=(n_h, n_w)).conj()).permute(2, 3, 0, 1)
    eye = torch.eye(w.shape[0], dtype=wf.dtype)
    sm = wf @ wf.mH + 1e-4 * eye
    norm = torch.linalg.matrix_norm(sm)[..., None, None] + 1e-4
    y, z = sm / norm, eye.expand_as(sm)
    for _ in range(iters):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    wo = z @ wf / norm.sqrt()
    yf = (wo @ torch.fft.fft2(xp).permute(2, 3, 1, 0)).permute(3, 2, 0, 1)
    out = torch.fft.ifft2(yf).real[..., p : n_h - p, p : n_w - p]
    return out + layer.bias.detach().double()[:, None, None]


def random_layer(c_in=4, c_out=4, k=3, seed=0, **kw) -> LOTConv2d:
    torch.manual_seed(seed)
    layer = LOTConv2d(c_in, c_out, k, **kw)
    with torch.no_grad():
        layer.weight.normal_(0, 0.3)
        layer.bias.normal_(0, 0.1)
    return layer


#: float32 layers against the float64 formula: the Newton-Schulz iteration on W W^H + 1e-4 I runs
#: in float32, and where W is rank-deficient (fewer input than output channels) that matrix has a
#: condition number of ~1e4, which amplifies round-off to ~1e-5 (seen on an Intel Xeon; 6e-7 on
#: the square layers); the float64 layer checks the maths itself to 1e-9
F32_TOL = 1e-4


def assert_matches_paper(layer: LOTConv2d, x: torch.Tensor, iters: int, y: torch.Tensor | None = None) -> None:
    """``layer`` (in its current mode) computes the paper's formula: in float64 to 1e-9, and its
    float32 output ``y`` (default: ``layer(x)``) within ``F32_TOL``."""
    ref = paper_forward(layer, x, iters)
    with torch.no_grad():
        y64 = copy.deepcopy(layer).double()(x.double())
        y = layer(x) if y is None else y
    torch.testing.assert_close(y64, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y.double(), ref, rtol=F32_TOL, atol=F32_TOL)


@pytest.mark.parametrize("paper_compatible", [False, True], ids=["default", "paper"])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (5, 6)])
def test_matches_the_papers_literal_forward(paper_compatible, k, size):
    """Default (rfft / 1x1 shortcut) and paper path both equal the paper's fft2 computation."""
    layer = random_layer(4, 4, k, seed=k, paper_compatible=paper_compatible, iters=3, eval_iters=10)
    x = torch.randn(3, 4, *size)
    for mode, iters in (("train", 3), ("eval", 10)):
        layer.train(mode == "train")
        assert_matches_paper(layer, x, iters)


@pytest.mark.parametrize("c_in,c_out", [(3, 5), (5, 3)])
def test_non_square_layers(c_in, c_out):
    layer = random_layer(c_in, c_out, 3, iters=10)
    x = torch.randn(2, c_in, 6, 6)
    assert_matches_paper(layer, x, 10)
    assert torch.linalg.svdvals(impulse_matrix(layer, (c_in, 6, 6))).max() <= 1 + 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("shape", [(5, 5), (6, 4), (4, 6)])
@pytest.mark.parametrize("iters", [0, 1, 10])
def test_newton_schulz_equals_its_spectral_formula(dtype, shape, iters):
    """Z_T W / sqrt(n) = U diag(u_T(a) s / sqrt(s^2 + eps)) V^H, u_{t+1} = u_t (3 - u_t^2) / 2."""
    torch.manual_seed(iters)
    w = torch.randn(3, *shape, dtype=dtype)
    u_mat, s, vh = torch.linalg.svd(w, full_matrices=False)
    out, r = shape[0], min(shape)
    norm = torch.sqrt(((s**2 + 1e-4) ** 2).sum(-1) + (out - r) * 1e-8) + 1e-4
    u = torch.sqrt((s**2 + 1e-4) / norm[:, None])
    for _ in range(iters):
        u = u * (3 - u**2) / 2
    expected = u_mat @ torch.diag_embed((u * s / torch.sqrt(s**2 + 1e-4)).to(dtype)) @ vh
    torch.testing.assert_close(lot_orthogonalize(w, iters), expected, rtol=1e-9, atol=1e-10)
    assert torch.linalg.matrix_norm(lot_orthogonalize(w, iters), ord=2).max() < 1


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_float32_round_off_keeps_every_frequency_below_one(scale):
    """The computed (float32) per-frequency matrices have spectral norm <= 1 + 1e-4."""
    torch.manual_seed(1)
    layer = LOTConv2d(32, 32, 3, input_size=(8, 8))
    with torch.no_grad():
        layer.weight.normal_(0, scale)
        layer.weight[:, :, 1, 1] += scale * torch.eye(32)  # a mix of large and tiny singular values
    for paper in (False, True):
        layer.paper_compatible = paper
        wf = layer.compute_weight((8, 8)).detach()
        assert torch.linalg.matrix_norm(wf.to(torch.complex128), ord=2).max() <= 1 + 1e-4


def test_operator_norm_of_a_5x5_kernel_after_training_steps():
    layer = random_layer(3, 3, 5)
    push_norm_up(layer, (3, 6, 6), steps=10)
    for mode in (True, False):
        layer.train(mode)
        assert torch.linalg.svdvals(impulse_matrix(layer, (3, 6, 6))).max() <= 1 + 1e-4


def test_not_orthogonal_with_ten_iterations_but_converges_with_more():
    """sigma_min stays far below 1 for a random kernel (why LOT is not marked orthogonal)."""
    lo = random_layer(4, 4, 3, seed=3).eval()
    sv10 = torch.linalg.svdvals(impulse_matrix(lo, (4, 6, 6)))
    assert sv10.max() <= 1 + 1e-4 and sv10.min() < 0.9
    hi = random_layer(4, 4, 3, seed=3, eval_iters=60).eval()
    wf = hi.compute_weight((6, 6)).to(torch.complex128)
    sv = torch.linalg.svdvals(wf)  # per-frequency: near-unitary once converged (but for eps)
    assert sv.min() > sv10.min() and sv.max() <= 1 + 1e-4


def test_identity_init_is_almost_the_identity():
    layer = LOTConv2d(8, 8, 3, input_size=(6, 6))
    assert torch.equal(layer.bias, torch.zeros(8))
    assert torch.equal(layer.weight[:, :, 1, 1], torch.eye(8)) and layer.weight.abs().sum() == 8
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(layer(x), x, rtol=0, atol=1e-3)
    lin = LOTLinear(8, 8)
    torch.testing.assert_close(lin(x[:, :, 0, 0]), x[:, :, 0, 0], rtol=0, atol=1e-3)


def test_iteration_options_apply_per_mode():
    layer = random_layer(4, 4, 3, iters=2, eval_iters=10)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        y_train = layer.train()(x)
        y_eval = layer.eval()(x)
    assert_matches_paper(layer.train(), x, 2, y_train)
    assert_matches_paper(layer.eval(), x, 10, y_eval)
    assert not torch.allclose(y_train, y_eval)
    assert "iters=2, eval_iters=10" in repr(layer)


def test_any_input_size_and_the_cache_follows_it():
    layer = random_layer(4, 4, 3).eval()
    for size in [(8, 8), (6, 10), (8, 8), (3, 3)]:
        x = torch.randn(2, 4, *size)
        assert_matches_paper(layer, x, 10)
    assert layer.size_dependent and not LOTConv2d(4, 4, 1).size_dependent


def test_gradients_flow_through_the_iteration():
    layer = random_layer(4, 4, 3)
    layer(torch.randn(2, 4, 5, 5)).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.bias.grad is not None


def test_linear_is_the_1x1_conv():
    conv = random_layer(6, 6, 1)
    lin = LOTLinear(6, 6)
    with torch.no_grad():
        lin.weight.copy_(conv.weight[:, :, 0, 0])
        lin.bias.copy_(conv.bias)
    x = torch.randn(5, 6)
    torch.testing.assert_close(lin(x), conv(x[:, :, None, None])[:, :, 0, 0], rtol=1e-6, atol=1e-6)
    for i, o in [(5, 3), (3, 5)]:
        m = LOTLinear(i, o)
        assert torch.linalg.svdvals(m.compute_weight().detach().double()).max() <= 1 + 1e-6


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        LOTConv2d(4, 4, 2)
    with pytest.raises(ValueError, match=">= 0"):
        LOTConv2d(4, 4, 3, iters=-1)
    with pytest.raises(ValueError, match="input size"):
        LOTConv2d(4, 4, 3).compute_weight(None)


@pytest.mark.parametrize("size,count", [("xs", 1_572_288), ("s", 6_283_136)])
def test_trainable_parameter_counts(size, count):
    model = lipzoo.create_model(f"convnet_{size}_lot")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    assert {n.rsplit(".", 1)[-1] for n, _ in model.named_parameters()} == {"weight", "bias"}
    assert not list(model.buffers())


# --- the default evaluates the Newton-Schulz polynomial by eigendecomposition -----------------


@pytest.mark.parametrize("method", ["eigh", "eigh-refined"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("shape", [(3, 5, 5), (2, 6, 4), (2, 4, 6)])
@pytest.mark.parametrize("iters", [0, 1, 10])
def test_eigh_equals_the_matrix_iteration_values_and_gradients(method, dtype, shape, iters):
    torch.manual_seed(iters)
    w = torch.randn(*shape, dtype=dtype, requires_grad=True)
    fast, literal = lot_orthogonalize(w, iters, method=method), lot_orthogonalize(w, iters, method="newton")
    torch.testing.assert_close(fast, literal, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(literal)
    got, = torch.autograd.grad((fast * g.conj()).real.sum(), w)
    want, = torch.autograd.grad((literal * g.conj()).real.sum(), w)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_eigh_gradcheck_on_random_and_identity_weights(dtype):
    """Backward and forward mode; the identity (LOT's Dirac start: S = (1 + eps) I, every
    eigenvalue repeated) and a phase times the identity (a Dirac kernel's spectrum)."""
    torch.manual_seed(0)
    cases = [torch.randn(2, 4, 3, dtype=dtype), torch.eye(4, dtype=dtype).repeat(2, 1, 1)]
    if dtype.is_complex:
        cases.append(torch.polar(torch.ones(3, 1, 1, dtype=torch.float64), torch.rand(3, 1, 1, dtype=torch.float64) * 6) * torch.eye(4))
    for w in cases:
        for method in ("eigh", "eigh-refined"):
            assert gradcheck(lambda x: lot_orthogonalize(x, 10, method=method), (w.requires_grad_(),), check_forward_ad=True)


def test_eigh_and_newton_layers_agree_values_and_gradients():
    """A real LOT layer in float64 with either method: same outputs, same parameter and input gradients
    (random weights, and the Dirac initialisation)."""
    for layer in (random_layer(4, 4, 3, seed=5), LOTConv2d(4, 4, 3)):
        layer = layer.double()
        x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
        results = []
        for method in ("eigh", "eigh-refined", "newton"):
            layer._method = lambda m=method: m
            y = layer(x)
            results.append((y, *torch.autograd.grad(y.square().sum(), (x, layer.weight, layer.bias))))
        del layer._method
        for fast in results[:2]:
            for a, b in zip(fast, results[2]):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_float32_default_gradients_match_the_papers_computation():
    """float32: the default (rfft, eigendecomposition) and paper_compatible (fft2, matrix iteration)
    gradients agree to float round-off."""
    default = random_layer(8, 8, 3, seed=6)
    paper = random_layer(8, 8, 3, seed=6, paper_compatible=True)
    x = torch.randn(3, 8, 7, 7)
    grads = []
    for layer in (default, paper):
        layer(x).square().sum().backward()
        grads.append(layer.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4 * grads[1].abs().max().item())


def test_bad_method_is_rejected():
    with pytest.raises(ValueError, match="method"):
        lot_orthogonalize(torch.randn(3, 3), method="svd")


def test_training_and_eval_methods():
    """Training: single-precision eigendecomposition with refined eigenvalues; eval weight: double
    precision; paper_compatible: the matrix iteration. In float32 all three are within round-off of
    the float64 result."""
    from lipzoo.layers._fourier import conv_kernel_rfft

    layer = random_layer(8, 8, 3, seed=7)
    assert layer._method() == "eigh-refined" and layer.eval()._method() == "eigh"
    assert random_layer(paper_compatible=True)._method() == "newton"
    wf = conv_kernel_rfft(layer.weight.detach(), 9, 9)
    ref = lot_orthogonalize(wf.to(torch.complex128), 10, method="newton")
    for method in ("eigh", "eigh-refined", "newton"):
        assert (lot_orthogonalize(wf, 10, method=method) - ref).abs().max() < 1e-5, method


@pytest.mark.parametrize("size", [(4, 4), (3, 4), (1, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_each_distinct_frequency_is_orthogonalised_once(size, training):
    """The default weight (half_spectrum_map: 64 channels on these small grids, so the conjugate
    rows are mirrored and the self-mirrored ones done in real arithmetic) equals orthogonalising
    every matrix of the rfft half spectrum, values and gradients (float64)."""
    from lipzoo.layers._fourier import HALF_SPECTRUM_MIN_GAIN, _half_spectrum_plan, conv_kernel_rfft

    layer = random_layer(64, 64, 3, seed=8).double().train(training)
    _, real, mirror_of, order = _half_spectrum_plan(size[0] + 2, size[1] + 2)
    assert (len(mirror_of) + 0.75 * len(real)) / len(order) * 64 >= HALF_SPECTRUM_MIN_GAIN
    n_h, n_w = size[0] + 2, size[1] + 2
    wf = layer.compute_weight(size)
    full = lot_orthogonalize(conv_kernel_rfft(layer.weight, n_h, n_w), 10, method=layer._method())
    torch.testing.assert_close(wf, full, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(wf)
    torch.testing.assert_close(torch.autograd.grad((wf * g.conj()).real.sum(), layer.weight)[0],
                               torch.autograd.grad((full * g.conj()).real.sum(), layer.weight)[0], rtol=1e-9, atol=1e-11)
