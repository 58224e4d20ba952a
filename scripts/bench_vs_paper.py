#!/usr/bin/env python
"""Training-step and inference time of the paper's own ConvNets against lipzoo's, side by side.

The paper is "1-Lipschitz Layers Compared: Memory, Speed, and Certifiable Robustness" (Prach,
Brau, Buttazzo, Lampert, CVPR 2024); its code is public but NOT shipped with lipzoo. Point
``--paper-code`` at a copy of it: either a folder holding its ``models/`` package, e.g.

    git -C <clone-or-mirror> archive HEAD models | tar -x -C /tmp/1llc   # then --paper-code /tmp/1llc

or the git directory itself (a clone or a bare mirror), whose ``models/`` is then exported to a
temporary folder and whose commit is recorded.

For every layer it builds the paper's ConvNet with the paper's own constructor
(``models.get_model("ConvNetXS", "AOLConv2d")``: its SimplifiedConvNet, its layer classes and
its classification heads) and lipzoo's ``convnet_<size>_<layer>`` for the same input shape
(CIFAR-10: 3x32x32, the paper's setting; ``--dataset fashion_mnist``: 1x32x32, lipzoo's padded
Fashion-MNIST), and times, in one process, with the two models alternating:

- **train**: one step = ``zero_grad`` + forward + ``out.sum().backward()`` + SGD(lr 1e-3,
  momentum 0.9) step (lipzoo bench's step; the paper's ``evaluator/batch_times.py`` times the
  same step without ``zero_grad``);
- **inference**: eval mode under ``torch.no_grad()``. Eval caches: lipzoo caches every layer's
  weight in eval mode; the paper's Cayley, LOT and Sandwich layers keep their own eval caches,
  and its AOL is a ``torch.nn.utils.parametrize`` parametrisation, so, as the paper's own
  ``evaluate_second_per_validation_batch`` does, the whole inference phase runs inside
  ``torch.nn.utils.parametrize.cached()``. The first eval call of each model builds its caches:
  its time is reported as ``*_infer_first_s`` and excluded from the median.

Each model first gets ``--warmup`` untimed steps; then ``--repeats`` rounds each time one step of
both models (the order flips every round, so a drift of the shared machine hits both alike).
The reported time of each is the median of its rounds, measured with lipzoo's timing helper
(``lipzoo.zoo.measure.timed``); speedup = paper time / lipzoo time (> 1: lipzoo is faster).

Shims (the paper's files are never edited; each shim is recorded in the JSON's ``shims``):

1. ``einops`` (a dependency of the paper's LOT, SOC and ECO modules, not of lipzoo): when it is
   not installed, a stand-in module is put in ``sys.modules`` whose ``rearrange`` does the one
   pattern the paper uses, ``"b c (w k1) (h k2) -> b (c k1 k2) w h"`` (a pixel unshuffle), and
   refuses any other. The ConvNets (stride 1 everywhere) never call it.
2. ``sys.modules``/``sys.path``: the paper's package is the top-level name ``models``; any module
   of that name already imported is dropped and ``--paper-code`` is put first on ``sys.path``.
3. Lazily created parameters: the paper's ``CayleyConv`` creates its ``alpha`` parameter in its
   first forward pass, so each model (both sides, for symmetry) runs one untimed train-mode
   forward on two images before its optimizer is built; otherwise the optimizer would miss them.
4. No CUDA shim was needed: the paper's ``models/`` puts tensors on ``x.device`` (its CUDA default
   is only in ``evaluator/``, which is not used). Devices other than ``cpu`` are not offered.

Writes ``<out>/vs-paper-cpu-<size>-<dataset>-<UTC time>.{csv,json,png}`` (each via a temporary
name, then renamed): the CSV has a row per layer and lipzoo bench's ``hw_*`` fingerprint columns
(CPU model, threads, torch, lipzoo commit, ...); the JSON holds the same plus every single timing,
the settings, the paper code's commit (or a hash of its ``models/`` files) and the shims; the
PNG is a bar chart of the train and inference speedups. ``--out`` defaults to ``./bench-vs-paper``
(pass ``results/vs-paper`` to update the committed files).

    python scripts/bench_vs_paper.py --paper-code /tmp/1llc --layer aol,sll --size xs --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import gc
import hashlib
import importlib
import importlib.util
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from lipzoo._io import atomic_path, atomic_write_text
from lipzoo.data import DATASETS
from lipzoo.factory import create_model
from lipzoo.layers import LAYERS
from lipzoo.zoo.bench import hardware_fingerprint
from lipzoo.zoo.measure import timed

#: lipzoo layer id -> the paper's conv class name (``models.layers.<name>``, ``get_model``'s argument)
PAPER_LAYERS = {
    "standard": "StandardConv2d",
    "aol": "AOLConv2d",
    "bcop": "BCOP",
    "cayley": "CayleyConv",
    "cpl": "CPLConv2d",
    "lot": "LOT",
    "sll": "SLLConv2d",
    "soc": "SOC",
    "sandwich": "SandwichConv",
}
#: lipzoo size -> the paper's model name (``models.simplified_conv_net.DEFAULT_MODELS``)
PAPER_MODELS = {"xs": "ConvNetXS", "s": "ConvNetS", "m": "ConvNetM", "l": "ConvNetL"}
INPUT_DATASETS = ("cifar10", "fashion_mnist")
DEVICE = "cpu"
DEFAULT_OUT = "bench-vs-paper"
SIDES = ("paper", "lipzoo")
CSV_COLUMNS = [
    "layer", "paper_layer", "model", "paper_model", "status", "paper_params", "lipzoo_params",
    "paper_train_s", "lipzoo_train_s", "train_speedup",
    "paper_infer_s", "lipzoo_infer_s", "infer_speedup",
    "paper_infer_first_s", "lipzoo_infer_first_s",
    "batch_size", "input_shape", "warmup", "repeats", "paper_compatible", "error",
]
EINOPS_PATTERN = "b c (w k1) (h k2) -> b (c k1 k2) w h"


class PaperCodeError(Exception):
    """--paper-code is missing, not the paper's code, or cannot be imported."""


class UsageError(Exception):
    """A bad command-line value (unknown layer, size, ...)."""


# --- the paper's code ---------------------------------------------------------------------------
@dataclass
class PaperCode:
    path: Path  # the folder holding models/
    source: str  # what --paper-code named
    commit: str | None
    models_sha256: str  # of every models/**/*.py (path and bytes), so an exported copy is identified too
    models: types.ModuleType
    shims: list[str] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None

    def build(self, layer: str, size: str) -> torch.nn.Module:
        return self.models.get_model(PAPER_MODELS[size], PAPER_LAYERS[layer])


def _git(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(path), *args], capture_output=True, timeout=120, check=False)


def _is_git_dir(path: Path) -> bool:
    """A bare repository (HEAD, objects/, refs/) or a checkout (.git)."""
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def _models_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted((folder / "models").rglob("*.py")):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _einops_stand_in() -> types.ModuleType:
    mod = types.ModuleType("einops")
    mod.__doc__ = "lipzoo bench_vs_paper's stand-in for einops (only the pattern the paper's layers use)"

    def rearrange(x: torch.Tensor, pattern: str, **sizes: int) -> torch.Tensor:
        if " ".join(pattern.split()) != EINOPS_PATTERN or sizes.get("k1") != sizes.get("k2"):
            raise NotImplementedError(f"einops stand-in: only {EINOPS_PATTERN!r} with k1 == k2, got {pattern!r} {sizes}")
        return torch.nn.functional.pixel_unshuffle(x, sizes["k1"])

    mod.rearrange = rearrange
    mod._lipzoo_stand_in = True
    return mod


def load_paper_code(source: str | os.PathLike) -> PaperCode:
    """Import the paper's ``models`` package from a folder (or export it from a git directory first)."""
    path = Path(source).expanduser()
    hint = "give a folder with the paper's models/ package or its git directory (see --help)"
    if not str(source).strip():
        raise PaperCodeError(f"--paper-code is empty; {hint}")
    if not path.exists():
        raise PaperCodeError(f"--paper-code {source} does not exist; {hint}")
    if not path.is_dir():
        raise PaperCodeError(f"--paper-code {source} is not a folder; {hint}")
    commit, tmp = None, None
    if not (path / "models" / "__init__.py").is_file() and _is_git_dir(path):
        head = _git(path, "rev-parse", "HEAD")
        if head.returncode != 0:
            raise PaperCodeError(f"--paper-code {source} is a git directory without a commit: "
                                 f"{head.stderr.decode(errors='replace').strip()[:200]}")
        commit = head.stdout.decode().strip()
        tmp = tempfile.TemporaryDirectory(prefix="lipzoo-paper-code-")
        archive = _git(path, "archive", "--format=tar", "HEAD", "models")
        if archive.returncode != 0:
            tmp.cleanup()
            raise PaperCodeError(f"--paper-code {source}: its commit {commit[:12]} has no models/ folder "
                                 "(is it the paper's repository?)")
        import tarfile

        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp.name, filter="data")
        path = Path(tmp.name)
    elif _is_git_dir(path):
        head = _git(path, "rev-parse", "HEAD")
        commit = head.stdout.decode().strip() or None if head.returncode == 0 else None
    if not (path / "models" / "__init__.py").is_file():
        raise PaperCodeError(f"--paper-code {source} is not the paper's code: it has no models/__init__.py; {hint}")

    shims = []
    stale = [m for m in sys.modules if m == "models" or m.startswith("models.")]
    for name in stale:
        del sys.modules[name]
    if stale:
        shims.append("sys.modules: a module named 'models' was already imported; dropped before the import")
    if "einops" not in sys.modules and importlib.util.find_spec("einops") is None:
        sys.modules["einops"] = _einops_stand_in()
    if getattr(sys.modules.get("einops"), "_lipzoo_stand_in", False):
        shims.append(f"einops: not installed; a stand-in doing only {EINOPS_PATTERN!r} (pixel unshuffle)")
    sys.path.insert(0, str(path))
    importlib.invalidate_caches()
    try:
        try:
            models = importlib.import_module("models")
        except Exception as e:  # noqa: BLE001 - any failure of foreign code is one line
            first = (str(e).splitlines() or [""])[0][:200]
            raise PaperCodeError(f"--paper-code {source}: could not import the paper's code: "
                                 f"{type(e).__name__}: {first}") from None
        missing = [a for a in ("get_model", "layers") if not hasattr(models, a)]
        if missing:
            raise PaperCodeError(f"--paper-code {source} is not the paper's code: its models package has no "
                                 f"{' or '.join(missing)}")
    except PaperCodeError:
        sys.path.remove(str(path))
        for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
            del sys.modules[name]
        if tmp is not None:
            tmp.cleanup()
        raise
    shims.append(f"sys.path: {path} put first so that the paper's top-level package 'models' imports")
    shims.append("lazy parameters: one untimed train-mode forward on 2 images per model before its optimizer "
                 "(the paper's CayleyConv creates its alpha in its first forward)")
    return PaperCode(path=path, source=str(source), commit=commit, models_sha256=_models_hash(path), models=models,
                     shims=shims, _tmp=tmp)


# --- measuring ----------------------------------------------------------------------------------
def _train_step(model: torch.nn.Module, x: torch.Tensor):
    """lipzoo bench's training step: zero_grad, forward, out.sum().backward(), SGD(momentum 0.9) step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).sum().backward()
        opt.step()

    return step, sum(p.numel() for p in params)


def _infer(model: torch.nn.Module, x: torch.Tensor):
    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def _alternate(steps: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """``warmup`` untimed calls of each, then ``repeats`` rounds timing one call of each (order flipped every round)."""
    for _ in range(warmup):
        for side in SIDES:
            steps[side]()
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(repeats):
        for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
            times[side].append(timed(steps[side], DEVICE, 0, 1))
    return times


def measure_layer(paper: PaperCode, layer: str, size: str, x: torch.Tensor, *, warmup: int, repeats: int,
                  paper_compatible: bool = False) -> dict:
    """One layer's row: both models built, trained and run for inference alternately (see the module doc)."""
    name = f"convnet_{size}_{layer}"
    row: dict = {"layer": layer, "paper_layer": PAPER_LAYERS[layer], "model": name, "paper_model": PAPER_MODELS[size],
                 "status": "ok", "batch_size": x.shape[0], "input_shape": "x".join(map(str, x.shape[1:])),
                 "warmup": warmup, "repeats": repeats, "paper_compatible": paper_compatible, "error": None}
    models: dict[str, torch.nn.Module] = {}
    try:
        torch.manual_seed(0)
        try:
            models["paper"] = paper.build(layer, size)
        except Exception as e:
            raise RuntimeError(f"the paper's get_model({PAPER_MODELS[size]!r}, {PAPER_LAYERS[layer]!r}) failed: "
                               f"{type(e).__name__}: {e}") from e
        torch.manual_seed(0)
        kw = {"paper_compatible": True} if paper_compatible else {}
        models["lipzoo"] = create_model(name, in_chans=x.shape[1], **kw)
        for m in models.values():  # shim 3: lazily created parameters exist before the optimizer is built
            with torch.no_grad():
                m.train()(x[:2])
        train, infer = {}, {}
        for side, m in models.items():
            train[side], row[f"{side}_params"] = _train_step(m, x)
        t = _alternate(train, warmup, repeats)
        for side in SIDES:
            row[f"{side}_train_s"], row[f"{side}_train_all_s"] = statistics.median(t[side]), t[side]
        for side, m in models.items():
            m.eval()
            infer[side] = _infer(m, x)
        # the paper's own inference timing runs inside parametrize.cached() (its AOL is a parametrisation)
        with torch.nn.utils.parametrize.cached():
            for side in SIDES:  # the first eval call builds the eval caches
                row[f"{side}_infer_first_s"] = timed(infer[side], DEVICE, 0, 1)
            t = _alternate(infer, max(warmup - 1, 0), repeats)
        for side in SIDES:
            row[f"{side}_infer_s"], row[f"{side}_infer_all_s"] = statistics.median(t[side]), t[side]
        row["train_speedup"] = row["paper_train_s"] / row["lipzoo_train_s"]
        row["infer_speedup"] = row["paper_infer_s"] / row["lipzoo_infer_s"]
    except Exception as e:  # noqa: BLE001 - one layer that fails is a row, not the end of the run
        first = (str(e).splitlines() or [""])[0][:300]
        row["status"], row["error"] = "error", f"{type(e).__name__}: {first}"
    finally:
        models.clear()
        gc.collect()
    return row


# --- output -------------------------------------------------------------------------------------
def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    head = (f"{'layer':<9} {'paper s/step':>12} {'lipzoo s/step':>13} {'train x':>8} "
            f"{'paper s/inf':>11} {'lipzoo s/inf':>12} {'infer x':>8}  status")
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['layer']:<9} {_fmt(r.get('paper_train_s'), '.4f'):>12} {_fmt(r.get('lipzoo_train_s'), '.4f'):>13} "
                   f"{_fmt(r.get('train_speedup'), '.2f'):>8} {_fmt(r.get('paper_infer_s'), '.4f'):>11} "
                   f"{_fmt(r.get('lipzoo_infer_s'), '.4f'):>12} {_fmt(r.get('infer_speedup'), '.2f'):>8}  "
                   f"{r['status']}{': ' + r['error'] if r.get('error') else ''}")
    out.append("speedup = paper time / lipzoo time (> 1: lipzoo is faster)")
    return "\n".join(out)


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_csv(path: Path, rows: list[dict], hw: dict) -> None:
    hwc = {f"hw_{k}": v for k, v in hw.items()}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS + list(hwc), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(v) for k, v in ({c: r.get(c) for c in CSV_COLUMNS} | hwc).items()})
    atomic_write_text(path, buf.getvalue())


def plot_speedups(path: Path, rows: list[dict], title: str) -> None:
    """A grouped bar chart of the train and inference speedups per layer (log scale, 1 = as fast)."""
    from matplotlib.figure import (
        Figure,  # no pyplot: no global state, the Agg canvas writes the PNG
    )

    layers = [r["layer"] for r in rows]
    fig = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(rows)), 4.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.38
    vals = [v for r in rows for v in (r.get("train_speedup"), r.get("infer_speedup")) if v]
    for k, (key, label, color) in enumerate([("train_speedup", "training step", "tab:blue"),
                                             ("infer_speedup", "inference (eval, cached)", "tab:orange")]):
        xs = [i + (k - 0.5) * width for i in range(len(rows))]
        ys = [r.get(key) or float("nan") for r in rows]
        bars = ax.bar(xs, ys, width, label=label, color=color)
        for b, y in zip(bars, ys):
            if not math.isnan(y):
                ax.annotate(f"{y:.2g}x", (b.get_x() + b.get_width() / 2, y), ha="center",
                            va="bottom" if y >= 1 else "top", fontsize=7, xytext=(0, 2 if y >= 1 else -2),
                            textcoords="offset points")
    for i, r in enumerate(rows):
        if r["status"] != "ok":
            ax.annotate(r["status"], (i, 1), ha="center", va="bottom", fontsize=8, color="red")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    if vals:
        lo, hi = min(min(vals), 1.0), max(max(vals), 1.0)
        ax.set_ylim(lo / 1.6, hi * 1.6)
    ax.set_xticks(range(len(rows)), layers)
    ax.set_ylabel("speedup = paper time / lipzoo time")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def save(rows: list[dict], out: Path, *, settings: dict, paper: PaperCode, hw: dict, stamp: str | None = None) -> dict:
    """Write the CSV, JSON and PNG (each atomically) and return their paths."""
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = f"vs-paper-{DEVICE}-{settings['size']}-{settings['dataset']}-{stamp}"
    n = 1
    while (out / f"{base}.json").exists():
        base = f"vs-paper-{DEVICE}-{settings['size']}-{settings['dataset']}-{stamp}-{n}"
        n += 1
    files = {ext: out / f"{base}.{ext}" for ext in ("csv", "json", "png")}
    write_csv(files["csv"], rows, hw)
    title = (f"lipzoo vs the paper's code: ConvNet-{settings['size'].upper()}, batch {settings['batch_size']}, "
             f"{settings['input_shape']} ({settings['dataset']})\n{hw.get('cpu_model')}, {hw.get('cpu_threads')} "
             f"thread(s), torch {hw.get('torch')}, lipzoo {str(hw.get('commit') or '?')[:10]}")
    plot_speedups(files["png"], rows, title)
    record = {
        "kind": "lipzoo bench_vs_paper",
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "hardware": hw,
        "paper_code": {"source": paper.source, "commit": paper.commit, "models_sha256": paper.models_sha256,
                       "paper": "Prach et al., 1-Lipschitz Layers Compared, CVPR 2024"},
        "shims": paper.shims,
        "speedup": "paper time / lipzoo time (> 1: lipzoo is faster)",
        "rows": rows,
        "files": {k: v.name for k, v in files.items()},
    }
    atomic_write_text(files["json"], json.dumps(record, indent=1) + "\n")
    return {k: str(v) for k, v in files.items()}


# --- command line -------------------------------------------------------------------------------
def select_layers(pattern: str) -> list[str]:
    pats = [p.strip().lower() for p in pattern.split(",") if p.strip()] or ["*"]
    chosen = [lid for lid in PAPER_LAYERS if any(fnmatch.fnmatchcase(lid, p) for p in pats)]
    for p in pats:
        if any(ch in p for ch in "*?["):
            continue
        if p in LAYERS and p not in PAPER_LAYERS:
            raise UsageError(f"--layer {p}: lipzoo's {p} has no counterpart in the paper's code "
                             f"(the paper has: {', '.join(PAPER_LAYERS)})")
        if p not in PAPER_LAYERS:
            raise UsageError(f"--layer {p}: unknown layer; expected some of {', '.join(PAPER_LAYERS)}")
    if not chosen:
        raise UsageError(f"--layer {pattern!r} matches no layer of the paper; expected some of {', '.join(PAPER_LAYERS)}")
    return chosen


def parse_layer_counts(text: str | None, option: str, minimum: int) -> dict[str, int]:
    """``"lot=1,sandwich=2"`` -> ``{"lot": 1, "sandwich": 2}`` (each N >= ``minimum``)."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        lid, _, n = part.partition("=")
        lid = lid.strip().lower()
        if lid not in PAPER_LAYERS or not n.strip().isdigit() or int(n) < minimum:
            raise UsageError(f"{option} {part!r}: expected LAYER=N with N >= {minimum} and LAYER one of "
                             f"{', '.join(PAPER_LAYERS)}")
        out[lid] = int(n)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench_vs_paper.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper-code", required=True, metavar="PATH",
                    help="folder with the paper's models/ package, or its git directory (clone or bare mirror)")
    ap.add_argument("--layer", default="*",
                    help=f"comma-separated lipzoo layer ids, wildcards allowed (default: all of {','.join(PAPER_LAYERS)})")
    ap.add_argument("--size", default="xs", choices=list(PAPER_MODELS), help="ConvNet size (default xs)")
    ap.add_argument("--dataset", default="cifar10", choices=INPUT_DATASETS,
                    help="input shape: cifar10 3x32x32 (the paper's, default) or fashion_mnist 1x32x32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of each model before the timed ones (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per layer (default 3); the median is reported")
    ap.add_argument("--layer-repeats", default=None, metavar="LAYER=N,...",
                    help="fewer (or more) rounds for some layers, e.g. lot=1,sandwich=2")
    ap.add_argument("--layer-warmup", default=None, metavar="LAYER=N,...",
                    help="other warm-up counts for some layers, e.g. lot=0 (a slow layer)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. OMP_NUM_THREADS)")
    ap.add_argument("--paper-compatible", action="store_true",
                    help="build lipzoo's layers with paper_compatible=True (the paper's exact function)")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the CSV, JSON and PNG (default ./{DEFAULT_OUT})")
    ap.add_argument("--json", action="store_true", help="print the JSON record instead of the table")
    return ap


def _load_average() -> float | None:
    """The 1-minute load average: how busy the shared machine was (the timings are wall-clock)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(args: argparse.Namespace) -> dict:
    """Measure every chosen layer and write the files; returns the JSON record (plus ``files``)."""
    if args.batch_size < 2 or args.repeats < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        raise UsageError(f"--batch-size must be >= 2, --repeats and --threads >= 1 and --warmup >= 0 (got "
                         f"{args.batch_size}, {args.repeats}, {args.threads}, {args.warmup})")
    layers = select_layers(args.layer)
    per_layer = parse_layer_counts(args.layer_repeats, "--layer-repeats", 1)
    per_layer_warmup = parse_layer_counts(args.layer_warmup, "--layer-warmup", 0)
    paper = load_paper_code(args.paper_code)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        info = DATASETS[args.dataset]
        torch.manual_seed(0)
        x = torch.rand(args.batch_size, info.in_chans, info.input_size, info.input_size)
        rows, load_start = [], _load_average()
        for lid in layers:
            t0 = time.perf_counter()
            rows.append(measure_layer(paper, lid, args.size, x, warmup=per_layer_warmup.get(lid, args.warmup),
                                      repeats=per_layer.get(lid, args.repeats), paper_compatible=args.paper_compatible))
            rows[-1]["wall_s"] = time.perf_counter() - t0
            if not args.json:
                r = rows[-1]
                print(f"{lid}: train x{_fmt(r.get('train_speedup'), '.2f')}, inference x{_fmt(r.get('infer_speedup'), '.2f')}"
                      f" ({r['wall_s']:.0f} s){' ' + r['error'] if r.get('error') else ''}", file=sys.stderr, flush=True)
        settings = {"size": args.size, "dataset": args.dataset, "batch_size": args.batch_size,
                    "input_shape": "x".join(map(str, x.shape[1:])), "warmup": args.warmup, "repeats": args.repeats,
                    "layer_repeats": per_layer, "layer_warmup": per_layer_warmup,
                    "load_average_1min": {"start": load_start, "end": _load_average()},
                    "paper_compatible": args.paper_compatible, "device": DEVICE,
                    "threads": torch.get_num_threads(),
                    "train_step": "zero_grad + forward + out.sum().backward() + SGD(lr 1e-3, momentum 0.9) step",
                    "inference": "eval mode, torch.no_grad(), inside torch.nn.utils.parametrize.cached(), "
                                 "eval caches warm (first call reported apart)"}
        hw = hardware_fingerprint(DEVICE)
        files = save(rows, Path(args.out), settings=settings, paper=paper, hw=hw)
        return {"settings": settings, "hardware": hw, "rows": rows, "files": files, "shims": paper.shims,
                "paper_code": {"source": paper.source, "commit": paper.commit, "models_sha256": paper.models_sha256}}
    finally:
        if str(paper.path) in sys.path:
            sys.path.remove(str(paper.path))
        if paper._tmp is not None:
            paper._tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        record = run(args)
    except (PaperCodeError, UsageError) as e:
        print(f"bench_vs_paper.py: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        print(format_table(record["rows"]))
        print(f"hardware: {record['hardware'].get('cpu_model')}, {record['hardware'].get('cpu_threads')} thread(s), "
              f"torch {record['hardware'].get('torch')}")
        for f in record["files"].values():
            print(f"wrote {f}")
    return 0 if all(r["status"] == "ok" for r in record["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
