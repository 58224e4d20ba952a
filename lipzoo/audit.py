"""Rigorous Lipschitz audit: guaranteed per-layer upper bounds and attack lower bounds.

Every upper bound is computed in float64 from the layer's materialised eval-mode weight (what
the forward pass really applies) and is mathematically guaranteed for the input size the layer
sees in the model (recorded with one forward pass at the model's native size):

- circular convolutions with a kernel (standard, AOL, BCOP, AOC, plain ``nn.Conv2d``): the EXACT
  spectral norm, ``max_f sigma_max(W_hat(f))`` over all frequencies of the input grid; the
  size-independent ``gram_bound`` (Schur test) is reported beside it;
- per-frequency layers (Cayley, BRO, LOT): ``max_f sigma_max`` of the matrices the layer applies
  (exact for Cayley and circular BRO; for LOT and BRO with ``padding="zeros"`` zero-padding is an
  isometry and cropping a contraction; a 1x1 BRO is one real matrix: its exact norm). The
  rfft half-spectrum is enough: where the stored matrices are not exactly Hermitian-symmetric,
  the real operator applies their average with the mirrored conjugate, whose norm is at most
  the larger of the two;
- zero-padded convolutions (CPL, SLL, SOC): where the dense operator is small
  (``max(C_in, C_out) * H * W <= DENSE_EXACT_MAX``) its EXACT norm, the largest singular value
  (float64, from the Gram matrix's ``eigvalsh``) of its impulse-response matrix times
  ``1 + DENSE_MARGIN`` (round-off); always
  also the circular norm on a grid of size >= n + k - 1 (the zero-padded 'same' convolution on
  an n x n map is a compression of that circular one: embed with zeros, convolve circularly,
  crop) and ``gram_bound``; the smallest of these valid bounds is used;
- CPL / SLL, ``y = x - K^T diag(t) ReLU(Kx + b)`` (CPL: t = r): with ``G = diag(sqrt t) K`` the
  Jacobian is ``I - G^T D G`` (D diagonal in [0, 1]), symmetric with eigenvalues in
  ``[1 - ||G||^2, 1]``, so the bound is ``max(1, ||G||^2 - 1)``: 1 exactly when the SDP
  condition ``K K^T <= 2 diag(t)^-1`` holds on the actual parameters;
- SOC: ``L_n`` is checked to be exactly skew-adjoint (then ``S_T(L_n)`` is normal with norm
  ``max_{|l| <= rho} |S_T(i l)|``, rho a bound on ``||L_n||``, evaluated on a dense grid with a
  second-derivative remainder, and ``1 + tail(T, rho)`` when rho <= 1), else
  ``sum_i rho^i / i!``; times the layer's output scale;
- Sandwich: ``A``, ``B`` are recovered from the applied matrices and ``mu = max_f
  lambda_max(A A^H + B B^H)`` is checked; LBDN's Theorem 3.1 (which needs only ``<= I``) with
  the positive homogeneity of ReLU gives ``scale * mu``; the cruder ``||first|| ||second||``
  is also valid and the smaller of the two is reported;
- MaxMin, PixelUnshuffle, Centering, ZeroChannelConcatenation, FirstChannels, Flatten, ReLU,
  AdaptiveMaxPool2d (non-overlapping windows): 1; dense layers: the exact spectral norm.

The model's bound is the product over its sequential chain. The lower bound is the largest of
``||f(x) - f(y)|| / ||x - y||`` found by Adam and of ``||J(x) v||`` from power iteration on
``J^T J`` at data points, evaluated in float64 on ``to_plain(model)`` (the same materialised
weights as the upper bounds), so ``lower > upper`` can only mean a bug.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .layers import LipschitzModule, MaxMin
from .layers._linalg import conv_kernel_fft, gram_bound
from .layers.bro import BROConv2d
from .layers.cayley import CayleyConv2d
from .layers.cpl import CPLConv2d, CPLLinear
from .layers.lot import LOTConv2d
from .layers.sandwich import SandwichConv2d, SandwichLinear
from .layers.sll import SLLConv2d, SLLLinear
from .layers.soc import SOCConv2d, taylor_tail_bound
from .layers.structural import Centering, FirstChannels, ZeroChannelConcatenation
from .export import _DENSE, _KERNEL_CONVS, to_plain, trace_input_shapes

__all__ = [
    "audit",
    "AuditResult",
    "LayerBound",
    "AuditError",
    "layer_bound",
    "circular_conv_norm",
    "zero_padded_conv_bound",
    "zero_padded_conv_norm",
    "DENSE_EXACT_MAX",
    "DENSE_MARGIN",
    "skew_taylor_bound",
    "UPPER_TOL",
    "LOWER_TOL",
]

#: an audited model passes when its upper bound is at most 1 + UPPER_TOL
UPPER_TOL = 1e-4
#: relative slack of the lower bound over the upper bound before it is flagged (round-off of the
#: folded plain weights, e.g. CPL's step size multiplied into its kernel in float32)
LOWER_TOL = 1e-5
#: the largest ``max(C_in, C_out) * H * W`` for which the audit builds the dense matrix of a
#: zero-padded convolution and takes its exact norm (a 4096 x 4096 float64 symmetric eigensolve:
#: several seconds on one CPU core)
DENSE_EXACT_MAX = 4096
#: relative safety margin on the dense norm (float64 round-off of lambda_max is ~1e-12 relative at that size)
DENSE_MARGIN = 1e-9
_DENSE_CHUNK = 256  # impulse responses computed per conv2d call (bounds the memory)
# exact dense norms already computed within the running audit() call (None outside one)
_NORM_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("_NORM_CACHE", default=None)
_ONE = (MaxMin, Centering, ZeroChannelConcatenation, FirstChannels, nn.PixelUnshuffle, nn.PixelShuffle,
        nn.Flatten, nn.Identity, nn.ReLU)


class AuditError(ValueError):
    """A model (or module) the audit cannot bound."""


@dataclass
class LayerBound:
    name: str
    type: str
    input_shape: tuple[int, ...]
    upper: float
    method: str
    gram_bound: float | None = None  # size-independent Schur bound, where the layer has a kernel
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditResult:
    model: str
    upper: float
    lower: float | None
    lower_attack: float | None
    lower_jacobian: float | None
    layers: list[LayerBound]
    input_shape: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def upper_ok(self) -> bool:
        return self.upper <= 1 + UPPER_TOL

    @property
    def consistent(self) -> bool:
        return self.lower is None or self.lower <= self.upper * (1 + LOWER_TOL)

    @property
    def ok(self) -> bool:
        return self.upper_ok and self.consistent

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(ok=self.ok, upper_ok=self.upper_ok, consistent=self.consistent, upper_tol=UPPER_TOL)
        return d

    def table(self) -> str:
        head = f"{'#':>3} {'layer':<28} {'type':<24} {'input':<14} {'upper':>12} {'gram':>10}  method"
        rows = [head, "-" * len(head)]
        for i, b in enumerate(self.layers):
            gram = f"{b.gram_bound:10.6f}" if b.gram_bound is not None else f"{'-':>10}"
            shape = "x".join(str(s) for s in b.input_shape)
            rows.append(f"{i:>3} {b.name:<28} {b.type:<24} {shape:<14} {b.upper:12.9f} {gram}  {b.method}")
        rows.append("-" * len(head))
        rows.append(f"upper bound (product): {self.upper:.9f}   {'OK' if self.upper_ok else 'EXCEEDS'} 1 + {UPPER_TOL:g}")
        if self.lower is not None:
            rows.append(f"lower bound: {self.lower:.9f} (attack {self.lower_attack:.9f}, Jacobian power iteration "
                        f"{self.lower_jacobian:.9f})   {'consistent' if self.consistent else 'LOWER > UPPER: BUG'}")
        rows.append("PASS" if self.ok else "FAIL")
        return "\n".join(rows)


# --- norms (float64) ---------------------------------------------------------------------------
def _matrix_norm(w: torch.Tensor) -> float:
    w = w.detach().to(torch.complex128 if w.is_complex() else torch.float64)
    return float(torch.linalg.svdvals(w).max())


def _fold(kernel: torch.Tensor, n_h: int, n_w: int) -> torch.Tensor:
    """A centred kernel larger than the grid, folded onto it (taps at equal offsets mod n add up)."""
    k_h, k_w = kernel.shape[-2:]
    if k_h <= n_h and k_w <= n_w:
        return kernel
    out = kernel.new_zeros(*kernel.shape[:2], n_h, n_w)
    c_h, c_w, o_h, o_w = (k_h - 1) // 2, (k_w - 1) // 2, (n_h - 1) // 2, (n_w - 1) // 2
    for a in range(k_h):
        for b in range(k_w):
            out[..., (a - c_h + o_h) % n_h, (b - c_w + o_w) % n_w] += kernel[..., a, b]
    return out


def circular_conv_norm(kernel: torch.Tensor, n_h: int, n_w: int) -> float:
    """EXACT l2 norm of the circular 'same' cross-correlation by ``kernel`` on an n_h x n_w grid."""
    k = _fold(kernel.detach().double(), n_h, n_w)
    return float(torch.linalg.svdvals(conv_kernel_fft(k, n_h, n_w)).max())


def zero_padded_conv_norm(kernel: torch.Tensor, n_h: int, n_w: int) -> float:
    """EXACT l2 norm (float64) of the zero-padded 'same' cross-correlation by ``kernel`` (odd sizes).

    The largest singular value of the dense operator, built from its impulse responses (the
    identity basis as a batch, ``_DENSE_CHUNK`` at a time), as ``sqrt(lambda_max)`` of its Gram
    matrix. Its size is ``C_in H W x C_out H W``:
    meant for small maps (see ``DENSE_EXACT_MAX``). Within an ``audit`` call results are cached.
    """
    if kernel.ndim != 4:
        raise ValueError(f"expected a (out, in, k_h, k_w) kernel, got shape {tuple(kernel.shape)}")
    c_out, c_in, k_h, k_w = kernel.shape
    if k_h % 2 != 1 or k_w % 2 != 1:
        raise ValueError(f"a 'same' zero-padded convolution needs odd kernel sizes, got {k_h}x{k_w}")
    if n_h < 1 or n_w < 1:
        raise ValueError(f"expected a positive map size, got {n_h}x{n_w}")
    k = kernel.detach().to("cpu", torch.float64).contiguous()
    cache = _NORM_CACHE.get()
    key = (tuple(k.shape), n_h, n_w, hashlib.sha256(k.numpy().tobytes()).hexdigest())
    if cache is not None and key in cache:
        return cache[key]
    n = c_in * n_h * n_w
    rows = []
    for start in range(0, n, _DENSE_CHUNK):
        m = min(_DENSE_CHUNK, n - start)
        basis = torch.zeros(m, n, dtype=torch.float64)
        basis[torch.arange(m), torch.arange(start, start + m)] = 1.0
        out = F.conv2d(basis.view(m, c_in, n_h, n_w), k, padding=(k_h // 2, k_w // 2))
        rows.append(out.reshape(m, -1))
    # rows: the operator's transpose (one impulse response per row); the same spectral norm.
    # lambda_max of the Gram matrix (symmetric eigensolver, backward stable) is ~4x faster than an
    # SVD and as accurate for the LARGEST singular value (relative error ~ n * eps, far below
    # DENSE_MARGIN)
    a = torch.cat(rows)
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    norm = math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0))
    if cache is not None:
        cache[key] = norm
    return norm


def _zero_padded(kernel: torch.Tensor, n_h: int, n_w: int, enough=None) -> tuple[float, str]:
    """(bound, what it is) for the zero-padded 'same' convolution on n_h x n_w maps.

    ``enough(bound) -> bool``: the caller's test that the cheap bounds already give its final
    answer; the (slow) exact dense norm is then skipped.
    """
    k_h, k_w = kernel.shape[-2:]
    circ = circular_conv_norm(kernel, n_h + k_h - 1, n_w + k_w - 1)
    gram = float(gram_bound(kernel.detach().double()))
    best, how = (circ, "circular norm on n+k-1 grid") if circ <= gram else (gram, "gram bound")
    small = max(kernel.shape[0], kernel.shape[1]) * n_h * n_w <= DENSE_EXACT_MAX
    if small and k_h % 2 == 1 and k_w % 2 == 1 and not (enough is not None and enough(best)):
        dense = zero_padded_conv_norm(kernel, n_h, n_w) * (1 + DENSE_MARGIN)
        if dense <= best:
            best, how = dense, "exact dense norm"
    return best, how


def zero_padded_conv_bound(kernel: torch.Tensor, n_h: int, n_w: int) -> float:
    """GUARANTEED bound on the zero-padded 'same' convolution on n_h x n_w maps.

    The smallest of: the exact dense norm (``zero_padded_conv_norm`` times ``1 + DENSE_MARGIN``,
    only where ``max(C_in, C_out) * n_h * n_w <= DENSE_EXACT_MAX`` and the kernel sizes are odd),
    the circular norm on the (n + k - 1)-grid (of which the zero-padded operator is a
    compression) and ``gram_bound``.
    """
    return _zero_padded(kernel, n_h, n_w)[0]


def _taylor_real_imag(terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (ascending) of Re and Im of ``S_T(i l) = sum_k (i l)^k / k!`` in l."""
    re, im = np.zeros(terms + 1), np.zeros(terms + 1)
    for k in range(terms + 1):
        c = 1.0 / math.factorial(k)
        sign = (-1) ** (k // 2)
        (re if k % 2 == 0 else im)[k] = sign * c
    return re, im


def skew_taylor_bound(terms: int, rho: float, grid: int = 20001) -> float:
    """GUARANTEED ``max_{|l| <= rho} |S_T(i l)|``: the norm bound of ``S_T(L)`` for skew ``L``, ``||L|| <= rho``.

    ``f(l) = |S_T(i l)|^2`` is a polynomial; its maximum over [0, rho] (f is even) is at most the
    grid maximum plus ``h^2 / 8 * max|f''|`` (h the grid step), with ``max|f''|`` bounded by the
    absolute coefficients. For rho <= 1 also ``1 + tail(T, rho)``; the smaller is returned.
    """
    if rho <= 0:
        return 1.0
    re, im = _taylor_real_imag(terms)
    f = np.polynomial.polynomial.polyadd(np.polynomial.polynomial.polymul(re, re),
                                         np.polynomial.polynomial.polymul(im, im))
    lam = np.linspace(0.0, rho, grid)
    vals = np.polynomial.polynomial.polyval(lam, f)
    d2 = np.polynomial.polynomial.polyder(f, 2)
    m2 = float(np.polynomial.polynomial.polyval(rho, np.abs(d2))) if len(d2) else 0.0
    h = rho / (grid - 1)
    best = math.sqrt(max(float(vals.max()) + h * h / 8 * m2, 0.0)) * (1 + 1e-12)
    if rho <= 1:
        best = min(best, 1.0 + taylor_tail_bound(terms, rho))
    return best


def _potential(g_norm: float) -> float:
    """Norm bound of ``I - G^T D G`` (D diagonal in [0, 1]) given ``||G|| <= g_norm``."""
    return max(1.0, g_norm * g_norm - 1.0)


def _adaptive_pool_factor(in_size: tuple[int, int], out_size) -> float:
    """sqrt of the largest number of adaptive pooling windows that share one pixel (1: disjoint)."""
    if isinstance(out_size, int) or out_size is None:
        out_size = (out_size, out_size)
    mult = 1
    for n, o in zip(in_size, out_size):
        o = n if o is None else o
        cover = [0] * n
        for i in range(o):
            for p in range((i * n) // o, -((-(i + 1) * n) // o)):
                cover[p] += 1
        mult *= max(cover)
    return math.sqrt(mult)


# --- one layer ---------------------------------------------------------------------------------
def _size(shape: tuple[int, ...]) -> tuple[int, int]:
    return int(shape[-2]), int(shape[-1])


def layer_bound(m: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
    """``(upper, method, gram_bound or None, detail)`` for one leaf module with input ``shape`` (no batch)."""
    if isinstance(m, _ONE):
        return 1.0, "1 (isometry, projection or permutation)", None, {}
    if isinstance(m, nn.AdaptiveMaxPool2d):
        return _adaptive_pool_factor(_size(shape), m.output_size), "sqrt(max window overlap)", None, {}
    if isinstance(m, _DENSE) or isinstance(m, nn.Linear):
        w = m.effective_weight() if isinstance(m, LipschitzModule) else m.weight
        return _matrix_norm(w), "exact spectral norm", None, {}
    if isinstance(m, _KERNEL_CONVS):
        k = m.effective_weight()
        return circular_conv_norm(k, *_size(shape)), "exact circular norm (FFT)", float(gram_bound(k.detach().double())), {}
    if isinstance(m, nn.Conv2d):
        return _plain_conv_bound(m, shape)
    if isinstance(m, CayleyConv2d):
        return _matrix_norm(m.effective_weight(_size(shape))), "exact per-frequency norm", None, {}
    if isinstance(m, BROConv2d):
        if not m.size_dependent:
            return _matrix_norm(m.effective_weight()), "exact spectral norm (1x1)", None, {}
        how = "exact per-frequency norm" if m.padding == "circular" else "per-frequency norm on the padded grid"
        return _matrix_norm(m.effective_weight(_size(shape))), how, None, {}
    if isinstance(m, LOTConv2d):
        if not m.size_dependent:
            return _matrix_norm(m.effective_weight()), "exact spectral norm (1x1)", None, {}
        return (_matrix_norm(m.effective_weight(_size(shape))), "per-frequency norm on the padded grid",
                None, {})
    if isinstance(m, (CPLConv2d, CPLLinear, SLLConv2d, SLLLinear)):
        return _residual_bound(m, shape)
    if isinstance(m, SOCConv2d):
        return _soc_bound(m, shape)
    if isinstance(m, (SandwichConv2d, SandwichLinear)):
        return _sandwich_bound(m, shape)
    raise AuditError(
        f"the audit has no guaranteed bound for {type(m).__name__}; it knows the lipzoo layers, plain "
        "nn.Conv2d / nn.Linear and the parameter-free pieces of the ConvNet family"
    )


def _plain_conv_bound(m: nn.Conv2d, shape) -> tuple[float, str, float | None, dict]:
    if m.groups != 1 or m.stride not in ((1, 1), 1) or m.dilation not in ((1, 1), 1):
        raise AuditError(f"the audit bounds only plain stride-1, undilated, ungrouped nn.Conv2d, got {m}")
    k = m.weight
    gram = float(gram_bound(k.detach().double()))
    same = tuple(m.padding) == (k.shape[-2] // 2, k.shape[-1] // 2) and k.shape[-1] % 2 == 1 and k.shape[-2] % 2 == 1
    if m.padding_mode == "circular" and same:
        return circular_conv_norm(k, *_size(shape)), "exact circular norm (FFT)", gram, {}
    if m.padding_mode == "zeros" and same:
        bound, how = _zero_padded(k, *_size(shape))
        return bound, f"zero-padded: {how}", gram, {}
    return gram, "gram bound (Schur test)", gram, {}


def _residual_bound(m: nn.Module, shape) -> tuple[float, str, float | None, dict]:
    conv = isinstance(m, (CPLConv2d, SLLConv2d))
    k = (m.kernel if conv else (m.weight if isinstance(m, CPLLinear) else m.weights)).detach().double()
    if isinstance(m, (CPLConv2d, CPLLinear)):
        size = _size(shape) if (conv and m.paper_compatible) else None
        t = m.effective_weight(size).rescaling.detach().double().expand(k.shape[0])
    else:
        t = m.effective_weight().detach().double()
    if bool((t < 0).any()):
        raise AuditError(f"{type(m).__name__} has a negative step size; the residual bound needs t >= 0")
    g = t.sqrt().view(-1, *([1] * (k.ndim - 1))) * k
    if conv:  # ||G||^2 <= 2 already gives the bound 1: the exact norm cannot lower it
        g_norm, how = _zero_padded(g, *_size(shape), enough=lambda b: b * b <= 2.0)
    else:
        g_norm, how = _matrix_norm(g), "exact spectral norm"
    upper = _potential(g_norm)
    detail = {"G_norm_sq": g_norm * g_norm, "sdp_condition": g_norm * g_norm <= 2.0, "G_norm_method": how}
    return upper, "max(1, ||diag(sqrt t) K||^2 - 1)", None, detail


def _soc_bound(m: SOCConv2d, shape) -> tuple[float, str, float | None, dict]:
    kernel = m.effective_weight().detach()
    n_h, n_w = _size(shape)
    n_h, n_w = n_h // m.stride, n_w // m.stride
    terms = m.train_terms if m.training else m.eval_terms
    skew = bool(torch.equal(kernel, -kernel.transpose(0, 1).flip(2, 3)))
    scale = m.taylor_scale(terms)

    def series_bound(r: float) -> float:
        if skew:
            return skew_taylor_bound(terms, r)
        return sum(r**i / math.factorial(i) for i in range(terms + 1))

    # a cheap ||L_n|| bound that already certifies the layer (<= 1) skips the exact dense norm
    rho, rho_how = _zero_padded(kernel, n_h, n_w, enough=lambda r: scale * series_bound(r) <= 1.0)
    series = series_bound(rho)
    if skew:
        method = "skew: max |S_T(i l)| for |l| <= ||L_n||"
    else:
        method = "sum ||L_n||^i / i! (kernel not skew)"
    detail = {"rho": rho, "rho_method": rho_how, "terms": terms, "scale": scale}
    return scale * series, method, float(gram_bound(kernel.double())), detail


def _sandwich_bound(m: nn.Module, shape) -> tuple[float, str, float | None, dict]:
    conv = isinstance(m, SandwichConv2d)
    first, _, second = m.effective_weight(_size(shape) if conv else None)
    cdt = torch.complex128 if (first.is_complex() or second.is_complex()) else torch.float64
    first, second = first.detach().to(cdt), second.detach().to(cdt)
    psi = torch.zeros_like(m.psi, dtype=torch.float64) if m.numerical_stable else m.psi.detach().double()
    b = torch.exp(psi)[:, None] * first / (math.sqrt(2) * m.scale)
    a_h = second * torch.exp(-psi)[None, :] / math.sqrt(2)  # A^H
    a = a_h.mH
    gram = a @ a.mH + b @ b.mH
    mu = float(torch.linalg.eigvalsh(gram).max())
    theorem = m.scale * mu
    product = _matrix_norm(first) * _matrix_norm(second)
    detail = {"mu": mu, "AA+BB<=I": mu <= 1 + 1e-12, "product_bound": product}
    if theorem <= product:
        return theorem, "LBDN Thm 3.1: scale * lambda_max(AA^H + BB^H)", None, detail
    return product, "||first|| * ||second||", None, detail


# --- the model ---------------------------------------------------------------------------------
def _chain(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaves of a (nested) sequential model, in forward order."""
    from .models import ConvNet

    if isinstance(model, nn.Sequential):
        if type(model).forward not in (nn.Sequential.forward, ConvNet.forward):
            raise AuditError(f"{type(model).__name__} overrides forward; the audit composes only plain chains")
        out = []
        for name, child in model._modules.items():  # not named_children(): it drops a reused module
            if child is not None:
                out += _chain(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix or type(model).__name__, model)]


class _frozen:
    """Parameters without requires_grad for the duration (so eval weight caches are used)."""

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc) -> None:
        for p in self.params:
            p.requires_grad_(True)


def _attack(f: nn.Module, x0: torch.Tensor, steps: int, lr: float, generator: torch.Generator, progress: bool) -> float:
    x = x0.clone().requires_grad_(True)
    y = (x0 + 0.05 * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)).requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=lr)
    best = 0.0
    for _ in tqdm(range(steps), desc="attack", unit="step", disable=not progress, leave=False):
        den = (x - y).flatten(1).norm(dim=1)
        ratio = (f(x) - f(y)).flatten(1).norm(dim=1) / den.clamp_min(1e-12)
        valid = den > 1e-6
        if bool(valid.any()):
            best = max(best, float(ratio[valid].detach().max()))
        opt.zero_grad()
        (-ratio[valid].sum()).backward()
        opt.step()
    return best


def _jacobian_power(f: nn.Module, x: torch.Tensor, iters: int, generator: torch.Generator) -> float:
    """max_i ||J(x_i) v_i|| after power iteration on J^T J (per sample; the model acts per sample)."""
    x = x.clone().requires_grad_(True)
    out = f(x)
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    best = 0.0
    for _ in range(max(iters, 1)):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (v.ndim - 1)))
        u = torch.zeros_like(out, requires_grad=True)
        (jt_u,) = torch.autograd.grad(out, x, u, create_graph=True)  # J^T u, linear in u
        (jv,) = torch.autograd.grad(jt_u, u, v, retain_graph=True)  # J v (double-backward trick)
        best = max(best, float(jv.flatten(1).norm(dim=1).max()))
        (v,) = torch.autograd.grad(out, x, jv, retain_graph=True)  # J^T J v
    return best


def audit(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...] | None = None,
    data: torch.Tensor | None = None,
    lower: bool = True,
    attack_steps: int = 200,
    attack_batch: int = 8,
    attack_lr: float = 0.01,
    power_iters: int = 20,
    seed: int = 0,
    name: str | None = None,
    progress: bool = False,
) -> AuditResult:
    """Guaranteed upper and empirical lower bounds on the l2 Lipschitz constant of ``model``.

    ``input_shape`` (C, H, W): the input the model is used at (default: its ``in_chans`` and
    native ``input_size``). ``data``: images for the lower bound (default: ``attack_batch``
    uniform random images in [0, 1]). ``lower=False`` skips the lower bound.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"audit expects a torch.nn.Module, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    token = _NORM_CACHE.set({})
    try:
        with _frozen(model), torch.no_grad():
            shapes = trace_input_shapes(model, input_shape)
            chain = _chain(model)
            bounds = []
            for qual, m in tqdm(chain, desc="audit", unit="layer", disable=not progress, leave=False):
                if m not in shapes:
                    raise AuditError(f"{qual} ({type(m).__name__}) is not reached by the model's forward pass")
                up, method, gram, detail = layer_bound(m, shapes[m])
                bounds.append(LayerBound(qual, type(m).__name__, shapes[m], float(up), method, gram, detail))
        shape = shapes[model]
        upper = math.prod(b.upper for b in bounds)
        lo = lo_a = lo_j = None
        if lower:
            g = torch.Generator().manual_seed(seed)
            plain = to_plain(model, input_shape=shape, circular="fft").double()
            x0 = data if data is not None else torch.rand(attack_batch, *shape, generator=g)
            x0 = x0[:attack_batch].double()
            lo_j = _jacobian_power(plain, x0, power_iters, g)
            lo_a = _attack(plain, x0, attack_steps, attack_lr, g, progress) if attack_steps > 0 else 0.0
            lo = max(lo_a, lo_j)
    finally:
        model.train(was_training)
        _NORM_CACHE.reset(token)
    settings = {"attack_steps": attack_steps, "attack_batch": attack_batch, "attack_lr": attack_lr,
                "power_iters": power_iters, "seed": seed, "data": "given" if data is not None else "uniform random"}
    return AuditResult(name or type(model).__name__, upper, lo, lo_a, lo_j, bounds, tuple(shape), settings)
