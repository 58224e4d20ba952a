"""Evaluate a finished run: certify it on the test split with the bound audited on this machine,
measure its inference cost, and write ``eval.json`` and the per-image records ``check.json``
(what :mod:`lipzoo.zoo.publish` puts on the card)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml
from torch import nn

from .._io import atomic_write_text
from .._provenance import cpu_model
from .._version import __version__
from ..certify import certify, proven_audit
from ..data import dataset_info, load_tensors
from ..radius import Radius
from .bench import bench_model, hardware_fingerprint
from .recipe import Recipe
from .trainer import build_model

__all__ = ["RunError", "EVAL_FILENAME", "CHECK_FILENAME", "RECORDS", "CHECK_N", "RECORD_N", "FLOOR_KEY",
           "load_run_model", "evaluate_run", "check_records", "read_json", "recipe_dict"]

EVAL_FILENAME = "eval.json"
CHECK_FILENAME = "check.json"
CHECK_N = 1000  #: the first this many images of the split are also scored on their own (``check``)
RECORD_N = 200  #: per-image records (prediction, certified radius) of the first this many images
#: the run's record files copied next to the published weights (the sources of the card's numbers)
RECORDS = ("run.json", "metrics.jsonl", EVAL_FILENAME, CHECK_FILENAME)
#: the recipe field of the publish gate's certified-accuracy floor (see :mod:`lipzoo.zoo.publish`)
FLOOR_KEY = "publish_floor"


class RunError(ValueError):
    """A run directory that lacks what a step needs (unfinished run, no evaluation yet, ...)."""


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise RunError(f"{path} does not exist: {what}")
    return json.loads(path.read_text())


def recipe_dict(run: Path) -> dict:
    try:
        raw = yaml.safe_load((run / "recipe.yaml").read_text())
    except yaml.YAMLError as e:
        raise RunError(f"{run / 'recipe.yaml'} is not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise RunError(f"{run / 'recipe.yaml'} holds a {type(raw).__name__}; expected a mapping of recipe fields")
    return raw


def load_run_model(run_dir: str | os.PathLike) -> tuple[nn.Module, "object"]:
    """The trained model of a finished run (eval mode, strict load) and its recipe."""
    from safetensors.torch import load_file

    run = Path(run_dir)
    if not (run / "recipe.yaml").is_file():
        raise RunError(f"{run} is not a training run directory (no recipe.yaml)")
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise RunError(f"{run} holds no model.safetensors yet (unfinished run? resume it with "
                       f"`lipzoo train {run / 'recipe.yaml'} --out {run} --resume`)")
    raw = recipe_dict(run)
    raw.pop(FLOOR_KEY, None)  # a publishing option, not a training field
    recipe = Recipe.from_dict(raw, source=str(run / "recipe.yaml"))
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
    :func:`lipzoo.zoo.bench.bench_model`; ``speed=False`` skips it) and ``hardware``.
    """
    run = Path(run_dir)
    model, recipe = load_run_model(run)
    model = model.to(device)
    proof = proven_audit(model)  # audited once: certify() below reuses it
    images, labels = load_tensors(recipe.dataset, split, limit=limit)
    # the float64 network with the bound audited for it on this machine (see lipzoo.certify)
    cert = certify(model, images, labels, recipe.eval_eps, batch_size=batch_size, progress=progress)
    k = min(CHECK_N, cert.n)  # the first CHECK_N images: a cheap exact re-check (CI, `lipzoo certify --limit`)
    check = {"n": k, "clean_accuracy": float((cert.predictions[:k] == labels[:k]).double().mean()) if k else 0.0,
             "certified_accuracy": Radius.keyed((e, float((cert.radii[:k] > e).double().mean()) if k else 0.0)
                                                for e in recipe.eval_eps)}
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
    atomic_write_text(run / CHECK_FILENAME, json.dumps(check_records(cert, labels, split), indent=1))
    atomic_write_text(run / EVAL_FILENAME, json.dumps(out, indent=2))
    return out


def check_records(cert, labels, split: str, n: int = RECORD_N) -> dict:
    """Per-image records of the first ``n`` certified images: label, prediction and certified
    radius (float64 margin / (sqrt(2) L), L the bound audited on the machine that wrote them).

    Anyone can recompute a prefix of them on another machine and compare image by image: the
    radius may differ by round-off and by the few-1e-6 relative difference of the audited bound
    between CPUs, a prediction only where the top two logits (nearly) tie.
    """
    k = min(n, cert.n)
    return {"split": split, "n": k, "lipschitz_bound": float(cert.lipschitz),
            "cpu": cpu_model(), "labels": labels[:k].tolist(), "predictions": cert.predictions[:k].tolist(),
            "radii": [float(r) for r in cert.radii[:k]]}
