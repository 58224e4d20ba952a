"""PLACEHOLDER: being written. (cpl)"""

from __future__ import annotations

from ._base import LipschitzModule


class CPLConv2d(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("CPLConv2d is not implemented yet")


class CPLLinear(LipschitzModule):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("CPLLinear is not implemented yet")
