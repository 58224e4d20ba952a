"""Common machinery of lipzoo's layers: input checks, the eval-mode weight cache, and the protocol
every layer implements for the audit and the exporter.

Every Lipschitz layer derives its effective weight from ONE pure function of its parameters,
``compute_weight(size)``. In training mode (or whenever gradients w.r.t. parameters are needed)
that function is called on every forward. In eval mode its result is cached, keyed by the
identity and version counter of every parameter and buffer, so any in-place change (an
optimizer step, ``load_state_dict``, ``.to(device)``) invalidates the cache automatically and
no stale weight can ever be used. ``train()`` drops the cache as well.

The weight is always computed in the parameters' own precision: ``effective_weight`` runs
``compute_weight`` with autocast disabled, so under a mixed-precision (e.g. bf16) autocast only
the convolutions and matrix products applied to activations run in reduced precision, never the
parametrisation (orthogonalisation, FFTs, norm bounds, rescalings), and the eval cache never
holds a reduced-precision weight.

Each layer family also owns, in its own file, the two things :mod:`lipzoo.audit` and
:mod:`lipzoo.export` need, so those stay generic: ``norm_bound(shape)``, its GUARANTEED l2
operator-norm (Lipschitz) bound at an input shape, and ``plain(shape, circular)``, its
materialised plain-torch form. Two common forms come with both: :class:`MatrixLayer` (one dense
matrix) and :class:`KernelConv` (one explicit circular kernel). Parameter-free pieces that are
isometries, projections or permutations derive from :class:`OneLipschitz`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Hashable

import torch
import torch.nn.functional as F
from torch import nn

from ._linalg import gram_bound
from ._padding import circular_pad
from ._norms import circular_conv_norm, matrix_norm
from ._plain import plain_circular_conv, plain_linear

__all__ = [
    "LipschitzModule",
    "MatrixLayer",
    "KernelConv",
    "OneLipschitz",
    "ONE_LIPSCHITZ_METHOD",
    "check_input",
    "InputError",
    "as_size",
    "check_kernel_size",
    "check_square",
    "map_size",
    "spatial_size",
    "full_precision",
]

#: the method text of the bound 1 of a parameter-free isometry, projection or permutation
ONE_LIPSCHITZ_METHOD = "1 (isometry, projection or permutation)"


#: device types on which torch.autocast exists (looked up once per type; filled for cpu/cuda here so
#: that a torch.compile trace never has to ask)
_AUTOCAST_DEVICES: dict[str, bool] = {t: torch.amp.is_autocast_available(t) for t in ("cpu", "cuda")}


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """A context with autocast disabled on ``device_type`` (a no-op where autocast does not exist,
    e.g. ``meta``): weight parametrisations run inside it in the parameters' own dtype."""
    ok = _AUTOCAST_DEVICES.get(device_type)
    if ok is None:
        ok = _AUTOCAST_DEVICES[device_type] = torch.amp.is_autocast_available(device_type)
    return torch.autocast(device_type=device_type, enabled=False) if ok else contextlib.nullcontext()


class InputError(ValueError):
    """A tensor given to a lipzoo layer or model is not what it expects."""


def inspectable(x: torch.Tensor) -> bool:
    """Whether a data-dependent check on ``x`` may run: not while torch.compile traces (it would break
    the graph) and not on a torch.func-transformed tensor (vmap/jvp have no single value to test)."""
    return not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(x)


def check_input(
    x: torch.Tensor,
    *,
    channels: int | None,
    ndim: tuple[int, ...] = (4,),
    name: str = "layer",
    check_finite: bool = True,
) -> None:
    """Raise :class:`InputError` naming what was expected when ``x`` is not a valid input."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in ndim:
        shape = {4: "(N, C, H, W)", 2: "(N, features)", 3: "(C, H, W)"}
        want = " or ".join(shape.get(d, f"{d}-D") for d in ndim)
        raise InputError(f"{name} expects a {want} tensor, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise InputError(
            f"{name} expects a floating-point tensor (e.g. float32 images in [0, 1]), got dtype "
            f"{x.dtype}; convert with x.float() / 255 for uint8 images"
        )
    if channels is not None and x.shape[1] != channels:
        what = "channels" if x.ndim == 4 else "features"
        raise InputError(
            f"{name} expects {channels} input {what}, got {x.shape[1]} (input shape {tuple(x.shape)})"
        )
    if check_finite and x.numel() and inspectable(x) and not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} got NaN or Inf values in its input; inputs must be finite")


class LipschitzModule(nn.Module):
    """Base class: a pure ``compute_weight`` plus an automatically invalidated eval cache.

    Subclasses implement ``compute_weight(self, size)`` (``size`` is the spatial size of the input
    for layers whose effective weight depends on it, else ``None``) and call
    ``self.effective_weight(size)`` inside ``forward``; and, for the audit and the exporter,
    :meth:`norm_bound` and :meth:`plain` (or derive from :class:`MatrixLayer` /
    :class:`KernelConv`, which implement both for their form).
    """

    #: whether forward() validates its input (the models switch this off for inner layers and
    #: validate once at their entry).
    check_inputs: bool = True
    #: whether this layer's effective weight depends on the spatial input size.
    size_dependent: bool = False

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "_weight_cache", {})

    # --- the pure function -------------------------------------------------------------------
    def compute_weight(self, size: tuple[int, int] | None = None) -> Any:  # pragma: no cover
        raise NotImplementedError

    # --- caching -----------------------------------------------------------------------------
    def _state_key(self) -> tuple:
        key = []
        for t in list(self.parameters(recurse=False)) + list(self.buffers(recurse=False)):
            key.append((id(t), t.data_ptr(), t._version, t.device, t.dtype))
        return tuple(key)

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(
            p.requires_grad for p in self.parameters(recurse=False)
        )

    def _device_type(self) -> str:
        for t in self.parameters(recurse=False):
            return t.device.type
        for t in self.buffers(recurse=False):
            return t.device.type
        return "cpu"

    def effective_weight(self, size: tuple[int, int] | None = None) -> Any:
        """``compute_weight(size)`` with autocast disabled, cached in eval mode while no parameter has changed.

        While ``torch.compile`` traces, the weight is computed inside the graph, uncached: the cache key
        (storage pointers and version counters) cannot be traced. For fast compiled inference export
        the model first (``lipzoo.to_plain`` materialises every weight).
        """
        if torch.compiler.is_compiling():
            with (contextlib.nullcontext() if self.training else torch.no_grad()), full_precision(self._device_type()):
                return self.compute_weight(size)
        if self.training or self._needs_grad():
            self._weight_cache.clear()
            with full_precision(self._device_type()):
                return self.compute_weight(size)
        key: Hashable = (size, self._state_key())
        hit = self._weight_cache.get("entry")
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad(), full_precision(self._device_type()):
            value = self.compute_weight(size)
        self._weight_cache.clear()
        self._weight_cache["entry"] = (key, value)
        return value

    def clear_cache(self) -> None:
        self._weight_cache.clear()

    def train(self, mode: bool = True) -> "LipschitzModule":
        self._weight_cache.clear()
        return super().train(mode)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_weight_cache"] = {}
        return state

    def __deepcopy__(self, memo: dict) -> "LipschitzModule":
        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        import copy

        for k, v in self.__dict__.items():
            if k == "_weight_cache":
                object.__setattr__(new, k, {})
            else:
                object.__setattr__(new, k, copy.deepcopy(v, memo))
        return new

    # --- the audit's and the exporter's protocol ------------------------------------------------
    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """A GUARANTEED upper bound on this layer's l2 Lipschitz constant for inputs of ``shape``.

        ``shape``: one input without the batch dimension, ``(C, H, W)`` or ``(features,)``.
        Returns ``(upper, method, gram, detail)``: ``upper`` bounds ``||f(x) - f(y)|| / ||x - y||``
        for ALL inputs ``x != y`` of that shape, for the function the layer computes in eval mode
        (its materialised ``effective_weight``; the number is computed in float64 from it, so it
        holds for the exact arithmetic of that weight, not for float round-off in the forward);
        ``method`` says in words how it was obtained (e.g. "exact circular norm (FFT)"); ``gram``
        is the size-independent Schur-test bound where the layer has a kernel, else None;
        ``detail`` holds the intermediate numbers of the proof (JSON-serialisable). Raises
        :class:`lipzoo.layers._norms.BoundError` where the parameters are outside what the proof
        needs. Called by :func:`lipzoo.audit.layer_bound` with the shape the layer sees in the model.
        """
        raise NotImplementedError(f"{type(self).__name__} does not declare a guaranteed norm bound")

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        """This layer's plain form: fixed plain torch modules computing the same function (eval mode).

        The modules hold the materialised eval-mode weight (the output of the layer's own pure
        ``compute_weight``) without gradient, so the plain form equals the layer on inputs of
        ``shape`` (up to float round-off where the computation differs, e.g. a folded step size).
        ``shape``: one input without the batch dimension; it may be None when the layer is not
        ``size_dependent``. ``circular``: how per-frequency (FFT) operators are materialised:
        ``"fft"`` (precomputed per-frequency matrices), ``"kernel"`` (one full-size ``nn.Conv2d``,
        exportable to ONNX) or ``"auto"`` (the kernel only where its support is small); layers
        without such operators ignore it. Called by :func:`lipzoo.export.to_plain`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not declare a plain form")

    def _check(self, x: torch.Tensor, channels: int | None, ndim: tuple[int, ...] = (4,)) -> None:
        if self.check_inputs:
            check_input(x, channels=channels, ndim=ndim, name=type(self).__name__)


class MatrixLayer(LipschitzModule):
    """A dense layer ``y = W x + b`` whose effective weight is one (out, in) matrix ``W`` (``self.bias``: b or None).

    Its bound is the EXACT spectral norm of ``W`` (float64 SVD); its plain form one ``nn.Linear``;
    its forward ``F.linear`` of (N, in_features) inputs. Subclasses set ``in_features``,
    ``out_features`` and ``bias`` and define ``compute_weight``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_features, ndim=(2,))
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        return matrix_norm(self.effective_weight()), "exact spectral norm", None, {}

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        return plain_linear(self.effective_weight(), self.bias)


class KernelConv(LipschitzModule):
    """A convolution whose effective weight is one (out, in, k, k) kernel (odd k), applied as a circular
    'same' cross-correlation plus ``self.bias``.

    Its bound is the EXACT norm of that circular operator on the input grid, ``max_f
    sigma_max(W_hat(f))`` over all frequencies (float64 FFT; a kernel larger than the grid is
    folded onto it), with the size-independent ``gram_bound`` (Schur test) reported beside it; its
    plain form one ``nn.Conv2d`` with circular padding. Subclasses set ``in_channels``,
    ``out_channels``, ``kernel_size`` and ``bias`` and define ``compute_weight``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.in_channels)
        return F.conv2d(circular_pad(x, self.kernel_size // 2), self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding=circular"

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        k = self.effective_weight()
        return circular_conv_norm(k, *map_size(shape)), "exact circular norm (FFT)", float(gram_bound(k.detach().double())), {}

    def plain(self, shape: tuple[int, ...] | None, circular: str) -> nn.Module:
        return plain_circular_conv(self.effective_weight(), self.bias)


class OneLipschitz:
    """Mixin of parameter-free modules that are isometries, projections or permutations of their input.

    Such a module declares, by deriving from this class, that its l2 Lipschitz constant is at most
    1 for every input shape; :meth:`norm_bound` returns exactly that. They are plain torch already:
    the exporter keeps them as they are.
    """

    def norm_bound(self, shape: tuple[int, ...]) -> tuple[float, str, float | None, dict]:
        """``(1.0, method, None, {})``: GUARANTEED 1 for inputs of every shape (see the class)."""
        return 1.0, ONE_LIPSCHITZ_METHOD, None, {}


def spatial_size(x: torch.Tensor) -> tuple[int, int]:
    return int(x.shape[-2]), int(x.shape[-1])


def map_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """The spatial size (H, W) of an input shape (..., H, W)."""
    return int(shape[-2]), int(shape[-1])


def as_size(size: tuple[int, int] | int | None, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """Normalise an ``input_size`` argument (int, (H, W) or None) to a pair of ints."""
    if size is None:
        return default
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def check_square(layer: str, n_in: int, n_out: int) -> None:
    """Residual layers ``y = x - ...`` need as many output as input channels."""
    if n_in != n_out:
        raise ValueError(
            f"{layer} is a residual layer (y = x - ...) whose output has as many channels as its input; "
            f"it needs in == out, got {n_in} -> {n_out}"
        )


def check_kernel_size(kernel_size: int) -> None:
    """Every lipzoo convolution is a centred 'same' convolution: it needs a positive odd kernel."""
    if kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be a positive odd integer for a centred 'same' convolution, got {kernel_size}")
