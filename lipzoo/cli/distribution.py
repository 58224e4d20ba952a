"""``lipzoo download``, ``verify``, ``push``, ``card`` and ``import-1llc``: weights files, the Hub,
model cards and the paper's released checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..hub import HubError, download, verify
from ..registry import CARDS_DIR, PRETRAINED, get_pretrained, list_models
from ._app import echo_json, main


def _pretrained_names(patterns: tuple[str, ...], default_all: bool) -> list[str]:
    """Registry names matching the patterns (shell wildcards); an unmatched pattern is an error."""

    if not patterns:
        return list(PRETRAINED) if default_all else []
    names: list[str] = []
    for pat in patterns:
        hits = list_models(pat, pretrained=True) if any(c in pat for c in "*?[") else [get_pretrained(pat).name]
        if not hits:
            raise click.BadParameter(f"no pretrained entry matches {pat!r}; see `lipzoo list --pretrained`")
        names += [n for n in hits if n not in names]
    return names


@main.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--revision", default=None, help="Repo revision (default: the entry's pinned one).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Hugging Face cache folder.")
@click.option("--force", is_flag=True, help="Download again even when a verified copy is cached.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def download_cmd(names, revision, cache_dir, force, as_json) -> None:
    """Fetch pretrained weights NAME... (wildcards allowed) into the HF cache, verifying their sha256."""

    chosen = _pretrained_names(names, default_all=False)  # an unknown name: one line, exit 2
    rows, failed = [], 0
    for n in chosen:
        try:
            r = download(n, revision=revision, cache_dir=cache_dir, force=force)
            rows.append({"name": n, "status": "ok", "source": r.source, "path": str(r.path), "sha256": r.entry.sha256})
        except HubError as e:
            failed += 1
            rows.append({"name": n, "status": "error", "error": str(e)})
    if as_json:
        echo_json(rows)
    else:
        for r in rows:
            click.echo(f"{r['name']}: {r['path']} (sha256 verified, {r['source']})" if r["status"] == "ok"
                       else f"{r['name']}: ERROR {r['error']}", err=r["status"] != "ok")
    if failed:
        sys.exit(1)


@main.command("verify")
@click.argument("names", nargs=-1)
@click.option("--revision", default=None, help="Repo revision (default: the entry's pinned one).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Hugging Face cache folder.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_cmd(names, revision, cache_dir, as_json) -> None:
    """sha256 of the local copies of NAME... (default: every entry); exit 1 on any mismatch."""

    chosen = _pretrained_names(names, default_all=True)  # an unknown name: one line, exit 2
    rows = [verify(n, revision=revision, cache_dir=cache_dir) for n in chosen]
    if as_json:
        echo_json(rows)
    else:
        for r in rows:
            where = f" {r['path']} ({r['source']})" if r["path"] else " not downloaded (lipzoo download NAME)"
            click.echo(f"{r['status'].upper():<8} {r['name']}:{where}")
        if not rows:
            click.echo("(no pretrained weights registered yet)", err=True)
    if any(r["status"] == "mismatch" for r in rows):
        click.echo("sha256 mismatch: do not use those files; `lipzoo download NAME --force` fetches them again", err=True)
        sys.exit(1)


@main.command("push")
@click.argument("name")
@click.option("--repo-id", default=None, help="ORG/NAME on the Hub (default: $LIPZOO_HUB_ORG/NAME).")
@click.option("--folder", type=click.Path(file_okay=False, exists=True), default=None,
              help="Model folder (default: cards/NAME of this checkout).")
@click.option("--branch", default="main", show_default=True)
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--message", default=None, help="Commit message.")
def push_cmd(name, repo_id, folder, branch, private, message) -> None:
    """Upload a model folder (card, config.json, weights) through huggingface_hub and pin the new commit."""
    from ..zoo.publish import push_entry as push

    try:
        commit = push(name, repo_id, folder=folder, branch=branch, private=private, commit_message=message)
    except HubError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"pushed {name}: commit {commit} (recorded as the pinned revision in config.json)")


@main.command("card")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every model folder, plus the overview cards/README.md.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when any card is stale.")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Cards folder (default: cards/ of the checkout).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def card_cmd(names, all_, check, root, as_json) -> None:
    """Render model cards (cards/NAME/README.md) from their config.json; --check for CI."""
    from ..zoo.cards import write_cards

    if bool(names) == all_:
        raise click.UsageError("give NAME... or --all (not both)")
    try:  # an unknown NAME (UnknownModelError) is a usage error: exit 2, from the central handler
        done = write_cards(Path(root) if root else CARDS_DIR, list(names) or None, check=check)
    except ValueError as e:  # a malformed config.json: a failure
        raise click.ClickException(str(e)) from None
    if as_json:
        echo_json([d.as_dict() for d in done])
    else:
        for d in done:
            click.echo(f"{d.status:<8} {d.path}")
    stale = [d for d in done if d.status == "stale"]
    if stale:
        click.echo(f"{len(stale)} card(s) stale: run `lipzoo card --all` and commit the result", err=True)
        sys.exit(1)


@main.command("import-1llc")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="All 21 released checkpoints of the paper.")
@click.option("--url-base", default=None, help="Base URL of the release files (default $LIPZOO_1LLC_URL, else the paper's GitHub release).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Folder of the model folders (default: cards/ of the checkout).")
@click.option("--sound", is_flag=True, help="Convert for lipzoo's sound default layers instead of paper_compatible=True (drops CPL/SOC power-iteration state).")
@click.option("--force", is_flag=True, help="Accept a release file whose sha256 differs from the one recorded earlier.")
@click.option("--no-audit", is_flag=True, help="Skip the Lipschitz audit (faster; config.json then records no proven bound).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def import_1llc_cmd(names, all_, url_base, out_dir, sound, force, no_audit, as_json) -> None:
    """Import the paper's released CIFAR-10 checkpoints (NAME: e.g. convnet_xs_sll.cifar10_1llc, or a pattern).

    Downloads each .pth, reads it with torch.load(weights_only=True), converts it and writes
    OUT/NAME/ (model.safetensors, config.json, README.md); the release file's sha256 is trusted on
    first use and checked on later imports.
    """
    from ..zoo.convert import ConversionError, ImportError1LLC, import_1llc

    if all_ and names:
        raise click.UsageError("give NAME... or --all, not both")
    try:
        done = import_1llc(names, all_releases=all_, out=out_dir or CARDS_DIR, base_url=url_base,
                           paper_compatible=not sound, force=force, audit=not no_audit, progress=not as_json,
                           echo=(lambda msg: click.echo(msg, err=True)) if as_json else click.echo)
    except (ImportError1LLC, ConversionError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        echo_json([r.as_dict() for r in done])
        return
    for r in done:
        click.echo(f"wrote {r.folder}  (model.safetensors sha256 {r.weights_sha256})")
