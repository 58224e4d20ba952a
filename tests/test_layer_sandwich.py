"""Sandwich (Wang & Manchester 2023) specific tests.

There is no golden file (the paper never trained Sandwich), so the layers are checked against an
independent, straightforward implementation: explicit dense matrices of the circular
convolution, an explicit DFT for the normalisation, and the Cayley transform of the real dense
operator; plus the paper's own FFT conventions written out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

import lipzoo
from lipzoo.layers import InputError
from lipzoo.layers.sandwich import SandwichConv2d, SandwichLinear

SQRT2 = math.sqrt(2.0)


# --- the independent reference ---------------------------------------------------------------
def dense_circular_conv(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The (out*h*w, in*h*w) matrix of circular 'same' cross-correlation, built tap by tap."""
    out_c, in_c, kh, kw = kernel.shape
    ch, cw = (kh - 1) // 2, (kw - 1) // 2
    m = torch.zeros(out_c * h * w, in_c * h * w, dtype=kernel.dtype)
    rows_h, rows_w = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for o in range(out_c):
        for i in range(in_c):
            for p in range(kh):
                for q in range(kw):
                    src_h = (rows_h + p - ch) % h
                    src_w = (rows_w + q - cw) % w
                    rows = o * h * w + rows_h * w + rows_w
                    cols = i * h * w + src_h * w + src_w
                    m[rows.flatten(), cols.flatten()] += kernel[o, i, p, q]
    return m


def half_spectrum_norm(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """||W_hat||_F over the rfft2 half spectrum (frequencies u < h, v <= w//2) by an explicit DFT."""
    _, _, kh, kw = kernel.shape
    u = torch.arange(h, dtype=torch.float64)[:, None] * torch.arange(kh, dtype=torch.float64)[None, :] / h
    v = torch.arange(w // 2 + 1, dtype=torch.float64)[:, None] * torch.arange(kw, dtype=torch.float64)[None, :] / w
    fu = torch.exp(-2j * math.pi * u)  # (h, kh)
    fv = torch.exp(-2j * math.pi * v)  # (w//2+1, kw)
    what = torch.einsum("oipq,up,vq->uvoi", kernel.to(torch.complex128), fu, fv)
    return what.abs().square().sum().sqrt()


def dense_cayley_rows(m: torch.Tensor) -> torch.Tensor:
    """Cayley transform of a wide real matrix (out, in+out): a matrix with orthonormal rows."""
    t = m.T  # tall
    n = t.shape[1]
    u, v = t[:n], t[n:]
    eye = torch.eye(n, dtype=m.dtype)
    a = u - u.T + v.T @ v
    inv = torch.linalg.inv(eye + a)
    return torch.cat([inv @ (eye - a), -2 * v @ inv], dim=0).T


def reference_sandwich(x, a, b, psi, bias, reps: int = 1):
    """y = sqrt(2) A^T Psi ReLU(sqrt(2) Psi^{-1} B x + b), rows of x are samples."""
    e = torch.exp(psi).repeat_interleave(reps)
    z = SQRT2 * (x @ b.T) / e + bias.repeat_interleave(reps)
    return SQRT2 * ((torch.relu(z) * e) @ a)


def reference_conv(layer: SandwichConv2d, x: torch.Tensor) -> torch.Tensor:
    n_b, c_in, h, w = x.shape
    kernel = layer.weight.detach().double()
    m = dense_circular_conv(kernel, h, w)
    scaled = layer.alpha.detach().double() * m / half_spectrum_norm(kernel, h, w)
    q = dense_cayley_rows(scaled)
    n = layer.out_channels * h * w
    a, b = q[:, :n], q[:, n:]
    y = reference_sandwich(x.double().reshape(n_b, -1), a, b, layer.psi.detach().double(),
                           layer.bias.detach().double(), reps=h * w)
    return y.reshape(n_b, layer.out_channels, h, w)


def randomise(layer) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        layer.psi.normal_(0, 0.5)
        layer.bias.normal_(0, 0.5)
        layer.alpha.mul_(1.7)


# --- parameters --------------------------------------------------------------------------------
@pytest.mark.parametrize("c_in,c_out,k", [(4, 4, 3), (3, 5, 1), (16, 16, 3)])
def test_conv_parameters(c_in, c_out, k):
    layer = SandwichConv2d(c_in, c_out, k)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == {"weight": (c_out, c_in + c_out, k, k), "bias": (c_out,), "psi": (c_out,), "alpha": ()}
    assert all(p.requires_grad for p in layer.parameters())
    assert sum(p.numel() for p in layer.parameters()) == c_out * (c_in + c_out) * k * k + 2 * c_out + 1
    assert torch.equal(layer.psi, torch.zeros(c_out))
    # alpha = ||W_hat||_F at the default input size 32 (the phase has modulus one)
    expected = torch.fft.rfft2(layer.weight.detach(), s=(32, 32)).norm()
    torch.testing.assert_close(layer.alpha.detach(), expected, rtol=1e-5, atol=0)
    small = SandwichConv2d(c_in, c_out, k, input_size=(8, 6))
    torch.testing.assert_close(small.alpha.detach(), torch.fft.rfft2(small.weight.detach(), s=(8, 6)).norm())


def test_linear_parameters():
    layer = SandwichLinear(12, 7)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == {"weight": (7, 19), "bias": (7,), "alpha": (), "psi": (7,)}
    assert sum(p.numel() for p in layer.parameters()) == 7 * 19 + 2 * 7 + 1
    torch.testing.assert_close(layer.alpha.detach(), layer.weight.detach().norm())


@pytest.mark.parametrize("size,count", [("xs", 3_144_603), ("s", 12_566_299)])
def test_model_parameter_counts(size, count):
    model = lipzoo.create_model(f"convnet_{size}_sandwich")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    assert sum(1 for n, _ in model.named_parameters() if n.endswith("alpha")) == 27
    assert isinstance(model.ClassificationHead[1], SandwichLinear)


# --- fidelity --------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(8, 3), (8, 5), (6, 1), (7, 3)])
def test_weight_fft_follows_the_paper_convention(n, k):
    """The paper's W_hat: conj(rfft2(W)) times exp(-2 pi i s (u+v) / n), s = (k-1)//2, flattened u-major."""
    torch.manual_seed(0)
    layer = SandwichConv2d(3, 2, k, input_size=n)
    s = (k - 1) // 2
    grid = torch.arange(n).repeat((n, 1))
    grid = grid + grid.T
    shift = torch.exp(1j * 2 * math.pi * (-s) * grid / n)[:, : n // 2 + 1].reshape(-1, 1, 1)
    w = layer.weight.detach()
    paper = shift * torch.fft.rfft2(w, s=(n, n)).reshape(2, 5, -1).permute(2, 0, 1).conj()
    ours = layer.weight_fft((n, n)).reshape(-1, 2, 5)
    torch.testing.assert_close(ours, paper.to(ours.dtype), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c_in,c_out,k,h,w", [(2, 2, 3, 4, 4), (3, 2, 3, 5, 6), (2, 3, 1, 4, 3), (2, 2, 2, 4, 4)])
def test_conv_equals_dense_reference(c_in, c_out, k, h, w):
    torch.manual_seed(0)
    layer = SandwichConv2d(c_in, c_out, k, input_size=(h, w)).double()
    randomise(layer)
    x = torch.randn(3, c_in, h, w, dtype=torch.float64)
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(x), reference_conv(layer, x), rtol=1e-9, atol=1e-10)


def test_conv_at_other_sizes_equals_dense_reference():
    """alpha is fixed at construction; the normalisation ||W_hat|| is taken at the actual size."""
    torch.manual_seed(0)
    layer = SandwichConv2d(2, 2, 3, input_size=8).double()
    randomise(layer)
    alpha = layer.alpha.detach().clone()
    for h, w in [(4, 4), (3, 5), (8, 8)]:
        x = torch.randn(2, 2, h, w, dtype=torch.float64)
        torch.testing.assert_close(layer(x), reference_conv(layer, x), rtol=1e-9, atol=1e-10)
    assert torch.equal(layer.alpha.detach(), alpha)


def test_dense_reference_has_orthonormal_rows():
    """The theorem's premise, A A^T + B B^T = I, holds for the real operators."""
    torch.manual_seed(0)
    layer = SandwichConv2d(3, 2, 3, input_size=(4, 5)).double()
    kernel = layer.weight.detach()
    m = layer.alpha.detach() * dense_circular_conv(kernel, 4, 5) / half_spectrum_norm(kernel, 4, 5)
    q = dense_cayley_rows(m)
    torch.testing.assert_close(q @ q.T, torch.eye(q.shape[0], dtype=torch.float64), rtol=0, atol=1e-10)


def test_linear_equals_dense_reference():
    torch.manual_seed(0)
    layer = SandwichLinear(5, 3).double()
    randomise(layer)
    q = dense_cayley_rows(layer.alpha.detach() * layer.weight.detach() / layer.weight.detach().norm())
    a, b = q[:, :3], q[:, 3:]
    x = torch.randn(4, 5, dtype=torch.float64)
    ref = reference_sandwich(x, a, b, layer.psi.detach(), layer.bias.detach())
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-12)


# --- options ---------------------------------------------------------------------------------
def test_numerical_stable_and_paper_compatible_give_the_same_function():
    for make in (lambda **kw: SandwichConv2d(3, 4, 3, input_size=8, **kw), lambda **kw: SandwichLinear(6, 4, **kw)):
        torch.manual_seed(0)
        base = make()
        randomise(base)
        x = torch.randn(2, 3, 8, 8) if isinstance(base, SandwichConv2d) else torch.randn(2, 6)
        for kw in ({"numerical_stable": True}, {"paper_compatible": True}):
            other = make(**kw)
            other.load_state_dict(base.state_dict(), strict=True)
            torch.testing.assert_close(other(x), base(x), rtol=1e-5, atol=1e-6)


def test_scale_option():
    with pytest.raises(ValueError, match="paper_compatible"):
        SandwichConv2d(2, 2, 3, scale=2.0)
    with pytest.raises(ValueError, match="scale"):
        SandwichLinear(2, 2, scale=0.0)
    torch.manual_seed(0)
    base = SandwichLinear(4, 4)
    scaled = SandwichLinear(4, 4, scale=2.0, paper_compatible=True)
    scaled.load_state_dict(base.state_dict())
    x = torch.randn(3, 4)
    torch.testing.assert_close(scaled(x), base(2.0 * x))
    assert "scale=2.0" in repr(scaled)


def test_no_bias_option():
    layer = SandwichConv2d(2, 2, 3, input_size=4, bias=False)
    assert layer.bias is None and "bias" not in dict(layer.named_parameters())
    assert layer(torch.randn(1, 2, 4, 4)).shape == (1, 2, 4, 4)
    assert SandwichLinear(3, 2, bias=False)(torch.randn(2, 3)).shape == (2, 2)


def test_kernel_larger_than_input_is_rejected():
    with pytest.raises(ValueError, match="does not fit"):
        SandwichConv2d(2, 2, 5, input_size=4)
    layer = SandwichConv2d(2, 2, 3, input_size=8)
    with pytest.raises(InputError, match="at least"):
        layer(torch.randn(1, 2, 2, 8))


# --- training --------------------------------------------------------------------------------
def test_every_parameter_gets_a_gradient():
    for layer, x in ((SandwichConv2d(2, 2, 3, input_size=6), torch.randn(2, 2, 6, 6)),
                     (SandwichLinear(4, 4), torch.randn(2, 4))):
        randomise(layer)
        layer.train()
        layer(x).square().sum().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bound_holds_for_extreme_parameters():
    """Large alpha and psi: the Jacobian norm stays <= 1 (float64, exact theorem)."""
    torch.manual_seed(0)
    layer = SandwichConv2d(2, 2, 3, input_size=4).double()
    with torch.no_grad():
        layer.alpha.mul_(30.0)
        layer.psi.normal_(0, 3.0)
        layer.bias.normal_(0, 1.0)
    for _ in range(3):
        x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.view(1, 2, 4, 4)).flatten(), x.flatten())
        assert torch.linalg.matrix_norm(jac, ord=2) <= 1 + 1e-10


# --- initialisation ----------------------------------------------------------------------------
@pytest.mark.parametrize("c_in,c_out,k", [(4, 4, 3), (4, 4, 1), (3, 5, 3), (5, 3, 1), (4, 4, 2)])
def test_default_init_is_relu_of_the_identity_plus_a_positive_bias(c_in, c_out, k):
    """init="identity": A = I/sqrt(2), B = E/sqrt(2), so y = ReLU(E x + b) with b > 0 on the kept
    channels: the identity plus a shift on non-negative inputs, Jacobian singular values all 1."""
    torch.manual_seed(0)
    layer = SandwichConv2d(c_in, c_out, k, input_size=(5, 6)).double()
    assert layer.init == "identity" and bool((layer.bias > 0).all())
    x = torch.randn(2, c_in, 5, 6, dtype=torch.float64)
    n = min(c_in, c_out)
    y = layer(x)
    torch.testing.assert_close(y[:, :n], torch.relu(x[:, :n] + layer.bias[:n, None, None]), rtol=1e-6, atol=1e-6)
    # an output channel with no input channel of its own: a constant, sqrt(2) ReLU(b) (A_jj = 1 there)
    torch.testing.assert_close(y[:, n:], (SQRT2 * layer.bias[n:, None, None]).expand_as(y[:, n:]), rtol=1e-6, atol=1e-6)
    if c_in == c_out:
        pos = torch.rand(1, c_in, 5, 6, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.view_as(pos)).flatten(), pos.flatten())
        torch.testing.assert_close(torch.linalg.svdvals(jac), torch.ones(jac.shape[0], dtype=torch.float64),
                                   rtol=0, atol=1e-6)
    dense = SandwichLinear(c_in, c_out).double()
    xd = torch.randn(3, c_in, dtype=torch.float64)
    torch.testing.assert_close(dense(xd)[:, :n], torch.relu(xd[:, :n] + dense.bias[:n]), rtol=1e-6, atol=1e-6)


def test_paper_init_is_the_papers_and_is_contractive():
    """paper_compatible=True (or init="paper") draws the paper's nn.Conv2d / nn.Linear defaults,
    in the paper's order; such a layer shrinks even non-negative inputs (the cause of the
    vanishing gradient), the default does not."""
    for make, ref in (
        (lambda **kw: SandwichConv2d(3, 4, 3, input_size=8, **kw), lambda: torch.nn.Conv2d(7, 4, 3)),
        (lambda **kw: SandwichLinear(6, 4, **kw), lambda: torch.nn.Linear(10, 4)),
    ):
        torch.manual_seed(3)
        expected = ref()
        for kw in ({"paper_compatible": True}, {"init": "paper"}):
            torch.manual_seed(3)
            layer = make(**kw)
            assert layer.init == "paper"
            torch.testing.assert_close(layer.weight.detach(), expected.weight.detach(), rtol=0, atol=0)
            torch.testing.assert_close(layer.bias.detach(), expected.bias.detach(), rtol=0, atol=0)
    assert "init='paper'" in repr(SandwichLinear(3, 3, init="paper"))
    assert "init" not in repr(SandwichLinear(3, 3)) and "init" not in repr(SandwichLinear(3, 3, paper_compatible=True))
    with pytest.raises(ValueError, match="init must be"):
        SandwichConv2d(2, 2, 3, init="orthogonal")

    def gain(layer):  # mean ||J v|| / ||v|| at a non-negative input, exact Jacobian
        layer = layer.double()
        x = torch.rand(1, 8, 8, 8, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.view_as(x)).flatten(), x.flatten())
        return torch.linalg.matrix_norm(jac).item() / math.sqrt(jac.shape[1])  # rms singular value

    torch.manual_seed(0)
    paper, default = SandwichConv2d(8, 8, 3, input_size=8, init="paper"), SandwichConv2d(8, 8, 3, input_size=8)
    assert gain(default) > 1 - 1e-6
    assert gain(paper) < 0.9


def _fashion_batch(n: int):
    from lipzoo.data import DatasetNotFoundError, load_tensors

    try:
        return load_tensors("fashion_mnist", "train", limit=n)
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")


def _gradient_profile(model, x, y):
    """Loss gradient norm of the first and last Lipschitz layer's parameters, the backward signal
    at their outputs, and the logit norm, for the paper's loss."""
    from lipzoo.layers import LipschitzModule
    from lipzoo.zoo.training import offset_cross_entropy

    layers = [m for m in model.modules() if isinstance(m, LipschitzModule)]
    signal = {}
    def record(key):
        def hook(mod, inp, out):  # returns None: the output is kept
            out.register_hook(lambda g: signal.__setitem__(key, g.flatten(1).norm(dim=1).mean().item()))
        return hook

    layers[0].register_forward_hook(record("first"))
    layers[-1].register_forward_hook(record("last"))
    model.train()
    logits = model(x)
    offset_cross_entropy(logits, y).backward()

    def grad(m):
        return torch.cat([p.grad.flatten() for p in m.parameters()]).norm().item()

    return {"first": grad(layers[0]), "last": grad(layers[-1]), "signal_first": signal["first"],
            "signal_last": signal["last"], "logits": logits.detach().flatten(1).norm(dim=1).mean().item()}


def test_convnet_gradient_does_not_vanish_at_init():
    """ConvNet-XS built as the trainer builds it for Fashion-MNIST, one real batch, the paper's
    loss: with the default init the first layer's gradient and the backward signal reaching it
    are of the order of the last layer's, and the logits are not collapsed next to AOL's. The
    paper's init fails the same checks (the check can fail: the bug this init fixes)."""
    from lipzoo.data import dataset_info

    info = dataset_info("fashion_mnist")
    x, y = _fashion_batch(8)

    def profile(layer, **kw):
        torch.manual_seed(0)
        model = lipzoo.create_model(f"convnet_xs_{layer}", num_classes=info.num_classes, in_chans=info.in_chans,
                                    input_mean=info.mean, **kw)
        return _gradient_profile(model, x, y)

    aol, new, old = profile("aol"), profile("sandwich"), profile("sandwich", paper_compatible=True)
    for p, ok in ((new, True), (old, False)):
        checks = (p["first"] > 1e-2 * p["last"], p["signal_first"] > 0.1 * p["signal_last"],
                  p["first"] > 0.1 * aol["first"], p["logits"] > 0.5 * aol["logits"])
        assert all(checks) if ok else not any(checks), (p, aol)
