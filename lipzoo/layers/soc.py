"""PLACEHOLDER: being written. (soc)"""

from __future__ import annotations

from ._base import LipschitzModule


class SOCConv2d(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SOCConv2d is not implemented yet")


class SOCLinear(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SOCLinear is not implemented yet")
