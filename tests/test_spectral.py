"""The eigendecomposition helpers behind LOT's and BCOP's fast paths (lipzoo/layers/_spectral.py):
matrix polynomials by eigh equal the literal polynomials, and their derivatives (backward, forward
mode, vmap) are exact, also at repeated eigenvalues."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import jacrev, jvp, vmap

from lipzoo.layers._spectral import divided_differences, gram_apply, hermitian_function


def cubic(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p(a) = a^3 - 2a + 1/2 and p'(a)."""
    return a**3 - 2 * a + 0.5, 3 * a**2 - 2


def cubic_matrix(a: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    return a @ a @ a - 2 * a + 0.5 * eye


def ns_scalar(a: torch.Tensor, iters: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """A long polynomial (degree 3^6): the coupled Newton-Schulz recursion with its derivative."""
    y, z, dy, dz = a, torch.ones_like(a), torch.ones_like(a), torch.zeros_like(a)
    for _ in range(iters):
        s, ds = 1.5 - 0.5 * z * y, -0.5 * (dz * y + z * dy)
        y, dy, z, dz = y * s, dy * s + y * ds, s * z, ds * z + s * dz
    return z, dz


def ns_matrix(a: torch.Tensor, iters: int = 6) -> torch.Tensor:
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    y, z = a, eye.expand_as(a)
    for _ in range(iters):
        t = 1.5 * eye - 0.5 * z @ y
        y, z = y @ t, t @ z
    return z


def hermitian(n: int, dtype, batch=(2,), seed=0, scale=0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, n, n, dtype=dtype, generator=g)
    return scale * (x @ x.mH) / n


def degenerate(n: int, dtype) -> torch.Tensor:
    """Eigenvalues (0.3, 0.3, 0.3, 0.7, 0.7, ...): exactly repeated, in a random basis."""
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=dtype, generator=torch.Generator().manual_seed(3)))
    vals = torch.tensor([0.3] * (n // 2) + [0.7] * (n - n // 2), dtype=torch.float64).to(dtype)
    return ((q * vals) @ q.mH)[None]


DTYPES = [torch.float64, torch.complex128]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn,mat", [(cubic, cubic_matrix), (ns_scalar, ns_matrix)], ids=["cubic", "newton-schulz"])
def test_hermitian_function_is_the_matrix_polynomial(dtype, fn, mat):
    for a in (hermitian(5, dtype), degenerate(6, dtype), torch.eye(4, dtype=dtype)[None] * 0.4):
        torch.testing.assert_close(hermitian_function(a, fn), mat(a), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hermitian_function_gradients_at_distinct_and_repeated_eigenvalues(dtype):
    """gradcheck (both modes) and equality with autograd through the literal polynomial."""
    for a in (hermitian(4, dtype), degenerate(4, dtype), 0.4 * torch.eye(3, dtype=dtype)[None]):
        a = a.clone().requires_grad_()
        # a perturbation direction that keeps A Hermitian (eigh reads the lower triangle only)
        f = lambda x: hermitian_function((x + x.mH) / 2, ns_scalar)  # noqa: E731
        assert gradcheck(f, (a,), check_forward_ad=True)
        g = torch.randn_like(a.detach())
        got, = torch.autograd.grad((f(a) * g.conj()).real.sum(), a)
        want, = torch.autograd.grad((ns_matrix((a + a.mH) / 2) * g.conj()).real.sum(), a)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_hermitian_function_eigh_dtype_and_vmap():
    a = hermitian(6, torch.complex64, batch=(3,))
    ref = ns_matrix(a.to(torch.complex128))
    hi = hermitian_function(a, ns_scalar, eigh_dtype=torch.complex128)
    assert hi.dtype == torch.complex64
    assert (hi - ref).abs().max() < 1e-5
    torch.testing.assert_close(vmap(lambda x: hermitian_function(x, ns_scalar))(a[:, None])[:, 0],
                               hermitian_function(a, ns_scalar), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 3), (4, 4), (3, 2, 2)])
def test_gram_apply_is_w_times_the_polynomial_of_the_gram_matrix(dtype, shape):
    w = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1)) / 2
    w.requires_grad_()
    literal = lambda x: x @ ns_matrix(x.mH @ x)  # noqa: E731
    fast = lambda x: gram_apply(x, ns_scalar)  # noqa: E731
    torch.testing.assert_close(fast(w), literal(w), rtol=1e-10, atol=1e-12)
    assert gradcheck(fast, (w,), check_forward_ad=True)
    g = torch.randn_like(w.detach())
    got, = torch.autograd.grad((fast(w) * g.conj()).real.sum(), w)
    want, = torch.autograd.grad((literal(w) * g.conj()).real.sum(), w)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_apply_at_an_orthogonal_matrix(dtype):
    """All eigenvalues of W^H W equal 1 (the state Bjorck converges to): still exact derivatives."""
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=dtype, generator=torch.Generator().manual_seed(2)))
    w = (0.8 * q)[None].requires_grad_()
    assert gradcheck(lambda x: gram_apply(x, ns_scalar), (w,), check_forward_ad=True)


def test_gram_apply_under_torch_func():
    w = torch.randn(3, 4, 3, dtype=torch.float64) / 2
    fast = lambda x: gram_apply(x, ns_scalar)  # noqa: E731
    literal = lambda x: x @ ns_matrix(x.mT @ x)  # noqa: E731
    torch.testing.assert_close(vmap(fast)(w), literal(w))
    torch.testing.assert_close(jacrev(fast)(w[0]), jacrev(literal)(w[0]))
    t = torch.randn_like(w)
    torch.testing.assert_close(jvp(fast, (w,), (t,))[1], jvp(literal, (w,), (t,))[1])


def test_divided_differences_are_accurate_at_tiny_gaps():
    """For p(a) = a^3 the divided difference is a_i^2 + a_i a_j + a_j^2 exactly; the float64 slope
    would lose all digits at a gap of 1e-14, the mean-derivative rule keeps them."""
    base = torch.tensor([0.2, 0.5, 1e-6], dtype=torch.float64)
    for gap in (0.0, 1e-15, 1e-12, 1e-9, 1e-6, 1e-3):
        a = torch.cat([base, base + gap * base])
        f, df = a**3, 3 * a**2
        exact = a[:, None] ** 2 + a[:, None] * a[None, :] + a[None, :] ** 2
        torch.testing.assert_close(divided_differences(a, f, df), exact, rtol=1e-8, atol=0)


def test_newton_schulz_of_the_identity_has_the_scalar_derivative():
    """At A = c I (LOT's Dirac initialisation) F'(A)[E] = f'(c) E for every direction E."""
    c = 0.25
    a = c * torch.eye(4, dtype=torch.float64)[None]
    e = torch.randn(1, 4, 4, dtype=torch.float64)
    e = e + e.mT
    _, tangent = jvp(lambda x: hermitian_function(x, functools.partial(ns_scalar, iters=10)), (a,), (e,))
    _, dz = ns_scalar(torch.tensor(c, dtype=torch.float64), iters=10)
    torch.testing.assert_close(tangent, dz * e)
