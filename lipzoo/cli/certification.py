"""``lipzoo certify``, ``audit`` and ``export``: a model by name, run directory or model folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from ..audit import AuditError, audit
from ..certify import DEFAULT_EPS, certify, empirical_robust_accuracy, resolve_bound
from ..data import dataset_info, load_tensors
from ..export import export_model
from ..factory import create_model
from ..radius import Radius
from ..registry import PRETRAINED, PretrainedEntry, get_architecture, get_pretrained
from ._app import DeviceType, FiniteFloat, dataset_choice, echo_json, main


def _trained_model(name: str):
    """``(model, dataset, source)`` when NAME names trained weights, else ``None`` for an architecture.

    NAME is a run directory (``recipe.yaml`` + ``model.safetensors``: the recipe's data set), a
    model folder such as ``cards/NAME`` (``config.json`` + weights, sha256 checked: its data set)
    or a registered pretrained name. An unknown name raises ``UnknownModelError`` (close matches);
    a folder holding neither file is a usage error.
    """

    path = Path(name)
    if path.is_dir():
        if (path / "recipe.yaml").is_file():
            from ..zoo.evaluation import load_run_model

            model, recipe = load_run_model(path)
            return model, recipe.dataset, f"trained run {path}"
        if (path / "config.json").is_file():
            entry = PretrainedEntry.from_folder(path)
            model = create_model(str(path), weights=path)
            return model, entry.dataset, f"model folder {path} ({entry.name}, sha256 verified)"
        raise click.BadParameter(
            f"{path} is a folder but holds neither recipe.yaml (a run directory of `lipzoo train`) nor config.json "
            "(a model folder such as cards/NAME); expected one of those, a pretrained name or an architecture name")
    if name in PRETRAINED:
        return create_model(name, pretrained=True), PRETRAINED[name].dataset, "pretrained (sha256 verified)"
    if "." in name:
        get_pretrained(name)  # raises UnknownModelError naming close matches
    get_architecture(name)  # likewise for an unknown architecture
    return None


def _load_model_for_eval(name: str, dataset: str | None, seed: int, as_json: bool):
    """A model, its data set and where its weights come from: trained weights (see
    :func:`_trained_model`; their data set unless ``dataset`` overrides it), else a freshly
    initialised architecture for ``dataset`` (default fashion_mnist)."""
    found = _trained_model(name)
    if found is not None:
        model, own, source = found
        if dataset is not None and dataset != own:
            info = dataset_info(dataset)
            if (info.in_chans, info.num_classes) != (model.in_chans, model.num_classes):
                raise click.BadParameter(
                    f"{dataset} has {info.in_chans}-channel images and {info.num_classes} classes but {name} takes "
                    f"{model.in_chans} channel(s) and {model.num_classes} classes (trained on {own}); omit --dataset "
                    "to use the model's own", param_hint="'--dataset'")
        return model, dataset or own, source
    dataset = dataset or "fashion_mnist"
    info = dataset_info(dataset)
    torch.manual_seed(seed)
    model = create_model(name, in_chans=info.in_chans, num_classes=info.num_classes, input_mean=info.mean)
    source = f"freshly initialised (seed {seed}), no trained weights"
    if not as_json:
        click.echo(f"note: {name} is an architecture without trained weights; certifying a freshly initialised "
                   f"model (seed {seed}) on {dataset}", err=True)
    return model, dataset, source


def _certify_bound(model, lipschitz: float | None) -> tuple[float, float, str]:
    """``(L, audited, why)``: the bound certification uses, the upper bound the audit proves for
    the certified (float64) network on this machine, and a sentence saying which L was used and why.

    L is never below the audited bound nor below 1; a ``--lipschitz`` below the audited bound is
    refused (certificates with it would be unsound on this machine).
    """

    try:
        b = resolve_bound(model, lipschitz)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--lipschitz'") from None
    return b.value, b.audited, b.reason


@main.command("certify")
@click.argument("name")
@click.option("--dataset", default=None, type=dataset_choice(),
              help="Data set to certify on (default: the model's own, else fashion_mnist).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images.")
@click.option("--eps", "eps_list", multiple=True, type=FiniteFloat(0.0, what="a finite radius >= 0"),
              help="Radius (repeatable); default 36/255, 72/255, 108/255, 1.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--lipschitz", type=FiniteFloat(0.0, min_open=True, what="a finite bound > 0"), default=None,
              help="Lipschitz bound L to certify with; refused when below the bound the audit proves on this "
                   "machine (default: that audited bound, at least 1).")
@click.option("--attack", is_flag=True, help="Also run an l2 PGD attack at each eps (empirical robust accuracy).")
@click.option("--attack-steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--device", default="cpu", show_default=True, type=DeviceType())
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of a freshly initialised model.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def certify_cmd(name, dataset, split, limit, eps_list, batch_size, lipschitz, attack, attack_steps, device, seed, as_json) -> None:
    """Certified robust accuracy of NAME (pretrained name, run directory, model folder such as
    cards/NAME, or architecture) on a data set.

    A point is certified at eps when its float64 top-two margin exceeds sqrt(2) * L * eps, where L
    is the Lipschitz bound the audit proves for the weights on this machine (at least 1).
    """

    model, dataset, source = _load_model_for_eval(name, dataset, seed, as_json)
    model = model.to(device)
    lip, audited, why = _certify_bound(model, lipschitz)  # before the data: a refused bound fails fast
    images, labels = load_tensors(dataset, split, limit=limit)
    eps = tuple(eps_list) or DEFAULT_EPS
    result = certify(model, images, labels, eps, lipschitz=lip, batch_size=batch_size, progress=not as_json)
    out = {"model": name, "weights": source, "dataset": dataset, "split": split, **result.as_dict(),
           "lipschitz_audited": audited, "lipschitz_reason": why}
    if attack:
        emp = empirical_robust_accuracy(model, images, labels, eps, steps=attack_steps, batch_size=batch_size,
                                        progress=not as_json)
        out["empirical_robust_accuracy"] = Radius.keyed(emp)
    if as_json:
        echo_json(out)
        return
    click.echo(f"{name} on {dataset} ({split}, {result.n} images), weights: {source}")
    click.echo(f"L = {lip:.8g} ({why})")
    click.echo(result.table())
    if attack:
        click.echo("l2 PGD attack (" + str(attack_steps) + " steps), empirical robust accuracy: "
                   + ", ".join(f"{Radius(e).label}: {100 * a:.2f}%" for e, a in emp.items()))


def _model_for_audit(name: str, in_chans: int, num_classes: int, seed: int):
    """Trained weights (run directory, model folder or pretrained name; strict load), else a
    freshly initialised architecture with ``in_chans`` and ``num_classes``."""
    found = _trained_model(name)
    if found is not None:
        model, _, source = found
        return model, source
    torch.manual_seed(seed)
    return create_model(name, in_chans=in_chans, num_classes=num_classes), f"freshly initialised (seed {seed})"


@main.command("audit")
@click.argument("model_or_run_dir")
@click.option("--in-chans", type=click.IntRange(min=1), default=3, show_default=True,
              help="Input channels of a freshly built architecture.")
@click.option("--num-classes", type=click.IntRange(min=2), default=10, show_default=True,
              help="Classes of a freshly built architecture.")
@click.option("--attack-steps", type=click.IntRange(min=0), default=200, show_default=True,
              help="Adam steps of the lower-bound attack (0: none).")
@click.option("--attack-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Random images the lower bound starts from.")
@click.option("--power-iters", type=click.IntRange(min=1), default=20, show_default=True,
              help="Power iterations on J^T J per image.")
@click.option("--no-lower", is_flag=True, help="Only the guaranteed upper bound (fast).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def audit_cmd(model_or_run_dir, in_chans, num_classes, attack_steps, attack_batch, power_iters, no_lower, seed,
              as_json) -> None:
    """Guaranteed per-layer Lipschitz upper bounds and an attack lower bound of MODEL_OR_RUN_DIR.

    Exits with status 1 when the upper bound exceeds 1 + 1e-4 or the lower bound exceeds the upper.
    """

    model, source = _model_for_audit(model_or_run_dir, in_chans, num_classes, seed)
    try:
        result = audit(model, lower=not no_lower, attack_steps=attack_steps, attack_batch=attack_batch,
                       power_iters=power_iters, seed=seed, name=model_or_run_dir, progress=not as_json)
    except AuditError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        echo_json({"weights": source, **result.as_dict()})
    else:
        click.echo(f"{model_or_run_dir} (weights: {source})")
        click.echo(result.table())
    if not result.ok:
        sys.exit(1)


@main.command("export")
@click.argument("model_or_run_dir")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Output file (default: <model>.onnx or <model>.pt in the current folder).")
@click.option("--in-chans", type=click.IntRange(min=1), default=3, show_default=True,
              help="Input channels of a freshly built architecture.")
@click.option("--num-classes", type=click.IntRange(min=2), default=10, show_default=True,
              help="Classes of a freshly built architecture.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def export_cmd(model_or_run_dir, fmt, out_path, in_chans, num_classes, seed, as_json) -> None:
    """Write the plain-torch form of MODEL_OR_RUN_DIR (lipzoo.to_plain) as ONNX or TorchScript."""

    model, source = _model_for_audit(model_or_run_dir, in_chans, num_classes, seed)
    if out_path is None:
        stem = Path(model_or_run_dir).name if Path(model_or_run_dir).is_dir() else model_or_run_dir
        out_path = f"{stem}.{'onnx' if fmt == 'onnx' else 'pt'}"
    path = export_model(model, out_path, fmt)
    if as_json:
        echo_json({"model": model_or_run_dir, "weights": source, "format": fmt, "file": str(path)})
    else:
        click.echo(f"wrote {path} ({fmt}, weights: {source})")
