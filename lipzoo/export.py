"""Plain-torch copies of Lipschitz models for inference and export (``to_plain``, ONNX, TorchScript).

``to_plain(model)`` returns a deep copy in eval mode in which every Lipschitz layer is replaced
by plain torch modules holding its materialised eval-mode weight (the output of the layer's own
pure ``compute_weight``, so nothing can differ from what the layer computes):

- one ``nn.Conv2d`` (circular padding) where the layer is one convolution (standard, AOL,
  BCOP, AOC, a 1x1 LOT or BRO) and one ``nn.Linear`` for every dense layer;
- Cayley, BRO (circular, or circular on the zero-padded grid with ``padding="zeros"``) and LOT
  (circular on the zero-padded grid), whose weights are per-frequency matrices:
  either :class:`FrequencyConv2d` (FFT with the precomputed matrices) or one materialised
  full-size convolution (the impulse response of the operator, trimmed to its support): the
  ``circular`` argument picks; ``"auto"`` takes the kernel only where it is small (a 1x1 or
  compact support), because a full-size kernel costs far more than the FFT on larger maps
  (measured: ``scripts/bench_plain.py``);
- CPL and SLL: :class:`PotentialResidual`, two fixed convolutions (or dense layers)
  ``x - conv2(ReLU(conv1(x)))`` with the step size folded into ``conv2``;
- Sandwich: :class:`SandwichResidual`, two fixed circular operators with a ReLU between them;
- SOC: :class:`TaylorExpConv2d`, the truncated exponential with its fixed kernel. Its Taylor
  terms are NOT folded into one larger kernel: the layer's convolutions are zero-padded and the
  composition of zero-padded convolutions is not one zero-padded convolution (boundary rows
  differ), so folding would change the function.

The ConvNet wrapper itself becomes a plain ``nn.Sequential`` with the same child names (its
only extra is the Python input check), so the result traces and scripts cleanly.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._io import atomic_path
from .layers import LipschitzModule
from .layers._linalg import fft_conv2d
from .layers.aoc import AOCConv2d, AOCLinear
from .layers.aol import AOLConv2d, AOLLinear
from .layers.bcop import BCOPConv2d, BjorckLinear
from .layers.bro import BROConv2d, BROLinear
from .layers.cayley import CayleyConv2d, CayleyLinear
from .layers.cpl import CPLConv2d, CPLLinear
from .layers.lot import LOTConv2d, LOTLinear
from .layers.sandwich import SandwichConv2d, SandwichLinear
from .layers.sll import SLLConv2d, SLLLinear
from .layers.soc import SOCConv2d, SOCLinear, taylor_exp_conv2d
from .layers.standard import StandardConv2d, StandardLinear

__all__ = [
    "to_plain",
    "export_model",
    "trace_input_shapes",
    "FrequencyConv2d",
    "PotentialResidual",
    "SandwichResidual",
    "TaylorExpConv2d",
    "circular_impulse_kernel",
    "EXPORT_FORMATS",
    "CIRCULAR_FORMS",
]

EXPORT_FORMATS = ("onnx", "torchscript")
CIRCULAR_FORMS = ("auto", "fft", "kernel")
#: relative l1 mass of the taps a materialised kernel may drop when trimmed to its support
TRIM_TOL = 1e-9
#: "auto" materialises a frequency-domain layer as a kernel only up to this many taps per filter
AUTO_MAX_TAPS = 9

_KERNEL_CONVS = (StandardConv2d, AOLConv2d, BCOPConv2d, AOCConv2d)
_DENSE = (StandardLinear, AOLLinear, BjorckLinear, CayleyLinear, LOTLinear, SOCLinear, BROLinear, AOCLinear)


# --- shapes ----------------------------------------------------------------------------------
def _default_input_shape(model: nn.Module) -> tuple[int, ...]:
    size = getattr(model, "input_size", None)
    chans = getattr(model, "in_chans", None)
    if size is None or chans is None:
        raise ValueError(
            f"{type(model).__name__} has no input_size / in_chans attributes; pass input_shape=(C, H, W) "
            "(the spatial size the model is used at: size-dependent layers are materialised for it)"
        )
    return (int(chans), int(size), int(size))


@torch.no_grad()
def trace_input_shapes(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict[nn.Module, tuple[int, ...]]:
    """The input shape (without batch) every submodule sees in one eval-mode forward of zeros."""
    shape = tuple(input_shape) if input_shape is not None else _default_input_shape(model)
    seen: dict[nn.Module, tuple[int, ...]] = {}

    def record(mod: nn.Module, args: tuple) -> None:
        seen.setdefault(mod, tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(1, *shape, dtype=p.dtype if p is not None else torch.float32,
                        device=p.device if p is not None else None)
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


# --- materialised kernels ---------------------------------------------------------------------
def circular_impulse_kernel(op: Callable[[torch.Tensor], torch.Tensor], in_channels: int, n_h: int, n_w: int,
                            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Cross-correlation taps ``c`` (out, in, n_h, n_w) of a circular shift-invariant linear ``op``.

    ``op(x)[o, t] = sum_i sum_s c[o, i, s] x[i, (t + s) mod n]``; computed from the responses to
    one impulse per input channel (exact up to the round-off of ``op``).
    """
    impulses = torch.zeros(in_channels, in_channels, n_h, n_w, dtype=dtype)
    impulses[torch.arange(in_channels), torch.arange(in_channels), 0, 0] = 1.0
    g = op(impulses).transpose(0, 1)  # g[o, i, t]: response at t to an impulse at 0
    # c[s] = g[-s mod n]
    return torch.roll(g.flip(-2, -1), shifts=(1, 1), dims=(-2, -1))


def _offset_taps(c: torch.Tensor, lo: tuple[int, int], hi: tuple[int, int]) -> torch.Tensor:
    """Taps of offsets lo..hi (inclusive, per dim) read circularly from ``c`` (period = its size)."""
    n_h, n_w = c.shape[-2:]
    ih = torch.arange(lo[0], hi[0] + 1) % n_h
    iw = torch.arange(lo[1], hi[1] + 1) % n_w
    return c[..., ih[:, None], iw[None, :]]


def _trim(w: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Drop the outer rings of a centred (odd x odd) kernel while their l1 mass is negligible."""
    total = float(w.abs().sum())
    rh, rw = w.shape[-2] // 2, w.shape[-1] // 2
    ch, cw = rh, rw
    while rh > 0 or rw > 0:
        nh, nw = max(rh - 1, 0), max(rw - 1, 0)
        inner = w[..., ch - nh: ch + nh + 1, cw - nw: cw + nw + 1]
        if total - float(inner.abs().sum()) > TRIM_TOL * total:
            break
        rh, rw = nh, nw
    return w[..., ch - rh: ch + rh + 1, cw - rw: cw + rw + 1], (rh, rw)


def _conv_from_taps(w: torch.Tensor, bias: torch.Tensor | None, padding_mode: str) -> nn.Conv2d:
    """An ``nn.Conv2d`` with the centred kernel ``w`` (out, in, 2r+1, 2r+1) and 'same' padding."""
    w, (rh, rw) = _trim(w)
    conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[-2:]), padding=(rh, rw),
                     padding_mode=padding_mode if (rh or rw) else "zeros", bias=bias is not None)
    return _fixed(conv, w, bias)


def _fixed(mod: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    with torch.no_grad():
        mod.weight.copy_(weight.detach())
        if bias is not None:
            mod.bias.copy_(bias.detach())
    for p in mod.parameters():
        p.requires_grad_(False)
    return mod


def _freq_dtype(wfreq: torch.Tensor) -> torch.dtype:
    return torch.complex128 if wfreq.dtype in (torch.complex128, torch.float64) else torch.complex64


def frequency_kernel(wfreq: torch.Tensor, in_channels: int, grid: tuple[int, int], full: bool) -> torch.Tensor:
    """The circular taps (float64) of per-frequency matrices applied by ``fft_conv2d`` on ``grid``."""
    w = wfreq.detach().to(torch.complex128)
    return circular_impulse_kernel(lambda x: fft_conv2d(x, w, full=full), in_channels, *grid)


# --- plain modules ----------------------------------------------------------------------------
class FrequencyConv2d(nn.Module):
    """A fixed circular convolution by precomputed per-frequency matrices (H, W//2+1 or W, out, in).

    ``pad > 0``: the input is zero-padded by ``pad`` first and the output cropped back (LOT).
    Only inputs of the size the matrices were built for are accepted.
    """

    def __init__(self, weight_freq: torch.Tensor, bias: torch.Tensor | None, *, pad: int = 0, full: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight_freq", weight_freq.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.pad, self.full = int(pad), bool(full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        if p:
            x = F.pad(x, (p, p, p, p))
        if x.shape[-2] != self.weight_freq.shape[0]:
            raise ValueError(
                f"FrequencyConv2d was materialised for {self.weight_freq.shape[0] - 2 * p}-pixel maps, got "
                f"{x.shape[-2] - 2 * p}; rebuild with to_plain(model, input_shape=...)"
            )
        w = self.weight_freq.to(torch.complex128 if x.dtype == torch.float64 else self.weight_freq.dtype)
        y = fft_conv2d(x, w, full=self.full)
        if p:
            y = y[..., p:-p, p:-p]
        return y if self.bias is None else y + self.bias.to(y.dtype)[:, None, None]

    def extra_repr(self) -> str:
        o, i = self.weight_freq.shape[-2:]
        return f"{i}, {o}, grid={tuple(self.weight_freq.shape[:2])}, pad={self.pad}, full={self.full}"


class PotentialResidual(nn.Module):
    """``x - second(ReLU(first(x)))``: CPL and SLL with their step sizes folded into ``second``."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.second(F.relu(self.first(x)))


class SandwichResidual(nn.Module):
    """``second(ReLU(first(x)))`` (bias inside ``first``): a materialised Sandwich layer."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(F.relu(self.first(x)))


class TaylorExpConv2d(nn.Module):
    """SOC with a fixed kernel: ``scale * sum_{i<=terms} L^i x / i! + bias`` (zero-padded convs)."""

    def __init__(self, kernel: torch.Tensor, bias: torch.Tensor | None, *, terms: int, scale: float,
                 in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.terms, self.scale, self.stride = int(terms), float(scale), int(stride)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.folded_channels = in_channels * stride * stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        if self.out_channels > self.folded_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.folded_channels))
        z = taylor_exp_conv2d(x, self.kernel.to(x.dtype), self.terms)
        if self.out_channels < self.folded_channels:
            z = z[:, : self.out_channels]
        if self.scale != 1.0:
            z = z * self.scale
        return z if self.bias is None else z + self.bias.to(z.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel.shape[-1]}, terms={self.terms}"


# --- per-layer conversion -----------------------------------------------------------------------
def _linear(w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    return _fixed(nn.Linear(w.shape[1], w.shape[0], bias=b is not None), w, b)


def _freq_op(wfreq: torch.Tensor, bias: torch.Tensor | None, size: tuple[int, int], pad: int, full: bool,
             circular: str) -> nn.Module:
    """A per-frequency operator as FrequencyConv2d or as one materialised nn.Conv2d."""
    grid = (size[0] + 2 * pad, size[1] + 2 * pad)
    if circular == "fft":
        return FrequencyConv2d(wfreq, bias, pad=pad, full=full)
    c = frequency_kernel(wfreq, wfreq.shape[-1], grid, full)
    if pad:  # zero padding + circular on the padded grid + crop == one zero-padded conv, offsets +-(n-1)
        taps = _offset_taps(c, (-(size[0] - 1), -(size[1] - 1)), (size[0] - 1, size[1] - 1))
        mode = "zeros"
    else:
        # circular: offsets -r..r with r = n // 2; for even n the offsets +-n/2 coincide: keep one
        rh, rw = grid[0] // 2, grid[1] // 2
        taps = _offset_taps(c, (-rh, -rw), (rh, rw)).clone()
        if grid[0] % 2 == 0:
            taps[..., -1, :] = 0
        if grid[1] % 2 == 0:
            taps[..., :, -1] = 0
        mode = "circular"
    trimmed, _ = _trim(taps)
    if circular == "auto" and trimmed.shape[-1] * trimmed.shape[-2] > AUTO_MAX_TAPS:
        return FrequencyConv2d(wfreq, bias, pad=pad, full=full)
    return _conv_from_taps(taps.float(), None if bias is None else bias.float(), mode)


def _size2(shape: tuple[int, ...]) -> tuple[int, int]:
    return int(shape[-2]), int(shape[-1])


def _plain_layer(m: LipschitzModule, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
    if isinstance(m, _DENSE):
        return _linear(m.effective_weight(), m.bias)
    if isinstance(m, _KERNEL_CONVS):
        w = m.effective_weight()
        p = w.shape[-1] // 2
        conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=p,
                         padding_mode="circular" if p else "zeros", bias=True)
        return _fixed(conv, w, m.bias)
    if isinstance(m, (CPLLinear, SLLLinear)):
        w = m.weight if isinstance(m, CPLLinear) else m.weights
        step = m.effective_weight()
        t = step.rescaling * torch.ones(w.shape[0]) if isinstance(m, CPLLinear) else step
        return PotentialResidual(_linear(w, m.bias), _linear((t[:, None] * w).T, None))
    if isinstance(m, (CPLConv2d, SLLConv2d)):
        k = m.kernel
        if isinstance(m, CPLConv2d):
            t = m.effective_weight(_size2(shape) if m.paper_compatible else None).rescaling.expand(k.shape[0])
        else:
            t = m.effective_weight()
        p = k.shape[-1] // 2
        first = _fixed(nn.Conv2d(k.shape[1], k.shape[0], k.shape[-1], padding=p), k, m.bias)
        # K^T as a convolution: conv_transpose2d(h, K, padding=p) == conv2d(h, K^T flipped, padding=p)
        adj = (t[:, None, None, None] * k).transpose(0, 1).flip(2, 3)
        second = _fixed(nn.Conv2d(k.shape[0], k.shape[1], k.shape[-1], padding=p, bias=False), adj, None)
        return PotentialResidual(first, second)
    if isinstance(m, SandwichLinear):
        first, bias, second = m.effective_weight()
        return SandwichResidual(_linear(first, bias), _linear(second, None))
    if isinstance(m, SandwichConv2d):
        size = _size2(shape)
        first, bias, second = m.effective_weight(size)
        return SandwichResidual(_freq_op(first, bias, size, 0, False, circular),
                                _freq_op(second, None, size, 0, False, circular))
    if isinstance(m, CayleyConv2d):
        size = _size2(shape)
        return _freq_op(m.effective_weight(size), m.bias, size, 0, False, circular)
    if isinstance(m, BROConv2d):
        if not m.size_dependent:
            w = m.effective_weight()
            return _fixed(nn.Conv2d(w.shape[1], w.shape[0], 1), w[:, :, None, None], m.bias)
        size = _size2(shape)
        pad = m.kernel_size // 2 if m.padding == "zeros" else 0
        return _freq_op(m.effective_weight(size), m.bias, size, pad, False, circular)
    if isinstance(m, LOTConv2d):
        if not m.size_dependent:
            w = m.effective_weight()
            return _fixed(nn.Conv2d(w.shape[1], w.shape[0], 1), w[:, :, None, None], m.bias)
        size = _size2(shape)
        return _freq_op(m.effective_weight(size), m.bias, size, m.kernel_size // 2, m.paper_compatible, circular)
    if isinstance(m, SOCConv2d):
        return TaylorExpConv2d(m.effective_weight(), m.bias, terms=m.eval_terms, scale=m.taylor_scale(m.eval_terms),
                               in_channels=m.in_channels, out_channels=m.out_channels, stride=m.stride)
    raise TypeError(
        f"to_plain does not know how to materialise {type(m).__name__}; supported: the layers of lipzoo.LAYERS"
    )


@torch.no_grad()
def to_plain(model: nn.Module, *, input_shape: tuple[int, ...] | None = None, circular: str = "auto") -> nn.Module:
    """A copy of ``model`` (eval mode) made of plain torch modules with fixed, materialised weights.

    ``input_shape`` (C, H, W): the input the size-dependent layers are materialised for (default:
    the model's ``in_chans`` and native ``input_size``). ``circular``: how Cayley, BRO, LOT and
    Sandwich convolutions are materialised: ``"fft"`` (precomputed per-frequency matrices),
    ``"kernel"`` (one full-size ``nn.Conv2d``, exportable to ONNX) or ``"auto"`` (the kernel only
    where its support is at most 3x3, else the FFT).
    """
    if circular not in CIRCULAR_FORMS:
        raise ValueError(f"circular must be one of {CIRCULAR_FORMS}, got {circular!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_plain expects a torch.nn.Module, got {type(model).__name__}")
    src = copy.deepcopy(model).eval()
    needs_shape = any(isinstance(m, LipschitzModule) and m.size_dependent for m in src.modules())
    shapes = trace_input_shapes(src, input_shape) if needs_shape else {}

    def convert(mod: nn.Module) -> nn.Module:
        if isinstance(mod, LipschitzModule):
            return _plain_layer(mod, shapes.get(mod), circular)
        for name, child in list(mod.named_children()):
            setattr(mod, name, convert(child))
        return mod

    out = convert(src)
    from .models import ConvNet

    if isinstance(out, ConvNet):  # a plain Sequential with the same children (drops the Python input check)
        plain = nn.Sequential(OrderedDict(out.named_children()))
        for attr in ("in_chans", "num_classes", "input_size", "layer"):
            setattr(plain, attr, getattr(out, attr))
        out = plain
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


# --- export ------------------------------------------------------------------------------------
def export_model(model: nn.Module, path: str | os.PathLike, fmt: str = "onnx", *,
                 input_shape: tuple[int, ...] | None = None, opset: int = 17) -> Path:
    """Write ``to_plain(model)`` as ONNX or TorchScript to ``path`` (atomically); returns the path.

    ONNX gets the materialised-kernel form (``circular="kernel"``: no complex FFT ops) and a
    dynamic batch axis; TorchScript (traced) gets the faster ``"auto"`` form.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    path = Path(path)
    shape = tuple(input_shape) if input_shape is not None else _default_input_shape(model)
    plain = to_plain(model, input_shape=shape, circular="kernel" if fmt == "onnx" else "auto")
    x = torch.rand(2, *shape)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed per model: tracing is exact
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based ONNX exporter (no onnxscript)
            if fmt == "onnx":
                torch.onnx.export(plain, (x,), tmp, dynamo=False, input_names=["images"], output_names=["logits"],
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset)
            else:
                torch.jit.trace(plain, (x,), check_trace=False).save(tmp)
    return path
