"""The ``lipzoo`` command line: thin wrappers over the library."""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import click

from . import __version__
from .layers import LAYERS


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lipzoo")
def main() -> None:
    """lipzoo: certifiably robust 1-Lipschitz image classifiers."""


@main.command("list")
@click.argument("pattern", default="*")
@click.option("--layer", default=None, help="Only this layer id (wildcards allowed), e.g. 'sll'.")
@click.option("--pretrained", is_flag=True, help="List pretrained entries (arch.dataset) instead of architectures.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(pattern: str, layer: str | None, pretrained: bool, as_json: bool) -> None:
    """List model names matching PATTERN (shell wildcards, e.g. 'convnet_xs_*')."""
    from .registry import get_architecture, list_models

    names = list_models(pattern, pretrained=pretrained)
    if layer:
        import fnmatch

        names = [n for n in names if fnmatch.fnmatchcase(get_architecture(n).layer, layer)]
    if as_json:
        rows = []
        for n in names:
            a = get_architecture(n)
            rows.append({"name": n, "family": a.family, "size": a.size, "layer": a.layer, "input_size": a.input_size})
        _echo_json(rows)
        return
    for n in names:
        click.echo(n)
    if not names:
        click.echo("(no model matches)" if not pretrained else "(no pretrained weights registered yet)", err=True)


@main.command("layers")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def layers_cmd(as_json: bool) -> None:
    """List the layer types with their papers and guarantees."""
    rows = [
        {
            "id": s.id, "name": s.name, "conv": s.conv.__name__, "linear": s.linear.__name__ if s.linear else None,
            "head": s.head, "orthogonal": s.orthogonal, "lipschitz": s.lipschitz, "paper": s.paper,
            "citation": s.citation, "note": s.note,
        }
        for s in LAYERS.values()
    ]
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        kind = "orthogonal" if r["orthogonal"] else ("1-Lipschitz" if r["lipschitz"] else "UNCONSTRAINED")
        click.echo(f"{r['id']:<9} {kind:<13} {r['citation']:<32} {r['paper']}")


@main.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info_cmd(name: str, as_json: bool) -> None:
    """Show what an architecture is: layer, size, input, parameter count."""
    from .registry import create_model, get_architecture

    arch = get_architecture(name)
    model = create_model(arch.name)
    spec = LAYERS[arch.layer]
    info = {
        "name": arch.name, "family": arch.family, "size": arch.size, "layer": arch.layer,
        "input_size": arch.input_size, "blocks": model.config.num_blocks, "base_width": model.config.base_width,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "paper": spec.paper, "citation": spec.citation, "orthogonal": spec.orthogonal, "lipschitz": spec.lipschitz,
    }
    if as_json:
        _echo_json(info)
        return
    for k, v in info.items():
        click.echo(f"{k:>21}: {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:>21}: {v}")


@main.command("certify")
@click.argument("name")
@click.option("--dataset", default="fashion_mnist", show_default=True, help="Data set to certify on.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--eps", "eps_list", multiple=True, type=float, help="Radius (repeatable); default 36/255, 72/255, 108/255, 1.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of a freshly initialised model.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def certify_cmd(name, dataset, split, limit, eps_list, batch_size, seed, as_json) -> None:
    """Certified robust accuracy of model NAME on a data set (l2, sound, float64 margins)."""
    import torch

    from .certify import DEFAULT_EPS, certify
    from .data import DatasetNotFoundError, dataset_info, load_tensors
    from .registry import PRETRAINED, create_model

    info = dataset_info(dataset)
    try:
        images, labels = load_tensors(dataset, split, limit=limit)
    except DatasetNotFoundError as e:
        raise click.ClickException(str(e)) from None
    if name in PRETRAINED:
        model = create_model(name, pretrained=True)
        source = "pretrained"
    else:
        torch.manual_seed(seed)
        model = create_model(name, in_chans=info.in_chans, num_classes=info.num_classes)
        source = f"freshly initialised (seed {seed}), no trained weights"
        if not as_json:
            click.echo(f"note: {name} has no pretrained weights; certifying a {source} model", err=True)
    result = certify(model, images, labels, tuple(eps_list) or DEFAULT_EPS, batch_size=batch_size, progress=not as_json)
    if as_json:
        _echo_json({"model": name, "weights": source, "dataset": dataset, "split": split, **result.as_dict()})
    else:
        click.echo(f"{name} on {dataset} ({split}, {result.n} images), weights: {source}")
        click.echo(result.table())


@main.command("bench")
@click.option("--layer", "layer_pattern", default="*", show_default=True, help="Layer ids (wildcards).")
@click.option("--size", "sizes", default="xs,s", show_default=True, help="Comma-separated sizes: xs,s,m,l.")
@click.option("--family", default="convnet", show_default=True, type=click.Choice(["convnet", "tconvnet"]))
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Write results/benchmark-*.csv here.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench_cmd(layer_pattern, sizes, family, device, batch_size, repeats, out_dir, as_json) -> None:
    """Training and inference images/s per layer and size, as ratios to the standard ConvNet."""
    from .bench import bench_layers, format_table, hardware_fingerprint

    size_list = tuple(s.strip() for s in sizes.split(",") if s.strip())
    bad = [s for s in size_list if s not in ("xs", "s", "m", "l")]
    if bad:
        raise click.BadParameter(f"unknown size(s) {bad}; expected xs, s, m, l", param_hint="--size")
    results = bench_layers(layer_pattern, size_list, family=family, batch_size=batch_size, device=device,
                           repeats=repeats, progress=not as_json)
    hw = hardware_fingerprint(device)
    if out_dir:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = Path(out_dir) / f"benchmark-{device.split(':')[0]}-{stamp}.csv"
        rows = [r.as_dict() | {f"hw_{k}": v for k, v in hw.items()} for r in results]
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        _atomic_write(path, buf.getvalue())
        click.echo(f"wrote {path}", err=True)
    if as_json:
        _echo_json({"hardware": hw, "results": [r.as_dict() for r in results]})
    else:
        click.echo(f"hardware: {hw}")
        click.echo(format_table(results))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
