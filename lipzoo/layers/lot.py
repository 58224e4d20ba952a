"""LOT: Layer-wise Orthogonal Training (Xu, Li & Li, NeurIPS 2022).

The input is zero-padded by ``p = k // 2`` on each side; on the padded ``Hp x Wp`` grid the
convolution is circular, hence block-diagonal in the Fourier basis with one complex
``(out x in)`` matrix ``W_hat(f)`` per frequency. Each is replaced by (an approximation of) its
polar factor ``(W W^H)^{-1/2} W``: ``S = W W^H + 1e-4 I`` is divided by ``||S||_F + 1e-4``, the
coupled Newton-Schulz iteration ``T = (3I - Z Y)/2, Y <- Y T, Z <- T Z`` (``Y_0 = S``,
``Z_0 = I``; 10 steps in training and in eval) makes ``Z ~ S^{-1/2}``, and
``W_orth = Z W_hat / sqrt(||S||_F + 1e-4)``. The output is the inverse FFT of
``W_orth x_hat`` (real part), cropped back to ``H x W``, plus the bias.

Phase convention (checked against the paper's golden logits): the paper's
``shift * conj(fft2(W, (n, n)))`` with ``shift = exp(-2 pi i c (u + v) / n)``, ``c = (k-1)//2``,
is exactly ``_fourier.conv_kernel_fft`` (the frequency form of a centred circular 'same'
``F.conv2d``), laid out ``(Hp, Wp, out, in)``.

Why the default is sound (no estimate involved, so the default IS the paper's maths): every
iterate is a polynomial in ``A = S / ||S||`` (Hermitian, eigenvalues ``a`` in ``(0, 1)``), and
``Y_t = A Z_t``; on an eigenvector ``u_t = sqrt(a) z_t`` obeys ``u_{t+1} = u_t (3 - u_t^2) / 2``,
which maps ``[0, 1]`` into ``[0, 1]``. The singular values of ``W_orth`` are
``u_T * sigma / sqrt(sigma^2 + 1e-4) < u_T <= 1``, so each frequency's matrix has norm <= 1; the
DFT is unitary, taking the real part and cropping are contractions and zero-padding is an
isometry, so the layer is 1-Lipschitz for every input size and iteration count (float32
round-off: tested <= 1 + 1e-4). It is NOT orthogonal: with 10 iterations small singular values
of ``W_hat`` stay far below 1.

lipzoo's default computes the same function faster (equal to the paper's within float
round-off, values and gradients, tested): a real input has a Hermitian spectrum and
``W_orth(-f) = conj(W_orth(f))``, so only the ``rfft2`` half of the frequencies is
orthogonalised; a 1x1 kernel has the same real matrix at every frequency, so it is
orthogonalised once and applied as a plain 1x1 convolution (no FFT, any input size). And the
iteration is not run on matrices: ``Z_T`` is a polynomial ``z_T`` in ``A`` (above), so with one
eigendecomposition ``S = U diag(s) U^H`` (``a = s / n``) ``Z_T = U diag(z_T(a)) U^H``, ``z_T``
evaluated by the scalar recursion (:func:`newton_schulz_scalar`, float64). The decomposition
runs in double precision for the eval weight; in training in single precision with the
eigenvalues refined as double-precision Rayleigh quotients (:func:`_lot_eigh`); either way within
the iteration's own round-off. The gradient is written out (:class:`_LOTPolar`,
Daleckii-Krein: divided differences of ``z_T``, never a division by a small eigenvalue gap, so it
is exact also at the repeated eigenvalues of the identity initialisation). That is one batched
``eigh`` and eight products per training step (one in double precision) instead of about 85
products, and the bound above holds as it is (``u_T(a) <= 1`` for every ``a``). On small grids
each distinct frequency of the half spectrum is orthogonalised once
(``_fourier.half_spectrum_map``: conjugate rows mirrored, self-mirrored ones in real
arithmetic). ``paper_compatible=True`` runs the paper's literal computation: full ``fft2`` over
all frequencies, also for 1x1 kernels, and the matrix iteration
(``lot_orthogonalize(method="newton")``). Any input size is accepted (the paper's cache breaks
on a second size); the eval cache holds the weight of the last size seen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._base import check_kernel_size, as_size, LipschitzModule, map_size, MatrixLayer, spatial_size
from ._fourier import conv_kernel_fft, conv_kernel_rfft, fft_conv2d, half_spectrum_map
from ._linalg import matmul
from ._norms import matrix_norm
from ._plain import frequency_op, plain_conv1x1
from ._spectral import _adjoint, _higher, _real_dtype, divided_differences, traceable

__all__ = ["LOTConv2d", "LOTLinear", "lot_orthogonalize"]

EPS = 1e-4


def newton_schulz_scalar(a: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LOT's coupled Newton-Schulz recursion on eigenvalues ``a``: ``(z_T(a), z_T'(a))``.

    On an eigenvector of ``A`` with eigenvalue ``a`` every iterate of the matrix iteration
    (``Y_0 = A``, ``Z_0 = I``, ``T = (3I - Z Y)/2``, ``Y <- Y T``, ``Z <- T Z``) is a scalar:
    ``y_0 = a``, ``z_0 = 1``, ``t = (3 - z y)/2``, ``y <- y t``, ``z <- t z``. ``z_T`` is a
    polynomial in ``a``, defined for every real ``a``; its derivative is carried alongside
    (forward mode).
    """
    y, z = a, torch.ones_like(a)
    dy, dz = torch.ones_like(a), torch.zeros_like(a)
    for t in range(iters):
        s = 1.5 - 0.5 * (z * y)
        ds = -0.5 * (dz * y + z * dy)
        if t < iters - 1:  # the last Y is never used
            y, dy = y * s, dy * s + y * ds
        z, dz = s * z, ds * z + s * dz
    return z, dz


def lot_orthogonalize(w: torch.Tensor, iters: int = 10, eps: float = EPS, method: str = "eigh") -> torch.Tensor:
    """LOT's normalised Newton-Schulz polar factor of each (out, in) matrix of a real/complex stack.

    Returns ``Z_T W / sqrt(n)`` with ``n = ||W W^H + eps I||_F + eps`` and ``Z_T`` the coupled
    Newton-Schulz approximation of ``(S / n)^{-1/2}``; every singular value is < 1.
    ``method="newton"`` runs the matrix iteration literally (three matrix products per step, the
    paper's computation); ``method="eigh"`` (default) evaluates the same matrix polynomial
    ``Z_T = z_T(A)`` through one double-precision eigendecomposition of ``S``
    (:func:`newton_schulz_scalar`, :class:`_LOTPolar`), ``"eigh-refined"`` through a
    single-precision one with double-precision Rayleigh quotients (:func:`_lot_eigh`): equal to the
    iteration within float round-off, values and gradients (tested), and several times cheaper to
    train. The layers use ``"eigh-refined"`` in training, ``"eigh"`` for the eval weight.
    """
    if method in ("eigh", "eigh-refined"):
        return _lot_eigh(w, iters, eps, refine=method == "eigh-refined")
    if method != "newton":
        raise ValueError(f"method must be 'eigh', 'eigh-refined' or 'newton', got {method!r}")
    s = matmul(w, w.mH)
    s.diagonal(dim1=-2, dim2=-1).add_(eps)
    norm = torch.linalg.vector_norm(s, dim=(-2, -1), keepdim=True) + eps
    y = s / norm
    z: torch.Tensor | None = None  # Z_0 = I, kept implicit (I @ M == M exactly in float)
    for t in range(iters):
        t_mat = -0.5 * (y if z is None else matmul(z, y))
        t_mat.diagonal(dim1=-2, dim2=-1).add_(1.5)  # T = (3I - Z Y) / 2
        if t < iters - 1:  # the last Y is never used
            y = matmul(y, t_mat)
        z = t_mat if z is None else matmul(t_mat, z)
    if z is None:
        return w / norm.sqrt()
    return matmul(z, w) / norm.sqrt()


@traceable
class _LOTPolar(torch.autograd.Function):
    """``Y = Z W / sqrt(n)``, ``Z = z_T(A)``, ``A = S / n``, from the eigendecomposition ``S = U diag(s) U^H``.

    Inputs: ``W`` (..., m, k) (the only one with a gradient), dense ``U`` and ``U^H`` in ``W``'s
    dtype, and float64 ``a = s / n``, ``z_T(a)``, ``z_T'(a)``, ``n = ||S||_F + eps`` and
    ``||S||_F``. Outputs ``Y`` and ``B = U^H W`` (kept for the derivatives, no gradient).

    Forward: ``Y = c U (z o B)``, ``c = n^(-1/2)``, ``z`` scaling the rows. Derivative: with
    ``M = U^H dS U`` (``dS = dW W^H + W dW^H``) and ``dn = <diag(s), M> / ||S||_F`` (the derivative
    of ``||S||_F``), Daleckii-Krein on ``A`` gives ``U^H dZ U = (D o M) / n - diag(z'(a) a) dn / n``,
    ``D`` the divided differences of ``z_T`` at ``a`` (:func:`~lipzoo.layers._spectral.divided_differences`),
    and ``dc = -c dn / (2 n)``. Its adjoint, for ``G = dL/dY`` and ``P = U^H G``: with
    ``E = c P B^H`` (``U^H (c G W^H) U``, the gradient with respect to ``Z`` in the eigenbasis),
    ``t = Re <P, z o B>`` (``<G, Z W>``), ``beta = sum_i Re E_ii z'(a_i) a_i``,
    ``gamma = -beta / n - t c / (2 n)`` and ``K = (D o E) / n + gamma diag(s) / ||S||_F``:
    ``dL/dW = U (c z o P + (K + K^H) B)``. Four products for the backward, where autograd through
    ``S``, ``A``, ``Z`` and ``Z W`` takes eight.
    """

    generate_vmap_rule = True  # usable under torch.func transforms

    @staticmethod
    def forward(w, u, uh, a, z, dz, n, frob):
        b = torch.matmul(uh, w)
        c = n.rsqrt().to(_real_dtype(w))[..., None, None]
        return torch.matmul(u, b * z.to(_real_dtype(w))[..., :, None]) * c, b

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        w, u, uh, a, z, dz, n, frob = inputs
        b = output[1]
        ctx.mark_non_differentiable(b)
        ctx.save_for_backward(u, uh, b, a, z, dz, n, frob)
        ctx.save_for_forward(u, uh, b, a, z, dz, n, frob)

    @staticmethod
    def _unpack(ctx):
        """Saved tensors and the scalars of the derivative, in the products' precision."""
        u, uh, b, a, z, dz, n, frob = ctx.saved_tensors
        real = _real_dtype(b)
        nn_ = n[..., None]
        return dict(
            u=u, uh=uh, b=b,
            d=(divided_differences(a, z, dz) / nn_[..., None]).to(real),  # D / n
            z=z.to(real)[..., :, None],
            za=(dz * a / nn_).to(real),  # z'(a) a / n
            sn=(a * nn_ / frob[..., None]).to(real),  # s / ||S||_F
            c=n.rsqrt().to(real), n=n.to(real),
        )

    @staticmethod
    def jvp(ctx, dw, du, duh, da, dz_, ddz, dn_, dfrob):
        k = _LOTPolar._unpack(ctx)
        v = torch.matmul(k["uh"], dw.resolve_conj())  # U^H dW
        m = torch.matmul(v, _adjoint(k["b"]))
        m = m + _adjoint(m)  # U^H dS U
        dn = (k["sn"] * m.diagonal(dim1=-2, dim2=-1).real).sum(-1)
        mid = k["d"] * m
        mid.diagonal(dim1=-2, dim2=-1).sub_(k["za"] * dn[..., None])  # U^H dZ U
        c, dc = k["c"], -0.5 * k["c"] / k["n"] * dn
        inner = dc[..., None, None] * (k["z"] * k["b"]) + c[..., None, None] * (torch.matmul(mid, k["b"]) + k["z"] * v)
        return torch.matmul(k["u"], inner), None

    @staticmethod
    def backward(ctx, gy, gb):
        if not ctx.needs_input_grad[0]:
            return (None,) * 8
        k = _LOTPolar._unpack(ctx)
        c = k["c"]
        p = torch.matmul(k["uh"], gy.resolve_conj())  # U^H G
        zb = k["z"] * k["b"]
        t = (p.conj() * zb).real.sum(dim=(-2, -1)) if p.is_complex() else (p * zb).sum(dim=(-2, -1))
        e = torch.matmul(p, _adjoint(k["b"])) * c[..., None, None]  # U^H (c G W^H) U
        beta = (e.diagonal(dim1=-2, dim2=-1).real * k["za"]).sum(-1)  # already divided by n
        gamma = -beta - 0.5 * t * c / k["n"]
        kk = k["d"] * (e + _adjoint(e))
        kk.diagonal(dim1=-2, dim2=-1).add_(2 * gamma[..., None] * k["sn"])
        inner = c[..., None, None] * (k["z"] * p) + torch.matmul(kk, k["b"])
        return torch.matmul(k["u"], inner), None, None, None, None, None, None, None


def _lot_eigh(w: torch.Tensor, iters: int, eps: float, refine: bool) -> torch.Tensor:
    """``lot_orthogonalize(method="eigh" | "eigh-refined")``: ``Z_T = z_T(A)`` by eigendecomposition.

    ``S = W W^H + eps I`` is formed from the weight in its own precision, as the iteration forms
    it; ``||S||_F`` is taken in double precision. ``method="eigh"`` decomposes ``S`` in double
    precision. A single-precision decomposition has absolute eigenvalue errors of order
    ``1e-7 ||S||``, which ``z_T`` amplifies where it is steep (small ``a``): about twice the
    iteration's round-off. ``"eigh-refined"`` decomposes in single precision (half the time) and
    refines the eigenvalues as Rayleigh quotients ``s_i = u_i^H S u_i`` in double precision, whose
    error is quadratic in the eigenvectors' (same order of error as the iteration, tested). Then
    ``a = s / n``; the scalar recursion and its derivative run in float64
    (:func:`newton_schulz_scalar`), the products in ``W``'s precision (:class:`_LOTPolar`): the
    result is ``z_T`` of a Hermitian matrix within round-off of ``A``, with its exact derivative.
    """
    w = w.resolve_conj().contiguous()
    hi = _higher(w.dtype)
    with torch.no_grad():
        s = torch.matmul(w, _adjoint(w))
        s.diagonal(dim1=-2, dim2=-1).add_(eps)
        s_hi = s.to(hi)
        frob = torch.linalg.vector_norm(torch.view_as_real(s_hi) if s.is_complex() else s_hi[..., None], dim=(-3, -2, -1))
        if refine:
            _, u = torch.linalg.eigh(s)
            u_hi = u.to(hi)
            lam = (u_hi.conj() * torch.matmul(s_hi, u_hi)).real.sum(-2)  # u_i^H S u_i
        else:
            lam, u_hi = torch.linalg.eigh(s_hi)
            u = u_hi.to(w.dtype)
    n = frob + eps
    a = lam / n[..., None]
    z, dz = newton_schulz_scalar(a, iters)
    uh = _adjoint(u)  # eigh's U is column-major: U^H is dense, U made dense once
    u = u.contiguous()
    return _LOTPolar.apply_(w, u, uh, a, z, dz, n, frob)[0]


def _layer_method(paper_compatible: bool, training: bool) -> str:
    """The matrix iteration for ``paper_compatible``; else the single-precision eigendecomposition
    with refined eigenvalues in training (every step), the double-precision one for the eval
    weight (computed once and cached; the audit and certification read it)."""
    if paper_compatible:
        return "newton"
    return "eigh-refined" if training else "eigh"


class LOTConv2d(LipschitzModule):
    """LOT convolution: per-frequency Newton-Schulz polar factor on the zero-padded input.

    Parameters ``weight`` (out, in, k, k) and ``bias`` (out): identity (Dirac) kernel and zero
    bias when square, else ``nn.Conv2d``'s default initialisation. Options: ``iters``
    (training Newton-Schulz steps, the paper's ``iter_T``) and ``eval_iters`` (``eval_iter_T``).
    ``compute_weight(size)`` returns the ``(Hp, Wp//2+1, out, in)`` complex matrices for an
    ``H x W`` input (``(Hp, Wp, out, in)`` with ``paper_compatible``), or the real ``(out, in)``
    matrix of a 1x1 kernel. The default evaluates the Newton-Schulz polynomial by
    eigendecomposition, ``paper_compatible`` by the matrix iteration (:func:`lot_orthogonalize`).
    """

    size_dependent = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        input_size: tuple[int, int] | int | None = None,
        paper_compatible: bool = False,
        iters: int = 10,
        eval_iters: int = 10,
    ) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        if iters < 0 or eval_iters < 0:
            raise ValueError(f"iters and eval_iters must be >= 0, got {iters} and {eval_iters}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.input_size = as_size(input_size)
        self.paper_compatible = paper_compatible
        self.iters, self.eval_iters = int(iters), int(eval_iters)
        # a 1x1 kernel is the same real matrix at every frequency: no FFT, no size dependence
        self.size_dependent = paper_compatible or kernel_size > 1
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        if in_channels == out_channels:
            nn.init.dirac_(self.weight)
            nn.init.zeros_(self.bias)
        else:  # nn.Conv2d's default initialisation, as the paper (an nn.Conv2d subclass)
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(in_channels * kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)

    def _iters(self) -> int:
        return self.iters if self.training else self.eval_iters

    def _method(self) -> str:
        return _layer_method(self.paper_compatible, self.training)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        if not self.size_dependent:
            return lot_orthogonalize(self.weight[:, :, 0, 0], self._iters(), method=self._method())
        size = size or self.input_size
        if size is None:
            raise ValueError(
                f"{type(self).__name__} with kernel_size={self.kernel_size} needs the input size to build its "
                "per-frequency weight: pass size=(H, W) or construct it with input_size=(H, W)"
            )
        p = self.kernel_size // 2
        n_h, n_w = size[0] + 2 * p, size[1] + 2 * p
        if self.paper_compatible:
            return lot_orthogonalize(conv_kernel_fft(self.weight, n_h, n_w), self._iters(), method="newton")
        # LOT commutes with conjugation and keeps real matrices real: each distinct frequency once
        iters, method = self._iters(), self._method()
        return half_spectrum_map(lambda m: lot_orthogonalize(m, iters, method=method),
                                 conv_kernel_rfft(self.weight, n_h, n_w), n_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_channels)
        if not self.size_dependent:
            return F.conv2d(x, self.effective_weight()[:, :, None, None], self.bias)
        wfreq = self.effective_weight(spatial_size(x))
        p = self.kernel_size // 2
        if p:
            x = F.pad(x, (p, p, p, p))  # zero padding, then circular on the padded grid
        y = fft_conv2d(x, wfreq, full=self.paper_compatible)
        if p:
            y = y[..., p:-p, p:-p]
        return y + self.bias[:, None, None]

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """``max_f sigma_max`` of the per-frequency matrices on the zero-padded grid for ``shape``.

        An upper bound: zero-padding is an isometry, the padded-grid operator is circular (its norm
        is that maximum) and cropping a contraction. A 1x1 kernel (default mode) is one real matrix:
        its exact norm. Where the stored rfft half-spectrum matrices are not exactly
        Hermitian-symmetric, the real operator applies their average with the mirrored conjugate,
        whose norm is at most the larger of the two.
        """
        if not self.size_dependent:
            return matrix_norm(self.effective_weight()), "exact spectral norm (1x1)", None, {}
        return (matrix_norm(self.effective_weight(map_size(shape))), "per-frequency norm on the padded grid",
                None, {})

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """A 1x1 ``nn.Conv2d``, or the matrices for ``shape`` as a FrequencyConv2d on the zero-padded
        grid or one zero-padded kernel."""
        if not self.size_dependent:
            return plain_conv1x1(self.effective_weight(), self.bias)
        size = map_size(shape)
        return frequency_op(self.effective_weight(size), self.bias, size, self.kernel_size // 2, self.paper_compatible,
                            circular)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding=zeros (FFT on padded), "
            f"iters={self.iters}, eval_iters={self.eval_iters}, paper_compatible={self.paper_compatible}"
        )


class LOTLinear(MatrixLayer):
    """Dense LOT layer ``y = Z W x / sqrt(n) + b``: the same normalised Newton-Schulz polar factor
    (by eigendecomposition; by the matrix iteration with ``paper_compatible``).

    ``weight`` (out, in) starts at the identity (zero ``bias``) when square, else with
    ``nn.Linear``'s default initialisation. Options ``iters`` / ``eval_iters`` as for the conv.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        paper_compatible: bool = False,
        iters: int = 10,
        eval_iters: int = 10,
    ) -> None:
        super().__init__()
        if iters < 0 or eval_iters < 0:
            raise ValueError(f"iters and eval_iters must be >= 0, got {iters} and {eval_iters}")
        self.in_features, self.out_features = in_features, out_features
        self.paper_compatible = paper_compatible
        self.iters, self.eval_iters = int(iters), int(eval_iters)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        if in_features == out_features:
            nn.init.eye_(self.weight)
            nn.init.zeros_(self.bias)
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def compute_weight(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        return lot_orthogonalize(self.weight, self.iters if self.training else self.eval_iters,
                                 method=_layer_method(self.paper_compatible, self.training))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", iters={self.iters}, eval_iters={self.eval_iters}"
