"""Models by name: :func:`create_model`, :func:`load_pretrained` and the torch.hub entrypoints.

The one module that puts an architecture of :mod:`lipzoo.registry` together with weights from
:mod:`lipzoo.hub` (as timm's ``_builder`` sits above its ``_registry`` and ``_hub``): it builds the
ConvNet, loads the verified state dict strictly and returns the model in eval mode. The
registry knows names and entries, the hub finds and verifies files; neither builds a model
with weights, and neither imports this module.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from torch import nn

from .hub import Lookup, load_weights, pretrained_entry
from .layers import LAYERS
from .models import ConvNet
from .registry import (
    ARCHITECTURES,
    DEFAULT_DATASETS,
    PRETRAINED,
    DataConfig,
    PretrainedEntry,
    default_pretrained,
    get_architecture,
    metrics_summary,
)

__all__ = ["create_model", "load_pretrained", "hub_entrypoint", "entrypoint_doc"]


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_mean: tuple[float, ...] | None = None,
    device: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    weights: str | os.PathLike | None = None,
    **layer_kwargs,
) -> nn.Module:
    """Build an architecture by name, e.g. ``create_model("convnet_xs_aol", in_chans=1)``, or load
    pretrained weights: ``create_model("convnet_xs_aol.fashion_mnist", pretrained=True)``.

    ``input_mean``: a per-channel mean the model subtracts first (the paper's centring, as a
    fixed 1-Lipschitz shift). ``layer_kwargs`` go to every Lipschitz layer (e.g.
    ``paper_compatible=True``, which :meth:`lipzoo.layers.LayerSpec.layer_kwargs` passes on only
    to families with a paper mode: a no-op for AOL and the standard baseline, refused for BRO and AOC).

    Pretrained (a name ``{architecture}.{dataset}`` or ``pretrained=True``): the weights are
    found in ``weights`` (a file or model folder), the local mirrors (``cards/`` of the
    checkout, ``$LIPZOO_WEIGHTS``), the Hugging Face cache, or downloaded at the pinned
    ``revision``; their sha256 is checked before loading (:class:`lipzoo.hub.ChecksumError`),
    the state dict is loaded strictly, and the model is returned in eval mode on ``device``.
    The data config (channels, classes, mean) comes from the entry, so it takes [0, 1] images
    (:func:`lipzoo.data_config` and ``DataConfig.transform()`` prepare native images, e.g. 28x28).
    An architecture name with ``pretrained=True`` loads its default entry
    (:func:`lipzoo.registry.default_pretrained`).
    With pretrained weights, ``num_classes``, ``in_chans`` and ``input_mean`` may only repeat the
    entry's values: a different head or stem is refused with ``ValueError`` (no head is reset;
    build the architecture with ``pretrained=False`` and copy the weights you want instead).

    Without weights the defaults are ``num_classes=10``, ``in_chans=3`` and no mean shift.
    """
    if pretrained or "." in name or weights is not None:
        if pretrained and weights is None and name in ARCHITECTURES:
            name = default_pretrained(name).name
        lookup = Lookup(weights=weights, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        return load_pretrained(name, lookup, device=device, num_classes=num_classes, in_chans=in_chans,
                               input_mean=input_mean, **layer_kwargs)
    arch = get_architecture(name)
    config = arch.config(num_classes=10 if num_classes is None else num_classes,
                         in_chans=3 if in_chans is None else in_chans, input_mean=input_mean)
    model = ConvNet(config, **layer_kwargs)
    return model.to(device) if device is not None else model


def load_pretrained(
    name: str,
    lookup: Lookup | None = None,
    *,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_mean: Sequence[float] | None = None,
    **options,
) -> nn.Module:
    """The pretrained model ``name``, verified, in eval mode.

    Where its weights are looked for is ``lookup`` (:class:`lipzoo.hub.Lookup`), with the options
    named like its fields overriding it (``load_pretrained(name, weights=folder)``); the other
    ``options`` go to the layers, after the entry's own ``layer_kwargs``. ``num_classes``,
    ``in_chans``, ``input_mean``: ``None``, or the entry's own values; anything else raises
    ``ValueError`` before any file is read or downloaded (the head is never reset).
    """
    lookup, layer_kwargs = (lookup or Lookup()).split(options)
    _check_shape(pretrained_entry(name, lookup.weights), num_classes, in_chans, input_mean)
    e, state = load_weights(name, lookup)
    model = create_model(e.architecture, num_classes=e.data.num_classes, in_chans=e.data.in_chans,
                         input_mean=e.data.mean, **(e.layer_kwargs | layer_kwargs))
    model.load_state_dict(state, strict=True)
    model.pretrained_entry = e
    model.eval()
    return model.to(device) if device is not None else model


def _check_shape(entry: PretrainedEntry, num_classes: int | None, in_chans: int | None,
                 input_mean: Sequence[float] | None) -> None:
    asked = {"num_classes": num_classes, "in_chans": in_chans,
             "input_mean": None if input_mean is None else tuple(float(m) for m in input_mean)}
    has = {"num_classes": entry.data.num_classes, "in_chans": entry.data.in_chans, "input_mean": entry.data.mean}
    for key, value in asked.items():
        if value is not None and value != has[key]:
            raise ValueError(
                f"{key}={value!r} does not fit the pretrained weights of {entry.name} ({key}={has[key]!r}): lipzoo does "
                f"not reset heads or stems; drop {key} to load them, or build {entry.architecture!r} with "
                f"pretrained=False for {key}={value!r}"
            )


# --- torch.hub ----------------------------------------------------------------------------------
def hub_entrypoint(arch: str) -> Callable[..., nn.Module]:
    """The torch.hub entrypoint of an architecture: ``arch(pretrained=False, dataset=..., **kwargs)``."""
    a = ARCHITECTURES[arch]
    default = DEFAULT_DATASETS[a.family]

    def entrypoint(pretrained: bool = False, dataset: str = default, **kwargs) -> nn.Module:
        if pretrained:
            return create_model(f"{arch}.{dataset}", pretrained=True, **kwargs)
        data = DataConfig.from_dataset(dataset)
        return create_model(arch, **({"num_classes": data.num_classes, "in_chans": data.in_chans,
                                      "input_mean": data.mean} | kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = arch
    entrypoint.__doc__ = entrypoint_doc(arch, default)
    return entrypoint


def entrypoint_doc(arch: str, default_dataset: str) -> str:
    """The docstring of an architecture's torch.hub entrypoint: the model, its arguments and the
    registered pretrained weights with their metrics (``torch.hub.help``)."""
    a = ARCHITECTURES[arch]
    spec = LAYERS[a.layer]
    entries = [e for e in PRETRAINED.values() if e.architecture == arch]
    lines = [
        f"{arch}: the {a.family} ConvNet of size {a.size} with {spec.name} layers ({spec.citation}).",
        "",
        f"Args: pretrained (bool): load verified pretrained weights for `dataset` (default {default_dataset!r}).",
        "    dataset (str): sets input channels, classes and the built-in mean; kwargs go to lipzoo.create_model",
        "    (e.g. device=, revision=, local_files_only= when pretrained).",
        "",
        "Pretrained weights (dataset: metrics):" if entries else "Pretrained weights: none registered yet.",
    ]
    lines += [f"    {e.dataset}: {metrics_summary(e)}" for e in entries]
    return "\n".join(lines)
