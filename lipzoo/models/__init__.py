"""Architectures built from the layer table."""

from .convnet import FAMILIES, SIZES, ConvNet, ConvNetConfig

__all__ = ["ConvNet", "ConvNetConfig", "SIZES", "FAMILIES"]
