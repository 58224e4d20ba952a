"""The comparison pictures, drawn from result files only (never from typed-in numbers).

- **Radar chart** (the paper's, one polygon per layer at one size): accuracy, certified accuracy
  at 36/255, training speed, inference speed, training memory and inference memory. Each axis is
  a score from 1 (worst of the layers shown) to 5 (best), scaled across the layers: accuracies
  linearly, speeds and memories on a log scale (they span orders of magnitude); lower memory
  scores higher. The ``standard`` baseline is not drawn (it has no certificate).
- **Pareto chart**: certified accuracy at 36/255 against training seconds per epoch of the data
  set, one point per layer x size, with the Pareto front (no other point is both faster and
  more robust).

Speeds, memories and epoch times come from a ``lipzoo bench`` results file
(``<folder>/benchmark-*.csv``; ``lipzoo-results/`` by default). Accuracies come from the
registry's pretrained entries
(``metrics.clean_accuracy`` and ``metrics.certified_accuracy``, certified with the audited
bound) and, for architectures without one, from finished training runs (``runs/*/recipe.yaml``
+ the last line of ``runs/*/metrics.jsonl``, written by :mod:`lipzoo.zoo.training`; the newest
finished run of an architecture and data set wins; unfinished runs are ignored). Where no
accuracy is measured yet the charts say so: the radar's accuracy axes read "not measured yet"
and have gaps, and the Pareto chart puts such points in a "not measured yet" band.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .._io import atomic_write_bytes
from ..data import DATASETS
from ..radius import Radius
from ..registry import PRETRAINED, get_architecture
from .bench_results import BASELINE, DEFAULT_OUT, EPOCH_PREFIX, latest_results, read_results
from .recipe import Recipe, RecipeError

__all__ = ["Accuracy", "PlotError", "collect_accuracies", "radar_chart", "pareto_chart", "make_plots", "CERT_EPS"]

CERT_RADIUS = Radius.of_steps(36)  #: the radius of the pictures' certified accuracies
CERT_EPS = CERT_RADIUS.value
NOT_MEASURED = "not measured yet"
SIZE_ORDER = ("xs", "s", "m", "l")
SIZE_MARKERS = {"xs": "o", "s": "s", "m": "D", "l": "^"}


class PlotError(ValueError):
    """The result files cannot give the asked-for chart (no rows, wrong data set, ...)."""


@dataclass(frozen=True)
class Accuracy:
    accuracy: float | None
    certified: float | None  # at CERT_EPS
    source: str


def collect_accuracies(runs_dir: str | os.PathLike | None = "runs", *, eps: float = CERT_EPS,
                       registry: bool = True) -> tuple[dict[tuple[str, str], Accuracy], list[str]]:
    """``{(architecture, dataset): Accuracy}`` from the registry and finished runs, and notes on
    what was skipped (unfinished or unreadable runs, entries marked undertrained: a model below
    its quality line says nothing about what its layer can reach)."""
    key, found, notes = Radius(eps).key, {}, []
    runs: list[tuple[float, Path, Recipe, dict]] = []
    for recipe_path in sorted(Path(runs_dir).glob("*/recipe.yaml")) if runs_dir and Path(runs_dir).is_dir() else []:
        run = recipe_path.parent
        try:
            recipe = Recipe.load(recipe_path)
            lines = [ln for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
            last = json.loads(lines[-1]) if lines else None
        except (OSError, RecipeError, KeyError, ValueError) as e:
            notes.append(f"skipped run {run}: {type(e).__name__}: {e}")
            continue
        if last is None or int(last.get("epoch", -1)) + 1 < recipe.epochs:
            done = 0 if last is None else int(last.get("epoch", -1)) + 1
            notes.append(f"skipped unfinished run {run} ({done}/{recipe.epochs} epochs)")
            continue
        runs.append(((run / "metrics.jsonl").stat().st_mtime, run, recipe, last))
    for _, run, recipe, last in sorted(runs, key=lambda t: t[0]):  # the newest run wins
        cert = (last.get("val_certified") or {}).get(key)
        found[(recipe.architecture, recipe.dataset)] = Accuracy(last.get("val_accuracy"), cert, f"run {run}")
    if registry:
        for entry in PRETRAINED.values():
            if entry.status == "undertrained":  # below its quality line: not a property of its layer
                notes.append(f"skipped undertrained entry {entry.name}")
                continue
            m = entry.metrics
            cert = (m.get("certified_accuracy") or {}).get(key)
            if m.get("clean_accuracy") is not None or cert is not None:
                found[(entry.architecture, entry.dataset)] = Accuracy(m.get("clean_accuracy"), cert, f"registry {entry.name}")
    return found, notes


# --- helpers ----------------------------------------------------------------------------------
def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _figure(**kw):
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas is used for PNG

    return Figure(**kw)


def _hardware_line(rows: list[dict], source: Path) -> str:
    r = rows[0]
    hw = r.get("hw_gpu") or r.get("hw_cpu_model") or r.get("hw_cpu") or "?"
    return (f"from {source.name}: {r.get('device')}, {hw}, batch {r.get('batch_size')}, "
            f"torch {r.get('hw_torch', '?')}, commit {str(r.get('hw_commit') or '?')[:10]}")


def _scores(values: list[float | None], higher_is_better: bool, log: bool) -> list[float]:
    """1 (worst) .. 5 (best) across the finite values; NaN where a value is missing."""
    def tr(v: float) -> float:
        return math.log(v) if log else v

    ok = [tr(v) for v in values if v is not None and (v > 0 or not log)]
    if not ok:
        return [math.nan] * len(values)
    lo, hi = min(ok), max(ok)
    out = []
    for v in values:
        if v is None or (log and v <= 0):
            out.append(math.nan)
            continue
        t = 0.5 if hi == lo else (tr(v) - lo) / (hi - lo)
        out.append(1 + 4 * (t if higher_is_better else 1 - t))
    return out


def _ok_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get("layer") != BASELINE]


def _colors(layers: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(layers) <= 10 else "tab20"]  # distinct colours for up to 20
    return {lid: cmap(i % cmap.N) for i, lid in enumerate(layers)}


def _default_dataset(accs: dict[tuple[str, str], Accuracy], archs: set[str], input_size: int) -> str:
    counts: dict[str, int] = {}
    for (arch, ds), a in accs.items():
        if arch in archs and a.certified is not None:
            counts[ds] = counts.get(ds, 0) + 1
    if counts:
        return max(counts, key=lambda d: (counts[d], d == "cifar10"))
    return "cifar10" if input_size == 32 else "tiny_imagenet"  # the paper's data sets


# --- the charts -------------------------------------------------------------------------------
RADAR_AXES = (  # (label, bench column or accuracy field, higher is better, log scale)
    ("accuracy", "accuracy", True, False),
    (f"certified accuracy\n({CERT_RADIUS.label})", "certified", True, False),
    ("training speed", "train_images_per_s", True, True),
    ("inference speed", "infer_images_per_s", True, True),
    ("training memory", "train_peak_mib", False, True),
    ("inference memory", "infer_peak_mib", False, True),
)


def radar_chart(rows: list[dict], accs: dict[tuple[str, str], Accuracy], out: str | os.PathLike, *,
                size: str, dataset: str, source: Path) -> dict:
    """The radar chart of every layer at ``size``; returns what it drew (layers, missing axes)."""
    import numpy as np

    sel = [r for r in _ok_rows(rows) if r["size"] == size]
    if not sel:
        sizes = sorted({r["size"] for r in _ok_rows(rows)}, key=SIZE_ORDER.index)
        raise PlotError(f"no measured non-standard layer at size {size!r} in {source}; sizes there: {sizes or 'none'}")
    layers = [r["layer"] for r in sel]
    acc = [accs.get((r["model"], dataset)) for r in sel]
    values = {"accuracy": [a.accuracy if a else None for a in acc],
              "certified": [a.certified if a else None for a in acc]}
    values.update({col: [r.get(col) for r in sel] for _, col, _, log in RADAR_AXES if col not in values})
    scores = {col: _scores(values[col], hib, log) for _, col, hib, log in RADAR_AXES}
    labels, missing = [], {}
    for label, col, _, _ in RADAR_AXES:
        n_missing = sum(v is None for v in values[col])
        if n_missing:
            missing[col] = [lid for lid, v in zip(layers, values[col]) if v is None]
            label += f"\n({NOT_MEASURED})" if n_missing == len(sel) else f"\n({NOT_MEASURED}: {n_missing}/{len(sel)})"
        labels.append(label)

    n = len(RADAR_AXES)
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    fig = _figure(figsize=(8, 8))
    ax = fig.add_subplot(projection="polar")
    colors = _colors(layers)
    for i, lid in enumerate(layers):
        s = np.array([scores[col][i] for _, col, _, _ in RADAR_AXES] + [scores[RADAR_AXES[0][1]][i]])
        a = np.append(angles, angles[0])
        ax.plot(a, s, "-o", color=colors[lid], label=lid, linewidth=1.8, markersize=4)  # NaN leaves a gap
        if np.isfinite(s).all():
            ax.fill(a, s, color=colors[lid], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_ylim(0, 5.2)
    ax.set_yticks([1, 2, 3, 4, 5])
    ax.set_yticklabels(["1", "2", "3", "4", "5"], fontsize=7, color="grey")
    ax.legend(loc="upper right", bbox_to_anchor=(1.28, 1.1), fontsize=9)
    title = f"ConvNet-{size.upper()}: scores 1 (worst) to 5 (best) across layers"
    foot = [_hardware_line(sel, source), f"accuracies: {dataset} test set"]
    if "certified" in missing:
        foot.append(f"certified accuracy: {NOT_MEASURED} for {', '.join(missing['certified'])}")
    ax.set_title(title, pad=24, fontsize=12)
    fig.text(0.5, 0.01, "\n".join(foot), ha="center", va="bottom", fontsize=8, color="dimgrey")
    fig.subplots_adjust(bottom=0.14)
    path = _save(fig, Path(out))
    return {"path": str(path), "size": size, "dataset": dataset, "layers": layers, "axes": labels,
            "not_measured": missing}


def pareto_chart(rows: list[dict], accs: dict[tuple[str, str], Accuracy], out: str | os.PathLike, *,
                 dataset: str, source: Path) -> dict:
    """Certified accuracy at 36/255 against training seconds per epoch of ``dataset``."""
    col = EPOCH_PREFIX + dataset
    sel = [r for r in _ok_rows(rows) if r.get(col) is not None]
    if not sel:
        have = [d for d in DATASETS if any(r.get(EPOCH_PREFIX + d) is not None for r in rows)]
        raise PlotError(f"{source} has no epoch times for {dataset!r} (its models' input size differs); "
                        f"data sets with epoch times there: {have or 'none'}")
    layers = list(dict.fromkeys(r["layer"] for r in sel))
    colors = _colors(layers)
    fig = _figure(figsize=(9, 6))
    ax = fig.add_subplot()
    band = -0.1
    measured, unmeasured = [], []
    for r in sel:
        a = accs.get((r["model"], dataset))
        y = a.certified if a and a.certified is not None else None
        (measured if y is not None else unmeasured).append((r[col], y, r))
        ax.scatter(r[col], band if y is None else y, color=colors[r["layer"]], marker=SIZE_MARKERS.get(r["size"], "o"),
                   s=60, facecolors="none" if y is None else colors[r["layer"]], zorder=3)
        ax.annotate(r["size"], (r[col], band if y is None else y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = []
    for x, y, r in sorted(measured, key=lambda t: (t[0], -t[1])):
        if not front or y > front[-1][1]:
            front.append((x, y, r))
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=1, alpha=0.6,
                label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(f"training time per epoch of {dataset} (s, log scale; batch {sel[0].get('batch_size')})")
    ax.set_ylabel(f"certified accuracy at {CERT_RADIUS.label}")
    ax.set_ylim(band - 0.06, 1.0)
    ax.axhline(band / 2, color="grey", linestyle=":", linewidth=1)
    ticks = [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ax.set_yticks([band] + ticks)
    ax.set_yticklabels([NOT_MEASURED] + [f"{t:.0%}" for t in ticks])
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[lid], marker="o", linestyle="", label=lid) for lid in layers]
    sizes = [s for s in SIZE_ORDER if any(r["size"] == s for r in sel)]
    handles += [Line2D([], [], color="black", marker=SIZE_MARKERS[s], linestyle="", markerfacecolor="none",
                       label=f"ConvNet-{s.upper()}") for s in sizes]
    if len(front) > 1:
        handles.append(Line2D([], [], color="black", alpha=0.6, label="Pareto front"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(True, which="both", alpha=0.2)
    title = f"Certified accuracy vs training time per epoch ({dataset})"
    if not measured:
        title += f"\ncertified accuracy: {NOT_MEASURED} (no finished runs or registry metrics)"
    ax.set_title(title, fontsize=11)
    fig.text(0.5, -0.02, _hardware_line(sel, source), ha="center", va="top", fontsize=8, color="dimgrey")
    path = _save(fig, Path(out))
    return {"path": str(path), "dataset": dataset, "title": title, "points": len(sel), "measured": len(measured),
            "not_measured": [r["model"] for _, _, r in unmeasured],
            "pareto_front": [r["model"] for _, _, r in front]}


def _check_coverage(rows: list[dict], layers: list[str], sizes: list[str], source: Path) -> None:
    """Raise :class:`PlotError` naming the claimed layers that have no row at a drawn size.

    A row of any status counts (``oom`` and ``too_slow`` are measured outcomes, reported by
    the charts); a layer that was never benchmarked does not.
    """
    for size in sizes:
        have = {r["layer"] for r in rows if r["size"] == size}
        missing = [lid for lid in layers if lid not in have]
        if missing:
            raise PlotError(
                f"{source} covers {len(layers) - len(missing)} of the {len(layers)} layers to compare at size "
                f"{size!r}; missing: {', '.join(missing)}. Benchmark them (lipzoo bench --layer "
                f"{','.join(missing)} --size {size}) or compare fewer layers (lipzoo plot --layer ...)")


def make_plots(bench: str | os.PathLike | None = None, *, results_dir: str | os.PathLike = DEFAULT_OUT,
               runs_dir: str | os.PathLike | None = "runs", out_dir: str | os.PathLike | None = None,
               size: str | None = None, dataset: str | None = None, registry: bool = True,
               layers: list[str] | tuple[str, ...] | None = None) -> dict:
    """Draw both charts from ``bench`` (default: the newest results file in ``results_dir``,
    by default :data:`lipzoo.zoo.bench.DEFAULT_OUT`, not the checkout's committed ``results/``).

    ``layers``: the layer ids the charts compare. Only those are drawn, and every one of them must
    have a row at each size drawn (the radar's size; every size of the Pareto chart), else
    :class:`PlotError` names the missing ones: a chart never claims a comparison its file does not
    cover. ``None``: the non-standard layers the file holds.

    Writes ``radar-<device>-<size>.png`` and ``pareto-<device>-<dataset>.png`` into ``out_dir``
    (default ``results_dir``) and returns what was drawn, including what is not measured yet.
    """
    source = Path(bench) if bench else latest_results(results_dir)
    rows = read_results(source)
    if layers is not None:
        claimed = [lid for lid in dict.fromkeys(layers) if lid != BASELINE]
        if not claimed:
            raise PlotError("no layer to compare: give at least one layer other than the standard baseline")
        rows = [r for r in rows if r.get("layer") in claimed or r.get("layer") == BASELINE]
        drawn = {r["size"] for r in rows if r.get("layer") != BASELINE} | ({size} if size else set())
        _check_coverage(rows, claimed, sorted(drawn, key=SIZE_ORDER.index) or ["xs"], source)
    ok = _ok_rows(rows)
    if not ok:
        raise PlotError(f"{source} holds no successfully measured non-standard layer to draw")
    if dataset is not None and dataset not in DATASETS:
        raise PlotError(f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}")
    sizes = [s for s in SIZE_ORDER if any(r["size"] == s for r in ok)]
    if size is None:  # the size with the most measured layers, the larger on a tie
        size = max(sizes, key=lambda s: (sum(r["size"] == s for r in ok), SIZE_ORDER.index(s)))
    accs, notes = collect_accuracies(runs_dir, registry=registry)
    input_size = get_architecture(ok[0]["model"]).input_size
    dataset = dataset or _default_dataset(accs, {r["model"] for r in ok}, input_size)
    device = str(ok[0].get("device") or "cpu").split(":")[0]
    out = Path(out_dir or results_dir)
    radar = radar_chart(rows, accs, out / f"radar-{device}-{size}.png", size=size, dataset=dataset, source=source)
    pareto = pareto_chart(rows, accs, out / f"pareto-{device}-{dataset}.png", dataset=dataset, source=source)
    return {"bench": str(source), "radar": radar, "pareto": pareto, "notes": notes}
