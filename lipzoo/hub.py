"""Pretrained weights: resolve -> download -> verify sha256 -> safetensors state dict; save model folders.

Where the weights of ``NAME`` (a registry entry ``{architecture}.{dataset}``) are looked for, in
order:

1. an explicit path (``weights=``: a ``model.safetensors`` or a model folder);
2. the local mirror folders ``<dir>/NAME/model.safetensors``: ``cards/`` of this checkout (or
   torch.hub clone), then each folder of ``$LIPZOO_WEIGHTS`` (``os.pathsep``-separated);
3. the Hugging Face cache (``cache_dir``, default ``$HF_HUB_CACHE``) at the pinned revision;
4. ``huggingface_hub.hf_hub_download`` from ``$LIPZOO_HF_ENDPOINT`` / ``$HF_ENDPOINT`` (default
   huggingface.co) at the pinned revision; never when offline (``local_files_only=True``,
   ``HF_HUB_OFFLINE=1`` or ``LIPZOO_OFFLINE=1``).

The registry entries (name, sha256, size, data config) come from ``cards/*/config.json`` of a
checkout, or from the copy of those files packaged into an installed wheel
(:func:`lipzoo.registry.index_dir`); the weights never ship inside the package.

The file's bytes are read once, their sha256 compared with the registry's BEFORE anything is
deserialised (a mismatch raises :class:`ChecksumError`; a bad copy in the HF cache is deleted so
it is never used again, and nothing outside the cache folder is ever deleted), then those same
bytes are parsed with safetensors (no pickle anywhere): :func:`load_weights` returns that state
dict, and :func:`lipzoo.factory.load_pretrained` (above this module) builds the model and loads
it with ``strict=True``.

A model folder that is re-published while it is being loaded (weights and ``config.json`` each
replaced by an atomic rename) gives the old or the new version, never a mix: the folder's
``config.json`` is read before and after the weights and the read is repeated until they agree
(see :func:`read_verified`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ._hf_cache import (DEFAULT_ENDPOINT, DownloadError, HubError, WeightsNotFoundError, cache_dir_of, cache_path,
                        evict, hf_endpoint, hub_download, is_offline, revision_of)
from ._io import atomic_path, atomic_write_text
from ._provenance import git_commit
from ._version import __version__
from .models import ConvNet
from .registry import (
    ARCHITECTURES,
    CARDS_DIR,
    CONFIG_FILENAME,
    PRETRAINED,
    DataConfig,
    PretrainedEntry,
    RegistryError,
    get_pretrained,
)

__all__ = [
    "HubError", "ChecksumError", "WeightsNotFoundError", "DownloadError", "Resolved", "Lookup", "DEFAULT_ENDPOINT",
    "hf_endpoint", "is_offline", "weights_mirrors", "cache_path", "sha256_file",
    "resolve_weights", "find_local", "read_verified", "pretrained_entry", "load_weights", "download", "verify",
    "save_pretrained", "write_config",
]


class ChecksumError(HubError):
    """A weights file whose sha256 (or size) differs from the registry's: it was not loaded."""


# --- where to look ------------------------------------------------------------------------------
def weights_mirrors() -> list[Path]:
    """Local mirror folders holding ``NAME/model.safetensors``: the checkout's cards/, then $LIPZOO_WEIGHTS."""
    extra = [Path(p).expanduser() for p in os.environ.get("LIPZOO_WEIGHTS", "").split(os.pathsep) if p.strip()]
    return [CARDS_DIR, *extra]


def _mirrors(mirrors: Sequence[Path] | None) -> Sequence[Path]:
    return weights_mirrors() if mirrors is None else mirrors


@dataclass(frozen=True)
class Lookup:
    """Where the weights of a name are looked for, in order (see the module doc): the explicit
    file or model folder ``weights``; the local mirror folders ``mirrors`` (``None``:
    :func:`weights_mirrors`); the Hugging Face cache ``cache_dir`` at ``revision`` (``None``: the
    entry's pinned one); the Hub, unless ``local_files_only`` (or the environment) says offline."""

    weights: str | os.PathLike | None = None
    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False
    mirrors: Sequence[Path] | None = None

    def split(self, options: dict) -> tuple["Lookup", dict]:
        """This lookup with the ``options`` named like its fields, and the other options."""
        mine = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in options.items() if k in mine}), \
            {k: v for k, v in options.items() if k not in mine}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- resolution ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    """A located weights file: ``source`` is ``path``, ``mirror``, ``cache`` or ``download``."""

    entry: PretrainedEntry
    path: Path
    source: str


def _entry_and_path(name: str, weights: str | os.PathLike | None) -> tuple[PretrainedEntry, Path | None]:
    """The registry entry of ``name`` and the explicit file, if any (a folder path as name works too)."""
    if weights is None and name not in PRETRAINED and (os.sep in name or Path(name).is_dir()):
        weights = name
    if weights is None:
        return get_pretrained(name), None
    p = Path(weights).expanduser()
    if not p.exists():
        raise WeightsNotFoundError(f"weights path {p} does not exist")
    folder = p if p.is_dir() else p.parent
    if name in PRETRAINED:
        entry = PRETRAINED[name]
    elif (folder / CONFIG_FILENAME).is_file():
        entry = PretrainedEntry.from_folder(folder)
    else:
        raise HubError(
            f"no sha256 is known for {p}: {name!r} is not a registered pretrained name and {folder} has no "
            f"{CONFIG_FILENAME}; save models with lipzoo.save_pretrained(model, folder, ...) and load the folder"
        )
    return entry, (p / entry.filename if p.is_dir() else p)


def find_local(
    entry: PretrainedEntry,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirrors: Sequence[Path] | None = None,
) -> Resolved | None:
    """The entry's file in a local mirror folder or the HF cache, without any network access."""
    for d in _mirrors(mirrors):
        p = Path(d) / entry.name / entry.filename
        if p.is_file():
            return Resolved(entry, p, "mirror")
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(entry.repo_id, entry.filename, cache_dir=str(cache_dir_of(cache_dir)),
                                 revision=revision_of(entry, revision))
    if isinstance(hit, str) and os.path.isfile(hit):
        return Resolved(entry, Path(hit), "cache")
    return None


def resolve_weights(name: str, lookup: Lookup | None = None, **where) -> Resolved:
    """Locate (and if needed download) the weights of ``name`` as ``lookup`` says, with ``where``
    overriding its fields (``resolve_weights(name, weights=folder)``); nothing is verified yet."""
    at = replace(lookup or Lookup(), **where)
    entry, explicit = _entry_and_path(name, at.weights)
    if explicit is not None:
        if not explicit.is_file():
            raise WeightsNotFoundError(f"{explicit} does not exist (weights of {entry.name})")
        return Resolved(entry, explicit, "path")
    local = find_local(entry, revision=at.revision, cache_dir=at.cache_dir, mirrors=at.mirrors)
    if local is not None:
        return local
    return Resolved(entry, hub_download(entry, at.revision, at.cache_dir, local_files_only=at.local_files_only,
                                        mirrors=_mirrors(at.mirrors)), "download")


#: how long a weights file that was just replaced may disagree with its folder's config.json
#: before that counts as a bad file (a publisher renames the weights, then the config)
SETTLE_S = 0.5


def _matches(entry: PretrainedEntry, data: bytes, digest: str) -> bool:
    return len(data) == entry.size and digest == entry.sha256


def _read_config(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _read_weights(path: Path) -> tuple[bytes, float]:
    """The file's bytes and the inode change time of the very file that was read."""
    with open(path, "rb") as f:
        return f.read(), os.fstat(f.fileno()).st_ctime


def read_verified(r: Resolved, cache_dir: str | os.PathLike | None = None) -> tuple[PretrainedEntry, bytes]:
    """The weights' bytes, read once, with the entry they were verified against (size and sha256).

    The same bytes are what the caller parses, so what was checked is what is loaded. When the
    weights lie in the folder the entry's ``config.json`` was read from (a ``cards/`` folder, a
    model folder passed by path), that file is the authority and is read again around each read
    of the weights: a pair that changed mid-read (a re-publish) is read again, so the result is
    the old or the new version, never a torn one; a mismatch that persists once the folder is
    quiet raises :class:`ChecksumError`. A bad copy in the HF cache is deleted (inside the cache only).
    """
    entry = r.entry
    config = entry.folder / CONFIG_FILENAME if entry.folder is not None else None
    same_folder = config is not None and r.source in ("path", "mirror") and _same_dir(r.path.parent, entry.folder)
    if not same_folder:
        data, _ = _read_weights(r.path)
        digest = hashlib.sha256(data).hexdigest()
        if _matches(entry, data, digest):
            return entry, data
        raise _checksum_error(r, entry, data, digest, cache_dir)
    last = None
    for _ in range(1000):  # each pass either returns, raises, or saw the folder change
        before = _read_config(config)
        data, changed_at = _read_weights(r.path)
        after = _read_config(config)
        digest = hashlib.sha256(data).hexdigest()
        if before != after:
            continue  # config.json was replaced during the read: read the pair again
        if after is not None:
            try:
                current = PretrainedEntry.from_bytes(after, str(config), folder=entry.folder)
            except RegistryError as e:
                raise HubError(f"cannot verify {r.path}: {e}") from None
            if current.name != entry.name:
                raise HubError(f"{config} now describes {current.name!r}, not {entry.name!r}; nothing was loaded")
            entry = current
        if _matches(entry, data, digest):
            return entry, data
        state = (after, digest)
        if time.time() - changed_at < SETTLE_S or state != last:
            # the weights were just replaced (their config.json may follow) or the pair differs
            # from the previous pass: look again shortly
            last = state
            time.sleep(0.02)
            continue
        raise _checksum_error(r, entry, data, digest, cache_dir)
    raise HubError(f"{r.path} kept changing while it was read; nothing was loaded, try again")


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == Path(b).resolve()
    except OSError:
        return False


def _checksum_error(r: Resolved, entry: PretrainedEntry, data: bytes, digest: str,
                    cache_dir: str | os.PathLike | None) -> ChecksumError:
    evicted = r.source in ("cache", "download") and bool(evict(r.path, cache_dir))
    return ChecksumError(
        f"{r.path} ({r.source}) is not the file registered for {entry.name}: sha256 {digest} "
        f"({len(data)} bytes), expected {entry.sha256} ({entry.size} bytes). Nothing was loaded. "
        + (f"The bad copy was deleted from the cache; run `lipzoo download {entry.name}` to fetch it again."
           if evicted else "Replace or remove that file.")
    )


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    try:
        return json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError) as e:
        raise HubError(f"not a safetensors file (bad header): {e}") from None


def pretrained_entry(name: str, weights: str | os.PathLike | None = None) -> PretrainedEntry:
    """The entry ``name`` stands for: a registered pretrained name, else the ``config.json`` of the
    model folder ``weights`` (or of ``name`` itself when it is a folder path). Nothing is read
    from the weights file or downloaded."""
    return _entry_and_path(name, weights)[0]


def load_weights(name: str, lookup: Lookup | None = None, **where) -> tuple[PretrainedEntry, dict[str, torch.Tensor]]:
    """The verified state dict of ``name`` (found as ``lookup`` with ``where`` says, see
    :func:`resolve_weights`) and the entry it was verified against. The bytes that were checked (size, sha256) are the bytes parsed; a
    file whose safetensors metadata names another architecture raises :class:`HubError`.
    :func:`lipzoo.factory.load_pretrained` builds the model and loads it strictly."""
    from safetensors.torch import load as load_safetensors

    at = replace(lookup or Lookup(), **where)
    r = resolve_weights(name, at)
    e, data = read_verified(r, at.cache_dir)
    meta = _safetensors_metadata(data)
    if meta.get("architecture", e.architecture) != e.architecture:
        raise HubError(f"{r.path} holds a {meta['architecture']!r} model but {e.name} is a {e.architecture}")
    return e, load_safetensors(data)


def download(name: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
             force: bool = False, mirrors: Sequence[Path] | None = None) -> Resolved:
    """Make the weights of ``name`` available offline, verified (sha256), and say where they are.

    A verified copy already on this machine (a local mirror folder such as the checkout's
    ``cards/``, or the HF cache) is reported as it is, online or offline; otherwise the file is
    fetched into the HF cache. ``force=True`` always downloads again.
    """
    entry = get_pretrained(name)
    if not force:
        hit = find_local(entry, revision=revision, cache_dir=cache_dir, mirrors=mirrors)
        if hit is not None:
            try:
                return replace(hit, entry=read_verified(hit, cache_dir)[0])
            except ChecksumError:
                if hit.source != "mirror" or is_offline():
                    raise
                # a bad mirror copy: fetch a good one into the cache instead
    r = Resolved(entry, hub_download(entry, revision, cache_dir, force=force, mirrors=_mirrors(mirrors)), "download")
    read_verified(r, cache_dir)
    return r


def verify(name: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
           mirrors: Sequence[Path] | None = None) -> dict[str, Any]:
    """sha256 of the local copy of ``name``: ``status`` is ``ok``, ``mismatch`` or ``missing`` (nothing deleted)."""
    entry = get_pretrained(name)
    r = find_local(entry, revision=revision, cache_dir=cache_dir, mirrors=mirrors)
    row: dict[str, Any] = {"name": name, "expected_sha256": entry.sha256, "path": None, "source": None,
                           "sha256": None, "status": "missing"}
    if r is not None:
        actual = sha256_file(r.path)
        row |= {"path": str(r.path), "source": r.source, "sha256": actual,
                "status": "ok" if actual == entry.sha256 and r.path.stat().st_size == entry.size else "mismatch"}
    return row


# --- writing ------------------------------------------------------------------------------------
def _architecture_of(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    for a in ARCHITECTURES.values():
        if cfg is not None and a.config(num_classes=cfg.num_classes, in_chans=cfg.in_chans,
                                        input_mean=cfg.input_mean) == cfg:
            return a.name
    raise ValueError(f"save_pretrained needs a lipzoo ConvNet built by lipzoo.create_model, got {type(model).__name__}"
                     + (f" with config {cfg}" if cfg is not None else ""))


def _recipe_path(recipe: str | None, arch: str, dataset: str) -> str | None:
    """The recipe recorded for a saved model: ``recipe`` as given; ``""`` for none (e.g. imported
    weights); ``None``: the checkout's ``recipes/<dataset>/<arch>.yaml`` if that file exists, else none."""
    if recipe is not None:
        return recipe or None
    default = f"recipes/{dataset}/{arch}.yaml"
    return default if (CARDS_DIR.parent / default).is_file() else None


def _state_to_save(model: nn.Module, arch: str, data: DataConfig, layer_kwargs: dict) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, once checked: the model is built for ``data`` (channels,
    classes, mean) and the state loads back strictly into ``arch`` built with ``layer_kwargs``."""
    cfg = model.config
    mean = tuple(cfg.input_mean) if cfg.input_mean is not None else None
    if (cfg.in_chans, cfg.num_classes) != (data.in_chans, data.num_classes) or mean is None or any(
        abs(a - b) > 1e-6 for a, b in zip(mean, data.mean)
    ):
        raise ValueError(
            f"the model (in_chans={cfg.in_chans}, num_classes={cfg.num_classes}, input_mean={mean}) is not built for "
            f"{data.dataset} (in_chans={data.in_chans}, num_classes={data.num_classes}, mean={data.mean}); build it "
            f"with lipzoo.create_model({arch!r}, num_classes={data.num_classes}, in_chans={data.in_chans}, "
            f"input_mean={data.mean})"
        )
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    probe = ConvNet(ARCHITECTURES[arch].config(num_classes=data.num_classes, in_chans=data.in_chans,
                                           input_mean=data.mean), **layer_kwargs)
    probe.load_state_dict(state, strict=True)  # what we write must load back exactly
    return state


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    dataset: str,
    name: str | None = None,
    metrics: dict | Any | None = None,
    timing: dict | None = None,
    provenance: dict | None = None,
    recipe: str | None = None,
    layer_kwargs: dict | None = None,
    license: str = "mit",
    hf_repo_id: str | None = None,
) -> PretrainedEntry:
    """Write ``model.safetensors`` (``__metadata__``: architecture, name, dataset, lipzoo version) and
    ``config.json`` (the registry entry) into ``directory``, each to a temporary name then renamed.

    The model must be built for ``dataset`` (its ``in_chans``, ``num_classes`` and ``input_mean``
    are the dataset's), so the saved model takes [0, 1] images. ``recipe``: the recipe the weights
    were trained with (``None``: the checkout's ``recipes/<dataset>/<arch>.yaml`` if it exists;
    ``""``: none, e.g. for weights trained elsewhere). ``metrics``: a dict or a
    :class:`lipzoo.CertificationResult`. ``layer_kwargs``: the options the layers were built with.
    Returns the entry (``PretrainedEntry.from_folder(directory)`` reads it back).

    Both files are written completely under temporary names first, then renamed one right after
    the other (weights, then config), so a re-published folder changes in one short step.
    """
    from contextlib import ExitStack

    from safetensors.torch import save_file

    arch = _architecture_of(model)
    data = DataConfig.from_dataset(dataset)
    name = name or f"{arch}.{dataset}"
    layer_kwargs = dict(layer_kwargs or {})
    state = _state_to_save(model, arch, data, layer_kwargs)
    if hasattr(metrics, "as_dict"):
        metrics = metrics.as_dict()
    prov = {"commit": git_commit(), "torch_version": torch.__version__, "lipzoo_version": __version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")} | dict(provenance or {})
    directory = Path(directory)
    wpath, cpath = directory / "model.safetensors", directory / CONFIG_FILENAME
    with ExitStack() as stack:  # unwinds in reverse: the weights are renamed first, then config.json
        ctmp = stack.enter_context(atomic_path(cpath))
        wtmp = stack.enter_context(atomic_path(wpath))
        save_file(state, wtmp, metadata={"format": "pt", "architecture": arch, "name": name, "dataset": dataset,
                                         "lipzoo_version": __version__})
        entry = PretrainedEntry.from_dict({
            "name": name, "architecture": arch, "dataset": dataset, "lipzoo_version": __version__,
            "recipe": _recipe_path(recipe, arch, dataset),
            "data": data.as_dict(), "layer_kwargs": layer_kwargs,
            "hub": {"repo_id": hf_repo_id, "revision": None, "filename": wpath.name},
            "file": {"sha256": sha256_file(wtmp), "size": os.path.getsize(wtmp)},
            "metrics": dict(metrics or {}), "timing": dict(timing or {}), "provenance": prov, "license": license,
        }, source=f"save_pretrained({name!r})", folder=directory)
        Path(ctmp).write_text(json.dumps(entry.as_dict(), indent=2) + "\n")
    for p in (wpath, cpath):
        p.chmod(0o644)  # published files: readable by all
    return entry


def write_config(entry: PretrainedEntry, directory: str | os.PathLike) -> Path:
    """Write ``entry`` as ``directory/config.json`` (atomically)."""
    path = Path(directory) / CONFIG_FILENAME
    atomic_write_text(path, json.dumps(entry.as_dict(), indent=2) + "\n")
    path.chmod(0o644)  # published files: readable by all (the temporary file was private)
    return path

