"""From a finished training run to a published zoo entry: evaluate, then publish.

The data flow of the zoo::

    recipe -> lipzoo train -> run dir (recipe.yaml, metrics.jsonl, run.json, model.safetensors)
           -> evaluate_run -> run dir/eval.json   (test-split certificates with the audited bound,
                                                   the audit, inference speed and peak memory)
           -> publish_run  -> cards/<name>/      (model.safetensors, config.json, README.md)

:func:`evaluate_run` measures and writes ``eval.json`` (atomically); :func:`publish_run` only
copies numbers from the run's files into ``config.json`` (through
:func:`lipzoo.save_pretrained`) and renders the card, so every number on a card was written by
the code that measured it, with the hardware it was measured on.

Publishing is all or nothing: the name is checked and the publish gate applied before anything
is written, the whole model folder (weights, config.json, records, learning curve, card) is
built in a temporary folder beside the target and renamed into place, and an existing folder is
replaced only with ``force``. The temporary folder sits two levels below the cards folder, where
the registry (which reads ``<cards>/*/config.json``) never looks, so ``import lipzoo`` works at
every moment, also after an interrupted publish.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from torch import nn

from .._hf_cache import transport_errors
from .._io import atomic_write_text, replace_folder
from ..data import dataset_info
from ..hub import ChecksumError, HubError, hf_endpoint, save_pretrained, sha256_file, write_config
from ..layers import LAYERS
from ..radius import Radius
from ..registry import ARCHITECTURES, CARDS_DIR, CONFIG_FILENAME, PRETRAINED, PretrainedEntry, RegistryError
from .cards import CARD_FILENAME, CURVE_FILENAME, render_card, write_card
from .curves import learning_curve, read_epochs
from .evaluation import (CHECK_FILENAME, CHECK_N, EVAL_FILENAME, FLOOR_KEY, RECORD_N, RECORDS, RunError, check_records,
                         evaluate_run, load_run_model, read_json, recipe_dict)
from .plots import PlotError
from .recipe import Recipe

__all__ = ["EVAL_FILENAME", "CHECK_FILENAME", "RECORD_N", "CHECK_N", "RECORDS", "load_run_model", "evaluate_run",
           "check_records", "publish_run", "publish_gate", "push_entry", "RunError", "CURVE_FILENAME", "CHANCE_FACTOR",
           "GATE_RADIUS", "GATE_EPS_KEY", "check_name", "replace_folder", "finished_records"]

#: a run whose test clean accuracy is at most this many times chance (1 / classes) is not published
CHANCE_FACTOR = 1.5
GATE_RADIUS = Radius.of_steps(36)  #: the radius whose certified accuracy an optional ``publish_floor`` bounds
GATE_EPS_KEY = GATE_RADIUS.key
CLEAN_FLOOR_KEY = "publish_clean_floor"


def _epochs(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    try:
        return read_epochs(path) if path.is_file() else []
    except PlotError as e:
        raise RunError(str(e)) from None


def check_name(name: str, architecture: str, dataset: str, source: str = "recipe") -> None:
    """Raise :class:`RunError` unless ``name`` is ``<architecture>.<dataset>``, optionally followed by
    ``_<budget>`` (lowercase letters, digits, ``_``): the only names that are safe folder names
    and that the registry accepts for the recipe's architecture and data set."""
    base = f"{architecture}.{dataset}"
    if not isinstance(name, str) or not (name == base or re.fullmatch(re.escape(base) + r"_[a-z0-9][a-z0-9_]*", name)):
        raise RunError(f"{source}: name {name!r} must be {base!r} (the recipe's architecture.dataset), optionally "
                       f"followed by '_<budget>' in lowercase letters, digits and '_'; fix the recipe's `name:`")


def publish_gate(clean_accuracy: float, certified_accuracy: dict, num_classes: int, *, certifies: bool = True,
                 floor: float | None = None, clean_floor: float | None = None) -> list[str]:
    """Why a run should not be published (an empty list: it may be).

    - clean accuracy at most :data:`CHANCE_FACTOR` x chance (``1 / num_classes``): near chance;
    - with ``floor`` (a fraction) and ``certifies`` (a Lipschitz layer; the unconstrained
      ``standard`` layer has no certificate, so no floor applies): certified accuracy at 36/255
      (``certified_accuracy[GATE_EPS_KEY]``) below ``floor``, or not measured;
    - with ``clean_floor`` (a fraction): clean accuracy below it (the recipe's quality line).
    """
    reasons = []
    limit = CHANCE_FACTOR / num_classes
    if clean_accuracy <= limit:
        reasons.append(f"test clean accuracy {100 * clean_accuracy:.2f}% is near chance "
                       f"(<= {CHANCE_FACTOR:g} x 1/{num_classes} = {100 * limit:.2f}%)")
    elif clean_floor is not None and clean_accuracy < clean_floor:
        reasons.append(f"test clean accuracy {100 * clean_accuracy:.2f}% is below the {CLEAN_FLOOR_KEY} "
                       f"{100 * clean_floor:.2f}%")
    if floor is not None and certifies:
        got = certified_accuracy.get(GATE_EPS_KEY)
        if not isinstance(got, (int, float)):
            reasons.append(f"no certified accuracy at {GATE_RADIUS.label} was measured, so the {FLOOR_KEY} "
                           f"{100 * floor:.2f}% cannot be checked")
        elif got < floor:
            reasons.append(f"certified accuracy at {GATE_RADIUS.label} {100 * got:.2f}% is below the {FLOOR_KEY} "
                           f"{100 * floor:.2f}%")
    return reasons


def _floor(ev: dict, raw_recipe: dict, run: Path, key: str = FLOOR_KEY) -> float | None:
    """The optional floor ``key`` of a run: eval.json's, else recipe.yaml's; a fraction in [0, 1]."""
    for source, d in ((run / EVAL_FILENAME, ev), (run / "recipe.yaml", raw_recipe)):
        if key in d and d[key] is not None:
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise RunError(f"{source}: {key} must be a fraction between 0 and 1 (e.g. 0.4), got {v!r}")
            return float(v)
    return None


def _training_hardware(record: dict, ev: dict) -> dict | None:
    """The run's training hardware, with the CPU model name where one is known: the run record's, else
    the evaluation's when that ran on the same platform and processor (lipzoo evaluate records it)."""
    hw = record.get("hardware")
    if not isinstance(hw, dict):
        return hw
    hw = dict(hw)
    evhw = ev.get("hardware") if isinstance(ev.get("hardware"), dict) else {}
    if not hw.get("cpu_model") and evhw.get("cpu_model") and all(
            evhw.get(k) == hw.get(k) for k in ("platform", "cpu")):
        hw["cpu_model"] = evhw["cpu_model"]
    return hw


def _staging(root: Path, name: str) -> Path:
    """A fresh temporary folder ``root/.<name>.<random>/``; model folders are built inside it."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))


# --- publish ------------------------------------------------------------------------------------
def publish_run(
    run_dir: str | os.PathLike,
    cards_root: str | os.PathLike | None = None,
    *,
    recipe_path: str | None = None,
    notes: str | None = None,
    force: bool = False,
) -> "object":
    """Publish a finished, evaluated run as ``cards_root/<name>/`` and render its card.

    Before anything is written: the recipe's name must be ``<architecture>.<dataset>`` (optionally
    ``_<budget>``; :func:`check_name`), eval.json must be of this run, and the run must pass
    :func:`publish_gate` (``publish_floor``: from eval.json, else recipe.yaml); a folder of that
    name must not exist yet. ``force`` overrides the last two: a gated run is then published with
    ``status: undertrained`` (shown on its card and in the index) and an existing folder replaced.
    Any failure raises :class:`RunError` (or the underlying error) and leaves ``cards_root``
    as it was.

    Numbers come only from the run's files: ``eval.json`` (test-split certificates, audit,
    inference cost), ``run.json`` (training wall time, hardware, commit) and ``metrics.jsonl``
    (images/s per epoch, the last epoch's validation figures, the learning curve
    :data:`CURVE_FILENAME`). ``recipe_path``: the recipe file to name on the card (default
    ``recipes/<dataset>/<architecture>.yaml``). The run's :data:`RECORDS` files are copied into
    the folder too. Returns the entry (its ``folder`` is the published folder).
    """
    run = Path(run_dir)
    model, recipe = load_run_model(run)
    check_name(recipe.name, recipe.architecture, recipe.dataset, source=str(run / "recipe.yaml"))
    record, ev = finished_records(run, recipe)
    certifies = LAYERS[ARCHITECTURES[recipe.architecture].layer].lipschitz
    cert = ev["certification"]
    reasons = publish_gate(float(cert["clean_accuracy"]), cert.get("certified_accuracy") or {},
                           dataset_info(recipe.dataset).num_classes, certifies=certifies,
                           floor=_floor(ev, recipe_dict(run), run),
                           clean_floor=_floor(ev, recipe_dict(run), run, CLEAN_FLOOR_KEY))
    if reasons and not force:
        raise RunError(f"refusing to publish {recipe.name}: {'; '.join(reasons)}. Train it longer, or pass --force "
                       "to publish it marked 'undertrained'")
    root = Path(cards_root) if cards_root is not None else CARDS_DIR
    target = root / recipe.name
    if target.exists() and not force:
        raise RunError(f"{target} already exists; pass --force to replace that model folder with this run")
    epochs = _epochs(run)
    staging = _staging(root, recipe.name)
    try:
        folder = staging / recipe.name
        entry = save_pretrained(model, folder, dataset=recipe.dataset, name=recipe.name,
                                metrics=_metrics(ev, epochs, recipe), timing=_timing(record, ev, epochs, recipe, model),
                                provenance=_provenance(record, recipe, notes, reasons), recipe=recipe_path,
                                layer_kwargs=recipe.layer_options)
        if reasons:
            entry = replace(entry, status="undertrained")
            write_config(entry, folder)
        _add_records(run, folder, epochs, recipe.name, certifies)
        write_card(entry, staging)
        replace_folder(folder, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return replace(entry, folder=target)


def finished_records(run: Path, recipe: Recipe) -> tuple[dict, dict]:
    """``run.json`` of a complete run and ``eval.json`` of this very run (else :class:`RunError`)."""
    record = read_json(run / "run.json", "the run has not finished")
    if not record.get("complete"):
        raise RunError(f"{run} is not complete ({record.get('epochs_done')}/{record.get('epochs')} epochs); resume it")
    ev = read_json(run / EVAL_FILENAME, f"evaluate it first: `lipzoo evaluate {run}`")
    for key in ("name", "architecture", "dataset"):
        if ev.get(key) != getattr(recipe, key):
            raise RunError(f"{run / EVAL_FILENAME} is of {key} {ev.get(key)!r}, but the recipe says "
                           f"{getattr(recipe, key)!r}; evaluate the run again: `lipzoo evaluate {run}`")
    return record, ev


def _provenance(record: dict, recipe: Recipe, notes: str | None, reasons: list[str]) -> dict:
    """``provenance`` of the entry: the training commit and torch version, the budget, the notes and
    why the gate refused the run (a forced publish)."""
    prov = {"commit": record.get("commit"), "training_commit": record.get("commit"),
            "torch_version": record.get("torch"), "budget": recipe.budget}
    if notes or recipe.notes:
        prov["notes"] = notes or recipe.notes
    if reasons:
        prov["status_reasons"] = reasons
    return prov


def _metrics(ev: dict, epochs: list[dict], recipe: Recipe) -> dict:
    """``metrics`` of the entry: the test-split certificates, audit and check of ``eval.json``, and the
    last epoch's validation figures."""
    cert = ev["certification"]
    metrics = {k: cert[k] for k in ("n", "lipschitz_bound", "clean_accuracy", "certified_accuracy", "median_radius")}
    metrics |= {"split": cert["split"], "audit": ev["audit"], "check": ev["check"]}
    if epochs:
        last = epochs[-1]
        metrics["validation"] = {"images": recipe.val_size or None, "accuracy": last.get("val_accuracy"),
                                 "certified_accuracy_at_L1": last.get("val_certified")}
    return metrics


def _timing(record: dict, ev: dict, epochs: list[dict], recipe: Recipe, model: nn.Module) -> dict:
    """``timing`` of the entry: training time and throughput (``run.json``, ``metrics.jsonl``), the
    inference cost of ``eval.json`` and the trainable parameters."""
    seen = sum(e["images_per_s"] * e["epoch_time_s"] for e in epochs)
    epoch_time = sum(e["epoch_time_s"] for e in epochs)
    timing = {"train_time_s": record["wall_time_s"], "epochs": record["epochs_done"],
              "train_images": int(round(seen)), "batch_size": recipe.batch_size,
              "train_images_per_s": seen / epoch_time if epoch_time else None,
              "hardware": _training_hardware(record, ev)}
    inf = ev.get("inference") or {}
    if inf.get("status") == "ok":
        timing |= {"inference_images_per_s": inf["infer_images_per_s"], "peak_memory_mb": inf["train_peak_mib"],
                   "inference_peak_memory_mb": inf["infer_peak_mib"],
                   "inference_hardware": ev["hardware"].get("cpu_model") or ev["hardware"].get("cpu"),
                   "memory_method": inf.get("memory_method")}
    timing = {k: v for k, v in timing.items() if v is not None}
    timing["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return timing


def _add_records(run: Path, folder: Path, epochs: list[dict], name: str, certifies: bool) -> None:
    """The run's measurement files next to the weights (every card number has its source file) and
    the learning curve drawn from ``metrics.jsonl``."""
    for f in RECORDS:
        if (run / f).is_file():
            shutil.copyfile(run / f, folder / f)
    if epochs:
        try:
            learning_curve(epochs, folder / CURVE_FILENAME, title=f"{name}: learning curve", certified=certifies)
        except PlotError:
            pass  # records without any plottable quantity: the card then shows no curve


# --- push ---------------------------------------------------------------------------------------
def push_entry(
    name: str,
    repo_id: str | None = None,
    *,
    folder: str | os.PathLike | None = None,
    branch: str = "main",
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a model folder (README.md, config.json, weights) to the Hub repo ``repo_id`` and pin it.

    Checks first (the folder holds ``name``, the weights match config.json's sha256, ``repo_id``
    is ``ORG/NAME``), then uploads a temporary copy whose config.json and card name ``repo_id``.
    Only after the upload succeeded is the folder replaced (as a whole, by renaming) with that
    copy, config.json now also pinning the new commit as the revision. A failed upload raises
    :class:`lipzoo.hub.HubError` and leaves the folder untouched. Returns the commit id.
    """
    folder, entry = _pushable(name, folder)
    repo_id = repo_id or entry.repo_id
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo_id):
        raise HubError(f"repo id must be ORG/NAME (letters, digits, '-', '_', '.'), got {repo_id!r}")
    staging = _staging(folder.parent, folder.name)
    try:
        new = staging / folder.name
        new.mkdir()
        for f in folder.iterdir():  # everything else travels unchanged (records, learning curve)
            if f.is_file():
                try:
                    os.link(f, new / f.name)
                except OSError:
                    shutil.copy2(f, new / f.name)
        entry = replace(entry, hf_repo_id=repo_id, folder=new)
        for f in (CONFIG_FILENAME, CARD_FILENAME):
            (new / f).unlink(missing_ok=True)  # hard links: rewrite as new files, never through the link
        write_config(entry, new)
        atomic_write_text(new / CARD_FILENAME, render_card(entry))
        commit = _upload(new, entry, repo_id, branch=branch, private=private, token=token,
                         message=commit_message or f"lipzoo: upload {name}", unchanged=folder)
        entry = replace(entry, revision=commit)
        write_config(entry, new)  # the revision is not on the card, so the card stays fresh
        replace_folder(new, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    entry = replace(entry, folder=folder)
    if name in PRETRAINED:
        PRETRAINED[name] = entry
    return commit


def _pushable(name: str, folder: str | os.PathLike | None) -> tuple[Path, PretrainedEntry]:
    """The model folder of ``name`` (default: its registered folder, else ``cards/<name>``) and its
    entry, checked: it holds ``name`` and weights that match its sha256."""
    folder = Path(folder) if folder is not None else (PRETRAINED[name].folder if name in PRETRAINED else None) \
        or CARDS_DIR / name
    try:
        entry = PretrainedEntry.from_folder(folder)
    except RegistryError as e:
        raise HubError(str(e)) from None
    if entry.name != name:
        raise HubError(f"{folder} holds {entry.name!r}, not {name!r}")
    weights = folder / entry.filename
    if not weights.is_file() or sha256_file(weights) != entry.sha256:
        raise ChecksumError(f"{weights} is missing or does not match the sha256 in {folder / CONFIG_FILENAME}; "
                            "re-save it with lipzoo.save_pretrained")
    return folder, entry


def _upload(new: Path, entry: PretrainedEntry, repo_id: str, *, branch: str, private: bool, token: str | None,
            message: str, unchanged: Path) -> str:
    """Upload the card, config.json and weights of ``new`` to ``repo_id`` (created if missing);
    the commit id. A failure is a :class:`lipzoo.hub.HubError` saying ``unchanged`` was left as it was."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=hf_endpoint(), token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(new), revision=branch, repo_type="model",
                                 commit_message=message, allow_patterns=[CARD_FILENAME, CONFIG_FILENAME, entry.filename])
    except (HfHubHTTPError, *transport_errors()) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HubError(f"upload of {entry.name} to {repo_id} at {hf_endpoint()} failed ({first}); "
                       f"{unchanged} was left unchanged") from None
    return info.oid
