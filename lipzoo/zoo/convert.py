"""Import the published checkpoints of "1-Lipschitz Layers Compared" (Prach et al., CVPR 2024).

The paper released 21 CIFAR-10 state dicts (ConvNet XS, S, M x its seven layers) as pickled
``.pth`` files on GitHub. This module holds:

- :data:`PAPER_RELEASES`: the 21 entries ``convnet_{xs,s,m}_{layer}.cifar10_1llc`` as data (release
  file, run id and the metrics *reported by the authors* for it);
- :func:`convert_1llc_state_dict`: the paper's keys and shapes -> lipzoo's, strict both ways;
- :func:`load_1llc_model`: the converted weights in a lipzoo model that takes [0, 1] images (the
  paper's input centring is built in as a fixed 1-Lipschitz shift);
- :func:`import_1llc`: download (progress bar) -> ``torch.load(weights_only=True)`` -> convert ->
  an HF-shaped model folder (safetensors + config.json + card), recording the sha256 of the
  release file (trust on first use).

What the paper's state dicts hold that lipzoo's differ in:

- AOL (every conv) and BCOP's dense head are torch parametrizations: the free matrix is stored as
  ``X.parametrizations.weight.original``; lipzoo stores the same matrix as ``X.weight``;
- Cayley convolutions create ``alpha`` lazily in their first forward; a state dict saved before
  that has none, and it is recomputed here as the paper would (``||W_hat||_F`` at the layer's
  input size); the dense head's ``alpha`` (shape (1,)) always exists;
- CPL's power-iteration vector ``u`` and SOC's eight vectors ``u1 .. v4`` and ``correction`` are
  buffers of lipzoo's ``paper_compatible=True`` mode, and are dropped for the sound default mode;
- BCOP's matrices, masks and everything else map key for key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import inspect
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .._version import __version__
from ..audit import audit
from ..certify import DEFAULT_EPS
from ..data import dataset_info
from ..factory import create_model
from ..hub import save_pretrained
from ..layers.cayley import CayleyConv2d, initial_alpha
from ..layers.soc import SOCConv2d
from ..models import SIZES
from ..radius import Radius
from ..registry import CARDS_DIR, CONFIG_FILENAME, get_architecture
from .cards import write_card

__all__ = [
    "ConversionError", "ImportError1LLC", "PaperRelease", "PAPER_RELEASES", "PAPER_LAYERS", "PAPER_PAPER",
    "DEFAULT_URL_BASE", "URL_ENV", "url_base", "convert_1llc_state_dict", "load_1llc_model",
    "download_release", "load_release_file", "import_1llc", "ImportResult", "audit_record", "PAPER_REPOSITORY",
]

# --- the paper's release --------------------------------------------------------------------------
PAPER_PAPER = ("1-Lipschitz Layers Compared: Memory, Speed, and Certifiable Robustness "
               "(Prach, Brau, Buttazzo, Lampert, CVPR 2024)")
DEFAULT_URL_BASE = "https://github.com/berndprach/1LipschitzLayersCompared/releases/download/weights"
URL_ENV = "LIPZOO_1LLC_URL"
TAG = "1llc"
#: lipzoo layer id -> the paper's layer class name (as in its release file names)
PAPER_LAYERS: dict[str, str] = {
    "aol": "AOLConv2d", "bcop": "BCOP", "cayley": "CayleyConv", "cpl": "CPLConv2d",
    "lot": "LOT", "sll": "SLLConv2d", "soc": "SOC",
}
_PAPER_SIZES = {"xs": "ConvNetXS", "s": "ConvNetS", "m": "ConvNetM", "l": "ConvNetL"}
#: state-dict leaves that only lipzoo's paper_compatible mode keeps (power-iteration state)
_PAPER_ONLY_BUFFERS = {"cpl": {"u"}, "soc": {"u1", "v1", "u2", "v2", "u3", "v3", "u4", "v4", "correction"}}
_PARAMETRIZATION = ".parametrizations.weight.original"


def url_base() -> str:
    """Where the release files are downloaded from: ``$LIPZOO_1LLC_URL``, else the paper's GitHub release."""
    return (os.environ.get(URL_ENV) or DEFAULT_URL_BASE).rstrip("/")


@dataclass(frozen=True)
class PaperRelease:
    """One released checkpoint of the paper and what the authors reported for it.

    ``reported`` holds the paper's published numbers (or, where the release points to a rerun, that
    rerun's), labelled as reported by the authors; accuracies are fractions and the certified
    accuracies are keyed like :meth:`lipzoo.CertificationResult.as_dict` (:attr:`lipzoo.radius.Radius.key`).
    ``sha256`` is the release file's hash once known (``None``: trust on first use).
    """

    name: str
    architecture: str
    layer: str
    size: str
    dataset: str
    filename: str
    run_id: str
    reported: dict = field(hash=False, compare=False)
    sha256: str | None = None

    def url(self, base: str | None = None) -> str:
        return f"{(base or url_base()).rstrip('/')}/{self.filename}"


_EPS_KEYS = [Radius(e).key for e in DEFAULT_EPS]  # 36/255, 72/255, 108/255, 1 (the paper's 255/255)
_STATS = "data/runs/CIFAR10/final_training_24h/statistics.csv"
_RERUN = "training_statistics.csv of the rerun (the run the released weights point to)"
# size, layer: clean %, CRA 36, 72, 108, 255 (%), median margin, epochs, train img/s, val img/s, run, source
_REPORTED_ROWS = [
    ("xs", "aol", 71.7, 59.1, 45.2, 32.4, 3.9, 0.329, 10044, 4694, 17669, "20230822_081440.4", _STATS),
    ("xs", "bcop", 71.7, 58.5, 44.1, 31.3, 3.0, 0.315, 1524, 952, 19885, "20230822_081441.2", _STATS),
    ("xs", "cpl", 74.9, 62.5, 48.5, 35.2, 4.2, 0.376, 10032, 4839, 14957, "20230822_081440.7", _STATS),
    ("xs", "cayley", 73.1, 59.5, 45.2, 31.9, 3.0, 0.334, 4272, 2402, 15211, "20230822_081440.1", _STATS),
    ("xs", "lot", 75.5, 63.4, 49.2, 36.1, 4.3, 0.389, 2664, 1474, 12105, "20230822_081440.3", _STATS),
    ("xs", "sll", 73.7, 61.0, 46.8, 34.4, 4.2, 0.357, 8820, 4468, 12298, "20230822_081440.6", _STATS),
    ("xs", "soc", 74.1, 61.3, 47.8, 34.7, 4.1, 0.372, 4452, 2140, 4140, "20230823_053725.64", _STATS),
    ("s", "aol", 73.6, 60.8, 46.5, 34.3, 4.4, 0.351, 9156, 2546, 9903, "20230822_081440.12", _STATS),
    ("s", "bcop", 73.1, 59.3, 44.8, 31.7, 2.8, 0.329, 1500, 887, 10921, "20230822_081440.10", _STATS),
    ("s", "cpl", 76.1, 64.2, 50.4, 36.9, 4.9, 0.406, 9564, 3771, 10506, "20230913_221656.2eps", _RERUN),
    ("s", "cayley", 74.2, 61.1, 46.3, 32.8, 3.3, 0.349, 2568, 1278, 9202, "20230822_081440.9", _STATS),
    ("s", "lot", 76.6, 64.6, 50.6, 37.5, 4.9, 0.408, 816, 355, 4566, "20230822_081440.11", _STATS),
    ("s", "sll", 74.2, 62.0, 47.7, 35.2, 4.5, 0.372, 8436, 3213, 8172, "20230918_082800.0eps2", _RERUN),
    ("s", "soc", 75.0, 62.9, 48.8, 35.6, 4.4, 0.381, 4032, 1443, 2304, "20230822_081440.8", _STATS),
    ("m", "aol", 73.4, 61.0, 47.1, 34.6, 4.9, 0.358, 4404, 1408, 5697, "20230822_081439.20", _STATS),
    ("m", "bcop", 74.0, 60.5, 45.7, 32.2, 3.4, 0.344, 1128, 429, 4371, "20230822_081440.18", _STATS),
    ("m", "cpl", 76.6, 65.1, 51.5, 38.1, 5.5, 0.421, 6264, 1370, 3613, "20230822_081439.23", _STATS),
    ("m", "cayley", 74.4, 61.0, 46.3, 33.0, 3.2, 0.353, 840, 341, 3832, "20230822_081440.17", _STATS),
    ("m", "lot", 72.0, 58.7, 43.7, 30.9, 2.8, 0.315, 132, 81, 3920, "20230904_102819.5", _RERUN),
    ("m", "sll", 75.3, 62.8, 48.9, 35.8, 4.8, 0.384, 4236, 1142, 2834, "20230918_082800.1eps2", _RERUN),
    ("m", "soc", 76.9, 66.3, 53.4, 40.0, 6.7, 0.452, 2412, 459, 437, "20230822_081440.16", _STATS),
]


def _release(row: tuple) -> PaperRelease:
    size, layer, clean, *cra, margin, epochs, train_ips, val_ips, run, source = row
    arch = f"convnet_{size}_{layer}"
    reported = {
        "label": "reported by the authors",
        "paper": PAPER_PAPER,
        "run": run,
        "source": source,
        "split": "test",
        "n": 10000,
        "clean_accuracy": round(clean / 100, 4),
        "certified_accuracy": {k: round(a / 100, 4) for k, a in zip(_EPS_KEYS, cra)},
        "median_margin": margin,
        "epochs": epochs,
        "train_images_per_s": train_ips,
        "val_images_per_s": val_ips,
        "hardware": "the authors' cluster GPU (24 h training budget)",
    }
    return PaperRelease(
        name=f"{arch}.cifar10_{TAG}", architecture=arch, layer=layer, size=size, dataset="cifar10",
        filename=f"CIFAR10_final_training_24h_{_PAPER_SIZES[size]}_{PAPER_LAYERS[layer]}.pth",
        run_id=run, reported=reported,
    )


#: the 21 released checkpoints, ``convnet_{xs,s,m}_{layer}.cifar10_1llc`` -> :class:`PaperRelease`
PAPER_RELEASES: dict[str, PaperRelease] = {r.name: r for r in map(_release, _REPORTED_ROWS)}


# --- conversion ---------------------------------------------------------------------------------
class ConversionError(ValueError):
    """A state dict that does not map onto the lipzoo architecture (the message lists what differs)."""


def _check_args(layer: str, size: str, dataset: str) -> tuple[str, Any]:
    if layer not in PAPER_LAYERS:
        raise ConversionError(f"unknown layer {layer!r} for a paper checkpoint; expected one of {', '.join(PAPER_LAYERS)}")
    if size not in SIZES:
        raise ConversionError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    info = dataset_info(dataset)
    family = "convnet" if info.input_size == 32 else "tconvnet"  # the paper's TConvNet for 64x64 images
    return get_architecture(f"{family}_{size}_{layer}").name, info


def _build(arch: str, info, paper_compatible: bool, *, device: str | None = None, centred: bool = False) -> nn.Module:
    """The lipzoo model for ``arch``; SOC's initial power iterations are skipped when the buffers
    are about to be overwritten by a state dict (its ``init_iters`` option is restored after)."""
    layer = get_architecture(arch).layer
    fast = {"init_iters": 0} if layer == "soc" and paper_compatible else {}
    kwargs = dict(num_classes=info.num_classes, in_chans=info.in_chans, paper_compatible=paper_compatible, **fast)
    if centred:
        kwargs["input_mean"] = tuple(info.mean)
    if device is not None:
        with torch.device(device):
            model = create_model(arch, **kwargs)
    else:
        model = create_model(arch, **kwargs)
    if fast:
        default = inspect.signature(SOCConv2d.__init__).parameters["init_iters"].default
        for m in model.modules():
            if isinstance(m, SOCConv2d):
                m.init_iters = default
    return model


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def convert_1llc_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    layer: str,
    size: str,
    dataset: str = "cifar10",
    paper_compatible: bool = True,
) -> dict[str, torch.Tensor]:
    """Map a state dict of the paper's ConvNet (its training code or torch.hub model) onto lipzoo's
    ``convnet_{size}_{layer}`` built with ``paper_compatible``.

    Strict both ways: a key the paper's dict has but lipzoo's model does not, a key lipzoo's model
    needs but the dict lacks, and a shape that differs all raise :class:`ConversionError` listing
    every such key. The result holds fresh float tensors in lipzoo's order and dtype, ready for
    ``model.load_state_dict(..., strict=True)`` or safetensors.
    """
    arch, info = _check_args(layer, size, dataset)
    if not isinstance(state_dict, Mapping):
        raise ConversionError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(
            f"expected a flat state dict of tensors; these entries are not (name -> tensor): {_listing(map(str, bad))}")
    template = _build(arch, info, paper_compatible, device="meta")
    target = template.state_dict()

    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        new = key[: -len(_PARAMETRIZATION)] + ".weight" if key.endswith(_PARAMETRIZATION) else key
        if new not in target and new.rsplit(".", 1)[-1] in _PAPER_ONLY_BUFFERS.get(layer, ()):
            dropped.append(key)  # power-iteration state the sound default mode does not keep
            continue
        if new in renamed:
            raise ConversionError(f"the state dict holds both {key!r} and another key that maps onto {new!r}")
        renamed[new] = value
    if layer == "cayley":  # alphas the paper has not created yet (no forward before saving)
        for key in target:
            if key.endswith(".alpha") and key not in renamed:
                module = template.get_submodule(key[: -len(".alpha")])
                wkey = key[: -len("alpha")] + "weight"
                if isinstance(module, CayleyConv2d) and wkey in renamed:
                    renamed[key] = initial_alpha(renamed[wkey], module.input_size)

    missing = [k for k in target if k not in renamed]
    unexpected = [k for k in renamed if k not in target]
    shapes = [f"{k} {tuple(renamed[k].shape)} (lipzoo expects {tuple(t.shape)})"
              for k, t in target.items() if k in renamed and renamed[k].shape != t.shape]
    if missing or unexpected or shapes:
        mode = "paper_compatible=True" if paper_compatible else "the default (sound) mode"
        parts = [f"the state dict does not match lipzoo's {arch} ({dataset}, {mode}):"]
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected key(s) (not in lipzoo's model): {_listing(unexpected)}")
        if missing:
            parts.append(f"  {len(missing)} missing key(s) (lipzoo's model needs them): {_listing(missing)}")
        if shapes:
            parts.append(f"  {len(shapes)} shape mismatch(es): {_listing(shapes)}")
        parts.append(f"  Is it a {_PAPER_SIZES.get(size, size)} {PAPER_LAYERS[layer]} checkpoint for {dataset}? "
                     "(size, layer and dataset must be the checkpoint's)")
        raise ConversionError("\n".join(parts))
    out = {}
    for k, t in target.items():
        v = renamed[k].detach().to("cpu")
        if v.is_floating_point() != t.is_floating_point():
            raise ConversionError(f"{k} has dtype {v.dtype}, lipzoo expects {t.dtype}")
        out[k] = v.to(t.dtype).clone().contiguous()
    return out


def load_1llc_model(
    state_dict: Mapping[str, torch.Tensor],
    layer: str,
    size: str,
    dataset: str = "cifar10",
    paper_compatible: bool = True,
    device: str | torch.device | None = None,
) -> nn.Module:
    """The paper's checkpoint as a lipzoo model in eval mode that takes [0, 1] images: the
    paper's input centring (the data set's mean) is the model's first, fixed module."""
    arch, info = _check_args(layer, size, dataset)
    state = convert_1llc_state_dict(state_dict, layer, size, dataset, paper_compatible)
    model = _build(arch, info, paper_compatible, centred=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(device) if device is not None else model


# --- the importer -----------------------------------------------------------------------------------
class ImportError1LLC(RuntimeError):
    """A release file could not be downloaded, trusted, read or converted (nothing was written)."""


def download_release(url: str, dest: Path, *, progress: bool = True, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` (written to a temporary name, renamed when complete) with a
    progress bar; returns the sha256 of the bytes. Any failure leaves no file behind."""
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http(s) URL of the release)
            except urllib.error.HTTPError as e:
                hint = (" (no such release file: check the name, and --url-base / $" + URL_ENV + ")") if e.code == 404 else ""
                raise ImportError1LLC(f"download of {url} failed: HTTP {e.code} {e.reason}{hint}") from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise ImportError1LLC(f"cannot reach {url}: {reason}; check the network, or point --url-base / "
                                      f"${URL_ENV} at a mirror") from None
            with resp:
                total = resp.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                got = 0
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                          disable=not progress, leave=False) as bar:
                    while True:
                        try:
                            block = resp.read(1 << 20)
                        except (OSError, http.client.HTTPException) as e:
                            raise ImportError1LLC(f"download of {url} broke off after {got} bytes: {e}") from None
                        if not block:
                            break
                        f.write(block)
                        h.update(block)
                        got += len(block)
                        bar.update(len(block))
                if total is not None and got != total:
                    raise ImportError1LLC(f"download of {url} is incomplete: {got} of {total} bytes")
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return h.hexdigest()


def load_release_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a released ``.pth`` with ``torch.load(weights_only=True)`` (tensors and plain containers
    only: no code can run) onto the CPU; a file that is not such a state dict raises ImportError1LLC."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, or a pickle that weights_only refuses
        raise ImportError1LLC(
            f"{path} is not a readable PyTorch state dict ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "it was loaded with torch.load(weights_only=True), which refuses anything but tensors") from None
    if not isinstance(obj, Mapping):
        raise ImportError1LLC(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    return dict(obj)


@dataclass(frozen=True)
class ImportResult:
    name: str
    folder: Path
    url: str
    source_sha256: str
    trusted_on_first_use: bool
    weights_sha256: str
    lipschitz_upper: float | None = None  # the audit's proven bound (None: imported with audit=False)

    def as_dict(self) -> dict:
        return {"name": self.name, "folder": str(self.folder), "url": self.url, "source_sha256": self.source_sha256,
                "trusted_on_first_use": self.trusted_on_first_use, "weights_sha256": self.weights_sha256,
                "lipschitz_upper": self.lipschitz_upper}


#: where the paper's code and weights live (the card's "Reproduce" section points there)
PAPER_REPOSITORY = "https://github.com/berndprach/1LipschitzLayersCompared"
AUDIT_METHOD = "lipzoo.audit upper bound (guaranteed, float64, per layer at the model's input size)"


def audit_record(model: nn.Module) -> dict:
    """``metrics.audit`` of a model folder: the proven upper bound on the model's l2 Lipschitz
    constant (:func:`lipzoo.audit.audit` with ``lower=False``), which its certificates must use."""
    result = audit(model, lower=False)
    return {"lipschitz_upper": float(result.upper), "upper_ok": bool(result.upper_ok), "method": AUDIT_METHOD,
            "input_shape": list(result.input_shape), "lipzoo_version": __version__}


def select_releases(names: Sequence[str] = (), all_releases: bool = False) -> list[PaperRelease]:
    """The releases named (full names, architecture names, or shell patterns); all of them with ``all_releases``."""
    if all_releases:
        return list(PAPER_RELEASES.values())
    if not names:
        raise ImportError1LLC("name at least one release (see `lipzoo import-1llc --help`) or pass --all")
    chosen: dict[str, PaperRelease] = {}
    for pattern in names:
        hits = [r for r in PAPER_RELEASES.values()
                if fnmatch.fnmatchcase(r.name, pattern) or fnmatch.fnmatchcase(r.architecture, pattern)]
        if not hits:
            raise ImportError1LLC(f"no release of the paper matches {pattern!r}; the {len(PAPER_RELEASES)} releases are "
                                  f"{', '.join(PAPER_RELEASES)}")
        chosen.update((r.name, r) for r in hits)
    return list(chosen.values())


def _recorded_sha256(folder: Path) -> str | None:
    """The release file's sha256 recorded by an earlier import in ``folder/config.json``; ``None`` only
    when there is no config.json at all (a first import). A config.json that exists but cannot be
    read, or records no valid hash, raises :class:`ImportError1LLC`: trusting the download anew would
    let a changed release file through."""
    path = folder / CONFIG_FILENAME
    if not path.exists() and not path.is_symlink():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problem = f"cannot be read ({type(e).__name__}: {e})"
    else:
        prov = cfg.get("provenance") if isinstance(cfg, dict) else None
        sha = prov.get("source_sha256") if isinstance(prov, dict) else None
        if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha):
            return sha
        problem = "records no valid provenance.source_sha256 (64 hex digits)"
    raise ImportError1LLC(
        f"{path} {problem}, so the release file cannot be checked against the hash of the earlier import; "
        "refusing to trust it again. Restore that file, or pass --force to accept whatever is downloaded now")


def import_1llc(
    names: Sequence[str] = (),
    *,
    all_releases: bool = False,
    out: str | os.PathLike = CARDS_DIR,
    base_url: str | None = None,
    paper_compatible: bool = True,
    force: bool = False,
    audit: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[ImportResult]:
    """Download, convert and save the paper's released checkpoints as ``out/<name>/`` folders.

    Each release file is verified against the sha256 known for it (:data:`PAPER_RELEASES`, else
    the one recorded by an earlier import in ``out/<name>/config.json``); with none known it is
    trusted on first use and its hash announced and recorded (``provenance.source_sha256``). A
    different hash raises :class:`ImportError1LLC` unless ``force``. Everything is written to a
    temporary folder and moved into place only when complete.

    With ``audit`` (default) each converted model's guaranteed Lipschitz upper bound is computed
    (:func:`audit_record`) and stored as ``metrics.audit`` in config.json, and the card states it;
    ``audit=False`` skips it (faster; the card then says the bound was not audited).
    """
    out = Path(out)
    results = []
    for rel in select_releases(names, all_releases):
        url = rel.url(base_url)
        folder = out / rel.name
        unchecked = False  # force past a recorded config.json that could not be read
        try:
            expected = rel.sha256 or _recorded_sha256(folder)
        except ImportError1LLC:
            if not force:
                raise
            expected, unchecked = None, True
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out, prefix=f".{rel.name}.") as tmp:
            tmp = Path(tmp)
            pth = tmp / rel.filename
            sha = download_release(url, pth, progress=progress)
            if expected and sha != expected and not force:
                raise ImportError1LLC(
                    f"{url} has sha256 {sha}, but {expected} was recorded for {rel.name}"
                    f"{'' if rel.sha256 else ' by an earlier import (' + str(folder / CONFIG_FILENAME) + ')'}; "
                    "the release file changed. Nothing was written; pass --force to accept the new file")
            tofu = not expected and not unchecked
            trust = ("accepted with force (the earlier import's config.json was unreadable)" if unchecked
                     else "first use" if tofu else "verified" if sha == expected
                     else f"accepted with force (the recorded sha256 was {expected})")
            state = load_release_file(pth)
            pth.unlink()  # the pickle is not kept
            try:
                model = load_1llc_model(state, rel.layer, rel.size, rel.dataset, paper_compatible)
            except ConversionError as e:
                raise ImportError1LLC(f"{url} (sha256 {sha}) does not convert to {rel.name}: {e}") from None
            metrics = {"reported": rel.reported}
            if audit:
                metrics["audit"] = audit_record(model)
            provenance = {"source": "1-Lipschitz Layers Compared release (converted by lipzoo.zoo.convert)",
                          "source_url": url, "source_file": rel.filename, "source_sha256": sha,
                          "source_trust": trust, "run": rel.run_id, "trained_by": "the paper's authors",
                          "source_repository": PAPER_REPOSITORY, "import_command": f"lipzoo import-1llc {rel.name}",
                          "license_note": "lipzoo has not recorded a license for the released weights; see the authors' repository"}
            staged = tmp / rel.name
            entry = save_pretrained(model, staged, dataset=rel.dataset, name=rel.name, recipe="",
                                    metrics=metrics, provenance=provenance,
                                    layer_kwargs={"paper_compatible": paper_compatible}, license="unknown")
            write_card(entry, tmp)  # tmp/<name>/README.md
            _move_into_place(staged, folder)
        if unchecked:
            echo(f"{rel.name}: accepted {rel.filename} (force) without checking it: the earlier import's "
                 f"config.json was unreadable; sha256 {sha} is now recorded")
        elif tofu:
            echo(f"{rel.name}: trusting {rel.filename} on first use: sha256 {sha} (recorded in "
                 f"{folder / CONFIG_FILENAME}; later imports must match it)")
        elif sha == expected:
            echo(f"{rel.name}: {rel.filename} sha256 {sha} matches the recorded hash")
        else:
            echo(f"{rel.name}: accepted the CHANGED {rel.filename} (force): sha256 {sha}, was {expected}")
        upper = metrics["audit"]["lipschitz_upper"] if audit else None
        if upper is not None:
            echo(f"{rel.name}: audited Lipschitz upper bound L = {upper:.6g}"
                 + ("" if metrics["audit"]["upper_ok"] else " (> 1: its certificates use this L)"))
        results.append(ImportResult(rel.name, folder, url, sha, tofu, entry.sha256, upper))
    return results


def _move_into_place(staged: Path, folder: Path) -> None:
    """Move the staged files into ``folder``: the weights first, config.json (the entry) last."""
    folder.mkdir(parents=True, exist_ok=True)
    order = sorted(staged.iterdir(), key=lambda p: (p.name == CONFIG_FILENAME, p.name))
    for p in order:
        os.replace(p, folder / p.name)
    shutil.rmtree(staged, ignore_errors=True)
