"""The paper's released checkpoints: the 21 CIFAR-10 state dicts of "1-Lipschitz Layers Compared"
(Prach et al., CVPR 2024; ConvNet XS, S, M x its seven layers) as data, each with its release
file, run id and the metrics *reported by the authors* for it, and how a release file is fetched
(:func:`download_release`) and read (:func:`load_release_file`, ``torch.load(weights_only=True)``).
:mod:`lipzoo.zoo.convert` converts and imports them.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..certify import DEFAULT_EPS
from ..radius import Radius

__all__ = ["PaperRelease", "PAPER_RELEASES", "PAPER_LAYERS", "PAPER_SIZES", "PAPER_PAPER", "PAPER_REPOSITORY",
           "DEFAULT_URL_BASE", "URL_ENV", "url_base", "ImportError1LLC", "download_release", "load_release_file"]

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
PAPER_SIZES = {"xs": "ConvNetXS", "s": "ConvNetS", "m": "ConvNetM", "l": "ConvNetL"}


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
        filename=f"CIFAR10_final_training_24h_{PAPER_SIZES[size]}_{PAPER_LAYERS[layer]}.pth",
        run_id=run, reported=reported,
    )


#: the 21 released checkpoints, ``convnet_{xs,s,m}_{layer}.cifar10_1llc`` -> :class:`PaperRelease`
PAPER_RELEASES: dict[str, PaperRelease] = {r.name: r for r in map(_release, _REPORTED_ROWS)}


#: where the paper's code and weights live (the card's "Reproduce" section points there)
PAPER_REPOSITORY = "https://github.com/berndprach/1LipschitzLayersCompared"


# --- the release files ---------------------------------------------------------------------------
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
