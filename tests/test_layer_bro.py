"""Tests specific to BRO (BROConv2d, BROLinear, block_reflector)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipzoo
from lipzoo.audit import layer_bound
from lipzoo.export import to_plain
from lipzoo.layers._fourier import conv_kernel_rfft, fft_conv2d
from lipzoo.layers.bro import BROConv2d, BROLinear, block_reflector

from lipschitz import circular_conv_matrix, impulse_matrix, n_trainable, push_norm_up

TOL_MAX, TOL_MIN = 1e-4, 1e-3




def dense_reflector(v: torch.Tensor) -> torch.Tensor:
    """I - 2 V (V^H V)^{-1} V^H written out directly (no regularisation)."""
    eye = torch.eye(v.shape[-2], dtype=v.dtype)
    return eye - 2 * v @ torch.linalg.solve(v.mH @ v, v.mH)


def sv(module: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.linalg.svdvals(impulse_matrix(module, shape))


# --- the reflector ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("c,r", [(6, 3), (5, 1), (8, 7)])
def test_block_reflector_is_an_orthogonal_involution(dtype, c, r):
    g = torch.Generator().manual_seed(c * 10 + r)
    v = torch.randn(4, c, r, dtype=dtype, generator=g)
    w = block_reflector(v, c, c, eps_rel=1e-14)
    eye = torch.eye(c, dtype=dtype).expand(4, c, c)
    torch.testing.assert_close(w @ w, eye, rtol=0, atol=1e-10)  # involution
    torch.testing.assert_close(w.mH @ w, eye, rtol=0, atol=1e-10)  # orthogonal
    torch.testing.assert_close(w, w.mH, rtol=0, atol=1e-12)  # Hermitian
    torch.testing.assert_close(w, dense_reflector(v), rtol=0, atol=1e-10)  # the paper's formula
    # eigenvalue -1 with multiplicity r (the column space of V), +1 on its complement
    ev = torch.linalg.eigvalsh(w[0])
    assert torch.allclose(ev, torch.tensor([-1.0] * r + [1.0] * (c - r), dtype=ev.dtype), atol=1e-10)


def test_default_regularisation_keeps_norm_at_most_one_also_rank_deficient():
    """eps only pulls eigenvalues 1 - 2 s^2/(s^2 + eps) inwards: norm <= 1 for every V, also V = 0."""
    g = torch.Generator().manual_seed(0)
    col = torch.randn(6, 1, generator=g)
    cases = [
        torch.cat([col, col, 2 * col], dim=1),  # rank 1 of 3
        torch.zeros(6, 3),  # no column space: W = I
        torch.cat([torch.randn(6, 2, generator=g), 1e-6 * torch.randn(6, 1, generator=g)], dim=1),
        1e-20 * torch.randn(6, 3, generator=g),
    ]
    for v in cases:
        w = block_reflector(v, 6, 6)
        assert torch.isfinite(w).all()
        assert float(torch.linalg.matrix_norm(w.double(), 2)) <= 1 + 1e-6
    torch.testing.assert_close(block_reflector(torch.zeros(6, 3), 6, 6), torch.eye(6))
    # full rank: the default eps changes W only by O(eps / s_min^2)
    v = torch.randn(6, 3, dtype=torch.float64, generator=g)
    assert (block_reflector(v, 6, 6) - dense_reflector(v)).abs().max() < 1e-3


def test_crop_gives_orthonormal_columns_or_rows():
    v = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tall = block_reflector(v, 7, 4, eps_rel=1e-14)
    wide = block_reflector(v, 4, 7, eps_rel=1e-14)
    torch.testing.assert_close(tall.T @ tall, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(wide @ wide.T, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(tall, dense_reflector(v)[:, :4])
    with pytest.raises(ValueError, match="cannot crop"):
        block_reflector(v, 8, 4)


# --- the convolution ----------------------------------------------------------------------------


@pytest.mark.parametrize("cin,cout,size,k", [(4, 4, (4, 4), 3), (3, 5, (3, 5), 3), (5, 3, (4, 3), 3), (4, 4, (5, 5), 5)])
def test_conv_is_the_block_reflector_of_the_circular_convolution(cin, cout, size, k):
    """The layer equals I - 2 M (M^T M)^{-1} M^T for M the dense circular convolution by V, cropped."""
    h, w = size
    torch.manual_seed(2)
    layer = BROConv2d(cin, cout, k, input_size=size, init="orthogonal", eps_rel=1e-13).double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.zero_()
    m = circular_conv_matrix(layer.weight.detach(), h, w)  # (c h w, r h w), full column rank
    want = dense_reflector(m)[: cout * h * w, : cin * h * w]  # channel-major flattening: crop = channel crop
    got = impulse_matrix(layer, (cin, h, w), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)


def test_square_conv_operator_is_a_symmetric_orthogonal_involution():
    torch.manual_seed(0)
    layer = BROConv2d(4, 4, 3, input_size=6, init="orthogonal")
    push_norm_up(layer, (4, 6, 6))
    for train in (True, False):
        layer.train(train)
        a = impulse_matrix(layer, (4, 6, 6))
        eye = torch.eye(a.shape[0], dtype=a.dtype)
        assert (a @ a - eye).abs().max() < 1e-3  # W^2 = I up to the eps regularisation
        assert (a.T @ a - eye).abs().max() < 1e-3
        assert (a - a.T).abs().max() < 1e-5  # Hermitian per frequency -> symmetric real operator
        s = torch.linalg.svdvals(a)
        assert s.max() <= 1 + TOL_MAX and s.min() >= 1 - TOL_MIN


@pytest.mark.parametrize("cin,cout,k", [(3, 5, 3), (5, 3, 3), (6, 2, 1), (2, 6, 1), (4, 4, 5)])
@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
def test_channel_changes_stay_orthogonal_after_adversarial_steps(cin, cout, k, train_mode):
    torch.manual_seed(1)
    layer = BROConv2d(cin, cout, k, input_size=6, init="orthogonal")
    layer.train(train_mode)
    push_norm_up(layer, (cin, 6, 6))
    for mode in (True, False):
        layer.train(mode)
        s = sv(layer, (cin, 6, 6))
        assert s.max() <= 1 + TOL_MAX
        assert s[: min(cin, cout) * 36].min() >= 1 - TOL_MIN  # isometry (cin <= cout) / co-isometry


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_rank_option(rank):
    torch.manual_seed(0)
    layer = BROConv2d(4, 4, 3, input_size=5, rank=rank, init="orthogonal")
    assert tuple(layer.weight.shape) == (4, rank, 3, 3)
    push_norm_up(layer, (4, 5, 5), steps=5)
    a = impulse_matrix(layer.eval(), (4, 5, 5))
    # trace of I - 2P = c n - 2 rank(P) = (4 - 2 rank) n: the reflected subspace has dimension rank * n
    assert float(torch.trace(a)) == pytest.approx((4 - 2 * rank) * 25, abs=1e-2)


def test_identity_init_negates_the_first_rank_channels():
    layer = BROConv2d(6, 6, 3, input_size=8)  # rank 3, identity init
    with torch.no_grad():
        layer.bias.zero_()
    x = torch.randn(2, 6, 8, 8)
    want = torch.cat([-x[:, :3], x[:, 3:]], dim=1)
    # eigenvalue -1 + 2 eps / (1 + eps) with eps = 1e-5: within 3e-5 relative of the exact reflector
    torch.testing.assert_close(layer(x), want, rtol=3e-5, atol=1e-6)
    torch.testing.assert_close(layer.eval()(x), want, rtol=3e-5, atol=1e-6)


def test_zero_padding_is_one_lipschitz_not_orthogonal_and_matches_its_definition():
    torch.manual_seed(0)
    layer = BROConv2d(3, 3, 3, input_size=5, padding="zeros", init="orthogonal")
    push_norm_up(layer, (3, 5, 5))
    layer.eval()
    s = sv(layer, (3, 5, 5))
    assert s.max() <= 1 + TOL_MAX
    assert s.min() < 0.99  # the crop loses energy: not orthogonal
    # definition: zero-pad by 1, reflectors on the 7x7 grid, crop
    x = torch.randn(2, 3, 5, 5)
    wf = block_reflector(conv_kernel_rfft(layer.weight.detach(), 7, 7), 3, 3)
    want = fft_conv2d(F.pad(x, (1, 1, 1, 1)), wf)[..., 1:-1, 1:-1] + layer.bias[:, None, None]
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    upper, method, _, _ = layer_bound(layer, (3, 5, 5))
    assert upper >= float(s.max()) - 1e-6 and "padded" in method


def test_1x1_shortcut_equals_the_per_frequency_computation():
    torch.manual_seed(3)
    layer = BROConv2d(5, 3, 1, init="orthogonal")
    assert not layer.size_dependent
    push_norm_up(layer, (5, 4, 6), steps=3)
    x = torch.randn(2, 5, 4, 6)
    wf = block_reflector(conv_kernel_rfft(layer.weight.detach(), 4, 6), 3, 5)
    want = fft_conv2d(x, wf) + layer.bias[:, None, None]
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


def test_any_input_size_and_eval_cache_follows_the_size():
    torch.manual_seed(0)
    layer = BROConv2d(4, 4, 3, input_size=8, init="orthogonal").eval()
    for n in (8, 6, 8):
        x = torch.randn(2, 4, n, n)
        y = layer(x)
        ref = BROConv2d(4, 4, 3, input_size=n, init="orthogonal")
        ref.load_state_dict(layer.state_dict())
        torch.testing.assert_close(y, ref.train()(x), rtol=1e-5, atol=1e-5)
        assert torch.equal(layer(x), y)  # cached
    assert layer.compute_weight().shape == (8, 8 // 2 + 1, 4, 4)
    with pytest.raises(ValueError, match="needs the input size"):
        BROConv2d(4, 4, 3).compute_weight()


def test_audit_and_plain_form_after_adversarial_steps():
    torch.manual_seed(0)
    layer = BROConv2d(3, 3, 3, input_size=6, init="orthogonal")
    push_norm_up(layer, (3, 6, 6))
    layer.eval()
    true = float(sv(layer, (3, 6, 6)).max())
    upper, method, _, _ = layer_bound(layer, (3, 6, 6))
    assert upper == pytest.approx(true, abs=1e-5) and method == "exact per-frequency norm"
    seq = nn.Sequential(layer)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        for form in ("kernel", "fft"):
            torch.testing.assert_close(to_plain(seq, input_shape=(3, 6, 6), circular=form)(x), seq(x),
                                       rtol=1e-5, atol=1e-5)


# --- dense --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fin,fout", [(12, 12), (12, 7), (7, 12)])
def test_linear_is_the_cropped_reflector_and_stays_orthogonal(fin, fout):
    torch.manual_seed(0)
    layer = BROLinear(fin, fout, init="orthogonal")
    assert tuple(layer.weight.shape) == (max(fin, fout), max(fin, fout) // 2)
    push_norm_up(layer, (fin,))
    w = layer.eval().effective_weight().double()
    torch.testing.assert_close(w, dense_reflector(layer.weight.detach().double())[:fout, :fin], rtol=0, atol=1e-4)
    s = torch.linalg.svdvals(w)
    assert s.max() <= 1 + TOL_MAX and s.min() >= 1 - TOL_MIN
    x = torch.randn(3, fin)
    torch.testing.assert_close(layer(x), x @ layer.effective_weight().T + layer.bias)


# --- parameters and arguments -------------------------------------------------------------------


@pytest.mark.parametrize("cin,cout,k", [(16, 16, 3), (16, 16, 1), (6, 10, 3), (10, 6, 3)])
def test_conv_parameters(cin, cout, k):
    layer = BROConv2d(cin, cout, k, input_size=8)
    c = max(cin, cout)
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {"weight": (c, c // 2, k, k), "bias": (cout,)}
    assert n_trainable(layer) == c * (c // 2) * k * k + cout
    assert not list(layer.buffers())


def test_model_parameter_count_is_half_the_standard_convolutions():
    bro, std = lipzoo.create_model("convnet_xs_bro"), lipzoo.create_model("convnet_xs_standard")
    weights = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))  # noqa: E731
    assert 2 * weights(bro) == weights(std)


def test_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        BROConv2d(4, 4, 2)
    with pytest.raises(ValueError, match="rank must be between 1 and 3"):
        BROConv2d(4, 4, 3, rank=4)
    with pytest.raises(ValueError, match="rank"):
        BROLinear(4, 4, rank=0)
    with pytest.raises(ValueError, match="padding must be one of"):
        BROConv2d(4, 4, 3, padding="reflect")
    with pytest.raises(ValueError, match="init must be"):
        BROConv2d(4, 4, 3, init="kaiming")
    with pytest.raises(ValueError, match="eps_rel"):
        BROLinear(4, 4, eps_rel=0.0)
    with pytest.raises(ValueError, match="does not fit"):
        BROConv2d(4, 4, 5, input_size=3)(torch.randn(1, 4, 3, 3))
