"""Activations used by 1-Lipschitz networks (all exactly 1-Lipschitz, gradient-norm preserving)."""

from __future__ import annotations

import torch
from torch import nn

from ._base import OneLipschitz
from ._linalg import tangents_possible

__all__ = ["MaxMin", "maxmin"]


class _MaxMinPairs(torch.autograd.Function):
    """Sort each pair ``(a, b)`` to ``(max, min)``; the backward routes each gradient back through
    the same permutation (one boolean mask saved, no tie splitting).

    ``torch.maximum`` / ``torch.minimum`` would give the same values, but their backward splits
    the gradient of a tie in halves (not norm-preserving) and costs several comparisons and a
    division per element; this is about twice as fast in training on CPU. The backward is built
    from differentiable ops (linear in the incoming gradient), so double backward works (the audit's
    Jacobian power iteration needs it).
    """

    generate_vmap_rule = True  # torch.func.vmap / jacrev / jacfwd work through it

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        keep = a >= b
        return torch.stack([torch.where(keep, a, b), torch.where(keep, b, a)], dim=2)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        a, b = inputs
        keep = a >= b
        ctx.save_for_backward(keep)
        ctx.save_for_forward(keep)

    @staticmethod
    def jvp(ctx, da: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
        (keep,) = ctx.saved_tensors
        return torch.stack([torch.where(keep, da, db), torch.where(keep, db, da)], dim=2)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (keep,) = ctx.saved_tensors
        g_max, g_min = g.unbind(2)
        return torch.where(keep, g_max, g_min), torch.where(keep, g_min, g_max)


class _MaxMinInPlace(torch.autograd.Function):
    """MaxMin of a whole (N, C, ...) tensor with an even C, in few passes over memory.

    The same values and gradient routing as :class:`_MaxMinPairs`. ``torch.where`` and its kin
    are several times slower than plain arithmetic on CPU, so neither direction uses them: the
    forward writes ``maximum`` and ``minimum`` of each pair straight into the output (the value
    ``where(a >= b, a, b)`` would pick: ties are equal values) and saves the mask ``a >= b``; the
    backward routes each gradient by bit operations on its 32-bit pattern, ``d = (g_max ^ g_min) *
    keep``, ``g_a = g_min ^ d``, ``g_b = g_max ^ d`` (exactly ``g_max`` / ``g_min`` or swapped, no
    rounding), written straight into the input's gradient. The output and the input's gradient have
    the input's memory layout (channels-last stays channels-last). Where a second derivative is taken
    (``create_graph``) the backward uses differentiable ops instead.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        a, b = _halves(x)
        ctx.save_for_backward(a >= b)
        ctx.layout = _layout(x)
        return _maxmin_into(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (keep,) = ctx.saved_tensors
        g_max, g_min = _halves(g)
        if torch.is_grad_enabled() or g.dtype not in _BITS:  # double backward: differentiable in g
            halves = (torch.where(keep, g_max, g_min), torch.where(keep, g_min, g_max))
            return torch.stack(halves, dim=2).flatten(1, 2)
        bits = _BITS[g.dtype]
        i_max, i_min = g_max.view(bits), g_min.view(bits)
        d = torch.bitwise_xor(i_max, i_min).mul_(keep)  # g_max ^ g_min where kept, else 0
        # the gradient in the input's layout, whatever the incoming one: a channels-last convolution
        # before this would otherwise copy it back to channels-last in its own backward
        gx = torch.empty_like(g, memory_format=ctx.layout)
        out_a, out_b = (h.view(bits) for h in _halves(gx))
        torch.bitwise_xor(i_min, d, out=out_a)
        torch.bitwise_xor(i_max, d, out=out_b)
        return gx


#: integer types of the same width, for routing gradients by their bit patterns
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16,
         torch.float16: torch.int16}


def _layout(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-d tensor stored channels-last (and not also contiguous), else contiguous."""
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _plain_eager() -> bool:
    """Whether this runs eagerly, not under a tracer (``torch.compile``/``torch.export``, ``torch.jit.trace``,
    ONNX export), which would not follow the ``out=`` writes of the fast path."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def _maxmin_into(x: torch.Tensor) -> torch.Tensor:
    """MaxMin of an (N, C, ...) tensor with an even C, written into a new tensor of ``x``'s memory layout."""
    a, b = _halves(x)
    out = torch.empty_like(x)
    out_max, out_min = _halves(out)
    torch.maximum(a, b, out=out_max)
    torch.minimum(a, b, out=out_min)
    return out


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first and second channel of every pair of an (N, C, ...) tensor with an even C, as views."""
    pairs = x.unflatten(1, (x.shape[1] // 2, 2))
    return pairs.select(2, 0), pairs.select(2, 1)


def maxmin(x: torch.Tensor) -> torch.Tensor:
    """MaxMin of an (N, C, ...) tensor: channels (2i, 2i+1) become (max, min); an odd last channel passes.

    The output keeps the input's memory layout where the channel count is even."""
    c = x.shape[1]
    even = c - (c % 2)
    transformed = tangents_possible(x)  # torch.func / forward AD: the Function with a jvp below
    if even == c and not transformed and _plain_eager():
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaxMinInPlace.apply(x)
        return _maxmin_into(x)
    a, b = x[:, :even].unflatten(1, (even // 2, 2)).unbind(2)
    if torch.compiler.is_compiling():
        # the same values and gradient routing, traceable: torch.where sends each gradient back
        # through the mask (no tie splitting); the compiler fuses what the custom Function saves
        keep = a >= b
        out = torch.stack([torch.where(keep, a, b), torch.where(keep, b, a)], dim=2)
    elif torch.is_grad_enabled() and (x.requires_grad or transformed):
        out = _MaxMinPairs.apply(a, b)
    else:
        out = torch.stack([torch.maximum(a, b), torch.minimum(a, b)], dim=2)
    out = out.flatten(1, 2)
    if even != c:
        out = torch.cat([out, x[:, even:]], dim=1)
    return out


class MaxMin(OneLipschitz, nn.Module):
    """Pairs channels (2i, 2i+1) and writes (max, min) back into the same positions.

    Works on (N, C) and (N, C, H, W) input. With an odd channel count the last channel passes
    through unchanged. Each pair is sorted, a permutation, so the map is 1-Lipschitz in l2 and
    preserves gradient norms (also at ties: the gradient follows the permutation chosen). Its
    ``norm_bound`` is 1 (:class:`~lipzoo.layers._base.OneLipschitz`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maxmin(x)
