"""The frequency-domain numerics of the FFT layers (Cayley, LOT, Sandwich, BRO).

A circular convolution on an ``H x W`` grid is block-diagonal in the Fourier basis: one complex
``(out, in)`` matrix per frequency, laid out ``(H, W_freq, out, in)``. Here: the kernel's
spectrum (centred like ``F.conv2d`` with circular 'same' padding), the product of such a stack with
an input's spectrum (``fft_conv2d``, with a hand-written backward), evaluating a matrix function
once per distinct frequency of a real kernel's half spectrum, the stack's Frobenius norm, and a
sound size-specific bound on a zero-padded convolution's norm from its largest singular value.
Pure functions of tensors: no modules, no state, no I/O.
"""

from __future__ import annotations

import functools
import math

import torch

from ._linalg import _dense, _sum_to, matmul, tangents_possible

__all__ = [
    "frobenius_norm", "half_spectrum_map", "conv_kernel_rfft", "conv_kernel_fft", "fft_conv2d", "spectral_bound",
]

#: relative margin on the float32 eigenvalue solve of :func:`spectral_bound`: its round-off,
#: ~ channels * 6e-8 relative (measured <= 1.3e-6 at 512 channels), stays far below it
SPECTRAL_MARGIN = 1e-4


@functools.lru_cache(maxsize=64)
def _half_spectrum_plan(n_h: int, n_w: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Index lists over the flattened (n_h * (n_w//2 + 1)) rfft frequencies of an n_h x n_w grid.

    Returns ``(distinct, real, mirror_of, order)``: the frequencies whose conjugate mirror
    ``(-u mod n_h, -v mod n_w)`` is not in the half spectrum or comes later ("distinct", complex),
    the self-mirrored ones ("real": their matrices are real for a real kernel), for every other
    frequency the position in ``distinct`` of its mirror, and the permutation that puts
    ``cat([distinct, real, mirrored])`` back in frequency order.
    """
    n_wf = n_w // 2 + 1
    edges = {0, n_w // 2} if n_w % 2 == 0 else {0}  # columns that are their own mirror
    distinct, real, mirrored = [], [], []
    for u in range(n_h):
        for v in range(n_wf):
            f = u * n_wf + v
            if v not in edges:
                distinct.append(f)
            elif (-u) % n_h == u:
                real.append(f)
            elif u < (-u) % n_h:
                distinct.append(f)
            else:
                mirrored.append(f)
    where = {f: i for i, f in enumerate(distinct)}
    mirror_of = [where[((-(f // n_wf)) % n_h) * n_wf + f % n_wf] for f in mirrored]
    pool = distinct + real + mirrored
    order = [0] * len(pool)
    for i, f in enumerate(pool):
        order[f] = i
    return distinct, real, mirror_of, order


#: half_spectrum_map works on the distinct frequencies only when (saved share of the matrices) x
#: (smaller matrix dimension) reaches this
HALF_SPECTRUM_MIN_GAIN = 16


def half_spectrum_map(fn, wf: torch.Tensor, n_w: int) -> torch.Tensor:
    """``fn`` applied to every matrix of an rfft half-spectrum stack ``wf`` (H, W//2+1, ...) of a
    REAL kernel on an H x ``n_w`` grid, evaluated only on the matrices that are not determined by
    the others.

    ``fn`` must commute with conjugation (``fn(conj(M)) = conj(fn(M))``) and keep real matrices
    real, as any rational function of ``M`` and ``M^H`` does (the Cayley transform). The spectrum
    of a real kernel is Hermitian: in the columns that are their own mirror (0, and W/2 for even
    W) the matrix at row ``-u`` is the conjugate of the one at row ``u``, and the rows ``0`` and
    ``H/2`` hold real matrices (up to the round-off of the FFT and the centring phase, whose
    imaginary parts are dropped here; ``irfft2`` ignores them anyway). So those are computed
    once, in real arithmetic for the real ones, and the mirrored rows are conjugated copies: the
    same stack up to float round-off, e.g. 7 complex-equivalent transforms instead of 12 for a
    4 x 4 grid, 31 instead of 40 for 8 x 8. Where the saving is too small to pay for the gathers
    (large grids, small matrices: see ``HALF_SPECTRUM_MIN_GAIN``) ``fn`` runs on the whole stack.
    """
    n_h = wf.shape[0]
    distinct, real, mirror_of, order = _half_spectrum_plan(n_h, n_w)
    # the saved share of the (cubic) per-matrix work must outweigh the gathers and the reordering
    # (quadratic): measured worthwhile on 4 x 4 grids (42% saved), neutral on 8 x 8 (22%) and a loss
    # on 16 x 16 (12%) with 32 x 32 .. 128 x 128 matrices
    saved = (len(mirror_of) + 0.75 * len(real)) / len(order)
    if saved * min(wf.shape[-2:]) < HALF_SPECTRUM_MIN_GAIN:
        return fn(wf)
    flat = wf.flatten(0, 1)
    idx = lambda ix: torch.tensor(ix, dtype=torch.long, device=wf.device)  # noqa: E731
    parts = []
    q_distinct = fn(flat.index_select(0, idx(distinct))) if distinct else None
    if q_distinct is not None:
        parts.append(q_distinct)
    if real:
        q_real = fn(flat.index_select(0, idx(real)).real)
        parts.append(q_real.to(q_distinct.dtype if q_distinct is not None else wf.dtype))
    if mirror_of:
        parts.append(q_distinct.index_select(0, idx(mirror_of)).conj())
    pool = torch.cat(parts)
    return pool.index_select(0, idx(order)).unflatten(0, wf.shape[:2])


def frobenius_norm(t: torch.Tensor) -> torch.Tensor:
    """``||t||_F`` (0-dim, ``t``'s real dtype) of a real or complex tensor, summed in float64.

    Complex tensors are read through their real view (``|z|^2 = re^2 + im^2``): PyTorch's complex
    ``vector_norm`` is some 50x slower on CPU. The float64 accumulation makes the result the
    correctly rounded norm (float32 sums of the ~10^5-10^6 squares of a frequency stack drift by
    ~1e-6 relative).
    """
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    acc = torch.float64 if t.dtype in (torch.float32, torch.float64) else None
    return torch.linalg.vector_norm(t, dtype=acc).to(t.dtype)


def _centre_phase(k_h: int, k_w: int, n_h: int, n_w: int, full: bool, dtype, device) -> torch.Tensor:
    """Phase factors that make a k x k kernel act as a 'same' (centred) convolution."""
    c_h, c_w = (k_h - 1) // 2, (k_w - 1) // 2
    fh = torch.fft.fftfreq(n_h, device=device, dtype=dtype) * n_h
    fw = (torch.fft.fftfreq(n_w, device=device, dtype=dtype) if full else torch.fft.rfftfreq(n_w, device=device, dtype=dtype)) * n_w
    phase = 2 * math.pi * (c_h * fh[:, None] / n_h + c_w * fw[None, :] / n_w)
    return torch.polar(torch.ones_like(phase), phase)


def conv_kernel_rfft(weight: torch.Tensor, n_h: int, n_w: int) -> torch.Tensor:
    """Per-frequency matrices (n_h, n_w//2+1, out, in) of the circular 'same' convolution.

    ``fft_conv2d(x, conv_kernel_rfft(w, H, W))`` equals ``F.conv2d`` of ``x`` with circular
    padding of (k-1)//2 on an H x W input.
    """
    return _conv_kernel_freq(weight, n_h, n_w, full=False)


def conv_kernel_fft(weight: torch.Tensor, n_h: int, n_w: int) -> torch.Tensor:
    """Like :func:`conv_kernel_rfft` but over all n_h x n_w frequencies (full FFT)."""
    return _conv_kernel_freq(weight, n_h, n_w, full=True)


#: kernels with at most this many taps are transformed by one product with a DFT matrix instead of
#: an FFT of the zero-padded kernel (out * in tiny FFTs, whose per-transform cost dominates)
DFT_MATMUL_MAX_TAPS = 25


@functools.lru_cache(maxsize=256)
def _centred_dft_matrix(k_h: int, k_w: int, n_h: int, n_w: int, full: bool, dtype: torch.dtype,
                        device: torch.device) -> torch.Tensor:
    """(k_h * k_w, n_h * n_f) complex matrix ``exp(2 pi i (u (a - c_h) / n_h + v (b - c_w) / n_w))``
    for tap (a, b) and frequency (u, v), ``c = (k - 1) // 2`` (n_f = n_w, or n_w//2 + 1 for the
    rfft half spectrum), ``dtype`` complex. Computed in float64 with the phases reduced modulo n
    (exact integers) before the cosine and sine."""
    n_f = n_w if full else n_w // 2 + 1
    a = torch.arange(k_h, dtype=torch.int64) - (k_h - 1) // 2
    b = torch.arange(k_w, dtype=torch.int64) - (k_w - 1) // 2
    ph = torch.remainder(a[:, None] * torch.arange(n_h, dtype=torch.int64)[None, :], n_h).double() / n_h
    pw = torch.remainder(b[:, None] * torch.arange(n_f, dtype=torch.int64)[None, :], n_w).double() / n_w
    ang = 2 * math.pi * (ph[:, None, :, None] + pw[None, :, None, :])  # (k_h, k_w, n_h, n_f)
    e = torch.polar(torch.ones_like(ang), ang)
    return e.reshape(k_h * k_w, n_h * n_f).to(dtype=dtype, device=device)


def _conv_kernel_freq(weight: torch.Tensor, n_h: int, n_w: int, full: bool) -> torch.Tensor:
    k_h, k_w = weight.shape[-2:]
    if k_h > n_h or k_w > n_w:
        raise ValueError(f"a {k_h}x{k_w} kernel does not fit a {n_h}x{n_w} input for an FFT convolution")
    if k_h * k_w <= DFT_MATMUL_MAX_TAPS and weight.dtype in (torch.float32, torch.float64):
        # the same sum as below, sum_p W[p] e^{+2 pi i f (p - c) / n}, as one matrix product
        out_c, in_c = weight.shape[:2]
        cdt = torch.promote_types(weight.dtype, torch.complex64)
        e = _centred_dft_matrix(k_h, k_w, n_h, n_w, full, cdt, weight.device)
        wf = (weight.reshape(out_c * in_c, k_h * k_w).to(cdt) @ e).view(out_c, in_c, n_h, e.shape[1] // n_h)
        return wf.permute(2, 3, 0, 1)
    fft = torch.fft.fft2 if full else torch.fft.rfft2
    wf = fft(weight, s=(n_h, n_w))  # (out, in, H, Wf): sum_p W[p] e^{-2 pi i f p / n}
    phase = _centre_phase(k_h, k_w, n_h, n_w, full, weight.dtype, weight.device)
    # cross-correlation: y[h] = sum_p W[p] x[h + p - c]  =>  Y(f) = conj(W_fft(f) e^{2 pi i f c/n}) X(f)
    wf = torch.conj(wf * phase)
    return wf.permute(2, 3, 0, 1)


def _column_multiplicity(n_w: int, like: torch.Tensor) -> torch.Tensor:
    """(n_w//2 + 1,) real: 2 on the rfft columns that stand for themselves and their unstored
    conjugate mirror (1 .. ceil(n_w/2) - 1), 1 on the self-mirrored ones (0, and n_w/2 for even n_w)."""
    m = torch.ones(n_w // 2 + 1, dtype=like.real.dtype, device=like.device)
    m[1 : (n_w + 1) // 2] = 2.0
    return m


#: grids of at most this many points are transformed by two 1-D FFTs and fed to the inverse FFT
#: contiguously (MKL's 2-D transforms of many tiny grids, and its inverse of a strided stack, are slow)
SMALL_FFT_GRID = 64


def _rfft2(x: torch.Tensor) -> torch.Tensor:
    """``rfft2`` over the last two dimensions."""
    if x.shape[-1] * x.shape[-2] <= SMALL_FFT_GRID:
        return torch.fft.fft(torch.fft.rfft(x, dim=-1), dim=-2)
    return torch.fft.rfft2(x)


def _irfft2(xf: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``irfft2`` to ``size`` over the last two dimensions."""
    if size[0] * size[1] <= SMALL_FFT_GRID:
        xf = xf.contiguous()
    return torch.fft.irfft2(xf, s=size)


class _FFTConv2d(torch.autograd.Function):
    """``irfft2(W(f) rfft2(x)(f))``: per-frequency matrices applied to a real batch, with a backward
    written out for its layouts (no ``jvp``: see :func:`tangents_possible`).

    Forward: ``X = rfft2(x)`` laid out once as (H, Wf, in, N), ``Y = W X``, ``y = irfft2(Y)``;
    ``X`` is kept for the backward. Backward, from ``G = rfft2(g)`` in the same layout: the input
    gradient is the adjoint operator ``irfft2(W^H G)`` and the weight gradient ``(G X^H) m / (HW)``
    with ``m`` = 2 on the columns whose conjugate mirror is not stored, 1 on the others. That is
    what autograd computes through rfft2, matmul and irfft2 (the masks of the two real
    transforms' backwards, 2/(HW) and 1/2 on those columns, cancel in the input gradient), with
    one half-spectrum inverse FFT where rfft2's own backward zero-pads to the full spectrum and
    runs a full complex one, and one copy per operand.
    """

    generate_vmap_rule = True  # usable under torch.func transforms

    @staticmethod
    def forward(x: torch.Tensor, wfreq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = tuple(x.shape[-2:])
        xp = _rfft2(x).permute(2, 3, 1, 0).contiguous()  # (H, Wf, in, N)
        y = _irfft2(torch.matmul(_dense(wfreq), xp).permute(3, 2, 0, 1), size)
        # X is an output too, so that a double backward through the weight gradient reaches x
        return y, xp

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.set_materialize_grads(False)
        ctx.size = tuple(inputs[0].shape[-2:])
        ctx.save_for_backward(output[1], inputs[1])

    @staticmethod
    def backward(ctx, g: torch.Tensor | None, g_xp: torch.Tensor | None):
        xp, wfreq = ctx.saved_tensors
        n_h, n_w = ctx.size
        gx = gw = None
        gp = None if g is None else _rfft2(g).permute(2, 3, 1, 0).contiguous()  # (H, Wf, out, N)
        if ctx.needs_input_grad[0]:
            if gp is not None:
                gx = _irfft2(torch.matmul(_dense(wfreq.mH), gp).permute(3, 2, 0, 1), (n_h, n_w))
            if g_xp is not None:  # only where X itself was differentiated (higher-order gradients)
                gx2 = _rfft2_backward(g_xp.permute(3, 2, 0, 1), (n_h, n_w))
                gx = gx2 if gx is None else gx + gx2
        if ctx.needs_input_grad[1] and gp is not None:
            m = _column_multiplicity(n_w, gp) / (n_h * n_w)
            gw = _sum_to(torch.matmul(gp, _dense(xp.mH)) * m[:, None, None], wfreq.shape)
        return gx, gw


def _rfft2_backward(g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The gradient of ``rfft2`` for the half-spectrum gradient ``g``: what PyTorch computes as
    ``Re(ifft2(pad(g)))`` unnormalised, as ``irfft2(g / m, norm="forward")`` (``irfft2`` adds the
    mirror of every column with multiplicity m = 2 and keeps only the real part of the others)."""
    return torch.fft.irfft2(g / _column_multiplicity(size[1], g), s=size, norm="forward")


def fft_conv2d(x: torch.Tensor, wfreq: torch.Tensor, full: bool = False) -> torch.Tensor:
    """Apply per-frequency matrices (H, Wf, out, in) to a real (N, in, H, W) batch, circularly.

    ``full=True``: (H, W, out, in) matrices on the full spectrum (``fft2``, real part of ``ifft2``).
    """
    n_h, n_w = x.shape[-2:]
    if full:
        xf = torch.fft.fft2(x).permute(2, 3, 1, 0)  # (H, W, in, N)
        return torch.fft.ifft2(matmul(wfreq, xf).permute(3, 2, 0, 1), s=(n_h, n_w)).real
    cdt = torch.promote_types(torch.promote_types(x.dtype, torch.complex64), wfreq.dtype)
    if wfreq.dtype != cdt:
        wfreq = wfreq.to(cdt)
    if cdt == torch.complex128 and x.dtype != torch.float64:
        x = x.to(torch.float64)
    if not tangents_possible(x, wfreq):
        return _FFTConv2d.apply(x, wfreq)[0]
    xf = _rfft2(x).permute(2, 3, 1, 0)  # (H, Wf, in, N); the same function with plain ops
    return _irfft2(matmul(wfreq, xf).permute(3, 2, 0, 1), (n_h, n_w))


def _crop(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre taps of a (out, in, k, k) kernel that can reach an input of ``size``: offsets < n."""
    k_h, k_w = kernel.shape[-2:]
    c_h, c_w = min(k_h, 2 * size[0] - 1), min(k_w, 2 * size[1] - 1)
    o_h, o_w = (k_h - c_h) // 2, (k_w - c_w) // 2
    return kernel[..., o_h : o_h + c_h, o_w : o_w + c_w]


def spectral_bound(weight: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``||weight||`` times ``1 + SPECTRAL_MARGIN``: an upper bound on the operator's l2 norm.

    ``weight``: an (out, in) matrix, or an (out, in, k, k) kernel of a zero-padded 'same'
    convolution on ``size`` maps (odd k). For a kernel, the largest singular value of its
    frequency matrices on the (n + k' - 1)-grid of the kernel cropped to the k' <= 2n - 1 taps
    that reach the input; the zero-padded operator is a compression of that circular one.
    The value comes from a float32 eigenvalue solve without autograd; its gradient is that of the
    largest singular value, ``Re(u^H dA v)`` with the top singular pair of the maximising
    frequency (the gradient of the max).
    """
    if weight.ndim == 4:
        if size is None:
            raise ValueError("a convolution's spectral bound needs the input size")
        weight = _crop(weight, size)
        if weight.shape[-2:] != (1, 1):
            n_h, n_w = size[0] + weight.shape[-2] - 1, size[1] + weight.shape[-1] - 1
            mats = conv_kernel_rfft(weight, n_h, n_w).flatten(0, 1)
        else:
            mats = weight[None, :, :, 0, 0]
    else:
        mats = weight[None]
    if mats.shape[-2] < mats.shape[-1]:  # the Gram matrix of the smaller side
        mats = mats.mH
    with torch.no_grad():
        a = mats.detach()
        if a.shape[0] == 1:  # one matrix: its eigenvectors come with the same solve
            lam, vecs = torch.linalg.eigh(a[0].mH @ a[0])
            top, lam, v = 0, lam[-1], vecs[:, -1:]
        else:
            lams = torch.linalg.eigvalsh(a.mH @ a)[..., -1]
            top = lams.argmax()
            lam, v = lams[top], torch.linalg.eigh(a[top].mH @ a[top])[1][:, -1:]
        sigma = lam.clamp_min(0).sqrt()
        u = a[top] @ v / sigma.clamp_min(torch.finfo(sigma.dtype).tiny)
    s = (u.mH @ mats[top] @ v).real.squeeze()
    return (sigma + (s - s.detach())) * (1 + SPECTRAL_MARGIN)
