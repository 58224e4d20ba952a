"""Reproducibility of a published model: a second run of its committed recipe, compared with it.

A zoo entry is reproducible when its committed recipe alone, trained again into a fresh run
(``lipzoo train <recipe> --out RUN``, or ``scripts/train_zoo.py --repro <layer>``) and evaluated
(``lipzoo evaluate RUN``), gives the same test accuracy as the published weights within
:data:`TOLERANCE` (half a point), on the same kind of CPU. :func:`record_reproduction` checks
that the run really is such a retrain (same training fields as the committed recipe, a different
run from the published one), compares its test-split numbers with the entry's and records the
comparison in the entry's ``config.json`` (``provenance.reproduction``); the card shows it. The
published weights are not touched.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..hub import write_config
from ..registry import CARDS_DIR, PretrainedEntry, RegistryError
from .cards import write_card
from .evaluation import EVAL_FILENAME, RunError, recipe_dict
from .publish import finished_records
from .training import Recipe, RecipeError

__all__ = ["TOLERANCE", "IGNORED_FIELDS", "record_reproduction"]

#: the largest accepted difference of test accuracies (clean and certified), as a fraction
TOLERANCE = 0.005
#: recipe fields that describe a run rather than steer it (notes, the budget record, the publish gate)
IGNORED_FIELDS = ("notes", "budget", "publish_floor", "publish_clean_floor")


def _training_fields(recipe: Recipe) -> dict:
    return {k: v for k, v in asdict(recipe).items() if k not in IGNORED_FIELDS}


def _same_tensors(a: Path, b: Path) -> bool:
    """Whether two safetensors files hold the same tensors bit for bit (their metadata may differ)."""
    if not (a.is_file() and b.is_file()):
        return False
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)


def _cpu(hardware: dict | str) -> str | None:
    """The CPU model of a hardware record (older records name only the architecture)."""
    if isinstance(hardware, str):
        return hardware or None
    return hardware.get("cpu_model") or hardware.get("cpu")


def _entry(root: Path, name: str) -> PretrainedEntry:
    folder = root / name
    if not (folder / "config.json").is_file():
        raise RunError(f"{folder} holds no published model: publish the original run first "
                       f"(`lipzoo publish`), then record its retrain as a reproduction")
    try:
        return PretrainedEntry.from_folder(folder)
    except RegistryError as e:
        raise RunError(str(e)) from None


def _recipe_file(entry: PretrainedEntry, root: Path, recipe_path: str | os.PathLike | None) -> Path:
    if recipe_path is not None:
        return Path(recipe_path)
    if not entry.recipe:
        raise RunError(f"{entry.name} names no recipe: it was not trained from one, so it has no reproduction")
    return root.parent / entry.recipe


def _check_is_a_retrain(run: Path, recipe: Recipe, committed: Recipe, entry: PretrainedEntry) -> None:
    ours, theirs = _training_fields(recipe), _training_fields(committed)
    changed = sorted(k for k in ours if ours[k] != theirs.get(k))
    if changed:
        raise RunError(f"{run / 'recipe.yaml'} differs from the committed recipe in {', '.join(changed)}; "
                       "a reproduction trains the committed recipe unchanged")
    published_run = entry.folder / "run.json" if entry.folder else None
    if published_run and published_run.is_file() and published_run.read_bytes() == (run / "run.json").read_bytes():
        raise RunError(f"{run} is the published run itself, not a retrain; train the recipe again into a fresh folder")


def _differences(ev_cert: dict, metrics: dict) -> dict[str, float]:
    """Retrain minus published, in accuracy fractions: ``clean`` and each shared certified radius."""
    diffs = {"clean": float(ev_cert["clean_accuracy"]) - float(metrics["clean_accuracy"])}
    published = metrics.get("certified_accuracy") or {}
    for eps, acc in (ev_cert.get("certified_accuracy") or {}).items():
        if eps in published:
            diffs[eps] = float(acc) - float(published[eps])
    return diffs


def record_reproduction(
    run_dir: str | os.PathLike,
    cards_root: str | os.PathLike | None = None,
    *,
    recipe_path: str | os.PathLike | None = None,
    tolerance: float = TOLERANCE,
) -> PretrainedEntry:
    """Record the finished, evaluated retrain ``run_dir`` as a reproduction of the published entry
    of the same name in ``cards_root`` (default: this checkout's ``cards/``) and re-render its card.

    The run must be complete, evaluated on the full split the entry was (same ``n``), and trained
    from the entry's committed recipe (``recipe_path``, default the entry's ``recipe`` relative to
    the folder above ``cards_root``) with every training field unchanged. Raises :class:`RunError`
    (nothing written) otherwise. ``reproduced`` is true when the clean and every certified accuracy
    differ by at most ``tolerance``. Returns the updated entry.
    """
    run, root = Path(run_dir), Path(cards_root) if cards_root is not None else CARDS_DIR
    recipe = Recipe.from_dict(recipe_dict(run), source=str(run / "recipe.yaml"))
    entry = _entry(root, recipe.name)
    try:
        committed = Recipe.load(_recipe_file(entry, root, recipe_path))
    except RecipeError as e:
        raise RunError(f"the committed recipe of {entry.name} cannot be read: {e}") from None
    record, ev = finished_records(run, recipe)
    _check_is_a_retrain(run, recipe, committed, entry)
    cert = ev["certification"]
    if cert.get("n") != entry.metrics.get("n") or cert.get("split") != entry.metrics.get("split"):
        raise RunError(f"{run / EVAL_FILENAME} covers {cert.get('n')} {cert.get('split')} images, the published numbers "
                       f"{entry.metrics.get('n')} {entry.metrics.get('split')} images: evaluate it on the same split, "
                       "without --limit")
    diffs = _differences(cert, entry.metrics)
    beyond = [k for k, d in diffs.items() if abs(d) > tolerance + 1e-12]
    trained_on, published_on = record.get("hardware") or {}, entry.timing.get("hardware") or {}
    repro = {
        "run_commit": record.get("commit"), "tolerance": tolerance,
        "clean_accuracy": cert["clean_accuracy"], "certified_accuracy": cert.get("certified_accuracy") or {},
        "lipschitz_bound": cert.get("lipschitz_bound"), "n": cert["n"],
        "difference": diffs, "max_abs_difference": max(abs(d) for d in diffs.values()),
        "reproduced": not beyond, "beyond": beyond,
        "weights_identical": _same_tensors(run / "model.safetensors", entry.folder / entry.filename),
        "train_time_s": record.get("wall_time_s"), "threads": trained_on.get("cpu_threads"),
        "hardware": _cpu(trained_on), "published_hardware": _cpu(published_on),
        "published_threads": published_on.get("cpu_threads") if isinstance(published_on, dict) else None,
    }
    updated = replace(entry, provenance=dict(entry.provenance) | {"reproduction": repro})
    write_config(updated, entry.folder)
    write_card(updated, root)
    return updated
