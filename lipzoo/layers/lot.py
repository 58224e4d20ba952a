"""PLACEHOLDER: being written. (lot)"""

from __future__ import annotations

from ._base import LipschitzModule


class LOTConv2d(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("LOTConv2d is not implemented yet")


class LOTLinear(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("LOTLinear is not implemented yet")
