"""The paper's ConvNet family (``SimplifiedConvNet`` / ``LipConvNet``), built from the layer table.

With base width w and B blocks the network is::

    ZeroConcatenation(in_chans -> w) -> FirstConv (1x1, w -> w) -> MaxMin
    -> Block1..BlockB: 5 x [conv (c -> c, k) -> MaxMin] -> FirstChannels(c/2) -> PixelUnshuffle(2)
       (c = w * 2^i; the last block uses k = 1 because its map is 2x2)
    -> AdaptiveMaxPool2d(1) -> ClassificationHead (1x1 conv + Flatten, or Flatten + dense)
    -> FirstChannels(num_classes)

Every piece is 1-Lipschitz when the layer is, so the whole network is. The child names are the
paper's, so its state dicts map onto these models key for key.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import InputError, LipschitzModule, MaxMin, check_input, get_layer
from ..layers._base import inspectable
from ..layers.structural import Centering, FirstChannels, ZeroChannelConcatenation

__all__ = ["ConvNet", "ConvNetConfig", "SIZES"]

#: size -> (base width of convnet (32x32 input, 5 blocks), base width of tconvnet (64x64, 6 blocks))
SIZES: dict[str, tuple[int, int]] = {"xs": (16, 8), "s": (32, 16), "m": (64, 32), "l": (128, 64)}
FAMILIES: dict[str, tuple[int, int]] = {"convnet": (5, 32), "tconvnet": (6, 64)}  # blocks, input size


@dataclass(frozen=True)
class ConvNetConfig:
    layer: str
    base_width: int
    num_blocks: int
    input_size: int
    layers_per_block: int = 5
    kernel_size: int = 3
    in_chans: int = 3
    num_classes: int = 10
    input_mean: tuple[float, ...] | None = None  # per-channel centring built into the model

    @classmethod
    def from_name(cls, family: str, size: str, layer: str, **kw) -> "ConvNetConfig":
        blocks, input_size = FAMILIES[family]
        width = SIZES[size][0 if family == "convnet" else 1]
        return cls(layer=layer, base_width=width, num_blocks=blocks, input_size=input_size, **kw)


class ConvNet(nn.Sequential):
    """A 1-Lipschitz ConvNet of the paper (or its unconstrained ``standard`` baseline).

    Inputs are float images (N, in_chans, H, W) with H and W multiples of 2**num_blocks
    (the native size is ``input_size``). The first ``num_classes`` outputs are the logits.
    """

    def __init__(self, config: ConvNetConfig, **layer_kwargs) -> None:
        spec = get_layer(config.layer)
        layer_kwargs = spec.layer_kwargs(layer_kwargs)  # paper_compatible only where the family has it
        w, b = config.base_width, config.num_blocks
        if config.in_chans < 1 or config.in_chans > w:
            raise ValueError(f"in_chans must be between 1 and the base width {w}, got {config.in_chans}")
        final = w * 2**b
        if not 1 <= config.num_classes <= final:
            raise ValueError(f"num_classes must be between 1 and the head width {final}, got {config.num_classes}")
        conv, size = spec.conv, config.input_size
        mods: list[tuple[str, nn.Module]] = []
        if config.input_mean is not None:
            if len(config.input_mean) != config.in_chans:
                raise ValueError(f"input_mean has {len(config.input_mean)} values but in_chans is {config.in_chans}")
            mods.append(("Centering", Centering(tuple(config.input_mean))))
        mods += [
            ("ZeroConcatenation", ZeroChannelConcatenation(w)),
            ("FirstConv", conv(w, w, 1, input_size=(size, size), **layer_kwargs)),
            ("FirstActivation", MaxMin()),
        ]
        for i in range(b):
            c = w * 2**i
            k = config.kernel_size if i < b - 1 else 1
            block: list[nn.Module] = []
            for _ in range(config.layers_per_block):
                block += [conv(c, c, k, input_size=(size, size), **layer_kwargs), MaxMin()]
            block += [FirstChannels(c // 2), nn.PixelUnshuffle(2)]
            mods.append((f"Block{i + 1}", nn.Sequential(*block)))
            size //= 2
        mods.append(("AdaptiveMaxPool", nn.AdaptiveMaxPool2d(1)))
        if spec.head == "linear":
            head = nn.Sequential(nn.Flatten(), spec.linear(final, final, **layer_kwargs))
        else:
            head = nn.Sequential(conv(final, final, 1, input_size=(1, 1), **layer_kwargs), nn.Flatten())
        mods += [("ClassificationHead", head), ("FirstChannels", FirstChannels(config.num_classes))]
        super().__init__(OrderedDict(mods))
        self.config = config
        self.layer = spec.id
        self.in_chans = config.in_chans
        self.num_classes = config.num_classes
        self.input_size = config.input_size
        for m in self.modules():
            if isinstance(m, LipschitzModule):
                m.check_inputs = False  # validated once, at the model's entry

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputError` naming what was expected when ``x`` is not a valid batch."""
        name = f"ConvNet({self.layer})"
        if isinstance(x, torch.Tensor) and x.ndim == 3:
            raise InputError(
                f"{name} expects a batch (N, {self.in_chans}, H, W), got a single image of shape "
                f"{tuple(x.shape)}; use x.unsqueeze(0)"
            )
        check_input(x, channels=self.in_chans, name=name, check_finite=False)
        step = 2**self.config.num_blocks
        h, wd = x.shape[-2:]
        if h < step or wd < step or h % step or wd % step:
            raise InputError(
                f"{name} expects images whose height and width are multiples of {step} (its "
                f"{self.config.num_blocks} downsampling steps halve the size each time; native size "
                f"{self.input_size}x{self.input_size}), got {h}x{wd}"
            )
        if x.numel() and inspectable(x) and not bool(torch.isfinite(x).all()):
            raise InputError(f"{name} got NaN or Inf values in its input; inputs must be finite")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return super().forward(x)
