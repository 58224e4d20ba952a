"""``lipzoo list``, ``layers`` and ``info``: what the zoo holds."""

from __future__ import annotations

import fnmatch

import click

from ..factory import create_model
from ..layers import LAYERS
from ..registry import get_architecture, list_models, model_info
from ._app import echo_json, eps_label, main


@main.command("list")
@click.argument("pattern", default="*")
@click.option("--layer", default=None, help="Only this layer id (wildcards allowed), e.g. 'sll'.")
@click.option("--pretrained", is_flag=True, help="List pretrained entries (arch.dataset) instead of architectures.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(pattern: str, layer: str | None, pretrained: bool, as_json: bool) -> None:
    """List model names matching PATTERN (shell wildcards, e.g. 'convnet_xs_*')."""

    names = list_models(pattern, pretrained=pretrained)
    if layer:
        names = [n for n in names if fnmatch.fnmatchcase(get_architecture(n).layer, layer)]
    if as_json:
        echo_json([model_info(n) for n in names])
        return
    if pretrained:
        width = max(map(len, names), default=0)
        lines = [_pretrained_line(n, width) for n in names]
    else:
        lines = names
    for line in lines:
        click.echo(line)
    if not names:
        click.echo("(no model matches)" if not pretrained else "(no pretrained weights registered yet)", err=True)


def _radius(key: str) -> float:
    try:
        return float(key)
    except ValueError:
        return float("inf")


def _pretrained_line(name: str, width: int) -> str:
    """``NAME  clean 87.12%  certified 81.16% at 36/255  [status]`` from the entry's stored test metrics
    (the smallest stored radius); an entry without metrics shows its name and status only."""
    info = model_info(name)
    metrics = info.get("metrics") or {}
    line = name.ljust(width)
    if metrics.get("clean_accuracy") is not None:
        line += f"  clean {100 * metrics['clean_accuracy']:5.2f}%"
        certified = metrics.get("certified_accuracy") or {}
        if certified:
            key = min(certified, key=_radius)
            line += f"  certified {100 * certified[key]:5.2f}% at {eps_label(key)}"
    status = info.get("status")
    return (line + f"  [{status}]" if status else line).rstrip()


@main.command("layers")
@click.option("--options", "show_options", is_flag=True,
              help="Also list each family's layer options (create_model(arch, **options), a recipe's layer_options) "
                   "with their defaults.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (always with the options).")
def layers_cmd(show_options: bool, as_json: bool) -> None:
    """List the layer types with their papers and guarantees."""
    rows = [
        {
            "id": s.id, "name": s.name, "conv": s.conv.__name__, "linear": s.linear.__name__ if s.linear else None,
            "head": s.head, "orthogonal": s.orthogonal, "lipschitz": s.lipschitz, "paper": s.paper,
            "citation": s.citation, "note": s.note, "options": s.options(),
        }
        for s in LAYERS.values()
    ]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        kind = "orthogonal" if r["orthogonal"] else ("1-Lipschitz" if r["lipschitz"] else "UNCONSTRAINED")
        click.echo(f"{r['id']:<9} {kind:<13} {r['citation']:<32} {r['paper']}")
        if show_options:
            opts = ", ".join(f"{k}={v!r}" for k, v in r["options"].items()) or "(none)"
            click.echo(f"{'':<9} options: {opts}")


@main.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info_cmd(name: str, as_json: bool) -> None:
    """Show what a model is: layer, size, input, parameter count; for a pretrained entry also its
    data set, weights (repo, revision, sha256), metrics and provenance."""

    arch = get_architecture(name)
    model = create_model(arch.name)
    spec = LAYERS[arch.layer]
    info = {
        "name": arch.name, "family": arch.family, "size": arch.size, "layer": arch.layer,
        "input_size": arch.input_size, "blocks": model.config.num_blocks, "base_width": model.config.base_width,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "paper": spec.paper, "citation": spec.citation, "orthogonal": spec.orthogonal, "lipschitz": spec.lipschitz,
    }
    info = info | model_info(name)
    if as_json:
        echo_json(info)
        return
    for key, value in _info_lines(info):
        click.echo(f"{key:<10} {value}")


def _info_lines(info: dict) -> list[tuple[str, str]]:
    """The few lines of ``lipzoo info`` (the full record is ``--json``)."""
    kind = "orthogonal" if info["orthogonal"] else ("1-Lipschitz" if info["lipschitz"] else "unconstrained")
    lines = [
        ("name", info["name"] if not info.get("pretrained") else f"{info['name']} (pretrained weights)"),
        ("model", f"{info['family']} size {info['size']}: {info['blocks']} blocks, base width {info['base_width']}, "
                  f"{info['input_size']}x{info['input_size']} input, {info['trainable_parameters']:,} trainable parameters"),
        ("layer", f"{info['layer']} ({kind}): {info['citation']}, {info['paper']}"),
    ]
    if info.get("layer_kwargs"):  # the layer options the pretrained model is built with
        lines.append(("options", ", ".join(f"{k}={v!r}" for k, v in info["layer_kwargs"].items())))
    if not info.get("pretrained"):
        entries = info.get("pretrained_entries") or []
        lines.append(("weights", ", ".join(entries) if entries else "none registered (lipzoo list --pretrained)"))
        return lines
    if info.get("status"):  # e.g. undertrained: published with --force past the publish gate
        reasons = "; ".join((info.get("provenance") or {}).get("status_reasons") or [])
        lines.append(("status", info["status"].upper() + (f": {reasons}" if reasons else "")))
    data = info.get("data") or {}
    lines.append(("dataset", f"{info.get('dataset')} ({data.get('num_classes', '?')} classes, "
                             f"{data.get('in_chans', '?')} channel(s), {data.get('input_size', '?')}px)"))
    f, hub = info.get("file") or {}, info.get("hub") or {}
    sha = str(f.get("sha256") or "?")
    size = f"{f['size'] / 2**20:.1f} MiB, " if isinstance(f.get("size"), int) else ""
    lines.append(("weights", f"{info.get('repo_id')} @ {hub.get('revision') or 'no pinned revision'} "
                             f"({size}sha256 {sha[:12]}...)"))
    m = info.get("metrics") or {}
    if m.get("clean_accuracy") is not None:
        cert = ", ".join(f"{eps_label(k)} {100 * v:.2f}%" for k, v in (m.get("certified_accuracy") or {}).items())
        lines.append(("accuracy", f"clean {100 * m['clean_accuracy']:.2f}%" + (f"; certified {cert}" if cert else "")
                      + f" ({m.get('n', '?')} {m.get('split', '')} images, L = {m.get('lipschitz_bound', '?')})"))
    audit = m.get("audit") or {}
    if audit.get("lipschitz_upper") is not None:
        lines.append(("audit", f"Lipschitz upper bound {audit['lipschitz_upper']:.6g} ({'ok' if audit.get('ok') else 'NOT ok'})"))
    prov = info.get("provenance") or {}
    if prov:
        commit = str(prov.get("training_commit") or prov.get("commit") or "?")[:10]
        lines.append(("trained", f"{prov.get('date', '?')}, commit {commit}, torch {prov.get('torch_version', '?')}"))
    if info.get("recipe"):
        lines.append(("recipe", str(info["recipe"])))
    lines.append(("more", f"lipzoo info {info['name']} --json (metrics, timing, provenance)"))
    return lines
