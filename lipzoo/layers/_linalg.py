"""Shared numerics of the layer families.

Everything here is a pure function of tensors: no modules, no state, no I/O (the DFT matrices are
cached constants).

The custom autograd Functions here and in ``_fourier`` have hand-written backwards that make a
training step cheaper on CPU, and no ``jvp`` (Dynamo cannot trace one, so a ``torch.compile``d
model would break its graph there): where forward-mode AD may push a tangent through them
(``torch.func`` transforms, ``torch.autograd.forward_ad``) the same function is computed with
plain differentiable ops instead (:func:`tangents_possible`).

Conventions: kernels are ``(out, in, k, k)``; "conv" means PyTorch's cross-correlation
``F.conv2d``. Frequency-domain weights are stacks of per-frequency ``(out, in)`` complex
matrices laid out as ``(H, W_freq, out, in)``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "autocorrelation",
    "gram_row_sums",
    "gram_bound",
    "power_iteration_sigma",
    "bjorck_orthonormalize",
    "cayley_transform",
    "matmul",
    "taylor_exp_conv2d",
    "skew_series",
]


def tangents_possible(*ts: torch.Tensor) -> bool:
    """Whether forward-mode AD may carry a tangent through ``ts``: a ``torch.func`` transform wraps
    one of them, or a ``torch.autograd.forward_ad`` dual level is open. Then the custom Functions
    (no ``jvp``) are bypassed for plain ops."""
    if torch.compiler.is_compiling():  # traced code: the custom Functions (Dynamo traces them)
        return False
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in ts)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its conjugation resolved and its memory contiguous (a no-op when it already is)."""
    return t.resolve_conj().contiguous()


class _ComplexMatmul(torch.autograd.Function):
    """``a @ b`` for complex stacks with the operands made dense ONCE.

    PyTorch's CPU ``bmm`` multiplies complex stacks one matrix at a time and clones every
    conjugated or strided operand matrix separately (its backward multiplies by ``b.mH`` and
    ``a.mH``, conjugate views): tens of thousands of small copies per training step of an FFT
    layer. Here each operand (and each backward operand) is resolved in one copy. Same product,
    same gradients (``G @ b^H``, ``a^H @ G``). No ``jvp``: see :func:`matmul`.
    """

    generate_vmap_rule = True  # usable under torch.func transforms

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(_dense(a), _dense(b))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, b = ctx.saved_tensors
        g = _dense(g)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = _sum_to(torch.matmul(g, _dense(b.mH)), a.shape)
        if ctx.needs_input_grad[1]:
            gb = _sum_to(torch.matmul(_dense(a.mH), g), b.shape)
        return ga, gb


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo the broadcasting of batch dimensions in a gradient."""
    return t if t.shape == shape else t.sum_to_size(shape)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``; complex operands go through one dense copy each instead of one per matrix."""
    if (a.is_complex() or b.is_complex()) and a.device.type == "cpu":
        if a.dtype != b.dtype:
            dt = torch.promote_types(a.dtype, b.dtype)
            a, b = a.to(dt), b.to(dt)
        if tangents_possible(a, b):
            return torch.matmul(a, b)
        return _ComplexMatmul.apply(a, b)
    return a @ b


def _as_kernel(w: torch.Tensor) -> torch.Tensor:
    """View a dense (out, in) matrix as a 1x1 kernel; kernels pass through."""
    if w.ndim == 2:
        return w[:, :, None, None]
    if w.ndim != 4:
        raise ValueError(f"expected a (out, in) matrix or (out, in, k, k) kernel, got {tuple(w.shape)}")
    return w


class _Gram(torch.autograd.Function):
    """``a^T conj(a)`` for a (..., m, n) stack, with a one-product backward.

    The gradient of ``a^T conj(a)`` is ``a (G^T + conj(G))``: one matrix product where autograd
    spends two (one per operand) and a sum. No ``jvp``: see :func:`_gram`.
    """

    generate_vmap_rule = True  # usable under torch.func transforms

    @staticmethod
    def forward(a: torch.Tensor) -> torch.Tensor:
        return _gram_ops(a)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (a,) = ctx.saved_tensors
        return torch.matmul(a, g.mT + (g.conj() if g.is_complex() else g))


def _gram_ops(a: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.mT, a.conj()) if a.is_complex() else torch.matmul(a.mT, a)


def _gram(a: torch.Tensor) -> torch.Tensor:
    """``a^T conj(a)``: through :class:`_Gram`, or plain ops where forward-mode AD may need a tangent."""
    return _gram_ops(a) if tangents_possible(a) else _Gram.apply(a)


#: kernels with at most this many taps and at least this many (out, in) channel pairs get their
#: autocorrelation through the DFT (see ``_autocorrelation_dft``), others through one convolution
#: of the kernel with itself (measured on CPU, 3 x 3 kernels: the DFT 1.5x faster at 64 x 64
#: channels, 1.9x at 128 x 128, its fixed overhead a loss at 32 x 32)
AUTOCORR_DFT_MAX_TAPS = 25
AUTOCORR_DFT_MIN_PAIRS = 48 * 48


@functools.lru_cache(maxsize=64)
def _autocorr_dft_matrices(k_h: int, k_w: int, dtype: torch.dtype, device: torch.device):
    """The real DFT matrices of ``_autocorrelation_dft`` for a k_h x k_w kernel (``dtype`` real).

    On the (2k_h - 1) x (2k_w - 1) grid that holds every shift of the autocorrelation without
    wrapping, the frequencies ``D`` = one of each pair ``(f, -f)`` other than 0: rows
    1 .. k_h - 1 of column 0 and all rows of columns 1 .. k_w - 1. Returns ``(fwd, inv_re, inv_im)``:
    ``fwd`` (2|D|, k_h k_w) holds, for each frequency f, the real and the imaginary part of
    ``exp(-i theta_f . p)`` for tap p (rows 2f and 2f + 1); ``inv_re`` and ``inv_im`` (S, |D|) the real
    and imaginary parts of ``2 exp(i theta_f . s) / N`` for the S shifts ``s`` in row-major order from
    ``-(k - 1)`` to ``k - 1`` (N = grid size), so that ``Re(inv @ Phat)`` sums each pair ``Phat(f),
    Phat(-f)``. Computed in float64, then rounded to ``dtype``.
    """
    n_h, n_w = 2 * k_h - 1, 2 * k_w - 1
    freqs = [(u, 0) for u in range(1, k_h)] + [(u, v) for v in range(1, k_w) for u in range(n_h)]
    u = torch.tensor([f[0] for f in freqs], dtype=torch.int64)
    v = torch.tensor([f[1] for f in freqs], dtype=torch.int64)

    def angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (len(a) * len(b), |D|): 2 pi (u a/n_h + v b/n_w)
        ph = torch.remainder(a[:, None, None] * u[None, None, :], n_h).double() / n_h
        pw = torch.remainder(b[None, :, None] * v[None, None, :], n_w).double() / n_w
        return (2 * math.pi * (ph + pw)).reshape(len(a) * len(b), len(freqs))

    taps = angles(torch.arange(k_h), torch.arange(k_w))  # (taps, |D|)
    shifts = angles(torch.arange(-(k_h - 1), k_h), torch.arange(-(k_w - 1), k_w))
    fwd = torch.stack([taps.cos(), -taps.sin()], dim=2).reshape(taps.shape[0], 2 * len(freqs)).T
    scale = 2.0 / (n_h * n_w)
    inv_re, inv_im = scale * shifts.cos(), scale * shifts.sin()
    return tuple(t.to(dtype=dtype, device=device).contiguous() for t in (fwd, inv_re, inv_im))


def _autocorrelation_dft(k: torch.Tensor) -> torch.Tensor:
    """``autocorrelation(k, "in")`` of a (out, in, k_h, k_w) kernel through the DFT, in real arithmetic.

    On a grid of (2k - 1) points per axis the shifts of the autocorrelation do not wrap, so
    ``P(s) = (1/N) sum_f Phat(f) e^{i theta_f . s}`` exactly, with the per-frequency Gram
    matrices ``Phat(f) = Khat(f)^T conj(Khat(f))`` of the kernel's DFT ``Khat`` (in x in, from out
    x in). P is real, so ``Phat(-f) = conj(Phat(f))``: only the frequency 0 (a real Gram matrix of
    the tap sums) and one of each pair are formed, e.g. 12 and 1 in x in products for a 3 x 3
    kernel instead of a convolution over 25 shifts x 9 taps. With ``Khat = A + iB`` (real A, B, one
    matrix product for both), ``Re Phat = A^T A + B^T B`` is one real Gram matrix of ``[A; B]`` and
    ``Im Phat = M - M^T`` with ``M = B^T A``: three real products where the complex Gram matrix costs
    four, and no complex tensors. Equal to the convolution up to float round-off.
    """
    out_c, in_c, k_h, k_w = k.shape
    fwd, inv_re, inv_im = _autocorr_dft_matrices(k_h, k_w, k.dtype, k.device)
    n_freq = inv_re.shape[1]
    ab = (fwd @ k.reshape(out_c * in_c, k_h * k_w).T).view(n_freq, 2 * out_c, in_c)  # per f: [A; B]
    re = _gram(ab).view(n_freq, in_c * in_c)  # A^T A + B^T B
    m = torch.matmul(ab[:, out_c:].mT, ab[:, :out_c])  # B^T A
    im = (m - m.mT).reshape(n_freq, in_c * in_c)
    p0 = _gram(k.sum(dim=(2, 3))) * (1.0 / ((2 * k_h - 1) * (2 * k_w - 1)))  # frequency 0
    p = torch.mm(inv_re, re)  # (S, in * in); accumulated in place (addmm with a broadcast input is slow on CPU)
    p.addmm_(inv_im, im, alpha=-1.0).add_(p0.view(1, in_c * in_c))
    return p.view(2 * k_h - 1, 2 * k_w - 1, in_c, in_c).permute(2, 3, 0, 1)


def autocorrelation(kernel: torch.Tensor, over: str = "in") -> torch.Tensor:
    """The convolution form of ``K^T K`` (``over="in"``) or ``K K^T`` (``over="out"``).

    For a kernel of shape (out, in, k, k) and ``over="in"`` the result P has shape
    (in, in, 2k-1, 2k-1) with ``P[i, j, s] = sum_o sum_p K[o, i, p + s] K[o, j, p]`` (index
    ``s + k - 1``): the kernel of the self-adjoint operator ``K^T K`` on an unbounded grid.
    ``over="out"`` does the same for ``K K^T`` over output channels.

    Computed, for the same numbers up to float round-off: for 1 x 1 kernels as the Gram matrix
    ``K^T K`` (one matrix product forward, one backward); for kernels of up to
    ``AUTOCORR_DFT_MAX_TAPS`` taps and enough channels through the DFT
    (``_autocorrelation_dft``, up to 2x faster than the convolution on CPU for 3 x 3 kernels);
    else as the convolution of the kernel with itself, ``conv2d(K^T, K^T, padding=k - 1)``.
    """
    k = _as_kernel(kernel)
    if over == "in":
        pass
    elif over == "out":
        k = k.transpose(0, 1)
    else:
        raise ValueError("over must be 'in' or 'out'")
    out_c, in_c, kh, kw = k.shape
    if kh == kw == 1:
        return _gram(k[:, :, 0, 0])[:, :, None, None]
    if (kh * kw <= AUTOCORR_DFT_MAX_TAPS and out_c * in_c >= AUTOCORR_DFT_MIN_PAIRS
            and k.dtype in (torch.float32, torch.float64)):
        return _autocorrelation_dft(k)
    k = k.transpose(0, 1)  # (in, out, kh, kw): "batch" of in-channel filters
    return F.conv2d(k, k, padding=(kh - 1, kw - 1))


def gram_row_sums(kernel: torch.Tensor, over: str = "in") -> torch.Tensor:
    """Absolute row sums of the autocorrelation: ``r_i = sum_j sum_s |P_ij(s)|``."""
    return autocorrelation(kernel, over).abs().sum(dim=(1, 2, 3))


def _gram_row(kernel: torch.Tensor, over: str, row: torch.Tensor) -> torch.Tensor:
    """``gram_row_sums(kernel, over)[row]`` for one row (a 1-element index tensor): the row of the
    autocorrelation is the self-convolution of that one filter with all of them."""
    k = _as_kernel(kernel)
    if over == "in":
        k = k.transpose(0, 1)
    k_h, k_w = k.shape[-2:]
    return F.conv2d(k.index_select(0, row), k, padding=(k_h - 1, k_w - 1)).abs().sum()


def gram_bound(kernel: torch.Tensor, over: str = "in") -> torch.Tensor:
    """A guaranteed upper bound on the l2 operator norm of a convolution (or dense matrix).

    ``sqrt(max_i sum_j sum_s |(K^T K)_ij(s)|)`` bounds the spectral norm of ``K^T K`` by the
    Schur / Gershgorin test, hence ``||K||`` (``over="out"``: the same test on ``K K^T``, as
    ``||K|| = ||K^T||``). It holds for zero padding, circular padding (the wrapped autocorrelation
    only merges taps, and |a + b| <= |a| + |b|) and every input size. For an exactly orthogonal
    kernel the autocorrelation is the identity and the bound is 1.

    The value is computed without autograd; the gradient is that of the maximal row ``r_i*``
    alone (the gradient of the max), recomputed from that one row: the backward of the full
    autocorrelation, whose cost grows with channels^3, is never run. (At an exact tie of the
    largest rows the gradient follows one of them, a valid subgradient, where ``Tensor.max``
    would split it.)
    """
    with torch.no_grad():
        rows = gram_row_sums(kernel.detach(), over)
        top = rows.argmax().reshape(1)
    row = _gram_row(kernel, over, top)
    return (rows.max() + (row - row.detach())).sqrt()


POWER_START_SEED = 20240701  # seed of the fixed start vector of the power iteration


def power_start_vector(w: torch.Tensor) -> torch.Tensor:
    """The fixed pseudo-random start (..., m, 1) of the power iteration on a (..., m, n) stack."""
    # a constant, not a random draw: made outside any torch.func transform (vmap refuses random ops)
    with torch._C._DisableFuncTorch():
        gen = torch.Generator().manual_seed(POWER_START_SEED)
        start = torch.randn(*w.shape[:-1], 1, generator=gen)
    return start.to(device=w.device, dtype=w.dtype)


@torch.no_grad()
def power_iteration_sigma(w: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Power-iteration ESTIMATE of the spectral norm of each matrix of a (..., m, n) stack.

    The paper's scheme (u <- A v, v <- A^T u, sigma = u^T A v) from a FIXED start vector, so it is
    deterministic. It converges from below: never a bound, only a prescaling heuristic.
    """
    u = power_start_vector(w)
    v = w.new_zeros(*w.shape[:-2], w.shape[-1], 1)
    for _ in range(iters):
        v = w.transpose(-1, -2) @ u
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(1e-30)
        u = w @ v
        u = u / u.norm(dim=-2, keepdim=True).clamp_min(1e-30)
    return (u.transpose(-1, -2) @ w @ v)[..., 0, 0]


def bjorck_orthonormalize(w: torch.Tensor, iters: int = 20, beta: float = 0.5) -> torch.Tensor:
    """First-order Bjorck-Bowie iteration ``W <- (1 + beta) W - beta W W^T W`` on (..., m, n).

    Converges to the orthogonal polar factor when every singular value starts below sqrt(3);
    finitely many iterations are only approximately orthogonal, so callers that promise a bound
    must rescale (see ``gram_bound``). Callers prescale and handle wide matrices.
    """
    for _ in range(iters):
        w = (1 + beta) * w - beta * w @ (w.transpose(-1, -2) @ w)
    return w


def cayley_transform(w: torch.Tensor) -> torch.Tensor:
    """Cayley transform of a stack of (out, in) real or complex matrices with out >= in.

    Splits ``W = [U; V]`` (U is in x in), sets ``A = U - U^H + V^H V`` and returns
    ``[(I + A)^{-1} (I - A); -2 V (I + A)^{-1}]``, a matrix with orthonormal columns.
    If in > out the transpose is transformed and transposed back (orthonormal rows).

    Computed as ``[2 (I + A)^{-1} - I; -2 V (I + A)^{-1}]``: ``I - A = 2 I - (I + A)``, so
    ``(I + A)^{-1} (I - A) = 2 (I + A)^{-1} - I`` exactly; one inverse and no product for the
    top block (the same matrix up to float round-off, one matrix product fewer forward and two
    fewer backward). ``V^H V`` is skipped for square matrices (V is empty).
    """
    out_f, in_f = w.shape[-2:]
    if in_f > out_f:
        return cayley_transform(w.transpose(-1, -2)).transpose(-1, -2)
    u = w[..., :in_f, :]
    eye = torch.eye(in_f, dtype=w.dtype, device=w.device)
    a = u - u.mH
    if out_f > in_f:
        v = w[..., in_f:, :]
        a = a + matmul(v.mH, v)
    inv = torch.linalg.inv(eye + a)
    top = 2 * inv - eye
    if out_f == in_f:
        return top
    return torch.cat([top, -2 * matmul(v, inv)], dim=-2)


#: a 1 x 1 kernel with at most this many channels has its Taylor polynomial formed as one matrix
#: (``terms`` products of tiny matrices) and applied by a single 1 x 1 convolution
TAYLOR_MATRIX_MAX_CHANNELS = 64


def taylor_exp_conv2d(x: torch.Tensor, kernel: torch.Tensor, terms: int, scale: float = 1.0,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """``scale * sum_{i=0}^{terms} L^i x / i! + bias`` with ``L`` the zero-padded 'same' convolution by ``kernel``.

    Evaluated by Horner's scheme, ``x + L(x + L/2 (x + ... (x + L/terms x)))``: ``terms``
    convolutions (by the kernel scaled by 1/i, a tiny tensor) and ``terms`` additions, no
    division of the activations; the output ``scale`` is folded into the last convolution's kernel
    and its skip term and the ``bias`` (one per channel) into that convolution, so neither costs a pass
    over the activations. Each addition runs in place on the convolution's fresh output. A 1 x 1
    kernel is a matrix ``L`` applied at every pixel, whose powers are 1 x 1 kernels too (zero padding
    plays no part): for few channels the polynomial ``sum_i L^i / i!`` is formed as one matrix (same
    Horner scheme) and applied once; for more channels each term is a matrix product of the pixels
    (rows, channels-last) with ``L^T`` (several times faster than a 1 x 1 convolution on CPU for these
    few, wide pixels). Else the convolutions run on a channels-last copy of ``x`` (faster on CPU). The
    result is in channels-last memory except on the small-matrix path (the caller's next MaxMin keeps that
    layout, so the next series needs no copy in). The same polynomial as the term-by-term sum, up to float round-off.
    """
    if terms == 0:
        z = x * scale if scale != 1.0 else x
        return z if bias is None else z + bias.view(1, -1, 1, 1)
    k_h, k_w = kernel.shape[-2:]
    if k_h == k_w == 1 and kernel.shape[0] <= TAYLOR_MATRIX_MAX_CHANNELS:
        m = kernel[:, :, 0, 0]
        eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
        poly = eye + m / float(terms)
        for i in range(terms - 1, 0, -1):
            poly = torch.addmm(eye, m, poly, alpha=1.0 / i)
        return F.conv2d(x, (poly * scale if scale != 1.0 else poly)[:, :, None, None], bias)
    if k_h == k_w == 1:
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when x is channels-last
        m_t = kernel[:, :, 0, 0].t()
        z = rows
        for i in range(terms, 1, -1):
            z = torch.addmm(rows, z, m_t, alpha=1.0 / i)
        z = torch.addmm(rows, z, m_t, beta=scale, alpha=scale)  # scale * (rows + z L^T)
        if bias is not None:
            z = z + bias
        return z.reshape(n, h, w, c).permute(0, 3, 1, 2)  # channels-last
    pad = (k_h // 2, k_w // 2)
    # the series runs in channels-last memory (oneDNN's faster layout for these convolutions,
    # 7% of a ConvNet-XS training step on CPU): one copy in where x is not already channels-last,
    # and the result stays channels-last
    if torch.compiler.is_compiling() or not torch._C._functorch.is_functorch_wrapped_tensor(x):
        x = x.contiguous(memory_format=torch.channels_last)  # (not under torch.func's vmap: NYI there)
        # the kernel in the activations' layout once: else every convolution copies its scaled kernel
        kernel = kernel.contiguous(memory_format=torch.channels_last)
    z = x
    for i in range(terms, 1, -1):
        z = _add_skip(F.conv2d(z, kernel / float(i), padding=pad), x)
    return _add_skip(F.conv2d(z, kernel * scale if scale != 1.0 else kernel, bias, padding=pad), x, scale)


def _add_skip(y: torch.Tensor, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``y + alpha x``, in place on a convolution's fresh output ``y`` (a convolution's backward does not
    need its output) unless the dtypes differ (e.g. bf16 autocast: then the promoted sum, as ``x + y``)."""
    return y.add_(x, alpha=alpha) if y.dtype == x.dtype else torch.add(y, x, alpha=alpha)


def skew_series(x: torch.Tensor, kernel: torch.Tensor, terms: int, scale: float, bias: torch.Tensor | None,
                out_channels: int) -> torch.Tensor:
    """SOC's map of (already stride-folded) ``x``: zero-pad the channels up to the kernel's, ``scale`` times
    the Taylor series (:func:`taylor_exp_conv2d`), keep the first ``out_channels``, add ``bias``."""
    c = x.shape[1]
    if out_channels > c:
        x = F.pad(x, (0, 0, 0, 0, 0, out_channels - c))
    if out_channels >= c:
        return taylor_exp_conv2d(x, kernel, terms, scale, bias)
    z = taylor_exp_conv2d(x, kernel, terms, scale)[:, :out_channels]
    return z if bias is None else z + bias.view(1, -1, 1, 1)
