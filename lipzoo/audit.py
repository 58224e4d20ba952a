"""Rigorous Lipschitz audit: guaranteed per-layer upper bounds and attack lower bounds.

Every upper bound is computed in float64 from the layer's materialised eval-mode weight (what
the forward pass really applies) and is mathematically guaranteed for the input size the layer
sees in the model (recorded with one forward pass at the model's native size).

Each lipzoo layer proves its own bound: :meth:`LipschitzModule.norm_bound
<lipzoo.layers.LipschitzModule.norm_bound>`, implemented in the layer's file (the maths of each
family is documented there; the shared norm computations are in :mod:`lipzoo.layers._norms`),
so this module knows no layer family. Typical methods: the EXACT spectral norm of circular
convolutions (``max_f sigma_max(W_hat(f))`` over the frequencies of the input grid, with the
size-independent ``gram_bound`` beside it) and of dense layers; ``max_f sigma_max`` of the
per-frequency matrices of FFT layers; for zero-padded convolutions the smallest of the exact
dense norm (small maps, ``DENSE_EXACT_MAX``), the circular norm on an (n + k - 1)-grid and
``gram_bound``; ``max(1, ||G||^2 - 1)`` for the potential residual layers; the skew Taylor
bound of SOC; LBDN's Theorem 3.1 for Sandwich. The parameter-free lipzoo pieces (MaxMin,
Centering, ZeroChannelConcatenation, FirstChannels) declare the bound 1 themselves.

Plain torch modules are bounded here: PixelUnshuffle, PixelShuffle, Flatten, Identity, ReLU: 1;
AdaptiveMaxPool2d: sqrt of the largest window overlap (1 for non-overlapping windows);
``nn.Linear``: the exact spectral norm; stride-1 ``nn.Conv2d``: the exact circular norm, the
zero-padded bound or ``gram_bound``.

The model's bound is the product over its sequential chain. The lower bound is the largest of
``||f(x) - f(y)|| / ||x - y||`` found by Adam and of ``||J(x) v||`` from power iteration on
``J^T J`` at data points, evaluated in float64 on ``to_plain(model)`` (the same materialised
weights as the upper bounds), so ``lower > upper`` can only mean a bug.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .layers import LipschitzModule
from .layers._base import ONE_LIPSCHITZ_METHOD, map_size
from .layers._linalg import gram_bound
from .layers._norms import (
    DENSE_EXACT_MAX,
    DENSE_MARGIN,
    NORM_CACHE as _NORM_CACHE,
    BoundError,
    circular_conv_norm,
    matrix_norm,
    skew_taylor_bound,
    zero_padded_bound,
    zero_padded_conv_bound,
    zero_padded_conv_norm,
)
from .export import to_plain, trace_input_shapes
from .models import ConvNet

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
# parameter-free torch modules that are isometries, projections or permutations (the lipzoo ones
# declare it themselves: lipzoo.layers._base.OneLipschitz)
_TORCH_ONE = (nn.PixelUnshuffle, nn.PixelShuffle, nn.Flatten, nn.Identity, nn.ReLU)


class AuditError(BoundError):
    """A model (or module) the audit cannot bound (a ``ValueError``)."""


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


# --- one layer ---------------------------------------------------------------------------------
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


def _declares_bound(m: nn.Module) -> bool:
    """Whether ``m`` proves its own bound: a ``norm_bound`` method (the lipzoo layers and pieces)."""
    own = getattr(type(m), "norm_bound", None)
    return callable(own) and own is not LipschitzModule.norm_bound


def layer_bound(m: nn.Module, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
    """``(upper, method, gram_bound or None, detail)`` for one leaf module with input ``shape`` (no batch).

    A module with a ``norm_bound`` method (every lipzoo layer, see
    :meth:`lipzoo.layers.LipschitzModule.norm_bound`, and the parameter-free lipzoo pieces) gives
    its own guaranteed bound; plain torch modules are bounded here.
    """
    if _declares_bound(m):
        try:
            return m.norm_bound(shape)
        except BoundError as e:
            raise AuditError(str(e)) from None
    if isinstance(m, _TORCH_ONE):
        return 1.0, ONE_LIPSCHITZ_METHOD, None, {}
    if isinstance(m, nn.AdaptiveMaxPool2d):
        return _adaptive_pool_factor(map_size(shape), m.output_size), "sqrt(max window overlap)", None, {}
    if isinstance(m, nn.Linear):
        return matrix_norm(m.weight), "exact spectral norm", None, {}
    if isinstance(m, nn.Conv2d):
        return _plain_conv_bound(m, shape)
    raise AuditError(
        f"the audit has no guaranteed bound for {type(m).__name__}; it knows modules with a norm_bound method "
        "(the lipzoo layers), plain nn.Conv2d / nn.Linear and the parameter-free pieces of the ConvNet family"
    )


def _plain_conv_bound(m: nn.Conv2d, shape) -> tuple[float, str, float | None, dict]:
    if m.groups != 1 or m.stride not in ((1, 1), 1) or m.dilation not in ((1, 1), 1):
        raise AuditError(f"the audit bounds only plain stride-1, undilated, ungrouped nn.Conv2d, got {m}")
    k = m.weight
    gram = float(gram_bound(k.detach().double()))
    same = tuple(m.padding) == (k.shape[-2] // 2, k.shape[-1] // 2) and k.shape[-1] % 2 == 1 and k.shape[-2] % 2 == 1
    if m.padding_mode == "circular" and same:
        return circular_conv_norm(k, *map_size(shape)), "exact circular norm (FFT)", gram, {}
    if m.padding_mode == "zeros" and same:
        bound, how = zero_padded_bound(k, *map_size(shape))
        return bound, f"zero-padded: {how}", gram, {}
    return gram, "gram bound (Schur test)", gram, {}


# --- the model ---------------------------------------------------------------------------------
def _chain(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaves of a (nested) sequential model, in forward order."""
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
