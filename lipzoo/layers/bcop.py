"""BCOP: Block Convolution Orthogonal Parameterization (Li et al., NeurIPS 2019) and BjorckLinear.

``BCOPConv2d`` orthonormalises 2(k-1)+1 unconstrained c_max x c_max matrices at once with the
Bjorck-Bowie iteration (20 iterations, power-iteration prescaling). The first gives an
orthogonal H; the others give symmetric half-rank projectors P_m = (Q_m M)(Q_m M)^T (mask M).
Pairs of projectors give 2x2 block kernels [[P Q, P(I-Q)], [(I-P)Q, (I-P)(I-Q)]], whose matrix
convolution, left-multiplied by H, is a k x k kernel that is orthogonal for circular padding
and any input size. ``BjorckLinear`` is the paper's dense head (lipnn ``BjorckLinear``): Bjorck
(3 iterations in training, 15 in eval, beta 0.5, power-iteration prescaling) on a free weight.

Why the default is sound: Bjorck with finitely many iterations (and a power-iteration estimate,
which converges from below, as prescaling) is only approximately orthogonal, so by default the
assembled kernel (resp. matrix) is divided by ``max(1, gram_bound)``, a GUARANTEED upper bound
on its l2 operator norm for every padding and input size (Schur test on the autocorrelation);
for a near-orthogonal kernel that bound is 1 + O(round-off), so orthogonality is kept.
``paper_compatible=True`` skips the rescale and reproduces the paper's function exactly.

The power-iteration prescaling starts from a fixed pseudo-random vector (the paper draws a
fresh random one on every call), so the forward pass is a pure function of the parameters.

Faster training, same function. Each Bjorck step keeps the singular vectors and maps every
singular value by ``s -> s (1.5 - 0.5 s^2)``, so the 20-step result is ``W r(W^T W)`` for a
polynomial ``r`` (:func:`bjorck_scalar`), and the power-iteration estimate is, in exact arithmetic,
a ratio of sums over the eigenpairs of ``W^T W``. In training (default mode) both come from ONE
float64 eigendecomposition of ``W^T W`` per layer (``bjorck(method="eigh")``,
:func:`~lipzoo.layers._spectral.gram_apply`, derivative by Daleckii-Krein: 7 products and an
``eigh`` instead of the iteration's 100 products and 10 power steps): equal to the iteration within
float round-off, values and gradients (tested). In eval mode, and with ``paper_compatible``, the
iteration runs literally, so the eval weight (cached; what the audit, the exporter and
certification see) is bit-identical to the iteration's. Why: the norm rescale (above) turns the
kernel's round-off-level non-orthogonality into a Lipschitz constant a few 1e-6 below 1 per
layer (the Schur test adds up ~c (2k-1)^2 round-off-sized entries), a different rounding pattern
moves it by as much, and a published model's audit (a product over ~27 layers) is checked to 5e-5.
In training the kernel is also assembled as a product of factors (:func:`_bcop_kernel_factored`,
13 products instead of 33 for k = 3). Everywhere, the Bjorck steps that do run
have a 3-product backward (:class:`_BjorckStep`), the norm bound's gradient is computed from its
maximal row only (:func:`norm_bound`) and the circular padding has a lean backward
(:class:`_CircularPad`): all three give bit-identical values.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._base import check_kernel_size, KernelConv, MatrixLayer
from ._linalg import gram_bound, power_iteration_sigma, power_start_vector
from ._padding import circular_pad
from ._spectral import gram_apply, gram_eigh, traceable

__all__ = ["BCOPConv2d", "BjorckLinear", "bjorck", "bcop_kernel", "norm_bound"]

POWER_ITERS = 10
BJORCK_METHODS = ("iterate", "eigh")


def bjorck_scalar(lam: torch.Tensor, iters: int, beta: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The Bjorck recursion on an eigenvalue ``lam = sigma_0^2`` of ``W_0^T W_0``: ``(r_T, r_T')``.

    ``W_{t+1} = (1 + beta) W_t - beta W_t W_t^T W_t`` keeps the singular vectors and maps each
    singular value ``sigma_t`` to ``sigma_t ((1 + beta) - beta sigma_t^2)``, so
    ``W_T = W_0 r_T(W_0^T W_0)`` with ``r_0 = 1``, ``r_{t+1} = r_t ((1 + beta) - beta lam r_t^2)``
    (``r_t = sigma_t / sigma_0``): a polynomial in ``lam``, defined for every real ``lam``; its
    derivative is carried alongside (forward mode).
    """
    # seven fused operations per step (the vectors are short, so each operation's cost is its dispatch)
    r, dr = torch.ones_like(lam), torch.zeros_like(lam)
    lam2, start = 2 * lam, torch.full_like(lam, 1 + beta)
    for _ in range(iters):
        r2 = r * r
        m = torch.addcmul(start, lam, r2, value=-beta)  # (1 + beta) - beta lam r^2
        dq = torch.addcmul(r2, lam2, r * dr)  # d(lam r^2) = r^2 + 2 lam r dr
        dr = torch.addcmul(dr * m, r, dq, value=-beta)
        r = r * m
    return r, dr


def _power_sigma_from_eigh(w: torch.Tensor, lam: torch.Tensor, v: torch.Tensor, iters: int) -> torch.Tensor:
    """``power_iteration_sigma(w, iters)`` in closed form from the eigendecomposition ``(lam, V)`` of ``W^T W``.

    From the start ``u_0`` the iteration's ``v_t`` is ``G^(t-1) b / ||.||`` (``G = W^T W``,
    ``b = W^T u_0``) and its estimate ``u_t^T W v_t = ||W v_t||``; with ``c = V^T b`` that is
    ``sigma^2 = sum lam^(2T-1) c^2 / sum lam^(2T-2) c^2`` (computed relative to the largest ``lam``).
    The same number in exact arithmetic; evaluated in float64 here.
    """
    b = w.transpose(-1, -2) @ power_start_vector(w)
    c2 = (v.transpose(-1, -2) @ b)[..., 0].square()
    lam = lam.clamp_min(0)
    top = lam.amax(dim=-1, keepdim=True)
    r = lam / torch.where(top > 0, top, torch.ones_like(top))
    num = (r.pow(2 * iters - 1) * c2).sum(dim=-1)
    den = (r.pow(2 * iters - 2) * c2).sum(dim=-1)
    ok = den > 0  # b = 0: the iteration's vectors vanish and its estimate is 0
    return torch.where(ok, (top[..., 0] * num / torch.where(ok, den, torch.ones_like(den))).sqrt(), torch.zeros_like(den))


def _bjorck_eigh(w: torch.Tensor, iters: int, beta: float, power_iteration_scaling: bool) -> torch.Tensor:
    """Prescaling and ``bjorck_orthonormalize`` of a tall (..., m, n) stack from one float64
    eigendecomposition of ``W^T W``: the power-iteration estimate in closed form, then
    ``W_T = W_s r_T(W_s^T W_s)`` with ``W_s`` the prescaled matrix (whose Gram matrix has the
    same eigenvectors and eigenvalues divided by ``sigma^2``), the products in ``W``'s precision.
    (The Gram matrix squares the condition number, hence the double-precision decomposition.)"""
    lam, v = gram_eigh(w)
    if power_iteration_scaling:
        sigma = _power_sigma_from_eigh(w.detach().to(torch.float64), lam, v, POWER_ITERS)
        w = w / sigma.to(w.dtype)[..., None, None]
    else:
        scale = math.sqrt(w.shape[0] * w.shape[1])
        sigma = torch.full(lam.shape[:-1], scale, dtype=torch.float64, device=lam.device)
        w = w / scale
    fn = functools.partial(bjorck_scalar, iters=iters, beta=beta)
    return gram_apply(w, fn, eigh=(lam / sigma[..., None].square(), v))


@traceable
class _BjorckStep(torch.autograd.Function):
    """One first-order Bjorck step ``Y = (1 + beta) W - (beta W)(W^T W)``, computed exactly as
    ``_linalg.bjorck_orthonormalize`` computes it (bit-identical values), with a 3-product backward:
    for ``A = W^T W`` (kept from the forward as a second output) and ``G = dL/dY``,
    ``dL/dW = (1 + beta) G - beta G A^T + W (C + C^T)`` with ``C = -beta W^T G`` (autograd through
    the two products takes four)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        a = w.transpose(-1, -2) @ w
        return (1 + beta) * w - beta * w @ a, a

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        w, beta = inputs
        a = output[1]
        ctx.mark_non_differentiable(a)
        ctx.beta = beta
        ctx.save_for_backward(w, a)
        ctx.save_for_forward(w, a)

    @staticmethod
    def jvp(ctx, dw: torch.Tensor, _) -> tuple[torch.Tensor, None]:
        w, a = ctx.saved_tensors
        da = dw.transpose(-1, -2) @ w
        return (1 + ctx.beta) * dw - ctx.beta * (dw @ a + w @ (da + da.transpose(-1, -2))), None

    @staticmethod
    def backward(ctx, g: torch.Tensor, _):
        w, a = ctx.saved_tensors
        beta = ctx.beta
        c = -beta * (w.transpose(-1, -2) @ g)
        return (1 + beta) * g - beta * (g @ a.transpose(-1, -2)) + w @ (c + c.transpose(-1, -2)), None


def _bjorck_iterate(w: torch.Tensor, iters: int, beta: float) -> torch.Tensor:
    """``_linalg.bjorck_orthonormalize(w, iters, beta)``: the same values, a cheaper backward."""
    for _ in range(iters):
        w = _BjorckStep.apply_(w, beta)[0]
    return w


def bjorck(
    w: torch.Tensor,
    iters: int,
    beta: float = 0.5,
    power_iteration_scaling: bool = True,
    method: str = "iterate",
) -> torch.Tensor:
    """The paper's ``bjorck_orthonormalize`` on a (..., m, n) stack (first order).

    Wide matrices are handled transposed. With ``power_iteration_scaling`` each matrix is first
    divided by its (deterministic) power-iteration sigma estimate, without gradient through the
    estimate; otherwise by sqrt(shape[0] * shape[1]) (the paper's "default scaling", which for a
    batched stack uses the batch and row sizes: a quirk kept for fidelity).
    ``method="iterate"`` runs the power and Bjorck iterations literally (two matrix products per
    step); ``method="eigh"`` evaluates both from one float64 eigendecomposition of ``W^T W``
    (:func:`_bjorck_eigh`): equal within float round-off, values and gradients, and much cheaper
    to differentiate for many iterations.
    """
    if method not in BJORCK_METHODS:
        raise ValueError(f"method must be one of {BJORCK_METHODS}, got {method!r}")
    wide = w.shape[-2] < w.shape[-1]
    if wide:
        w = w.transpose(-1, -2)
    if method == "eigh":
        w = _bjorck_eigh(w, iters, beta, power_iteration_scaling)
        return w.transpose(-1, -2) if wide else w
    if power_iteration_scaling:
        w = w / power_iteration_sigma(w.detach(), POWER_ITERS)[..., None, None]
    else:
        w = w / math.sqrt(w.shape[0] * w.shape[1])
    w = _bjorck_iterate(w, iters, beta)
    return w.transpose(-1, -2) if wide else w


EIGH_MIN_ITERS = 8  #: from this many Bjorck iterations on, the eigendecomposition is the cheaper way


def norm_bound(weight: torch.Tensor) -> torch.Tensor:
    """Guaranteed upper bound on the l2 norm of a conv kernel (out, in, k, k) or matrix (out, in).

    :func:`~lipzoo.layers._linalg.gram_bound` (the Schur / Gershgorin test on the autocorrelation,
    valid for zero and circular padding and every input size, its gradient from the maximal row
    alone), taken on the side where the autocorrelation is near the identity for a near-isometry:
    ``K^T K`` when out >= in, ``K K^T`` otherwise (``||K|| = ||K^T||``).
    """
    return gram_bound(weight, "in" if weight.shape[0] >= weight.shape[1] else "out")


def _block_orth(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """The 2x2 block kernel [[p1 p2, p1 (I-p2)], [(I-p1) p2, (I-p1)(I-p2)]], shape (2, 2, n, n)."""
    eye = torch.eye(p1.shape[-1], dtype=p1.dtype, device=p1.device)
    a = torch.stack([p1, eye - p1])
    b = torch.stack([p2, eye - p2])
    return a[:, None] @ b[None, :]


def _matrix_conv(m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """Full 2-D convolution of kernels of matrices: (s, s, n, n) * (t, t, n, n) -> (s+t-1, ..., n, n).

    ``out[i, j] = sum_{a, b} m1[a, b] @ m2[i - a, j - b]``, accumulated in the paper's order.
    """
    s, t = m1.shape[0], m2.shape[0]
    prod = m1[:, :, None, None] @ m2[None, None]  # (s, s, t, t, n, n)
    out = m1.new_zeros(s + t - 1, s + t - 1, *m1.shape[-2:])
    for a in range(s):
        for b in range(s):
            out[a : a + t, b : b + t] += prod[a, b]
    return out


def bcop_kernel(ortho: torch.Tensor, mask: torch.Tensor, in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """The (out, in, k, k) BCOP kernel from orthonormal matrices ``ortho`` (2(k-1)+1, n, n).

    Exactly the paper's assembly, including its conventions (its taps are transposed in space,
    and a square 1x1 kernel is H itself rather than H^T).
    """
    h = ortho[0, :in_channels, :out_channels]  # (in, out)
    k = kernel_size
    if k == 1:
        w = h if in_channels == out_channels else h.transpose(0, 1)
        return w[:, :, None, None]
    q = ortho[1:] * mask
    proj = q @ q.transpose(-1, -2)  # symmetric half-rank projectors
    p = _block_orth(proj[0], proj[1])
    for m in range(1, k - 1):
        p = _matrix_conv(p, _block_orth(proj[2 * m], proj[2 * m + 1]))
    if in_channels <= out_channels:
        return (h @ p).permute(3, 2, 1, 0)  # taps (k, k, in, out) -> (out, in, k, k)
    return (h.transpose(0, 1) @ p).permute(2, 3, 1, 0)  # taps (k, k, out, in)


def _times_factor(t: torch.Tensor, proj: torch.Tensor, dim: int) -> torch.Tensor:
    """``T(z) (P + (I - P) z)`` for a polynomial ``T`` with matrix coefficients stacked along ``dim``:
    coefficient ``c`` becomes ``T_c P + T_(c-1) - T_(c-1) P``."""
    tp = torch.matmul(t, proj)
    pad = [0, 0] * (t.ndim - 1 - dim)
    return F.pad(tp, pad + [0, 1]) + F.pad(t - tp, pad + [1, 0])


def _bcop_kernel_factored(ortho: torch.Tensor, mask: torch.Tensor, in_channels: int, out_channels: int,
                          kernel_size: int) -> torch.Tensor:
    """:func:`bcop_kernel` evaluated as a product of factors (same kernel within float round-off).

    The block kernel ``[[P Q, P (I-Q)], [(I-P) Q, (I-P)(I-Q)]]`` is the 2-D polynomial
    ``(P + (I-P) z_1)(Q + (I-Q) z_2)`` and the matrix convolution of kernels is the product of
    their polynomials, so the assembled kernel is ``H (P_0 + (I-P_0) z_1)(P_1 + (I-P_1) z_2) ...``:
    multiplying ``H`` by one factor at a time takes 13 products for k = 3 where the block kernels,
    their convolution and the final product with ``H`` take 33.
    """
    if kernel_size == 1:
        return bcop_kernel(ortho, mask, in_channels, out_channels, kernel_size)
    h = ortho[0, :in_channels, :out_channels]
    q = ortho[1:] * mask
    proj = q @ q.transpose(-1, -2)
    t = (h if in_channels <= out_channels else h.transpose(0, 1))[None, None]  # coefficients (i, j, r, n)
    for m in range(kernel_size - 1):
        t = _times_factor(t, proj[2 * m], 0)
        t = _times_factor(t, proj[2 * m + 1], 1)
    if in_channels <= out_channels:
        return t.permute(3, 2, 1, 0)
    return t.permute(2, 3, 1, 0)


class BCOPConv2d(KernelConv):
    """BCOP convolution (orthogonal, circular padding k//2, stride 1).

    Training (default mode) evaluates the Bjorck polynomial by eigendecomposition and assembles
    the kernel factor by factor; eval mode and ``paper_compatible`` run the literal iteration and
    assembly (module docstring).

    Trainable: ``param_matrices`` (2(k-1)+1, c_max, c_max) and ``bias`` (out); ``mask`` is a
    persistent buffer. Options: ``bjorck_iters`` (20), ``power_iteration_scaling`` (True),
    ``stride`` (must be 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        paper_compatible: bool = False,
        bjorck_iters: int = 20,
        power_iteration_scaling: bool = True,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError(f"BCOPConv2d only supports stride 1, got stride={stride}")
        check_kernel_size(kernel_size)
        if bjorck_iters < 1:
            raise ValueError(f"bjorck_iters must be >= 1, got {bjorck_iters}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.paper_compatible = paper_compatible
        self.bjorck_iters = bjorck_iters
        self.power_iteration_scaling = power_iteration_scaling
        self.max_channels = c = max(in_channels, out_channels)
        self.num_kernels = 2 * (kernel_size - 1) + 1
        self.param_matrices = nn.Parameter(torch.empty(self.num_kernels, c, c))
        half = torch.zeros(self.num_kernels - 1, 1, c)
        half[..., : c // 2] = 1.0
        self.register_buffer("mask", half)
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each matrix orthogonal with gain 1/sqrt(c_max); bias U(+-1/sqrt(out)) (the paper's)."""
        with torch.no_grad():
            for i in range(self.num_kernels):
                nn.init.orthogonal_(self.param_matrices[i], gain=1.0 / math.sqrt(self.max_channels))
            bound = 1.0 / math.sqrt(self.out_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def _fast(self) -> bool:
        """Training in the default mode: the eigendecomposition and the factored assembly."""
        return self.training and not self.paper_compatible

    def _bjorck_method(self) -> str:
        return "eigh" if self._fast() and self.bjorck_iters >= EIGH_MIN_ITERS else "iterate"

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        ortho = bjorck(self.param_matrices, self.bjorck_iters, power_iteration_scaling=self.power_iteration_scaling,
                       method=self._bjorck_method())
        assemble = _bcop_kernel_factored if self._fast() else bcop_kernel
        kernel = assemble(ortho, self.mask, self.in_channels, self.out_channels, self.kernel_size)
        if self.paper_compatible:
            return kernel
        kernel = kernel.contiguous()  # one copy, not one per convolution (forward and backward)
        return kernel / norm_bound(kernel).clamp_min(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_channels)
        return F.conv2d(circular_pad(x, self.kernel_size // 2), self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bjorck_iters={self.bjorck_iters}, paper_compatible={self.paper_compatible}"


class BjorckLinear(MatrixLayer):
    """Dense layer with a Bjorck-orthonormalised weight (the paper's head for BCOP).

    ``weight`` is the free matrix (the paper's ``parametrizations.weight.original``); the layer
    applies ``bjorck(weight)`` with ``train_iters`` (3) iterations in training mode and
    ``eval_iters`` (15) in eval mode, beta 0.5, power-iteration prescaling. At construction the
    orthogonal initial weight is orthonormalised once with ``eval_iters`` iterations (the
    paper's ``right_inverse``). Bias: U(+-1/sqrt(in)), as ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        paper_compatible: bool = False,
        train_iters: int = 3,
        eval_iters: int = 15,
        beta: float = 0.5,
        power_iteration_scaling: bool = True,
    ) -> None:
        super().__init__()
        if train_iters < 1 or eval_iters < 1:
            raise ValueError(f"iteration counts must be >= 1, got train_iters={train_iters}, eval_iters={eval_iters}")
        self.in_features, self.out_features = in_features, out_features
        self.paper_compatible = paper_compatible
        self.train_iters, self.eval_iters, self.beta = train_iters, eval_iters, beta
        self.power_iteration_scaling = power_iteration_scaling
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        with torch.no_grad():
            bound = 1.0 / math.sqrt(in_features)
            nn.init.uniform_(self.bias, -bound, bound)
            nn.init.orthogonal_(self.weight)
            self.weight.copy_(self._bjorck(self.weight, eval_iters))

    def _bjorck(self, w: torch.Tensor, iters: int) -> torch.Tensor:
        return bjorck(w, iters, beta=self.beta, power_iteration_scaling=self.power_iteration_scaling)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        w = self._bjorck(self.weight, self.train_iters if self.training else self.eval_iters)
        if self.paper_compatible:
            return w
        return w / norm_bound(w).clamp_min(1.0)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", train_iters={self.train_iters}, eval_iters={self.eval_iters}, "
                f"paper_compatible={self.paper_compatible}")
