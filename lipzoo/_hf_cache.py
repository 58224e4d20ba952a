"""The Hugging Face side of :mod:`lipzoo.hub`: the endpoint, offline mode, the cache's paths, the
one function that downloads (:func:`hub_download`) and the eviction of a bad cached copy (never
anything outside the cache folder).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .registry import PretrainedEntry

__all__ = ["HubError", "WeightsNotFoundError", "DownloadError", "DEFAULT_ENDPOINT", "hf_endpoint", "is_offline",
           "cache_dir_of", "revision_of", "cache_path", "transport_errors", "hub_download", "inside", "evict"]

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


class HubError(RuntimeError):
    """Pretrained weights could not be found, fetched or trusted."""


class WeightsNotFoundError(HubError, FileNotFoundError):
    """The weights are not available locally and downloading is off (offline)."""


class DownloadError(HubError):
    """The Hub (or mirror) could not deliver the file: unknown repo, revision or file, or a failed transfer."""


def hf_endpoint() -> str:
    """The Hub to download from: ``$LIPZOO_HF_ENDPOINT``, else ``$HF_ENDPOINT``, else huggingface.co."""
    return (os.environ.get("LIPZOO_HF_ENDPOINT") or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline(local_files_only: bool = False) -> bool:
    """True when nothing may be downloaded (argument, ``HF_HUB_OFFLINE``, ``LIPZOO_OFFLINE``)."""
    from huggingface_hub import constants

    env = any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "LIPZOO_OFFLINE"))
    return bool(local_files_only or env or constants.HF_HUB_OFFLINE)


def cache_dir_of(cache_dir: str | os.PathLike | None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE).expanduser()


def revision_of(entry: PretrainedEntry, revision: str | None) -> str:
    return revision or entry.revision or "main"


def cache_path(entry: PretrainedEntry, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the HF cache keeps the entry's file (for a branch revision, the ``refs/`` file names the commit)."""
    folder = cache_dir_of(cache_dir) / f"models--{entry.repo_id.replace('/', '--')}"
    return folder / "snapshots" / revision_of(entry, revision) / entry.filename


def transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures of huggingface_hub's HTTP client (httpx2 in recent versions), plus OSError."""
    errors: list[type[BaseException]] = [OSError]
    for mod in ("httpx2", "httpx", "requests"):
        try:
            m = __import__(mod)
        except ImportError:
            continue
        errors.append(getattr(m, "TransportError", None) or getattr(m, "RequestException"))
    return tuple(errors)


def hub_download(entry: PretrainedEntry, revision: str | None, cache_dir: str | os.PathLike | None,
                 force: bool = False, local_files_only: bool = False, mirrors: Sequence[Path] = ()) -> Path:
    """Fetch the file into the HF cache; each failure becomes a :class:`DownloadError` saying what was wrong.

    The one place that goes to the network: offline, it raises :class:`WeightsNotFoundError` instead.
    """
    if is_offline(local_files_only):
        looked = [str(Path(d) / entry.name / entry.filename) for d in mirrors]
        raise WeightsNotFoundError(
            f"the weights of {entry.name} are not available offline: not in the Hugging Face cache "
            f"({cache_path(entry, revision, cache_dir)})" + (f" nor in the mirror folders ({', '.join(looked)})" if looked else "")
            + f". Run `lipzoo download {entry.name}` while online (or unset HF_HUB_OFFLINE / local_files_only), "
            f"or put the file in $LIPZOO_WEIGHTS/{entry.name}/{entry.filename}"
        )
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    endpoint, rev, repo = hf_endpoint(), revision_of(entry, revision), entry.repo_id
    api = HfApi(endpoint=endpoint)
    where = f"{repo} at {endpoint}"
    unreachable = transport_errors()
    try:
        info = api.model_info(repo, revision=rev)
    except HfHubHTTPError as e:  # repo or revision unknown: tell which
        try:
            try:
                refs = api.list_repo_refs(repo)
            except unreachable:  # a server may drop its keep-alive connection after the error: ask again once
                refs = api.list_repo_refs(repo)
        except (HfHubHTTPError, *unreachable):
            raise DownloadError(
                f"repository {where} not found (for {entry.name}); check the repo id "
                f"(LIPZOO_HUB_ORG={os.environ.get('LIPZOO_HUB_ORG', '')!r}) and the endpoint (LIPZOO_HF_ENDPOINT)"
            ) from e
        known = [b.name for b in refs.branches] + [t.name for t in refs.tags]
        raise DownloadError(
            f"revision {rev!r} not found in {where}; its branches and tags: {', '.join(known) or '(none)'}"
        ) from e
    except unreachable as e:
        raise DownloadError(
            f"cannot reach {endpoint} to download {entry.name} ({type(e).__name__}: {e}); the file is not cached "
            f"at {cache_path(entry, revision, cache_dir)}. Run `lipzoo download {entry.name}` when online, "
            "or set LIPZOO_HF_ENDPOINT to a reachable mirror"
        ) from e
    files = [s.rfilename for s in info.siblings or []]
    if entry.filename not in files:
        raise DownloadError(
            f"{where} has no file {entry.filename!r} at revision {rev!r}; it has: {', '.join(files) or '(no files)'}"
        )
    try:
        path = hf_hub_download(repo, entry.filename, revision=rev, cache_dir=str(cache_dir_of(cache_dir)),
                               endpoint=endpoint, library_name="lipzoo", library_version=__version__,
                               force_download=force)
    except (HfHubHTTPError, *unreachable) as e:
        raise DownloadError(
            f"download of {entry.filename} from {where} (revision {rev!r}) failed: {e}. Nothing was loaded and "
            f"no partial file is used; run `lipzoo download {entry.name}` again to resume"
        ) from e
    return Path(path)


def inside(path: Path, root: Path) -> bool:
    """True if the fully resolved ``path`` lies under the fully resolved folder ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def evict(path: Path, cache_dir: str | os.PathLike | None) -> list[Path]:
    """Delete a bad cached file: the snapshot entry and the blob it links to, each only if it lies
    inside the HF cache folder (a link that leads out of the cache is removed, its target never).
    Returns what was deleted."""
    root = cache_dir_of(cache_dir)
    link = path.parent.resolve() / path.name  # the snapshot entry itself, not what it points to
    gone = []
    for p in dict.fromkeys([link, path.resolve()]):
        if not (inside(p.parent, root) and (p.is_symlink() or inside(p, root))):
            continue
        try:
            p.unlink()
            gone.append(p)
        except FileNotFoundError:
            pass
    return gone
