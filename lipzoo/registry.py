"""THE single source of truth: every architecture and every pretrained entry.

Architectures are named ``{family}_{size}_{layer}``: family ``convnet`` (32x32 inputs, 5 blocks)
or ``tconvnet`` (64x64 inputs, 6 blocks), size ``xs|s|m|l`` and a layer id of
:mod:`lipzoo.layers`. hubconf, the CLI, cards, benchmarks and tests enumerate this module.

Pretrained entries ``{architecture}.{dataset}`` are the ``cards/<name>/config.json`` files. A
checkout (or torch.hub clone) reads them in place; an installed wheel reads the byte copies its
build packaged as ``lipzoo/_index/<name>/config.json`` (:func:`index_dir`). A malformed file is
skipped with a warning, so it never breaks ``import lipzoo``.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from .data import DATASETS
from .data_config import DataConfig, ImageTransform
from .layers import LAYERS
from .models import FAMILIES, SIZES, ConvNetConfig
from .radius import Radius

__all__ = [
    "Architecture", "ARCHITECTURES", "list_models", "get_architecture", "UnknownModelError",
    "DataConfig", "PretrainedEntry", "PRETRAINED", "RegistryError", "get_pretrained", "model_info",
    "register_pretrained", "load_pretrained_dir", "hub_org", "CARDS_DIR", "PACKAGED_INDEX", "index_dir",
    "RegistryWarning", "ImageTransform", "DEFAULT_DATASETS", "default_pretrained", "data_config",
    "eps_label", "percent", "certifies", "metrics_summary",
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
        """Validate a ``config.json`` dict; any problem (missing field, wrong type or value) raises
        :class:`RegistryError` with a one-line message naming ``source``, never another exception."""
        if not isinstance(cfg, dict):
            raise RegistryError(f"{source}: must hold a JSON object, got {_short(cfg)}")
        r = _Fields(source)
        name, arch, dataset = r.need(cfg, "name", str), r.need(cfg, "architecture", str), r.need(cfg, "dataset", str)
        if arch not in ARCHITECTURES:
            raise RegistryError(f"{source}: unknown architecture {arch!r}; known ones: lipzoo.list_models()")
        if dataset not in DATASETS:
            raise RegistryError(f"{source}: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
        if name != f"{arch}.{dataset}" and not name.startswith(f"{arch}.{dataset}_"):
            raise RegistryError(f"{source}: name {name!r} must be '{arch}.{dataset}' (optionally '_<budget>')")
        data = r.data_config(r.need(cfg, "data", dict), dataset)
        hub, f = r.check(cfg, "hub", (dict, type(None))) or {}, r.need(cfg, "file", dict)
        for key in ("repo_id", "revision", "filename"):
            r.check(hub, key, (str, type(None)), "hub.")
        for key in ("recipe", "lipzoo_version", "license"):
            r.check(cfg, key, (str, type(None)))
        for key in ("layer_kwargs", "metrics", "timing", "provenance"):
            r.check(cfg, key, (dict, type(None)))
        sha, size = r.file_record(f)
        status = cfg.get("status")
        if status is not None and status not in ENTRY_STATUSES:
            raise RegistryError(f"{source}: status must be one of {ENTRY_STATUSES} or absent, got {status!r}")
        return cls(
            name=name, architecture=arch, dataset=dataset, data=data, sha256=sha,
            size=size, recipe=cfg.get("recipe"),
            filename=hub.get("filename") or WEIGHTS_FILENAME, revision=hub.get("revision"),
            hf_repo_id=hub.get("repo_id"), layer_kwargs=dict(cfg.get("layer_kwargs") or {}),
            metrics=dict(cfg.get("metrics") or {}), timing=dict(cfg.get("timing") or {}),
            provenance=dict(cfg.get("provenance") or {}), license=cfg.get("license") or "mit",
            lipzoo_version=cfg.get("lipzoo_version"), folder=folder, status=status,
        )

    @classmethod
    def from_bytes(cls, raw: bytes, source: str, folder: Path | None = None) -> "PretrainedEntry":
        """Parse the bytes of a ``config.json``; invalid UTF-8/JSON raises :class:`RegistryError` (one line)."""
        try:
            cfg = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RegistryError(f"{source} is not UTF-8 text: {e}") from None
        except json.JSONDecodeError as e:
            raise RegistryError(f"{source} is not valid JSON: {e}") from None
        return cls.from_dict(cfg, source, folder=folder)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "PretrainedEntry":
        """The entry of ``folder/config.json``; a missing, unreadable or malformed file raises :class:`RegistryError`."""
        path = Path(folder) / CONFIG_FILENAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise RegistryError(f"{path} does not exist; a model folder holds config.json (see lipzoo.save_pretrained)") from None
        except OSError as e:
            raise RegistryError(f"{path} cannot be read: {e.strerror or e}") from None
        return cls.from_bytes(raw, str(path), folder=Path(folder))

    def transforms(self) -> "ImageTransform":
        """The input transform of this model: see :meth:`DataConfig.transform`."""
        return self.data.transform()


class _Fields:
    """Typed reads of a ``config.json`` dict: a missing field or a wrong type raises a one-line
    :class:`RegistryError` naming the file (``source``) and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def need(self, d: dict, key: str, kind: type | tuple, where: str = ""):
        if key not in d:
            raise RegistryError(f"{self.source}: missing field {where}{key!r}")
        return self.check(d, key, kind, where)

    def check(self, d: dict, key: str, kind: type | tuple, where: str = ""):
        value = d.get(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise RegistryError(f"{self.source}: field {where}{key!r} must be {names}, got {_short(value)}")
        return value

    def items(self, d: dict, key: str, kind: type | tuple, where: str) -> list:
        values = self.need(d, key, list, where)
        for i, v in enumerate(values):
            if not isinstance(v, kind) or isinstance(v, bool):
                raise RegistryError(f"{self.source}: field {where}{key!r}[{i}] has the wrong type: {_short(v)}")
        return values

    def data_config(self, d: dict, dataset: str) -> DataConfig:
        """The ``data`` record: what the model takes."""
        data = DataConfig(
            dataset, self.need(d, "input_size", int, "data."), self.need(d, "in_chans", int, "data."),
            self.need(d, "num_classes", int, "data."), tuple(self.items(d, "class_names", str, "data.")),
            tuple(float(m) for m in self.items(d, "mean", (int, float), "data.")),
        )
        if min(data.input_size, data.in_chans, data.num_classes) < 1:
            raise RegistryError(f"{self.source}: data.input_size, data.in_chans and data.num_classes must be positive")
        if len(data.mean) != data.in_chans or len(data.class_names) != data.num_classes:
            raise RegistryError(f"{self.source}: data.mean needs in_chans values and data.class_names num_classes names")
        return data

    def file_record(self, f: dict) -> tuple[str, int]:
        """The ``file`` record: the weights' sha256 (64 hex digits, lowercased) and size."""
        sha = self.need(f, "sha256", str, "file.").lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise RegistryError(f"{self.source}: file.sha256 must be 64 hex digits, got {_short(sha)}")
        size = self.need(f, "size", int, "file.")
        if size < 0:
            raise RegistryError(f"{self.source}: file.size must be >= 0, got {size}")
        return sha, size


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_pretrained_dir(root: str | os.PathLike = CARDS_DIR, *, strict: bool = True) -> dict[str, PretrainedEntry]:
    """The entries of every ``<root>/<name>/config.json``, by name (the folder name must be the name).

    ``strict=True``: the first bad file raises :class:`RegistryError`. ``strict=False``: a bad file
    is skipped with a one-line ``warnings.warn`` naming it and what is wrong, so one broken card
    never stops ``import lipzoo`` (the other entries are still read).
    """
    entries: dict[str, PretrainedEntry] = {}
    root = Path(root)
    for cfg in sorted(root.glob(f"*/{CONFIG_FILENAME}")) if root.is_dir() else []:
        try:
            entry = PretrainedEntry.from_folder(cfg.parent)
            if entry.name != cfg.parent.name:
                raise RegistryError(f"{cfg}: name {entry.name!r} differs from its folder name {cfg.parent.name!r}")
        except RegistryError as e:
            if strict:
                raise
            warnings.warn(f"lipzoo: skipped pretrained entry {e}", RegistryWarning, stacklevel=2)
            continue
        entries[entry.name] = entry
    return entries


class RegistryWarning(UserWarning):
    """A pretrained entry that was skipped because its ``config.json`` is malformed."""


#: the pretrained index inside an installed package: a copy of every ``cards/<name>/config.json``
#: made by the wheel build (setup.py); a checkout has none and reads ``cards/`` itself
PACKAGED_INDEX = Path(__file__).resolve().parent / "_index"


def index_dir() -> Path:
    """Where the pretrained entries are read: the checkout's (or torch.hub clone's) ``cards/`` when
    it holds any ``config.json``, else the index packaged with an installed lipzoo."""
    if CARDS_DIR.is_dir() and any(CARDS_DIR.glob(f"*/{CONFIG_FILENAME}")):
        return CARDS_DIR
    return PACKAGED_INDEX


def _load_index() -> dict[str, PretrainedEntry]:
    root = index_dir()
    entries = load_pretrained_dir(root, strict=False)
    if root == PACKAGED_INDEX:  # metadata only: the weights are never next to it
        entries = {n: replace(e, folder=None) for n, e in entries.items()}
    return entries


#: pretrained entries, ``{architecture}.{dataset}`` -> :class:`PretrainedEntry`, read at import
#: from :func:`index_dir` (malformed files are skipped with a warning)
PRETRAINED: dict[str, PretrainedEntry] = _load_index()


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


#: the data set whose weights ``create_model(ARCH, pretrained=True)`` and torch.hub's ``ARCH(pretrained=True)``
#: load when an architecture has several pretrained entries, by family
DEFAULT_DATASETS = {"convnet": "fashion_mnist", "tconvnet": "tiny_imagenet"}


def default_pretrained(arch: str) -> PretrainedEntry:
    """The pretrained entry an architecture name stands for (like timm's default tag).

    The entry ``{arch}.{DEFAULT_DATASETS[family]}`` if registered, else the architecture's only
    entry; otherwise :class:`UnknownModelError` lists the entries to choose from.
    """
    a = get_architecture(arch)
    if a.name != arch:
        raise UnknownModelError(f"{arch!r} is not an architecture name; see lipzoo.list_models()")
    default = f"{arch}.{DEFAULT_DATASETS[a.family]}"
    if default in PRETRAINED:
        return PRETRAINED[default]
    tags = sorted(n for n, e in PRETRAINED.items() if e.architecture == arch)
    if len(tags) == 1:
        return PRETRAINED[tags[0]]
    if not tags:
        raise UnknownModelError(f"no pretrained weights are registered for {arch}; `lipzoo list --pretrained` lists "
                                "the pretrained models (or build it untrained with pretrained=False)")
    raise UnknownModelError(f"{arch} has {len(tags)} pretrained entries and none is the default ({default}); "
                            f"name one: {', '.join(tags)}")


def data_config(model: "str | nn.Module") -> DataConfig:
    """What a pretrained model takes: its :class:`DataConfig` (``.transform()`` prepares images).

    ``model``: a pretrained name, an architecture name (its default entry, see
    :func:`default_pretrained`) or a model returned by ``create_model(..., pretrained=True)``.
    """
    if isinstance(model, nn.Module):
        entry = getattr(model, "pretrained_entry", None)
        if entry is None:
            raise ValueError("data_config needs a model loaded with pretrained=True (or its name); this one has "
                             "no pretrained entry: it takes whatever data you built it for")
        return entry.data
    if not isinstance(model, str):
        raise ValueError(f"data_config takes a model name or a pretrained model, got {type(model).__name__}")
    return (PRETRAINED[model] if model in PRETRAINED else
            default_pretrained(model) if "." not in model else get_pretrained(model)).data


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


# --- describing an entry's metrics ---------------------------------------------------------------
def eps_label(eps: float) -> str:
    """``36/255`` for multiples of 1/255, else the number (``1``, ``0.5``): :attr:`Radius.label`."""
    return Radius.parse(eps).label


def percent(x) -> str:
    """A fraction as a percentage with two decimals (``0.81`` -> ``81.00%``); ``n/a`` for anything else."""
    return f"{100 * float(x):.2f}%" if isinstance(x, (int, float)) else "n/a"


def certifies(entry: PretrainedEntry) -> bool:
    """Whether the entry's layers are Lipschitz-bounded by design, i.e. its certificates mean something
    (the unconstrained ``standard`` baseline: no)."""
    return LAYERS[ARCHITECTURES[entry.architecture].layer].lipschitz


def metrics_summary(entry: PretrainedEntry) -> str:
    """The entry's measured metrics in one line (clean accuracy, certified accuracy per radius, status)."""
    m = entry.metrics
    parts = [f"clean {percent(m['clean_accuracy'])}"] if "clean_accuracy" in m else []
    if certifies(entry):
        parts += [f"certified {r.label}: {percent(float(a))}" for r, a in Radius.items(m.get("certified_accuracy"))]
    elif parts:
        parts.append("no certificate (unconstrained baseline)")
    if entry.status:
        parts.append(entry.status.upper())
    return ", ".join(parts) or "no metrics recorded"
