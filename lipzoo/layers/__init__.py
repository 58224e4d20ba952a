"""The layer families of lipzoo and THE table that describes them.

``LAYERS`` maps each layer id to its convolution class, its dense (linear) class, the form of
the classification head the paper's ConvNet uses with it, the paper that introduced it and
whether it is orthogonal (norm-preserving) or only 1-Lipschitz. Everything else in lipzoo
(models, registry, benchmarks, tests) enumerates this table.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ._base import InputError, LipschitzModule, check_input
from .activations import MaxMin
from .aoc import AOCConv2d, AOCLinear
from .aol import AOLConv2d, AOLLinear
from .bcop import BCOPConv2d, BjorckLinear
from .bro import BROConv2d, BROLinear
from .cayley import CayleyConv2d, CayleyLinear
from .cpl import CPLConv2d, CPLLinear
from .lot import LOTConv2d, LOTLinear
from .sandwich import SandwichConv2d, SandwichLinear
from .sll import SLLConv2d, SLLLinear
from .soc import SOCConv2d, SOCLinear
from .standard import StandardConv2d, StandardLinear
from .structural import FirstChannels, ZeroChannelConcatenation

__all__ = [
    "LayerSpec",
    "LAYERS",
    "get_layer",
    "list_layers",
    "InputError",
    "LipschitzModule",
    "check_input",
    "MaxMin",
    "FirstChannels",
    "ZeroChannelConcatenation",
]


@dataclass(frozen=True)
class LayerSpec:
    id: str
    name: str
    conv: type
    linear: type | None
    head: str  # "conv": 1x1 conv head; "linear": Flatten + dense head
    paper: str
    citation: str
    orthogonal: bool  # norm-preserving (sigma_min == sigma_max == 1) as shipped by default
    lipschitz: bool  # 1-Lipschitz guaranteed (False only for the unconstrained baseline)
    residual: bool  # non-linear residual layer (CPL, SLL, Sandwich): test through its Jacobian
    note: str = ""


LAYERS: dict[str, LayerSpec] = {
    spec.id: spec
    for spec in [
        LayerSpec("aol", "AOL", AOLConv2d, AOLLinear, "conv",
                  "Almost-Orthogonal Layers for Efficient General-Purpose Lipschitz Networks",
                  "Prach & Lampert, ECCV 2022", orthogonal=False, lipschitz=True, residual=False),
        LayerSpec("bcop", "BCOP", BCOPConv2d, BjorckLinear, "linear",
                  "Preventing Gradient Attenuation in Lipschitz Constrained Convolutional Networks",
                  "Li et al., NeurIPS 2019", orthogonal=True, lipschitz=True, residual=False),
        LayerSpec("cayley", "Cayley", CayleyConv2d, CayleyLinear, "linear",
                  "Orthogonalizing Convolutional Layers with the Cayley Transform",
                  "Trockman & Kolter, ICLR 2021", orthogonal=True, lipschitz=True, residual=False),
        LayerSpec("cpl", "CPL", CPLConv2d, CPLLinear, "conv",
                  "A Dynamical System Perspective for Lipschitz Neural Networks",
                  "Meunier et al., ICML 2022", orthogonal=False, lipschitz=True, residual=True),
        LayerSpec("lot", "LOT", LOTConv2d, LOTLinear, "conv",
                  "LOT: Layer-wise Orthogonal Training on Improving l2 Certified Robustness",
                  "Xu et al., NeurIPS 2022", orthogonal=False, lipschitz=True, residual=False,
                  note="orthogonal only in the limit of infinitely many Newton-Schulz iterations"),
        LayerSpec("sll", "SLL", SLLConv2d, SLLLinear, "conv",
                  "A Unified Algebraic Perspective on Lipschitz Neural Networks",
                  "Araujo et al., ICLR 2023", orthogonal=False, lipschitz=True, residual=True),
        LayerSpec("soc", "SOC", SOCConv2d, SOCLinear, "conv",
                  "Skew Orthogonal Convolutions", "Singla & Feizi, ICML 2021",
                  orthogonal=True, lipschitz=True, residual=False),
        LayerSpec("sandwich", "Sandwich", SandwichConv2d, SandwichLinear, "linear",
                  "Direct Parameterization of Lipschitz-Bounded Deep Networks",
                  "Wang & Manchester, ICML 2023", orthogonal=False, lipschitz=True, residual=True),
        LayerSpec("bro", "BRO", BROConv2d, BROLinear, "conv",
                  "Enhancing Certified Robustness via Block Reflector Orthogonal Layers and Logit Annealing Loss",
                  "Lai et al., ICLR 2025", orthogonal=True, lipschitz=True, residual=False,
                  note="per-frequency block reflector I - 2 V (V^H V)^-1 V^H, rank max(in, out) // 2 by default"),
        LayerSpec("aoc", "AOC", AOCConv2d, AOCLinear, "conv",
                  "An Adaptive Orthogonal Convolution Scheme for Efficient and Flexible CNN Architectures",
                  "Boissin et al., 2025 (orthogonium)", orthogonal=True, lipschitz=True, residual=False,
                  note="stride 1 only; Bjorck-orthonormalised projectors with a guaranteed rescale"),
        LayerSpec("standard", "Standard", StandardConv2d, StandardLinear, "conv",
                  "unconstrained baseline (plain convolution)", "-",
                  orthogonal=False, lipschitz=False, residual=False),
    ]
}


def list_layers() -> list[str]:
    """All layer ids, in the table's order."""
    return list(LAYERS)


def get_layer(layer_id: str) -> LayerSpec:
    """The table entry of ``layer_id``; an unknown id raises ``KeyError`` listing close matches."""
    try:
        return LAYERS[layer_id.lower()]
    except KeyError:
        close = difflib.get_close_matches(layer_id.lower(), LAYERS, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown layer {layer_id!r}.{hint} Known layers: {', '.join(LAYERS)}") from None
