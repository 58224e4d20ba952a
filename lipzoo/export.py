"""Plain-torch copies of Lipschitz models for inference and export (``to_plain``, ONNX, TorchScript).

``to_plain(model)`` returns a deep copy in eval mode in which every Lipschitz layer is replaced
by its plain form, :meth:`LipschitzModule.plain <lipzoo.layers.LipschitzModule.plain>`
(implemented in the layer's file, so this module knows no layer family): plain torch modules
holding its materialised eval-mode weight (the output of the layer's own pure
``compute_weight``, so nothing can differ from what the layer computes):

- one ``nn.Conv2d`` (circular padding) where the layer is one convolution (standard, AOL,
  BCOP, AOC, a 1x1 LOT or BRO) and one ``nn.Linear`` for every dense layer;
- layers whose weights are per-frequency matrices (Cayley, BRO, LOT, Sandwich): either
  :class:`FrequencyConv2d` (FFT with the precomputed matrices) or one materialised full-size
  convolution (the impulse response of the operator, trimmed to its support): the ``circular``
  argument picks; ``"auto"`` takes the kernel only where it is small (a 1x1 or compact
  support), because a full-size kernel costs far more than the FFT on larger maps (measured:
  ``scripts/bench_plain.py``);
- the potential residual layers (CPL, SLL): :class:`PotentialResidual`, two fixed convolutions
  (or dense layers) ``x - conv2(ReLU(conv1(x)))`` with the step size folded into ``conv2``;
- Sandwich: :class:`SandwichResidual`, two fixed operators with a ReLU between them;
- SOC: :class:`TaylorExpConv2d`, the truncated exponential with its fixed kernel. Its Taylor
  terms are NOT folded into one larger kernel: the layer's convolutions are zero-padded and the
  composition of zero-padded convolutions is not one zero-padded convolution (boundary rows
  differ), so folding would change the function.

The plain modules and their builders live in :mod:`lipzoo.layers._plain` (re-exported here).
The ConvNet wrapper itself becomes a plain ``nn.Sequential`` with the same child names (its
only extra is the Python input check), so the result traces and scripts cleanly.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ._io import atomic_path
from .layers import LipschitzModule
from .layers._plain import (
    AUTO_MAX_TAPS,
    TRIM_TOL,
    FrequencyConv2d,
    PotentialResidual,
    SandwichResidual,
    TaylorExpConv2d,
    circular_impulse_kernel,
    frequency_kernel,
)
from .models import ConvNet

__all__ = [
    "to_plain",
    "export_model",
    "trace_input_shapes",
    "FrequencyConv2d",
    "PotentialResidual",
    "SandwichResidual",
    "TaylorExpConv2d",
    "circular_impulse_kernel",
    "frequency_kernel",
    "EXPORT_FORMATS",
    "CIRCULAR_FORMS",
    "TRIM_TOL",
    "AUTO_MAX_TAPS",
]

EXPORT_FORMATS = ("onnx", "torchscript")
CIRCULAR_FORMS = ("auto", "fft", "kernel")


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


# --- per-layer conversion -----------------------------------------------------------------------
def _plain_layer(m: LipschitzModule, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
    """The plain form of one lipzoo layer (its own :meth:`~lipzoo.layers.LipschitzModule.plain`)."""
    if type(m).plain is LipschitzModule.plain:
        raise TypeError(
            f"to_plain does not know how to materialise {type(m).__name__}; supported: the layers of lipzoo.LAYERS"
        )
    return m.plain(shape, circular)


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
