"""From a finished training run to a published zoo entry: evaluate, then publish.

The data flow of the zoo (house design, principle 3)::

    recipe -> lipzoo train -> run dir (recipe.yaml, metrics.jsonl, run.json, model.safetensors)
           -> evaluate_run -> run dir/eval.json   (test-split certificates with the audited bound,
                                                   the audit, inference speed and peak memory)
           -> publish_run  -> cards/<name>/      (model.safetensors, config.json, README.md)

:func:`evaluate_run` measures and writes ``eval.json`` (atomically); :func:`publish_run` only
copies numbers from the run's files into ``config.json`` (through
:func:`lipzoo.save_pretrained`) and renders the card, so every number on a card was written by
the code that measured it, with the hardware it was measured on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ._io import atomic_write_text

__all__ = ["EVAL_FILENAME", "load_run_model", "evaluate_run", "publish_run", "RunError"]

EVAL_FILENAME = "eval.json"
#: the run's record files copied next to the published weights (the sources of the card's numbers)
RECORDS = ("run.json", "metrics.jsonl", EVAL_FILENAME)
CHECK_N = 1000  #: the first this many images of the split are also scored on their own (``check``)


class RunError(ValueError):
    """A run directory that lacks what a step needs (unfinished run, no evaluation yet, ...)."""


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise RunError(f"{path} does not exist: {what}")
    return json.loads(path.read_text())


def load_run_model(run_dir: str | os.PathLike) -> tuple[nn.Module, "object"]:
    """The trained model of a finished run (eval mode, strict load) and its recipe."""
    from safetensors.torch import load_file

    from .training import Recipe, build_model

    run = Path(run_dir)
    if not (run / "recipe.yaml").is_file():
        raise RunError(f"{run} is not a training run directory (no recipe.yaml)")
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise RunError(f"{run} holds no model.safetensors yet (unfinished run? resume it with "
                       f"`lipzoo train {run / 'recipe.yaml'} --out {run} --resume`)")
    recipe = Recipe.load(run / "recipe.yaml")
    model = build_model(recipe)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval(), recipe


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    speed: bool = True,
    progress: bool = True,
) -> dict:
    """Certify a finished run on ``split`` with its audited bound, and measure its inference cost.

    Writes and returns ``run_dir/eval.json``: ``certification`` (:meth:`CertificationResult.as_dict`
    with ``split``), ``check`` (the same figures on the first :data:`CHECK_N` images), ``audit`` (the guaranteed upper bound, per-layer methods), ``inference``
    (images/s at ``batch_size`` and peak memory of inference and of a training step, from
    :func:`lipzoo.bench.bench_model`; ``speed=False`` skips it) and ``hardware``.
    """
    from . import __version__
    from .audit import audit
    from .bench import bench_model, hardware_fingerprint
    from .certify import certify
    from .data import dataset_info, load_tensors

    run = Path(run_dir)
    model, recipe = load_run_model(run)
    model = model.to(device)
    proof = audit(model, lower=False)
    lip = max(1.0, float(proof.upper))
    images, labels = load_tensors(recipe.dataset, split, limit=limit)
    cert = certify(model, images, labels, recipe.eval_eps, lipschitz=lip, batch_size=batch_size, progress=progress)
    k = min(CHECK_N, cert.n)  # the first CHECK_N images: a cheap exact re-check (CI, `lipzoo certify --limit`)
    check = {"n": k, "clean_accuracy": float((cert.predictions[:k] == labels[:k]).double().mean()) if k else 0.0,
             "certified_accuracy": {f"{e:.6g}": float((cert.radii[:k] > e).double().mean()) if k else 0.0
                                    for e in recipe.eval_eps}}
    out: dict = {
        "run": run.name, "name": recipe.name, "architecture": recipe.architecture, "dataset": recipe.dataset,
        "certification": cert.as_dict() | {"split": split},
        "check": check | {"split": split},
        "audit": {"lipschitz_upper": float(proof.upper), "ok": proof.ok,
                  "method": "lipzoo.audit: product of guaranteed per-layer upper bounds (float64)",
                  "layer_methods": sorted({b.method for b in proof.layers}), "lipzoo_version": __version__},
        "hardware": hardware_fingerprint(device),
    }
    if speed:
        b = bench_model(recipe.architecture, batch_size=batch_size, device=device,
                        in_chans=dataset_info(recipe.dataset).in_chans, plain=True)
        out["inference"] = {"batch_size": batch_size, "status": b.status, "infer_images_per_s": b.infer_images_per_s,
                            "plain_images_per_s": b.plain_images_per_s, "infer_peak_mib": b.infer_peak_mib,
                            "train_peak_mib": b.train_peak_mib, "memory_method": b.memory_method,
                            "threads": torch.get_num_threads()}
    atomic_write_text(run / EVAL_FILENAME, json.dumps(out, indent=2))
    return out


def _epochs(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def publish_run(
    run_dir: str | os.PathLike,
    cards_root: str | os.PathLike | None = None,
    *,
    recipe_path: str | None = None,
    notes: str | None = None,
) -> "object":
    """Publish a finished, evaluated run as ``cards_root/<name>/`` and render its card.

    Numbers come only from the run's files: ``eval.json`` (test-split certificates, audit,
    inference cost), ``run.json`` (training wall time, hardware, commit) and ``metrics.jsonl``
    (images/s per epoch, the last epoch's validation figures). ``recipe_path``: the recipe file
    to name on the card (default ``recipes/<dataset>/<architecture>.yaml``). The run's
    :data:`RECORDS` files are copied into the folder too. Returns the entry.
    """
    from .cards import write_card
    from .hub import save_pretrained
    from .registry import CARDS_DIR

    run = Path(run_dir)
    model, recipe = load_run_model(run)
    record = _read_json(run / "run.json", "the run has not finished")
    if not record.get("complete"):
        raise RunError(f"{run} is not complete ({record.get('epochs_done')}/{record.get('epochs')} epochs); resume it")
    ev = _read_json(run / EVAL_FILENAME, f"evaluate it first: `lipzoo evaluate {run}`")
    cert = ev["certification"]
    epochs = _epochs(run)
    seen = sum(e["images_per_s"] * e["epoch_time_s"] for e in epochs)
    epoch_time = sum(e["epoch_time_s"] for e in epochs)
    metrics = {k: cert[k] for k in ("n", "lipschitz_bound", "clean_accuracy", "certified_accuracy", "median_radius")}
    metrics |= {"split": cert["split"], "audit": ev["audit"], "check": ev["check"]}
    if epochs:
        last = epochs[-1]
        metrics["validation"] = {"images": recipe.val_size or None, "accuracy": last.get("val_accuracy"),
                                 "certified_accuracy_at_L1": last.get("val_certified")}
    timing = {"train_time_s": record["wall_time_s"], "epochs": record["epochs_done"],
              "train_images": int(round(seen)), "batch_size": recipe.batch_size,
              "train_images_per_s": seen / epoch_time if epoch_time else None,
              "hardware": record.get("hardware")}
    inf = ev.get("inference") or {}
    if inf.get("status") == "ok":
        timing |= {"inference_images_per_s": inf["infer_images_per_s"], "peak_memory_mb": inf["train_peak_mib"],
                   "inference_peak_memory_mb": inf["infer_peak_mib"],
                   "inference_hardware": ev["hardware"].get("cpu_model") or ev["hardware"].get("cpu"),
                   "memory_method": inf.get("memory_method")}
    timing = {k: v for k, v in timing.items() if v is not None}
    timing["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    prov = {"commit": record.get("commit"), "training_commit": record.get("commit"),
            "torch_version": record.get("torch"), "budget": recipe.budget}
    if notes or recipe.notes:
        prov["notes"] = notes or recipe.notes
    root = Path(cards_root) if cards_root is not None else CARDS_DIR
    entry = save_pretrained(model, root / recipe.name, dataset=recipe.dataset, metrics=metrics, timing=timing,
                            provenance=prov, recipe=recipe_path, layer_kwargs=recipe.layer_options)
    for f in RECORDS:  # the measurement files travel with the weights: every card number has its source file
        if (run / f).is_file():
            atomic_write_text(root / recipe.name / f, (run / f).read_text())
    write_card(entry, root)
    return entry
