"""PLACEHOLDER: being written. (sll)"""

from __future__ import annotations

from ._base import LipschitzModule


class SLLConv2d(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SLLConv2d is not implemented yet")


class SLLLinear(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("SLLLinear is not implemented yet")
