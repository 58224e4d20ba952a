"""PLACEHOLDER: being written. (cayley)"""

from __future__ import annotations

from ._base import LipschitzModule


class CayleyConv2d(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("CayleyConv2d is not implemented yet")


class CayleyLinear(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("CayleyLinear is not implemented yet")
