"""THE single source of truth: every architecture (and, later, every pretrained entry).

Architectures are named ``{family}_{size}_{layer}``: family ``convnet`` (32x32 inputs, 5 blocks)
or ``tconvnet`` (64x64 inputs, 6 blocks), size ``xs|s|m|l`` and a layer id of
:mod:`lipzoo.layers`. hubconf, the CLI, cards, benchmarks and tests enumerate this module.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .data import DATASETS, dataset_info
from .layers import LAYERS
from .models import FAMILIES, SIZES, ConvNet, ConvNetConfig

__all__ = [
    "Architecture", "ARCHITECTURES", "list_models", "create_model", "get_architecture", "UnknownModelError",
    "DataConfig", "PretrainedEntry", "PRETRAINED", "RegistryError", "get_pretrained", "model_info",
    "register_pretrained", "load_pretrained_dir", "hub_org", "CARDS_DIR",
]


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


# --- pretrained entries ---------------------------------------------------------------------
#: the folder of HF-repo-shaped model folders (``cards/<name>/config.json``) of this checkout
#: (or torch.hub clone); its config files are the pretrained entries, read at import
CARDS_DIR = Path(__file__).resolve().parents[1] / "cards"
DEFAULT_HUB_ORG = "lipzoo"
WEIGHTS_FILENAME = "model.safetensors"
CONFIG_FILENAME = "config.json"
#: the values of an entry's optional ``status`` (absent: a normally published entry)
ENTRY_STATUSES = ("undertrained",)


class RegistryError(ValueError):
    """A pretrained entry (a ``config.json``) that is malformed or inconsistent."""


def hub_org() -> str:
    """The Hugging Face organisation of the zoo's repos: ``$LIPZOO_HUB_ORG``, default ``lipzoo``."""
    return os.environ.get("LIPZOO_HUB_ORG") or DEFAULT_HUB_ORG


@dataclass(frozen=True)
class DataConfig:
    """What a pretrained model expects: [0, 1] images of ``in_chans x input_size x input_size``."""

    dataset: str
    input_size: int
    in_chans: int
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # subtracted inside the model (its ``Centering`` module)

    @classmethod
    def from_dataset(cls, dataset: str) -> "DataConfig":
        info = dataset_info(dataset)
        return cls(dataset, info.input_size, info.in_chans, info.num_classes, tuple(info.class_names), tuple(info.mean))

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "input_size": self.input_size, "in_chans": self.in_chans,
                "num_classes": self.num_classes, "class_names": list(self.class_names), "mean": list(self.mean)}


@dataclass(frozen=True, eq=True)
class PretrainedEntry:
    """One pretrained model ``{architecture}.{dataset}``: everything to find, verify and describe it.

    ``repo_id`` is ``{hub_org()}/{name}`` unless the entry names one (``hub.repo_id``).
    ``revision`` is the pinned commit of that repo (``None`` until ``lipzoo push`` recorded one).
    """

    name: str
    architecture: str
    dataset: str
    data: DataConfig
    sha256: str
    size: int
    recipe: str | None = None
    filename: str = WEIGHTS_FILENAME
    revision: str | None = None
    hf_repo_id: str | None = None
    layer_kwargs: dict = field(default_factory=dict, hash=False)
    metrics: dict = field(default_factory=dict, hash=False)
    timing: dict = field(default_factory=dict, hash=False)
    provenance: dict = field(default_factory=dict, hash=False)
    license: str = "mit"
    lipzoo_version: str | None = None
    folder: Path | None = field(default=None, compare=False)  # where its config.json was read
    status: str | None = None  # None: published normally; "undertrained": forced past the publish gate

    @property
    def repo_id(self) -> str:
        return self.hf_repo_id or f"{hub_org()}/{self.name}"

    def as_dict(self) -> dict:
        """The ``config.json`` form (JSON-serialisable); :meth:`from_dict` reads it back."""
        return {
            "name": self.name, "architecture": self.architecture, "dataset": self.dataset,
            "lipzoo_version": self.lipzoo_version, "recipe": self.recipe, "data": self.data.as_dict(),
            "layer_kwargs": dict(self.layer_kwargs),
            "hub": {"repo_id": self.hf_repo_id, "revision": self.revision, "filename": self.filename},
            "file": {"sha256": self.sha256, "size": self.size},
            "metrics": self.metrics, "timing": self.timing, "provenance": self.provenance, "license": self.license,
        } | ({"status": self.status} if self.status else {})

    @classmethod
    def from_dict(cls, cfg: dict, source: str = "config", folder: Path | None = None) -> "PretrainedEntry":
        """Validate a ``config.json`` dict; a problem raises :class:`RegistryError` naming ``source``."""

        def need(d: dict, key: str, kind: type | tuple, where: str = ""):
            if not isinstance(d, dict) or key not in d:
                raise RegistryError(f"{source}: missing field {where}{key!r}")
            if not isinstance(d[key], kind):
                raise RegistryError(f"{source}: field {where}{key!r} must be {kind}, got {d[key]!r}")
            return d[key]

        name, arch, dataset = need(cfg, "name", str), need(cfg, "architecture", str), need(cfg, "dataset", str)
        if arch not in ARCHITECTURES:
            raise RegistryError(f"{source}: unknown architecture {arch!r}; known ones: lipzoo.list_models()")
        if dataset not in DATASETS:
            raise RegistryError(f"{source}: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        if name != f"{arch}.{dataset}" and not name.startswith(f"{arch}.{dataset}_"):
            raise RegistryError(f"{source}: name {name!r} must be '{arch}.{dataset}' (optionally '_<budget>')")
        d = need(cfg, "data", dict)
        data = DataConfig(
            dataset, int(need(d, "input_size", int, "data.")), int(need(d, "in_chans", int, "data.")),
            int(need(d, "num_classes", int, "data.")), tuple(str(c) for c in need(d, "class_names", list, "data.")),
            tuple(float(m) for m in need(d, "mean", list, "data.")),
        )
        if len(data.mean) != data.in_chans or len(data.class_names) != data.num_classes:
            raise RegistryError(f"{source}: data.mean needs in_chans values and data.class_names num_classes names")
        status = cfg.get("status")
        if status is not None and status not in ENTRY_STATUSES:
            raise RegistryError(f"{source}: status must be one of {ENTRY_STATUSES} or absent, got {status!r}")
        hub, f = cfg.get("hub") or {}, need(cfg, "file", dict)
        sha = need(f, "sha256", str, "file.").lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise RegistryError(f"{source}: file.sha256 must be 64 hex digits, got {sha!r}")
        return cls(
            name=name, architecture=arch, dataset=dataset, data=data, sha256=sha,
            size=int(need(f, "size", int, "file.")), recipe=cfg.get("recipe"),
            filename=hub.get("filename") or WEIGHTS_FILENAME, revision=hub.get("revision"),
            hf_repo_id=hub.get("repo_id"), layer_kwargs=dict(cfg.get("layer_kwargs") or {}),
            metrics=dict(cfg.get("metrics") or {}), timing=dict(cfg.get("timing") or {}),
            provenance=dict(cfg.get("provenance") or {}), license=cfg.get("license") or "mit",
            lipzoo_version=cfg.get("lipzoo_version"), folder=folder, status=status,
        )

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "PretrainedEntry":
        path = Path(folder) / CONFIG_FILENAME
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise RegistryError(f"{path} does not exist; a model folder holds config.json (see lipzoo.save_pretrained)") from None
        except json.JSONDecodeError as e:
            raise RegistryError(f"{path} is not valid JSON: {e}") from None
        entry = cls.from_dict(cfg, str(path), folder=Path(folder))
        return entry


def load_pretrained_dir(root: str | os.PathLike = CARDS_DIR) -> dict[str, PretrainedEntry]:
    """The entries of every ``<root>/<name>/config.json``, by name (the folder name must be the name)."""
    entries: dict[str, PretrainedEntry] = {}
    root = Path(root)
    for cfg in sorted(root.glob(f"*/{CONFIG_FILENAME}")) if root.is_dir() else []:
        entry = PretrainedEntry.from_folder(cfg.parent)
        if entry.name != cfg.parent.name:
            raise RegistryError(f"{cfg}: name {entry.name!r} differs from its folder name {cfg.parent.name!r}")
        entries[entry.name] = entry
    return entries


#: pretrained entries, ``{architecture}.{dataset}`` -> :class:`PretrainedEntry`, read from :data:`CARDS_DIR`
PRETRAINED: dict[str, PretrainedEntry] = load_pretrained_dir()


def register_pretrained(entry: PretrainedEntry, overwrite: bool = False) -> PretrainedEntry:
    """Add an entry (e.g. ``PretrainedEntry.from_folder(dir)`` of a private model) to :data:`PRETRAINED`."""
    if entry.name in PRETRAINED and not overwrite and PRETRAINED[entry.name] != entry:
        raise RegistryError(f"{entry.name!r} is already registered; pass overwrite=True to replace it")
    PRETRAINED[entry.name] = entry
    return entry


def get_pretrained(name: str) -> PretrainedEntry:
    """The registry entry of a pretrained name; an unknown name raises :class:`UnknownModelError`."""
    try:
        return PRETRAINED[name]
    except KeyError:
        known = list(PRETRAINED)
        raise (_unknown(name, known) if known else UnknownModelError(
            f"no pretrained weights are registered for {name!r} yet; lipzoo.list_models(pretrained=True) "
            "lists the pretrained entries")) from None


def model_info(name: str) -> dict:
    """What the registry knows of an architecture or a pretrained entry, as a JSON-able dict."""
    if name in PRETRAINED:
        entry = PRETRAINED[name]
        arch = ARCHITECTURES[entry.architecture]
        return {**entry.as_dict(), "repo_id": entry.repo_id, "family": arch.family, "size": arch.size,
                "layer": arch.layer, "pretrained": True}
    arch = get_architecture(name)
    if "." in name:  # arch.dataset that is not registered
        get_pretrained(name)
    return {"name": arch.name, "architecture": arch.name, "family": arch.family, "size": arch.size,
            "layer": arch.layer, "input_size": arch.input_size, "pretrained": False,
            "pretrained_entries": [n for n, e in PRETRAINED.items() if e.architecture == arch.name]}


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
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
    ``paper_compatible=True``).

    Pretrained (a name ``{architecture}.{dataset}`` or ``pretrained=True``): the weights are
    found in ``weights`` (a file or model folder), the local mirrors (``cards/`` of the
    checkout, ``$LIPZOO_WEIGHTS``), the Hugging Face cache, or downloaded at the pinned
    ``revision``; their sha256 is checked before loading (:class:`lipzoo.hub.ChecksumError`),
    the state dict is loaded strictly, and the model is returned in eval mode on ``device``.
    The data config (channels, classes, mean) comes from the entry, so it takes [0, 1] images.
    """
    if pretrained or "." in name or weights is not None:
        from .hub import load_pretrained

        return load_pretrained(name, device=device, revision=revision, cache_dir=cache_dir,
                               local_files_only=local_files_only, weights=weights, **layer_kwargs)
    arch = get_architecture(name)
    model = ConvNet(arch.config(num_classes=num_classes, in_chans=in_chans, input_mean=input_mean), **layer_kwargs)
    return model.to(device) if device is not None else model
