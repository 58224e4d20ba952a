"""Scalar functions of Hermitian matrices through one eigendecomposition, with a stable derivative.

For a Hermitian (real symmetric) matrix ``A = U diag(a) U^H`` and a scalar function ``f``,
``F(A) = U diag(f(a)) U^H``. When ``f`` is a polynomial, ``F(A)`` is exactly the matrix polynomial
``f(A)``, so an iteration whose iterates are all polynomials in one Hermitian matrix (Newton-Schulz,
Bjorck) can be run on the eigenvalues instead of on matrices: one batched ``torch.linalg.eigh`` and
a few products replace tens of matrix products, with the same result up to float round-off.

The derivative of ``F`` at ``A`` in a direction ``E`` (any matrix; the Daleckii-Krein theorem,
exact for polynomials) is ``U (D o (U^H E U)) U^H``, ``o`` the entrywise product and ``D`` the real
symmetric matrix of first divided differences

    D_ij = (f(a_i) - f(a_j)) / (a_i - a_j)   (a_i != a_j),   D_ii = f'(a_i).

The map ``E -> U (D o (U^H E U)) U^H`` is self-adjoint, so the same formula gives the backward
(the gradient with respect to ``A``, in PyTorch's conjugate convention for complex input) and the
forward-mode derivative. ``torch.linalg.eigh``'s own backward divides by ``a_i - a_j`` and breaks
down at repeated eigenvalues (a multiple of the identity, LOT's initial state, has only repeated
ones); here no small gap is ever divided by: where ``|a_i - a_j|`` is within
``rtol * max(|a_i|, |a_j|) + atol * max_k |a_k|`` the divided difference is replaced by the mean
of ``f'(a_i)`` and ``f'(a_j)``, which differs from it by ``O(f''' gap^2)``, far below the float64
cancellation error it avoids. The eigenvectors themselves are never differentiated.

The caller supplies ``f`` and ``f'`` at the eigenvalues in float64, typically by running its scalar
recursion in forward mode (value and derivative side by side). Helpers here:

- :func:`hermitian_function`: ``F(A)`` for a given Hermitian ``A``;
- :func:`gram_apply`: ``W F(W^H W)`` (the form of a Bjorck or polar iterate), differentiated in
  ``W`` directly, so the Gram matrix never enters autograd: four products for the backward instead
  of eight.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["hermitian_function", "gram_apply", "gram_eigh", "divided_differences", "ScalarFunction"]

#: maps float64 eigenvalues (..., n) to ``(f(a), f'(a))``, both float64 (..., n)
ScalarFunction = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]

RTOL = 1e-5  #: relative gap below which a divided difference becomes a mean derivative
ATOL = 1e-12  #: the same, relative to the largest |eigenvalue| of the matrix


def traceable(cls: type) -> type:
    """Class decorator for an autograd Function with a forward-mode rule: ``cls.apply_`` is
    ``cls.apply``, except while torch.compile traces, where it is the apply of a twin without the
    ``jvp`` (same forward and backward): Dynamo cannot trace a Function that defines one, and
    compiled code has no forward mode anyway."""
    twin = type(cls.__name__ + "Traced", (cls,), {"jvp": torch.autograd.Function.jvp, "__module__": cls.__module__,
                                                   "__qualname__": cls.__qualname__ + "Traced"})

    def apply_(*args):
        return (twin if torch.compiler.is_compiling() else cls).apply(*args)

    cls.apply_ = staticmethod(apply_)
    return cls


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    return t.real.dtype if t.is_complex() else t.dtype


def _adjoint(t: torch.Tensor) -> torch.Tensor:
    """``t^H`` with its conjugation materialised (complex CPU products are slower on conjugate views)."""
    if not t.is_complex():
        return t.mT
    if not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(t):
        return t.mH.resolve_conj()  # conj_physical has no vmap rule
    return torch.conj_physical(t.mT)


def _higher(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


def divided_differences(
    a: torch.Tensor, f: torch.Tensor, df: torch.Tensor, rtol: float = RTOL, atol: float = ATOL
) -> torch.Tensor:
    """The (..., n, n) matrix ``D_ij = (f_i - f_j) / (a_i - a_j)`` (``(f'_i + f'_j) / 2`` for
    nearly equal ``a_i``, ``a_j``, see the module docstring), from (..., n) float64 vectors."""
    ai, aj = a[..., :, None], a[..., None, :]
    gap = ai - aj
    span = a.abs().amax(dim=-1, keepdim=True)[..., None]
    close = gap.abs() <= rtol * torch.maximum(ai.abs(), aj.abs()) + atol * span
    slope = (f[..., :, None] - f[..., None, :]) / torch.where(close, torch.ones_like(gap), gap)
    return torch.where(close, 0.5 * (df[..., :, None] + df[..., None, :]), slope)


@traceable
class _MatrixFunction(torch.autograd.Function):
    """``F(A) = U diag(f) U^H`` given the eigendecomposition of ``A``; derivative by Daleckii-Krein.

    Inputs: ``A`` (only differentiated through, its value is not read again), dense ``U`` and
    ``U^H``, the float64 eigenvalues, ``f`` and ``f'`` at them, the tolerances. Only ``A``
    carries a gradient: the derivative with respect to ``A`` accounts for how the others move.
    """

    generate_vmap_rule = True  # usable under torch.func transforms

    @staticmethod
    def forward(a, u, uh, lam, f, df, rtol, atol):
        return torch.matmul(u * f.to(_real_dtype(u))[..., None, :], uh)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, u, uh, lam, f, df, rtol, atol = inputs
        ctx.save_for_backward(u, uh, lam, f, df)
        ctx.save_for_forward(u, uh, lam, f, df)
        ctx.tols = (rtol, atol)

    @staticmethod
    def _derivative(ctx, e: torch.Tensor) -> torch.Tensor:
        """``U (D o (U^H E U)) U^H``."""
        u, uh, lam, f, df = ctx.saved_tensors
        d = divided_differences(lam, f, df, *ctx.tols).to(_real_dtype(u))
        inner = torch.matmul(torch.matmul(uh, e.resolve_conj().to(u.dtype)), u)
        return torch.matmul(torch.matmul(u, d * inner), uh)

    @staticmethod
    def jvp(ctx, da, du, duh, dlam, df_, ddf, rtol, atol):
        return _MatrixFunction._derivative(ctx, da)

    @staticmethod
    def backward(ctx, grad):
        ga = _MatrixFunction._derivative(ctx, grad) if ctx.needs_input_grad[0] else None
        return ga, None, None, None, None, None, None, None


def hermitian_function(
    a: torch.Tensor,
    fn: ScalarFunction,
    *,
    eigh_dtype: torch.dtype | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> torch.Tensor:
    """``U diag(f(a)) U^H`` for a (..., n, n) stack of Hermitian (real symmetric) matrices ``A``.

    ``fn`` maps the float64 eigenvalues to ``(f, f')`` (float64). The eigendecomposition runs in
    ``eigh_dtype`` (default: ``A``'s own), the products in ``A``'s dtype; only the lower triangle
    of ``A`` is read. Differentiable in ``A`` (Daleckii-Krein, stable at repeated eigenvalues;
    forward mode and torch.func transforms included), not in ``fn``.
    """
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(f"expected square matrices, got shape {tuple(a.shape)}")
    lam, u = torch.linalg.eigh(a.detach().to(eigh_dtype or a.dtype))
    lam = lam.to(torch.float64)
    f, df = fn(lam)
    uh = _adjoint(u).to(a.dtype)  # eigh's U is column-major: U^H is dense, U made dense once
    u = u.to(a.dtype, memory_format=torch.contiguous_format)
    return _MatrixFunction.apply_(a, u, uh, lam, f, df, rtol, atol)


def gram_eigh(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (float64) and eigenvectors of ``W^H W`` for a (..., m, n) stack, in double
    precision (float64 / complex128), without gradient.

    The Gram matrix squares the condition number: in single precision its small eigenvalues would
    lose the accuracy that an iteration on ``W`` itself keeps. The products of single-precision
    entries are exact in double precision.
    """
    wd = w.detach().to(_higher(w.dtype))
    lam, v = torch.linalg.eigh(torch.matmul(_adjoint(wd), wd))
    return lam.to(torch.float64), v


@traceable
class _GramApply(torch.autograd.Function):
    """``Y = W F(W^H W) = (B o f) V^H``, ``B = W V``, given the eigendecomposition ``W^H W = V diag(a) V^H``.

    Inputs: ``W`` (..., m, n) (the only one with a gradient), dense ``V`` and ``V^H`` in ``W``'s
    dtype, the float64 eigenvalues, ``f``, ``f'`` and the tolerances. Outputs ``Y`` and ``B`` (kept
    for the backward, no gradient). With ``G = dL/dY``, ``P = G V`` and ``K = D o (B^H P)``
    (``V^H (W^H G) V``, the gradient with respect to ``F`` in the eigenbasis, through
    Daleckii-Krein), ``dA = dW^H W + W^H dW`` gives ``dL/dW = (P o f + B (K + K^H)) V^H``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(w, v, vh, lam, f, df, rtol, atol):
        b = torch.matmul(w, v)
        return torch.matmul(b * f.to(_real_dtype(w))[..., None, :], vh), b

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        w, v, vh, lam, f, df, rtol, atol = inputs
        b = output[1]
        ctx.mark_non_differentiable(b)
        ctx.save_for_backward(v, vh, b, lam, f, df)
        ctx.save_for_forward(v, vh, b, lam, f, df)
        ctx.tols = (rtol, atol)

    @staticmethod
    def jvp(ctx, dw, dv, dvh, dlam, df_, ddf, rtol, atol):
        v, vh, b, lam, f, df = ctx.saved_tensors
        real = _real_dtype(b)
        d = divided_differences(lam, f, df, *ctx.tols).to(real)
        q = torch.matmul(dw.resolve_conj(), v)  # dW V
        m = torch.matmul(_adjoint(q), b)
        inner = q * f.to(real)[..., None, :] + torch.matmul(b, d * (m + _adjoint(m)))
        return torch.matmul(inner, vh), None

    @staticmethod
    def backward(ctx, gy, gb):
        if not ctx.needs_input_grad[0]:
            return (None,) * 8
        v, vh, b, lam, f, df = ctx.saved_tensors
        real = _real_dtype(b)
        d = divided_differences(lam, f, df, *ctx.tols).to(real)
        p = torch.matmul(gy.resolve_conj(), v)  # G V
        k = d * torch.matmul(_adjoint(b), p)
        inner = p * f.to(real)[..., None, :] + torch.matmul(b, k + _adjoint(k))
        return torch.matmul(inner, vh), None, None, None, None, None, None, None


def gram_apply(
    w: torch.Tensor,
    fn: ScalarFunction,
    *,
    eigh: tuple[torch.Tensor, torch.Tensor] | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> torch.Tensor:
    """``W F(W^H W)`` for a (..., m, n) stack ``W``, differentiable in ``W``.

    ``eigh``: the eigendecomposition ``(a, V)`` of ``W^H W`` when the caller already has it (any
    precision), else :func:`gram_eigh`'s (double precision). The products run in ``W``'s dtype.
    """
    lam, v = gram_eigh(w) if eigh is None else eigh
    lam = lam.to(torch.float64)
    f, df = fn(lam)
    vh = _adjoint(v).to(w.dtype)  # eigh's V is column-major: V^H is dense, V made dense once
    v = v.to(w.dtype, memory_format=torch.contiguous_format)
    return _GramApply.apply_(w.resolve_conj(), v, vh, lam, f, df, rtol, atol)[0]
