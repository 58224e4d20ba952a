"""PLACEHOLDER: being written. (bcop)"""

from __future__ import annotations

from ._base import LipschitzModule


class BCOPConv2d(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("BCOPConv2d is not implemented yet")


class BjorckLinear(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("BjorckLinear is not implemented yet")
