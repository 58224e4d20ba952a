"""THE single source of truth: every architecture (and, later, every pretrained entry).

Architectures are named ``{family}_{size}_{layer}``: family ``convnet`` (32x32 inputs, 5 blocks)
or ``tconvnet`` (64x64 inputs, 6 blocks), size ``xs|s|m|l`` and a layer id of
:mod:`lipzoo.layers`. hubconf, the CLI, cards, benchmarks and tests enumerate this module.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from torch import nn

from .layers import LAYERS
from .models import FAMILIES, SIZES, ConvNet, ConvNetConfig

__all__ = ["Architecture", "ARCHITECTURES", "list_models", "create_model", "get_architecture", "UnknownModelError"]


class UnknownModelError(KeyError):
    """A model name that the registry does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    size: str
    layer: str

    def config(self, **kw) -> ConvNetConfig:
        return ConvNetConfig.from_name(self.family, self.size, self.layer, **kw)

    @property
    def input_size(self) -> int:
        return FAMILIES[self.family][1]


ARCHITECTURES: dict[str, Architecture] = {
    f"{family}_{size}_{layer}": Architecture(f"{family}_{size}_{layer}", family, size, layer)
    for family in FAMILIES
    for size in SIZES
    for layer in LAYERS
}


def _unknown(name: str, known: list[str]) -> UnknownModelError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return UnknownModelError(
        f"unknown model {name!r}.{hint} See lipzoo.list_models() or `lipzoo list` for all {len(known)} names."
    )


def get_architecture(name: str) -> Architecture:
    arch = name.split(".", 1)[0]
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise _unknown(name, list(ARCHITECTURES)) from None


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Architecture names matching a shell-style ``pattern`` (e.g. ``"convnet_*_sll"``).

    With ``pretrained=True`` lists the pretrained entries (``{architecture}.{dataset}``) instead.
    """
    names = list(PRETRAINED) if pretrained else list(ARCHITECTURES)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


#: pretrained entries, ``{architecture}.{dataset}`` -> metadata (filled by the distribution work)
PRETRAINED: dict[str, dict] = {}


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    input_mean: tuple[float, ...] | None = None,
    **layer_kwargs,
) -> nn.Module:
    """Build an architecture by name, e.g. ``create_model("convnet_xs_aol", in_chans=1)``.

    ``input_mean``: a per-channel mean the model subtracts first (the paper's centring, as a
    fixed 1-Lipschitz shift). ``layer_kwargs`` go to every Lipschitz layer (e.g.
    ``paper_compatible=True``).
    """
    if pretrained or "." in name:
        if name not in PRETRAINED:
            known = list(PRETRAINED)
            raise _unknown(name, known) if known else UnknownModelError(
                f"no pretrained weights are registered for {name!r} yet; lipzoo.list_models(pretrained=True) "
                "lists the pretrained entries"
            )
        raise NotImplementedError("pretrained loading arrives with the distribution issue")
    arch = get_architecture(name)
    return ConvNet(arch.config(num_classes=num_classes, in_chans=in_chans, input_mean=input_mean), **layer_kwargs)
