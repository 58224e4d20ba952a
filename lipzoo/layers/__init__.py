"""The layer families of lipzoo and THE table that describes them.

``LAYERS`` maps each layer id to its convolution class, its dense (linear) class, the form of
the classification head the paper's ConvNet uses with it, the paper that introduced it,
whether it is orthogonal (norm-preserving) or only 1-Lipschitz, and whether it has a mode that
reproduces its paper's code (``paper_mode``). Everything else in lipzoo (models, registry,
benchmarks, tests) enumerates this table.

``paper_compatible`` is the one layer option whose meaning depends on the family, and
:meth:`LayerSpec.layer_kwargs` is the one place that decides what it does:

- ``paper_mode="option"``: the family's classes take ``paper_compatible=``; ``True`` reproduces
  the paper's exact function where lipzoo's sound default differs from it;
- ``"same"``: lipzoo has one form of the family, the function the paper's code computes (AOL; the
  plain layers of the unconstrained baseline), so the classes take no such argument and a model
  built with ``paper_compatible=True`` (e.g. by the importer of the paper's checkpoints) is built
  exactly as without it;
- ``"none"``: the family has no paper-compatible form: ``paper_compatible=True`` is refused.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    "PAPER_MODES",
    "get_layer",
    "list_layers",
    "InputError",
    "LipschitzModule",
    "check_input",
    "MaxMin",
    "FirstChannels",
    "ZeroChannelConcatenation",
]


#: the values of ``LayerSpec.paper_mode`` (see the module doc)
PAPER_MODES = ("option", "same", "none")
#: keyword arguments the architectures set per layer: not model-wide layer options
PER_LAYER_ARGUMENTS = frozenset({"input_size", "stride", "bias"})


def _keyword_only(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


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
    paper_mode: str  # "option": the classes take paper_compatible=; "same": the default is the paper's; "none"
    note: str = ""

    def __post_init__(self) -> None:
        if self.paper_mode not in PAPER_MODES:
            raise ValueError(f"{self.id}: paper_mode must be one of {PAPER_MODES}, got {self.paper_mode!r}")

    def layer_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments to build this family's classes with, from the layer options of a
        whole model (``create_model(..., **options)``): ``paper_compatible`` goes only to families
        that have the option; for the others ``False`` (and, where the default already is the
        paper's function, ``True``) is dropped, and ``True`` without a paper form is refused."""
        out = dict(options)
        if self.paper_mode == "option" or "paper_compatible" not in out:
            return out
        if out.pop("paper_compatible") and self.paper_mode == "none":
            raise ValueError(f"{self.name} layers have no paper-compatible mode (lipzoo's implementation is the only "
                             f"one); build {self.id} models without paper_compatible=True")
        return out

    def options(self) -> dict[str, Any]:
        """The layer options a whole model of this family takes (``create_model(arch, **options)``, a
        recipe's ``layer_options``), with their defaults: the keyword-only arguments of its
        convolution class, less those the architectures set per layer, and, where the head is a dense
        layer, only those its dense class takes too."""
        opts = {k: v for k, v in _keyword_only(self.conv).items() if k not in PER_LAYER_ARGUMENTS}
        if self.head == "linear" and self.linear is not None:
            dense = _keyword_only(self.linear)
            opts = {k: v for k, v in opts.items() if k in dense}
        return opts


LAYERS: dict[str, LayerSpec] = {
    spec.id: spec
    for spec in [
        LayerSpec("aol", "AOL", AOLConv2d, AOLLinear, "conv",
                  "Almost-Orthogonal Layers for Efficient General-Purpose Lipschitz Networks",
                  "Prach & Lampert, ECCV 2022", orthogonal=False, lipschitz=True, residual=False, paper_mode="same"),
        LayerSpec("bcop", "BCOP", BCOPConv2d, BjorckLinear, "linear",
                  "Preventing Gradient Attenuation in Lipschitz Constrained Convolutional Networks",
                  "Li et al., NeurIPS 2019", orthogonal=True, lipschitz=True, residual=False, paper_mode="option"),
        LayerSpec("cayley", "Cayley", CayleyConv2d, CayleyLinear, "linear",
                  "Orthogonalizing Convolutional Layers with the Cayley Transform",
                  "Trockman & Kolter, ICLR 2021", orthogonal=True, lipschitz=True, residual=False, paper_mode="option"),
        LayerSpec("cpl", "CPL", CPLConv2d, CPLLinear, "conv",
                  "A Dynamical System Perspective for Lipschitz Neural Networks",
                  "Meunier et al., ICML 2022", orthogonal=False, lipschitz=True, residual=True, paper_mode="option"),
        LayerSpec("lot", "LOT", LOTConv2d, LOTLinear, "conv",
                  "LOT: Layer-wise Orthogonal Training on Improving l2 Certified Robustness",
                  "Xu et al., NeurIPS 2022", orthogonal=False, lipschitz=True, residual=False, paper_mode="option",
                  note="orthogonal only in the limit of infinitely many Newton-Schulz iterations"),
        LayerSpec("sll", "SLL", SLLConv2d, SLLLinear, "conv",
                  "A Unified Algebraic Perspective on Lipschitz Neural Networks",
                  "Araujo et al., ICLR 2023", orthogonal=False, lipschitz=True, residual=True, paper_mode="option"),
        LayerSpec("soc", "SOC", SOCConv2d, SOCLinear, "conv",
                  "Skew Orthogonal Convolutions", "Singla & Feizi, ICML 2021",
                  orthogonal=True, lipschitz=True, residual=False, paper_mode="option"),
        LayerSpec("sandwich", "Sandwich", SandwichConv2d, SandwichLinear, "linear",
                  "Direct Parameterization of Lipschitz-Bounded Deep Networks",
                  "Wang & Manchester, ICML 2023", orthogonal=False, lipschitz=True, residual=True, paper_mode="option"),
        LayerSpec("bro", "BRO", BROConv2d, BROLinear, "conv",
                  "Enhancing Certified Robustness via Block Reflector Orthogonal Layers and Logit Annealing Loss",
                  "Lai et al., ICLR 2025", orthogonal=True, lipschitz=True, residual=False, paper_mode="none",
                  note="per-frequency block reflector I - 2 V (V^H V)^-1 V^H, rank max(in, out) // 2 by default"),
        LayerSpec("aoc", "AOC", AOCConv2d, AOCLinear, "conv",
                  "An Adaptive Orthogonal Convolution Scheme for Efficient and Flexible CNN Architectures",
                  "Boissin et al., 2025 (orthogonium)", orthogonal=True, lipschitz=True, residual=False, paper_mode="none",
                  note="stride 1 only; Bjorck-orthonormalised projectors with a guaranteed rescale"),
        LayerSpec("standard", "Standard", StandardConv2d, StandardLinear, "conv",
                  "unconstrained baseline (plain convolution)", "-",
                  orthogonal=False, lipschitz=False, residual=False, paper_mode="same"),
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
