"""Exact operator norms of small layers, for tests (impulse responses and Jacobians)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def n_trainable(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def circular_conv_matrix(weight: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Dense (out*h*w, in*h*w) matrix of the circular 'same' cross-correlation with ``weight``."""
    out_c, in_c, k, _ = weight.shape
    p = k // 2
    eye = torch.eye(in_c * h * w, dtype=weight.dtype).view(-1, in_c, h, w)
    cols = F.conv2d(F.pad(eye, (p, p, p, p), mode="circular"), weight)
    return cols.reshape(in_c * h * w, out_c * h * w).T


def flat_fn(module: nn.Module, in_shape: tuple[int, ...]):
    def f(v: torch.Tensor) -> torch.Tensor:
        return module(v.reshape(-1, *in_shape)).reshape(v.shape[0], -1)

    return f


def impulse_matrix(module: nn.Module, in_shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """The matrix of an affine layer: columns f(e_i) - f(0) over the identity basis."""
    n = int(torch.tensor(in_shape).prod())
    eye = torch.eye(n, dtype=dtype)
    with torch.no_grad():
        f = flat_fn(module, in_shape)
        cols = f(eye) - f(torch.zeros(1, n, dtype=dtype))
    return cols.T.double()


def jacobian_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Full Jacobian (out_dim, in_dim) of the module at a single input x (shape (1, ...))."""
    in_shape = tuple(x.shape[1:])
    f = flat_fn(module, in_shape)
    jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], x.reshape(-1))
    return jac.double()


def singular_values(module: nn.Module, in_shape: tuple[int, ...], residual: bool, points: int = 3, seed: int = 0) -> torch.Tensor:
    """All singular values of the layer's operator (affine) or of its Jacobians (non-linear)."""
    if not residual:
        return torch.linalg.svdvals(impulse_matrix(module, in_shape))
    g = torch.Generator().manual_seed(seed)
    svs = [torch.linalg.svdvals(jacobian_matrix(module, torch.randn(1, *in_shape, generator=g))) for _ in range(points)]
    return torch.cat(svs)


def push_norm_up(
    module: nn.Module, in_shape: tuple[int, ...], steps: int = 20, lr: float = 0.05, seed: int = 0, batch: int = 8
) -> None:
    """Optimizer steps that try to break the bound: maximise ||f(x) - f(y)|| / ||x - y||."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(batch, *in_shape, generator=g)
        y = x + 0.1 * torch.randn(batch, *in_shape, generator=g)
        fx, fy = module(torch.cat([x, y])).chunk(2)  # one pass: a layer's weight is parametrised once per call
        num = (fx - fy).flatten(1).norm(dim=1)
        den = (x - y).flatten(1).norm(dim=1)
        loss = -(num / den).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_model_audits_at_one_and_exports(arch: str, **options) -> None:
    """An XS model of ``arch`` built with layer ``options``: its repr names them, the audit proves
    L <= 1 and its plain (exported) form computes the same function."""
    import lipzoo
    from lipzoo.audit import audit
    from lipzoo.export import to_plain

    torch.manual_seed(0)
    model = lipzoo.create_model(arch, num_classes=10, in_chans=1, **options).eval()
    for key, value in options.items():
        assert f"{key}={value}" in repr(model)
    assert audit(model, lower=False).upper <= 1.0 + 1e-9
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(to_plain(model)(x), model(x), rtol=1e-4, atol=1e-5)
