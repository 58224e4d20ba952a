"""SOC: Skew Orthogonal Convolutions (Singla & Feizi, ICML 2021).

A trainable filter ``M`` (``random_conv_filter``, ``(c, c, k, k)`` with ``c = max(in, out)``)
gives the skew filter ``L = (M - M*) / 2``, where ``M*`` swaps the channel axes and flips both
spatial axes. ``M*`` is the kernel of the adjoint of the zero-padded 'same' convolution with
``M``, so the zero-padded convolution with ``L`` is an exactly skew-symmetric operator
(``L* = -L`` holds bit for bit: float subtraction is anti-commutative) and ``exp(L_n)`` of any
rescaling ``L_n`` of it is orthogonal. The layer applies the truncated Taylor series
``S_T(L_n) x = sum_{i=0}^{T} L_n^i x / i!`` (each power is one zero-padded convolution; ``T`` is
``train_terms`` = 5 in training and ``eval_terms`` = 12 in eval), then the bias. When
``in != out`` the input is zero-padded in channels (in < out) or the output is sliced (in > out).

Why the default is sound: ``L_n = L / gram_bound(L)`` has ``||L_n|| <= 1`` (a guaranteed bound,
for every input size), so ``||exp(L_n) - S_T(L_n)|| <= sum_{i>T} 1/i! <= tail(T)`` and, exp of a
skew operator being orthogonal, ``||S_T(L_n)|| <= 1 + tail(T)``; the Taylor output is divided by
``1 + tail(T)``, hence the layer is 1-Lipschitz in train and eval mode (up to float round-off), and
orthogonal to within ``2 tail(12) ~ 3e-10`` in eval mode. Default mode has no power-iteration
buffers.

``paper_compatible=True`` reproduces the paper's code exactly: eight power-iteration vectors
``u1 .. v4`` (buffers, in the state dict with the paper's shapes), the "fantastic four" estimate
``sigma = min(sigma_1, .., sigma_4)`` of four reshapes of ``L`` and ``L_n = correction * L /
sigma`` with the ``correction`` buffer 0.7 (1.0 for k = 1); no tail division. Training forwards
first run ``init_iters`` (50) power iterations when ``total_iters % update_freq == 0`` and
``update_iters`` (1) otherwise, then increment ``total_iters``; eval forwards run none. The
estimate has no ``sqrt(k*k)`` factor and can undershoot ``||L||``, so this mode is only
APPROXIMATELY 1-Lipschitz: certify its checkpoints with a measured bound.
(Measured on the golden ConvNet-XS: the paper's ``||L_n||`` is 1.0-1.45, not 0.7, yet 12 eval
terms still give orthogonal layers to 1e-10; 5 training terms exceed 1 by up to 5e-4.)
One paper quirk is fixed: the initial power iterations run on the filter the
layer actually uses, so a freshly built layer is correct in eval mode.

Cost of soundness: ``gram_bound`` over-estimates ``||L||`` (2-4x on the golden filters), so the
default's ``||L_n||`` is smaller than the paper's (0.26-0.73 there) and each layer rotates less
unless training makes the bound tighter. Rescaling the filter cannot make up for it: ``L / B(L)``
is invariant under ``L -> cL``, so only a tighter bound ``B`` lets a layer rotate further.

``skew_bound="spectral"`` divides by a tighter bound instead, for the input size the layer
actually sees (after the stride fold): :func:`~lipzoo.layers._fourier.spectral_bound`, the
largest singular value of ``L``'s frequency matrices on the ``(n + k - 1)``-grid (the zero-padded
operator on ``n x n`` maps is a compression of that circular one) times ``1 + SPECTRAL_MARGIN``,
which covers its float32 round-off; the spectral norm of the matrix for 1x1 kernels. Then
``||L_n|| <= 1`` holds on inputs of that size, so the argument above holds there, and every power
``L_n^i`` (one zero-padded convolution each) has norm <= 1 as well. On the SOC model trained with
the default for 10 epochs ``gram_bound`` was 1.43x-3.40x (geometric mean 2.38x) larger than this
bound (``scripts/bound_gap.py``). It costs one batched eigenvalue solve per training forward (eval
caches the weight per input size).

``max_angle`` (radians, default 1) lets each layer rotate further: ``L_n = max_angle * L / B(L)``,
so ``||L_n|| <= max_angle`` and ``exp(L_n)`` turns any plane by at most ``max_angle`` (with the
default, never more than 1 rad: every layer stays within 57 degrees of the identity, and no layer
can, e.g., flip a sign, which takes pi). For ``max_angle != 1`` the Taylor output is divided by
``max_{|l| <= max_angle} |S_T(i l)|`` (:func:`~lipzoo.layers._norms.skew_taylor_bound`, guaranteed):
``S_T(L_n)`` of an exactly skew-adjoint ``L_n`` is normal with its spectrum in ``i [-max_angle,
max_angle]``, so the layer stays 1-Lipschitz in train and eval mode whatever the number of terms.
The truncation error grows like ``max_angle^(T+1) / (T+1)!``: raise ``train_terms`` with the angle
(``||exp - S_T|| <= tail``: 0.0016 for 5 terms at 1 rad, 0.034 for 6 and 0.0018 for 8 terms at
2 rad). Angles beyond pi add nothing
(``exp`` of an angle is periodic), so ``0 < max_angle <= pi``.

The buffer updates happen in place under ``no_grad`` before ``compute_weight`` (so the eval
cache sees the new version counters); ``sigma_i`` is computed from clones of the vectors, so
autograd never holds the buffers and several training forwards before one ``backward()`` work.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._base import check_kernel_size, full_precision, InputError, LipschitzModule, map_size, MatrixLayer, spatial_size
from ._fourier import spectral_bound
from ._linalg import gram_bound, skew_series, taylor_exp_conv2d
from ._norms import skew_taylor_bound, taylor_tail_bound, zero_padded_bound
from ._plain import TaylorExpConv2d

__all__ = [
    "SOCConv2d",
    "SOCLinear",
    "skew_filter",
    "taylor_tail_bound",
    "taylor_exp_conv2d",
    "fantastic_four_init",
    "fantastic_four_iterations",
    "fantastic_four_sigma",
]

#: names of the power-iteration buffers, in the paper's order
VECTOR_NAMES = ("u1", "v1", "u2", "v2", "u3", "v3", "u4", "v4")
#: smallest norm bound used as a divisor (a zero skew filter stays zero)
_TINY = 1e-12
#: the ways of bounding ||L|| for the sound normalisation L_n = L / B(L)
SKEW_BOUNDS = ("gram", "spectral")


def skew_filter(m: torch.Tensor) -> torch.Tensor:
    """``(M - M*) / 2`` with ``M*`` = channel transpose + spatial flip: a skew-symmetric conv kernel."""
    return 0.5 * (m - m.transpose(0, 1).flip(2, 3))


def _normalize(t: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return t / t.norm().clamp_min(eps)


def fantastic_four_init(
    channels: int, kernel_size: int, *, generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None, device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Random unit vectors ``u1 .. v4`` with the paper's shapes for a (c, c, k, k) filter."""
    c, k = channels, kernel_size
    shapes = {
        "u1": (1, c, 1, k), "u2": (1, c, k, 1), "u3": (1, c, k, k), "u4": (c, 1, k, k),
        "v1": (c, 1, k, 1), "v2": (c, 1, 1, k), "v3": (c, 1, 1, 1), "v4": (1, c, 1, 1),
    }  # drawn in the paper's order: u1..u4, then v1..v4
    vecs = {
        n: _normalize(torch.randn(s, generator=generator, dtype=dtype, device=device)) for n, s in shapes.items()
    }
    return {n: vecs[n] for n in VECTOR_NAMES}


# Each of the four estimates is a power iteration on one matrix reshape of the (o, i, h, l) filter:
# rows (o, h) x columns (i, l); (o, l) x (i, h); o x (i, h, l); (o, h, l) x i. The vectors are kept
# in the paper's broadcastable shapes (u on the input side for estimates 1-3, on the output side
# for estimate 4, exactly as the paper's code has them); the contractions below use
# einsum on their squeezed forms (much faster on CPU than broadcast-multiply-and-sum).
_CONTRACTIONS = (  # (u spec, v spec) for estimates 1..4
    ("il", "oh"), ("ih", "ol"), ("ihl", "o"), ("ohl", "i"),
)


def _squeezed(vecs: dict[str, torch.Tensor], c_out: int, c_in: int, kh: int, kw: int) -> list[torch.Tensor]:
    dims = {"o": c_out, "i": c_in, "h": kh, "l": kw}
    out = []
    for j, (us, vs) in enumerate(_CONTRACTIONS, start=1):
        out.append(vecs[f"u{j}"].reshape([dims[d] for d in us]))
        out.append(vecs[f"v{j}"].reshape([dims[d] for d in vs]))
    return out  # u1, v1, u2, v2, u3, v3, u4, v4


@torch.no_grad()
def fantastic_four_iterations(
    kernel: torch.Tensor, vecs: dict[str, torch.Tensor], iters: int
) -> dict[str, torch.Tensor]:
    """``iters`` power iterations of the paper's four reshapes of ``kernel``; returns new vectors.

    Per estimate: ``v <- normalize(sum L * u)``, then ``u <- normalize(sum L * v)`` (the paper's
    order), each vector normalised over all its entries.
    """
    w = kernel.detach()
    sq = _squeezed(vecs, *w.shape)
    for _ in range(iters):
        for j, (us, vs) in enumerate(_CONTRACTIONS):
            u = sq[2 * j]
            v = _normalize(torch.einsum(f"oihl,{us}->{vs}", w, u))
            sq[2 * j + 1] = v
            sq[2 * j] = _normalize(torch.einsum(f"oihl,{vs}->{us}", w, v))
    return {name: t.reshape(vecs[name].shape) for name, t in zip(VECTOR_NAMES, sq)}


def fantastic_four_sigma(kernel: torch.Tensor, vecs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``min_i sum(L * u_i * v_i)``: the paper's ESTIMATE of the filter's norm (not a bound).

    Differentiable in ``kernel``; the vectors are treated as constants and cloned first, so
    autograd never holds the buffers themselves (later in-place updates stay harmless).
    """
    sq = [t.detach().clone() for t in _squeezed(vecs, *kernel.shape)]
    sigmas = [
        torch.einsum(f"oihl,{us},{vs}->", kernel, sq[2 * j], sq[2 * j + 1])
        for j, (us, vs) in enumerate(_CONTRACTIONS)
    ]
    return torch.stack(sigmas).min()


def _check_max_angle(max_angle: float, paper_compatible: bool, owner: str) -> float:
    """``max_angle`` as a float in (0, pi], or one clear error."""
    try:
        angle = float(max_angle)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: max_angle must be a number of radians in (0, pi], got {max_angle!r}") from None
    if not 0.0 < angle <= math.pi:
        raise ValueError(f"{owner}: max_angle must be a number of radians in (0, pi], got {max_angle!r}")
    if paper_compatible and angle != 1.0:
        raise ValueError(f"{owner}: paper_compatible=True scales by the paper's correction; "
                         f"max_angle={max_angle!r} is for the sound mode")
    return angle


@functools.lru_cache(maxsize=64)
def _angle_scale(terms: int, angle: float) -> float:
    """``1 / max_{|l| <= angle} |S_T(i l)|`` (guaranteed), cached: it is one number per (T, angle)."""
    return 1.0 / skew_taylor_bound(terms, angle)


class SOCConv2d(LipschitzModule):
    """Skew orthogonal convolution: ``exp(L_n)`` by a truncated Taylor series, plus a bias.

    Options (the paper's defaults): ``train_terms=5``, ``eval_terms=12``, ``bias=True``,
    ``stride=1`` (2 folds 2x2 pixels into channels first, as the paper's einops rearrange) and,
    used only with ``paper_compatible=True``: ``init_iters=50``, ``update_iters=1``,
    ``update_freq=200``, ``correction=0.7`` (forced to 1.0 for k = 1). ``skew_bound``:
    ``"gram"`` (default, every input size) or ``"spectral"`` (sound and tighter, for the spatial
    size of each input; see the module docstring); the sound mode only. ``max_angle``: the bound
    on ``||L_n||`` in radians (default 1, at most pi), the sound mode only.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        paper_compatible: bool = False,
        stride: int = 1,
        bias: bool = True,
        train_terms: int = 5,
        eval_terms: int = 12,
        init_iters: int = 50,
        update_iters: int = 1,
        update_freq: int = 200,
        correction: float = 0.7,
        skew_bound: str = "gram",
        max_angle: float = 1.0,
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        self.max_angle = _check_max_angle(max_angle, paper_compatible, type(self).__name__)
        if skew_bound not in SKEW_BOUNDS:
            raise ValueError(f"SOCConv2d: skew_bound must be one of {', '.join(SKEW_BOUNDS)}, got {skew_bound!r}")
        if paper_compatible and skew_bound != "gram":
            raise ValueError(f"SOCConv2d: paper_compatible=True normalises by the paper's estimate; "
                             f"skew_bound={skew_bound!r} is for the sound mode")
        self.skew_bound = skew_bound
        # the spectral bound of a 1x1 kernel is its matrix's norm: the same on every input size
        self.size_dependent = skew_bound == "spectral" and kernel_size > 1
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channel counts must be positive, got {in_channels} -> {out_channels}")
        if train_terms < 0 or eval_terms < 0:
            raise ValueError(f"the Taylor term counts must be >= 0, got {train_terms} and {eval_terms}")
        if update_freq < 1 or init_iters < 0 or update_iters < 0:
            raise ValueError("update_freq must be >= 1 and the iteration counts >= 0")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride = stride
        self.folded_channels = in_channels * stride * stride  # channels after the stride fold
        self.max_channels = c = max(out_channels, self.folded_channels)
        self.paper_compatible = paper_compatible
        self.train_terms, self.eval_terms = train_terms, eval_terms
        self.init_iters, self.update_iters, self.update_freq = init_iters, update_iters, update_freq
        self.total_iters = 0  # the paper's step counter (plain attribute, not in the state dict)

        self.random_conv_filter = nn.Parameter(torch.empty(c, c, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()
        if paper_compatible:
            corr = 1.0 if kernel_size == 1 else float(correction)
            self.register_buffer("correction", torch.tensor([corr]))
            with torch.no_grad():
                vecs = fantastic_four_init(c, kernel_size, dtype=self.random_conv_filter.dtype)
                # the paper runs these on the filter it is about to re-initialise;
                # here they run on the filter the layer actually uses
                vecs = fantastic_four_iterations(skew_filter(self.random_conv_filter), vecs, init_iters)
            for name in VECTOR_NAMES:
                self.register_buffer(name, vecs[name].clone())

    def reset_parameters(self) -> None:
        """The paper's init: filter N(0, 1/c_max), bias U(+-1/sqrt(out))."""
        nn.init.normal_(self.random_conv_filter, std=1.0 / math.sqrt(self.max_channels))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.out_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    # --- the pure function -------------------------------------------------------------------
    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The normalised skew kernel ``L_n`` (``||L_n|| <= 1`` guaranteed in the sound mode; with
        ``skew_bound="spectral"`` on inputs of ``size``, the spatial size after the stride fold)."""
        skew = skew_filter(self.random_conv_filter)
        if self.paper_compatible:
            sigma = fantastic_four_sigma(skew, self._vectors())
            return (self.correction * skew) / sigma
        if self.skew_bound == "spectral":
            if self.size_dependent and size is None:
                raise ValueError("SOCConv2d with skew_bound='spectral' needs the input size for its weight")
            bound = spectral_bound(skew, size if self.size_dependent else (1, 1))
        else:
            bound = gram_bound(skew)
        if self.max_angle != 1.0:  # a scalar factor keeps the kernel exactly skew (negation is exact)
            skew = self.max_angle * skew
        return skew / bound.clamp_min(_TINY)

    def _folded_size(self, shape: tuple[int, ...] | None) -> tuple[int, int] | None:
        """The spatial size the kernel acts on (after the stride fold), where the weight depends on it."""
        if not self.size_dependent:
            return None
        if shape is None:
            raise ValueError("SOCConv2d with skew_bound='spectral' depends on the input size; pass the input shape")
        n_h, n_w = map_size(shape)
        return n_h // self.stride, n_w // self.stride

    def _vectors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in VECTOR_NAMES}

    @torch.no_grad()
    def update_power_iteration(self) -> None:
        """One training step of the paper's schedule (paper_compatible mode only)."""
        iters = self.init_iters if self.total_iters % self.update_freq == 0 else self.update_iters
        self.total_iters += 1
        if iters == 0:
            return
        with full_precision(self.random_conv_filter.device.type):  # part of the weight: never in bf16
            new = fantastic_four_iterations(skew_filter(self.random_conv_filter), self._vectors(), iters)
        for name in VECTOR_NAMES:
            getattr(self, name).copy_(new[name])

    def taylor_scale(self, terms: int) -> float:
        """The factor applied to the Taylor output: ``1 / (1 + tail(terms))`` (1 in paper mode);
        ``1 / max_{|l| <= max_angle} |S_T(i l)|`` where ``max_angle != 1``."""
        if self.paper_compatible:
            return 1.0
        if self.max_angle != 1.0:
            return _angle_scale(terms, self.max_angle)
        return 1.0 / (1.0 + taylor_tail_bound(terms))

    # --- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_channels)
        if self.paper_compatible and self.training:
            self.update_power_iteration()  # buffers first, under no_grad, then the pure weight
        if self.stride > 1:
            h, w = x.shape[-2:]
            if h % self.stride or w % self.stride:
                raise InputError(f"SOCConv2d with stride {self.stride} expects even height and width, got {h}x{w}")
            x = F.pixel_unshuffle(x, self.stride)  # == einops 'b c (h k1) (w k2) -> b (c k1 k2) h w'
        kernel = self.effective_weight(spatial_size(x) if self.size_dependent else None)
        terms = self.train_terms if self.training else self.eval_terms
        return skew_series(x, kernel, terms, self.taylor_scale(terms), self.bias, self.out_channels)

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """The norm of the truncated series ``scale * S_T(L_n)`` on the (stride-folded) ``shape`` maps.

        ``rho`` bounds ``||L_n||`` (the zero-padded conv bound, see
        :func:`~lipzoo.layers._norms.zero_padded_bound`). Where ``L_n`` is checked to be exactly
        skew-adjoint, ``S_T(L_n)`` is normal with norm ``max_{|l| <= rho} |S_T(i l)|``
        (:func:`~lipzoo.layers._norms.skew_taylor_bound`: a dense grid with a second-derivative
        remainder, and ``1 + tail(T, rho)`` when rho <= 1); else ``sum_i rho^i / i!``. Times the
        layer's output scale. Channel padding is an isometry and the channel slice a projection.
        """
        n_h, n_w = map_size(shape)
        n_h, n_w = n_h // self.stride, n_w // self.stride
        kernel = self.effective_weight(self._folded_size(shape)).detach()
        terms = self.train_terms if self.training else self.eval_terms
        skew = bool(torch.equal(kernel, -kernel.transpose(0, 1).flip(2, 3)))
        scale = self.taylor_scale(terms)

        def series_bound(r: float) -> float:
            if skew:
                return skew_taylor_bound(terms, r)
            return sum(r**i / math.factorial(i) for i in range(terms + 1))

        # a cheap ||L_n|| bound that already certifies the layer (<= 1) skips the exact dense norm
        rho, rho_how = zero_padded_bound(kernel, n_h, n_w, enough=lambda r: scale * series_bound(r) <= 1.0)
        series = series_bound(rho)
        if skew:
            method = "skew: max |S_T(i l)| for |l| <= ||L_n||"
        else:
            method = "sum ||L_n||^i / i! (kernel not skew)"
        detail = {"rho": rho, "rho_method": rho_how, "terms": terms, "scale": scale}
        return scale * series, method, float(gram_bound(kernel.double())), detail

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """A TaylorExpConv2d with the eval-mode kernel ``L_n``, ``eval_terms`` terms and the output scale
        (the terms are not folded into one kernel: a composition of zero-padded convolutions is not one)."""
        return TaylorExpConv2d(self.effective_weight(self._folded_size(shape)), self.bias, terms=self.eval_terms,
                               scale=self.taylor_scale(self.eval_terms), in_channels=self.in_channels,
                               out_channels=self.out_channels, stride=self.stride)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != 1:
            s += f", stride={self.stride}"
        s += f", terms={self.train_terms}/{self.eval_terms}, padding=zeros"
        if self.bias is None:
            s += ", bias=False"
        if self.paper_compatible:
            s += f", paper_compatible=True, correction={float(self.correction):g}"
        elif self.skew_bound != "gram":
            s += f", skew_bound={self.skew_bound}"
        if self.max_angle != 1.0:
            s += f", max_angle={self.max_angle:g}"
        return s


class SOCLinear(MatrixLayer):
    """Dense SOC: ``exp(A)`` of the skew-symmetric ``A = (W - W^T) / 2``, plus a bias.

    ``torch.linalg.matrix_exp`` (scaling and squaring) is accurate to round-off for any ``||A||``,
    and ``exp`` of a skew-symmetric matrix is orthogonal, so no normalisation is needed. With
    ``in != out`` the input is zero-padded / the output sliced, i.e. the weight is
    ``exp(A)[:out, :in]``. The paper has no dense SOC layer (its networks use a 1x1 SOC conv as
    head), so ``paper_compatible`` is accepted for a uniform interface and changes nothing; so is
    ``skew_bound`` and ``max_angle`` (the matrix exponential needs no normalisation: its angles are
    free).
    """

    def __init__(
        self, in_features: int, out_features: int, *, paper_compatible: bool = False, bias: bool = True,
        skew_bound: str = "gram", max_angle: float = 1.0,
    ) -> None:
        super().__init__()
        _check_max_angle(max_angle, paper_compatible, type(self).__name__)
        if skew_bound not in SKEW_BOUNDS:
            raise ValueError(f"SOCLinear: skew_bound must be one of {', '.join(SKEW_BOUNDS)}, got {skew_bound!r}")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"feature counts must be positive, got {in_features} -> {out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.max_features = c = max(in_features, out_features)
        self.paper_compatible = paper_compatible
        self.weight = nn.Parameter(torch.randn(c, c) / math.sqrt(c))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        if self.bias is not None:
            bound = 1.0 / math.sqrt(out_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        a = 0.5 * (self.weight - self.weight.T)
        return torch.linalg.matrix_exp(a)[: self.out_features, : self.in_features]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bias={self.bias is not None}"
