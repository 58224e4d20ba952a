"""PLACEHOLDER: being written. (sandwich)"""

from __future__ import annotations

from ._base import LipschitzModule


class SandwichConv2d(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SandwichConv2d is not implemented yet")


class SandwichLinear(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SandwichLinear is not implemented yet")
