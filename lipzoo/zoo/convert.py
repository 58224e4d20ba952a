"""Import the published checkpoints of "1-Lipschitz Layers Compared" (Prach et al., CVPR 2024).

The paper released 21 CIFAR-10 state dicts (ConvNet XS, S, M x its seven layers) as pickled
``.pth`` files on GitHub. This module holds:

- :data:`PAPER_RELEASES` (from :mod:`lipzoo.zoo.paper_release`): the 21 entries
  ``convnet_{xs,s,m}_{layer}.cifar10_1llc`` as data (release file, run id and the metrics
  *reported by the authors* for it);
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
import inspect
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .._io import replace_folder
from .._version import __version__
from ..audit import audit
from ..data import dataset_info
from ..factory import create_model
from ..hub import save_pretrained
from ..layers.cayley import CayleyConv2d, initial_alpha
from ..layers.soc import SOCConv2d
from ..models import SIZES
from ..registry import CARDS_DIR, CONFIG_FILENAME, get_architecture
from .cards import write_card
from .paper_release import (DEFAULT_URL_BASE, PAPER_LAYERS, PAPER_PAPER, PAPER_RELEASES, PAPER_REPOSITORY, PAPER_SIZES,
                            URL_ENV, ImportError1LLC, PaperRelease, download_release, load_release_file, url_base)

__all__ = [
    "ConversionError", "ImportError1LLC", "PaperRelease", "PAPER_RELEASES", "PAPER_LAYERS", "PAPER_PAPER",
    "DEFAULT_URL_BASE", "URL_ENV", "url_base", "convert_1llc_state_dict", "load_1llc_model",
    "download_release", "load_release_file", "import_1llc", "ImportResult", "audit_record", "PAPER_REPOSITORY",
    "select_releases",
]

#: state-dict leaves that only lipzoo's paper_compatible mode keeps (power-iteration state)
_PAPER_ONLY_BUFFERS = {"cpl": {"u"}, "soc": {"u1", "v1", "u2", "v2", "u3", "v3", "u4", "v4", "correction"}}
_PARAMETRIZATION = ".parametrizations.weight.original"


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
    _check_flat(state_dict)
    template = _build(arch, info, paper_compatible, device="meta")
    target = template.state_dict()
    renamed = _renamed(state_dict, target, layer)
    if layer == "cayley":
        _add_cayley_alphas(renamed, template, target)
    problems = _mismatches(renamed, target)
    if problems:
        mode = "paper_compatible=True" if paper_compatible else "the default (sound) mode"
        raise ConversionError("\n".join(
            [f"the state dict does not match lipzoo's {arch} ({dataset}, {mode}):", *problems,
             f"  Is it a {PAPER_SIZES.get(size, size)} {PAPER_LAYERS[layer]} checkpoint for {dataset}? "
             "(size, layer and dataset must be the checkpoint's)"]))
    out = {}
    for k, t in target.items():
        v = renamed[k].detach().to("cpu")
        if v.is_floating_point() != t.is_floating_point():
            raise ConversionError(f"{k} has dtype {v.dtype}, lipzoo expects {t.dtype}")
        out[k] = v.to(t.dtype).clone().contiguous()
    return out


def _check_flat(state_dict) -> None:
    if not isinstance(state_dict, Mapping):
        raise ConversionError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(
            f"expected a flat state dict of tensors; these entries are not (name -> tensor): {_listing(map(str, bad))}")


def _renamed(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
             layer: str) -> dict[str, torch.Tensor]:
    """The paper's tensors under lipzoo's names (parametrizations unwrapped); power-iteration state
    that the built model does not keep (the sound default mode) is left out."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key[: -len(_PARAMETRIZATION)] + ".weight" if key.endswith(_PARAMETRIZATION) else key
        if new not in target and new.rsplit(".", 1)[-1] in _PAPER_ONLY_BUFFERS.get(layer, ()):
            continue  # power-iteration state the sound default mode does not keep
        if new in renamed:
            raise ConversionError(f"the state dict holds both {key!r} and another key that maps onto {new!r}")
        renamed[new] = value
    return renamed


def _add_cayley_alphas(renamed: dict[str, torch.Tensor], template: nn.Module, target: Mapping[str, torch.Tensor]) -> None:
    """The alphas the paper's Cayley convolutions had not created yet (no forward before saving),
    computed as the paper would: ``||W_hat||_F`` at the layer's input size."""
    for key in target:
        if key.endswith(".alpha") and key not in renamed:
            module = template.get_submodule(key[: -len(".alpha")])
            wkey = key[: -len("alpha")] + "weight"
            if isinstance(module, CayleyConv2d) and wkey in renamed:
                renamed[key] = initial_alpha(renamed[wkey], module.input_size)


def _mismatches(renamed: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> list[str]:
    """One line for each kind of difference between the renamed tensors and lipzoo's model."""
    missing = [k for k in target if k not in renamed]
    unexpected = [k for k in renamed if k not in target]
    shapes = [f"{k} {tuple(renamed[k].shape)} (lipzoo expects {tuple(t.shape)})"
              for k, t in target.items() if k in renamed and renamed[k].shape != t.shape]
    lines = []
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s) (not in lipzoo's model): {_listing(unexpected)}")
    if missing:
        lines.append(f"  {len(missing)} missing key(s) (lipzoo's model needs them): {_listing(missing)}")
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatch(es): {_listing(shapes)}")
    return lines


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
    temporary folder beside ``out/<name>/`` and, only when complete, renamed into place as a whole
    (:func:`lipzoo._io.replace_folder`), so the folder is never a mix of two imports.

    With ``audit`` (default) each converted model's guaranteed Lipschitz upper bound is computed
    (:func:`audit_record`) and stored as ``metrics.audit`` in config.json, and the card states it;
    ``audit=False`` skips it (faster; the card then says the bound was not audited).
    """
    out = Path(out)
    return [_import_one(rel, out, base_url=base_url, paper_compatible=paper_compatible, force=force,
                        with_audit=audit, progress=progress, echo=echo)
            for rel in select_releases(names, all_releases)]


def _import_one(rel: PaperRelease, out: Path, *, base_url: str | None, paper_compatible: bool, force: bool,
                with_audit: bool, progress: bool, echo: Callable[[str], None]) -> ImportResult:
    """Download, check, convert and save one release as ``out/<name>/`` (see :func:`import_1llc`)."""
    url, folder = rel.url(base_url), out / rel.name
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
        metrics = {"reported": rel.reported} | ({"audit": audit_record(model)} if with_audit else {})
        staged = tmp / rel.name
        entry = save_pretrained(model, staged, dataset=rel.dataset, name=rel.name, recipe="", metrics=metrics,
                                provenance=_provenance(rel, url, sha, trust),
                                layer_kwargs={"paper_compatible": paper_compatible}, license="unknown")
        write_card(entry, tmp)  # tmp/<name>/README.md
        # the whole folder at once (an earlier import's folder lands in tmp and is removed with it)
        replace_folder(staged, folder)
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
    upper = metrics["audit"]["lipschitz_upper"] if with_audit else None
    if upper is not None:
        echo(f"{rel.name}: audited Lipschitz upper bound L = {upper:.6g}"
             + ("" if metrics["audit"]["upper_ok"] else " (> 1: its certificates use this L)"))
    return ImportResult(rel.name, folder, url, sha, tofu, entry.sha256, upper)


def _provenance(rel: PaperRelease, url: str, sha: str, trust: str) -> dict:
    """``provenance`` of an imported release: where it came from, its hash and how it was trusted."""
    return {"source": "1-Lipschitz Layers Compared release (converted by lipzoo.zoo.convert)",
            "source_url": url, "source_file": rel.filename, "source_sha256": sha,
            "source_trust": trust, "run": rel.run_id, "trained_by": "the paper's authors",
            "source_repository": PAPER_REPOSITORY, "import_command": f"lipzoo import-1llc {rel.name}",
            "license_note": "lipzoo has not recorded a license for the released weights; see the authors' repository"}
