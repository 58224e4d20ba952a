"""What a pretrained model takes: its :class:`DataConfig` (data set, input size, channels, classes,
the mean the model subtracts itself) and the :class:`ImageTransform` that turns images as data
sets ship them into that input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import dataset_info

__all__ = ["DataConfig", "ImageTransform"]


@dataclass(frozen=True)
class DataConfig:
    """What a pretrained model expects: [0, 1] images of ``in_chans x input_size x input_size``."""

    dataset: str
    input_size: int
    in_chans: int
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # subtracted inside the model (its ``Centering`` module)

    @classmethod
    def from_dataset(cls, dataset: str) -> "DataConfig":
        info = dataset_info(dataset)
        return cls(dataset, info.input_size, info.in_chans, info.num_classes, tuple(info.class_names), tuple(info.mean))

    def transform(self) -> "ImageTransform":
        """A callable turning images as data sets ship them into this model's input (see :class:`ImageTransform`)."""
        return ImageTransform(self.in_chans, self.input_size)

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "input_size": self.input_size, "in_chans": self.in_chans,
                "num_classes": self.num_classes, "class_names": list(self.class_names), "mean": list(self.mean)}


@dataclass(frozen=True)
class ImageTransform:
    """Images as data sets ship them -> float32 model input in [0, 1], zero-padded to ``input_size``.

    Accepted: a PIL image (converted to ``L`` for one channel, ``RGB`` for three); a numpy array
    ``H x W``, ``H x W x C``, ``N x H x W`` (one channel) or ``N x H x W x C`` (the layout of image
    files and of IDX/CIFAR arrays); a torch tensor ``H x W``, ``C x H x W``, ``N x H x W`` (one
    channel) or ``N x C x H x W``. Integer values are 0..255 and divided by 255; float values must
    already lie in [0, 1]. Images smaller than ``input_size`` are padded with zeros (black) on all
    sides equally, exactly as lipzoo's data loaders pad 28x28 Fashion-MNIST/MNIST to 32x32 for
    training and evaluation. One image gives ``C x S x S``, a batch ``N x C x S x S``. Anything
    else (wrong channels, larger images, an odd size difference) raises ``ValueError``: nothing
    is resized or recoloured behind your back.
    """

    in_chans: int
    input_size: int

    def __call__(self, image) -> "torch.Tensor":
        import numpy as np

        if type(image).__module__.startswith("PIL."):
            image = np.asarray(image.convert("L" if self.in_chans == 1 else "RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim in (3, 4) and image.shape[-1] == self.in_chans:
                image = np.moveaxis(image, -1, -3)  # channels last -> channels first
            image = torch.from_numpy(np.array(image, copy=True))  # a private, writable copy
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
        x = image
        if x.ndim == 2:
            x = x[None]
        elif x.ndim == 3 and x.shape[0] != self.in_chans and self.in_chans == 1:
            x = x[:, None]  # a batch of one-channel images
        elif x.ndim not in (3, 4):
            raise ValueError(f"expected an image (H, W) or ({self.in_chans}, H, W) or a batch (N, {self.in_chans}, H, W), "
                             f"got shape {tuple(image.shape)}")
        if x.shape[-3] != self.in_chans:
            raise ValueError(f"the model takes {self.in_chans}-channel images, got shape {tuple(image.shape)} "
                             f"({x.shape[-3]} channels)")
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"expected uint8 (0..255) or float ([0, 1]) images, got {x.dtype}")
        if x.dtype.is_floating_point:
            x = x.to(torch.float32)
            if x.numel() and not (x.min() >= 0 and x.max() <= 1):  # NaN fails too
                raise ValueError(f"float images must lie in [0, 1], got values in [{x.min().item():g}, {x.max().item():g}]; "
                                 "pass uint8 0..255 or divide by 255")
        else:
            if x.numel() and (x.min() < 0 or x.max() > 255):
                raise ValueError(f"integer images must lie in 0..255, got {x.min().item()}..{x.max().item()}")
            x = x.to(torch.float32) / 255
        h, w, s = x.shape[-2], x.shape[-1], self.input_size
        if h > s or w > s or (s - h) % 2 or (s - w) % 2:
            raise ValueError(f"the model takes {s}x{s} images; got {h}x{w}, which cannot be zero-padded evenly to it "
                             f"(expected at most {s}x{s}, with an even difference)")
        ph, pw = (s - h) // 2, (s - w) // 2
        x = torch.nn.functional.pad(x, (pw, pw, ph, ph)) if ph or pw else x.clone()
        return x.contiguous()
