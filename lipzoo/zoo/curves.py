"""Learning curves: one training run's (drawn onto its card by ``lipzoo publish``), and the zoo's in
one picture (``lipzoo plot``): each bundled model's validation accuracy against the hours it
trained, so the layers' convergence per CPU hour is compared from the runs' own records.

Everything is read from the result files the trainer wrote (``metrics.jsonl``: one record per
epoch with its wall time); nothing is typed in.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from ..layers import LAYERS
from ..radius import Radius
from ..registry import ARCHITECTURES, PRETRAINED, PretrainedEntry, certifies
from .plots import CERT_EPS, PlotError, _colors, _figure, _save
from .recipe import Recipe, RecipeError

__all__ = ["read_epochs", "learning_curve", "zoo_curves", "run_label", "runs_curves"]


# --- learning curve of one training run ---------------------------------------------------------
def read_epochs(path: str | os.PathLike) -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl`` (one JSON object a line; blank lines skipped).

    A line that is not a JSON object raises :class:`PlotError` naming the file and the line.
    """
    path = Path(path)
    out: list[dict] = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlotError(f"{path}:{i} is not valid JSON ({e}); expected one epoch record a line") from None
        if not isinstance(rec, dict):
            raise PlotError(f"{path}:{i} is a {type(rec).__name__}; expected one JSON object (an epoch record) a line")
        out.append(rec)
    return out


def learning_curve(epochs: list[dict], out: str | os.PathLike, *, title: str = "", certified: bool = True,
                   eps: float = CERT_EPS) -> Path:
    """Draw a run's learning curve from its epoch records (:func:`read_epochs`) into the PNG ``out``.

    Left: training loss (and validation loss where recorded) per epoch. Right: training and
    validation clean accuracy and, with ``certified``, training and validation certified accuracy
    at ``eps`` (``train_certified`` / ``val_certified``, which the trainer computes with L = 1;
    pass ``certified=False`` for an unconstrained layer, whose certificates mean nothing).
    A quantity missing from every record is left out; the file is written atomically. Raises
    :class:`PlotError` when there is no epoch or no plottable quantity.
    """
    if not epochs:
        raise PlotError("no epoch records to draw a learning curve from (empty metrics.jsonl?)")
    key = Radius(eps).key

    def series(get) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for i, rec in enumerate(epochs):
            v = get(rec)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                xs.append(int(rec.get("epoch", i)) + 1)
                ys.append(float(v))
        return xs, ys

    def cert(name: str):
        return lambda r: (r.get(name) or {}).get(key) if isinstance(r.get(name), dict) else None

    losses = [("train loss", series(lambda r: r.get("train_loss"))), ("val loss", series(lambda r: r.get("val_loss")))]
    accs = [("train clean", series(lambda r: r.get("train_accuracy"))),
            ("val clean", series(lambda r: r.get("val_accuracy")))]
    if certified:
        label = f"certified {Radius(eps).label} (L = 1)"
        accs += [(f"train {label}", series(cert("train_certified"))), (f"val {label}", series(cert("val_certified")))]
    if not any(s[0] for _, s in losses + accs):
        raise PlotError("the epoch records hold none of train_loss, val_loss, train_accuracy, val_accuracy")
    fig = _figure(figsize=(10, 3.8))
    for ax, group, ylabel in ((fig.add_subplot(1, 2, 1), losses, "loss"),
                              (fig.add_subplot(1, 2, 2), accs, "accuracy")):
        for name, (xs, ys) in group:
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name,
                        linestyle="--" if name.startswith("val") else "-")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if any(s[0] for _, s in group):
            ax.legend(fontsize=8)
        if ylabel == "accuracy":
            ax.set_ylim(0, 1)
    if title:
        fig.suptitle(title)
    return _save(fig, Path(out))


# --- the zoo's learning curves in one picture ---------------------------------------------------
def _hours_and_values(epochs: list[dict], get) -> tuple[list[float], list[float]]:
    """Cumulative training hours at the end of each epoch, and ``get(record)`` there (finite only)."""
    xs, ys, hours = [], [], 0.0
    for rec in epochs:
        t = rec.get("epoch_time_s")
        if not isinstance(t, (int, float)) or not math.isfinite(t):
            return [], []  # a record without its wall time: no time axis for this run
        hours += t / 3600
        v = get(rec)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(hours)
            ys.append(float(v))
    return xs, ys


def _quality_lines(entries: list[PretrainedEntry]) -> tuple[float | None, float | None]:
    """The 1-Lipschitz entries' clean and certified quality lines when their recipes share them."""
    clean, cert = set(), set()
    for e in entries:
        if not certifies(e) or not e.recipe or e.folder is None:
            continue
        try:  # a bundled folder is <checkout>/cards/<name>; its recipe path is relative to the checkout
            r = Recipe.load(Path(e.folder).parent.parent / e.recipe)
        except (OSError, RecipeError):
            continue
        clean.add(r.publish_clean_floor)
        cert.add(r.publish_floor)
    return (clean.pop() if len(clean) == 1 else None), (cert.pop() if len(cert) == 1 else None)


def zoo_curves(entries: Iterable[PretrainedEntry] | None, out: str | os.PathLike, *, dataset: str,
               eps: float = CERT_EPS) -> dict:
    """Draw every ``dataset`` entry's validation accuracy (left: clean; right: certified at ``eps``,
    1-Lipschitz models only) against its cumulative training hours, from the ``metrics.jsonl`` in
    its folder, into the PNG ``out`` (``entries=None``: the registry's bundled models); the legend
    gives each model's test accuracies and marks the undertrained ones (dotted). Returns what was
    drawn; :class:`PlotError` when no entry of ``dataset`` has per-epoch records with wall times."""
    key = Radius(eps).key
    pool = PRETRAINED.values() if entries is None else entries
    chosen = sorted((e for e in pool if e.dataset == dataset and e.folder is not None
                     and (Path(e.folder) / "metrics.jsonl").is_file()), key=lambda e: e.name)
    runs = []
    for e in chosen:
        epochs = read_epochs(Path(e.folder) / "metrics.jsonl")
        clean = _hours_and_values(epochs, lambda r: r.get("val_accuracy"))
        cert = (_hours_and_values(epochs, lambda r: (r.get("val_certified") or {}).get(key)) if certifies(e)
                else ([], []))
        if clean[0]:
            runs.append((e, clean, cert))
    if not runs:
        raise PlotError(f"no {dataset} model with per-epoch records and wall times (metrics.jsonl) to draw")
    colors = _colors([e.name for e, _, _ in runs])
    hws = [e.timing.get("hardware") if isinstance(e.timing.get("hardware"), dict) else {} for e, _, _ in runs]
    machines = sorted({str(hw.get("gpu") or hw.get("cpu_model") or "hardware not recorded") for hw in hws})
    threads = sorted({int(hw["cpu_threads"]) for hw in hws if isinstance(hw.get("cpu_threads"), int)})
    clean_line, cert_line = _quality_lines([e for e, _, _ in runs])
    fig = _figure(figsize=(11, 4.2))
    axes = (fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2))
    for e, clean, cert in runs:
        m = e.metrics
        test = f"{100 * m['clean_accuracy']:.2f}%" if isinstance(m.get("clean_accuracy"), float) else "n/a"
        test_cert = (m.get("certified_accuracy") or {}).get(key)
        label = (f"{LAYERS[ARCHITECTURES[e.architecture].layer].name}: test {test}"
                 + (f" / {100 * test_cert:.2f}%" if certifies(e) and test_cert is not None else "")
                 + (f" ({e.status})" if e.status else ""))
        style = dict(color=colors[e.name], linestyle=":" if e.status else "-", marker="o", markersize=2.5)
        axes[0].plot(*clean, label=label, **style)
        if cert[0]:
            axes[1].plot(*cert, **style)
    for ax, line, what in ((axes[0], clean_line, "validation clean accuracy"),
                           (axes[1], cert_line, f"validation certified accuracy at {Radius(eps).label}")):
        if line is not None:
            ax.axhline(line, color="black", linewidth=0.8, linestyle="--")
            ax.annotate("quality line", (0, line), xycoords=("axes fraction", "data"), fontsize=7,
                        xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel("training time (hours)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=3, title="model: test clean / certified accuracy (lipzoo evaluate)", title_fontsize=7)
    fig.suptitle(f"{dataset}: validation accuracy after each epoch against training time on "
                 f"{', '.join(machines)}" + (f" ({'/'.join(map(str, threads))} thread(s) per run)" if threads else ""),
                 fontsize=9)
    path = _save(fig, Path(out))
    return {"path": str(path), "dataset": dataset, "models": [e.name for e, _, _ in runs],
            "skipped": [e.name for e in chosen if e.name not in {r[0].name for r in runs}]}


# --- several training runs side by side ---------------------------------------------------------
def _options_text(options: dict) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""


def run_label(run: str | os.PathLike) -> str:
    """``<architecture> (<layer options>) <epochs> ep, lr <lr>`` from a run folder's ``recipe.yaml``;
    for a published model's folder (``config.json`` + ``run.json``), ``<name> (<layer options>)
    <epochs> ep, published``."""
    folder = Path(run)
    if (folder / "recipe.yaml").is_file():
        r = Recipe.load(folder / "recipe.yaml")
        return f"{r.architecture}{_options_text(r.layer_options)} {r.epochs} ep, lr {r.lr:.4g}"
    config = json.loads((folder / "config.json").read_text())
    done = json.loads((folder / "run.json").read_text()).get("epochs_done", "?")
    return f"{config['name']}{_options_text(config.get('layer_kwargs') or {})} {done} ep, published"


def runs_curves(runs: list[str | os.PathLike], out: str | os.PathLike, *, eps: float = CERT_EPS,
                title: str = "") -> dict:
    """Draw the validation accuracy of several run (or published model) folders after each epoch (left: clean; right:
    certified at ``eps`` with L = 1) into the PNG ``out``, each labelled by :func:`run_label`, to
    compare recipes of one layer (e.g. a layer option, or the number of epochs). Finished or not:
    every recorded epoch is drawn. Returns what was drawn (per run: label and its epoch records'
    validation numbers); :class:`PlotError` when a folder has no ``recipe.yaml`` or no epoch yet."""
    key = Radius(eps).key
    drawn = []
    for run in runs:
        folder = Path(run)
        is_run = (folder / "recipe.yaml").is_file() or ((folder / "config.json").is_file()
                                                         and (folder / "run.json").is_file())
        if not is_run or not (folder / "metrics.jsonl").is_file():
            raise PlotError(f"{folder} is neither a run folder (recipe.yaml, metrics.jsonl) nor a published model's "
                            "(config.json, run.json, metrics.jsonl); expected a lipzoo train --out or a cards/ folder")
        epochs = read_epochs(folder / "metrics.jsonl")
        if not epochs:
            raise PlotError(f"{folder}/metrics.jsonl has no epoch yet; draw it after its first epoch")
        drawn.append({"run": str(folder), "label": run_label(folder),
                      "epochs": [int(r.get("epoch", i)) + 1 for i, r in enumerate(epochs)],
                      "val_accuracy": [r.get("val_accuracy") for r in epochs],
                      "val_certified": [(r.get("val_certified") or {}).get(key) for r in epochs]})
    colors = _colors([d["run"] for d in drawn])
    fig = _figure(figsize=(11, 4.2))
    axes = (fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2))
    for d in drawn:
        for ax, ys in ((axes[0], d["val_accuracy"]), (axes[1], d["val_certified"])):
            pts = [(x, y) for x, y in zip(d["epochs"], ys) if isinstance(y, (int, float)) and math.isfinite(y)]
            if pts:
                ax.plot(*zip(*pts), color=colors[d["run"]], marker="o", markersize=3, label=d["label"])
    for ax, what in ((axes[0], "validation clean accuracy"),
                     (axes[1], f"validation certified accuracy at {Radius(eps).label} (L = 1)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=2, title="run: architecture (layer options) epochs, lr", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    path = _save(fig, Path(out))
    return {"path": str(path), "runs": drawn}

