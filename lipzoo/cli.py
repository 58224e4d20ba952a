"""The ``lipzoo`` command line: thin wrappers over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .layers import LAYERS


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


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
    from .registry import get_architecture, list_models, model_info

    names = list_models(pattern, pretrained=pretrained)
    if layer:
        import fnmatch

        names = [n for n in names if fnmatch.fnmatchcase(get_architecture(n).layer, layer)]
    if as_json:
        _echo_json([model_info(n) for n in names])
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
    """Show what a model is: layer, size, input, parameter count; for a pretrained entry also its
    data set, weights (repo, revision, sha256), metrics and provenance."""
    from .registry import create_model, get_architecture, model_info

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
        _echo_json(info)
        return
    for k, v in info.items():
        if isinstance(v, dict):
            v = json.dumps(v)
        click.echo(f"{k:>21}: {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:>21}: {v}")


def _load_model_for_eval(name: str, dataset: str | None, seed: int, as_json: bool):
    """A model and its data set from a pretrained name, a run directory, or an architecture name."""
    import torch

    from .data import dataset_info
    from .registry import PRETRAINED, create_model

    path = Path(name)
    if path.is_dir() and (path / "recipe.yaml").is_file():
        from .publish import RunError, load_run_model

        try:
            model, recipe = load_run_model(path)
        except RunError as e:
            raise click.ClickException(str(e)) from None
        return model, dataset or recipe.dataset, f"trained run {path}"
    if name in PRETRAINED:
        return create_model(name, pretrained=True), dataset or name.split(".", 1)[1], "pretrained"
    dataset = dataset or "fashion_mnist"
    info = dataset_info(dataset)
    torch.manual_seed(seed)
    model = create_model(name, in_chans=info.in_chans, num_classes=info.num_classes, input_mean=info.mean)
    source = f"freshly initialised (seed {seed}), no trained weights"
    if not as_json:
        click.echo(f"note: {name} has no pretrained weights; certifying a {source} model", err=True)
    return model, dataset, source


@main.command("certify")
@click.argument("name")
@click.option("--dataset", default=None, help="Data set to certify on (default: the model's own, else fashion_mnist).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--eps", "eps_list", multiple=True, type=float, help="Radius (repeatable); default 36/255, 72/255, 108/255, 1.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lipschitz", type=float, default=None,
              help="Proven Lipschitz bound L of the model (default: the audit's guaranteed upper bound, at least 1).")
@click.option("--attack", is_flag=True, help="Also run an l2 PGD attack at each eps (empirical robust accuracy).")
@click.option("--attack-steps", type=int, default=20, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of a freshly initialised model.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def certify_cmd(name, dataset, split, limit, eps_list, batch_size, lipschitz, attack, attack_steps, device, seed, as_json) -> None:
    """Certified robust accuracy of NAME (pretrained name, run directory or architecture) on a data set.

    A point is certified at eps when its float64 top-two margin exceeds sqrt(2) * L * eps.
    """
    from .certify import DEFAULT_EPS, certify, empirical_robust_accuracy
    from .data import DatasetNotFoundError, load_tensors

    model, dataset, source = _load_model_for_eval(name, dataset, seed, as_json)
    model = model.to(device)
    try:
        images, labels = load_tensors(dataset, split, limit=limit)
    except DatasetNotFoundError as e:
        raise click.ClickException(str(e)) from None
    eps = tuple(eps_list) or DEFAULT_EPS
    if lipschitz is None:  # never assume 1: certify with the bound the audit proves for these weights
        from .audit import audit

        lipschitz = max(1.0, float(audit(model, lower=False).upper))
    result = certify(model, images, labels, eps, lipschitz=lipschitz, batch_size=batch_size, progress=not as_json)
    out = {"model": name, "weights": source, "dataset": dataset, "split": split, **result.as_dict()}
    if attack:
        emp = empirical_robust_accuracy(model, images, labels, eps, steps=attack_steps, batch_size=batch_size,
                                        progress=not as_json)
        out["empirical_robust_accuracy"] = {f"{e:.6g}": a for e, a in emp.items()}
    if as_json:
        _echo_json(out)
        return
    click.echo(f"{name} on {dataset} ({split}, {result.n} images), weights: {source}")
    click.echo(result.table())
    if attack:
        click.echo("l2 PGD attack (" + str(attack_steps) + " steps), empirical robust accuracy: "
                   + ", ".join(f"{e:.4g}: {100 * a:.2f}%" for e, a in emp.items()))


@main.command("train")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Run directory (default runs/<name>).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--data-root", default=None, help="Folder with the data set (else $LIPZOO_DATA / system paths).")
def train_cmd(recipe, out_dir, device, resume, data_root) -> None:
    """Train the zoo entry described by RECIPE (a YAML file); works under torchrun for DDP."""
    from .data import DatasetNotFoundError
    from .training import DivergenceError, Recipe, RecipeError, train

    try:
        r = Recipe.load(recipe)
    except (RecipeError, KeyError) as e:
        raise click.ClickException(str(e)) from None
    out = Path(out_dir or Path("runs") / r.name)
    try:
        record = train(r, out, device=device, resume=resume, data_root=data_root)
    except (DivergenceError, FileExistsError, DatasetNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps({k: record[k] for k in ("name", "epochs_done", "complete", "wall_time_s")} | {"out": str(out)}))


@main.command("evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images (quick looks).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--speed/--no-speed", default=True, show_default=True,
              help="Also measure inference images/s and peak memory (lipzoo bench's method).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate_cmd(run_dir, split, limit, batch_size, device, speed, as_json) -> None:
    """Certify a finished run on the test split with its audited Lipschitz bound and measure its
    inference cost; writes RUN_DIR/eval.json (what `lipzoo publish` puts on the card)."""
    from .data import DatasetNotFoundError
    from .publish import RunError, evaluate_run

    try:
        out = evaluate_run(run_dir, split=split, limit=limit, batch_size=batch_size, device=device, speed=speed,
                           progress=not as_json)
    except (RunError, DatasetNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        _echo_json(out)
        return
    c = out["certification"]
    click.echo(f"{out['name']}: clean {100 * c['clean_accuracy']:.2f}%, "
               + ", ".join(f"cert {k}: {100 * v:.2f}%" for k, v in c["certified_accuracy"].items())
               + f" ({c['n']} {split} images, L = {c['lipschitz_bound']:.6g}); wrote {Path(run_dir) / 'eval.json'}")


@main.command("publish")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "cards_root", type=click.Path(file_okay=False), default=None,
              help="Folder of the model folders (default: cards/ of this checkout).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def publish_cmd(run_dirs, cards_root, as_json) -> None:
    """Publish finished, evaluated runs as cards/<name>/ (weights, config.json with their sha256, card)."""
    from .cards import write_cards
    from .publish import RunError, publish_run

    rows = []
    for run in run_dirs:
        try:
            entry = publish_run(run, cards_root)
        except RunError as e:
            raise click.ClickException(str(e)) from None
        rows.append({"run": run, "name": entry.name, "folder": str(entry.folder), "sha256": entry.sha256})
        if not as_json:
            click.echo(f"published {run} -> {entry.folder} (sha256 {entry.sha256[:12]}...)")
    if cards_root:  # the index of the folder published into
        write_cards(cards_root)
    else:
        write_cards()
    if as_json:
        _echo_json(rows)


@main.command("budget")
@click.argument("recipes", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--hours", type=float, default=None, help="Wall-clock budget in hours.")
@click.option("--seconds", type=float, default=None, help="Wall-clock budget in seconds.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batches", type=int, default=5, show_default=True, help="Timed training batches per model.")
@click.option("--write", is_flag=True, help="Write the epochs (and the measurement) into each recipe.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def budget_cmd(recipes, hours, seconds, device, batches, write, as_json) -> None:
    """Turn a wall-clock budget into epochs per recipe by timing a few batches (the paper's estimator).

    A budget shorter than one epoch gives one epoch over the first train_limit images of the
    (seeded, shuffled) training split, as many whole batches as fit the budget."""
    from .training import Recipe, apply_budget, estimate_epochs

    if (hours is None) == (seconds is None):
        raise click.UsageError("give exactly one of --hours or --seconds")
    budget = seconds if seconds is not None else hours * 3600
    rows = []
    for path in recipes:
        r = Recipe.load(path)
        est = estimate_epochs(r, budget, device=device, batches=batches)
        rows.append({"recipe": path, "name": r.name} | est)
        if write:
            apply_budget(r, est).dump(path)
        if not as_json:
            sub = f" over {est['train_limit']} images (budget < 1 epoch)" if est.get("train_limit") else ""
            click.echo(f"{r.name:<40} {est['epoch_seconds']:9.1f} s/epoch -> {est['epochs']} epochs{sub}")
    if as_json:
        _echo_json(rows)


@main.command("bench")
@click.option("--layer", "layer_pattern", default="*", show_default=True,
              help="Layer ids: shell wildcards, comma-separated (e.g. 'aol,s*'); standard is always added.")
@click.option("--size", "sizes", default="xs,s", show_default=True, help="Comma-separated sizes: xs,s,m,l.")
@click.option("--family", default="convnet", show_default=True, type=click.Choice(["convnet", "tconvnet"]))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed steps first.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed steps (median).")
@click.option("--max-seconds", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Time limit per model (0: none); a slower model is reported as too_slow.")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure peak memory (on CPU a fresh subprocess per model).")
@click.option("--plain/--no-plain", default=True, show_default=True,
              help="Also time inference after lipzoo.export.to_plain.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Folder of the results file benchmark-<device>-<timestamp>.csv.")
@click.option("--compile", "compile_", is_flag=True,
              help="Time the torch.compile'd models (the compilation is reported as compile_s, not timed).")
@click.option("--no-save", is_flag=True, help="Print only; write no results file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench_cmd(layer_pattern, sizes, family, device, batch_size, warmup, repeats, max_seconds, memory, plain,
              compile_, out_dir, no_save, as_json) -> None:
    """Speed (training, inference, plain inference), peak memory and parameters per layer and size,
    each also as a ratio to the standard ConvNet of the same size measured in the same run."""
    from .bench import BenchError, bench_layers, format_table, hardware_fingerprint, save_results

    size_list = tuple(s.strip() for s in sizes.split(",") if s.strip())
    try:
        results = bench_layers(layer_pattern, size_list, family=family, batch_size=batch_size, device=device,
                               warmup=warmup, repeats=repeats, memory=memory, plain=plain,
                               max_seconds=max_seconds or None, progress=not as_json, compile=compile_)
    except BenchError as e:
        raise click.UsageError(str(e)) from None
    hw = hardware_fingerprint(device)
    path = None if no_save else save_results(results, out_dir, fingerprint=hw)
    if as_json:
        _echo_json({"hardware": hw, "file": str(path) if path else None, "results": [r.as_dict() for r in results]})
        return
    click.echo(f"hardware: {hw}")
    click.echo(format_table(results))
    if path:
        click.echo(f"wrote {path}")


# --- distribution: download, verify, push, card ---------------------------------------------------
def _pretrained_names(patterns: tuple[str, ...], default_all: bool) -> list[str]:
    """Registry names matching the patterns (shell wildcards); an unmatched pattern is an error."""
    from .registry import PRETRAINED, get_pretrained, list_models

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
    from .hub import HubError, download
    from .registry import UnknownModelError

    try:
        chosen = _pretrained_names(names, default_all=False)
    except UnknownModelError as e:
        raise click.ClickException(str(e)) from None
    rows, failed = [], 0
    for n in chosen:
        try:
            r = download(n, revision=revision, cache_dir=cache_dir, force=force)
            rows.append({"name": n, "status": "ok", "source": r.source, "path": str(r.path), "sha256": r.entry.sha256})
        except HubError as e:
            failed += 1
            rows.append({"name": n, "status": "error", "error": str(e)})
    if as_json:
        _echo_json(rows)
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
    from .hub import verify
    from .registry import UnknownModelError

    try:
        chosen = _pretrained_names(names, default_all=True)
    except UnknownModelError as e:
        raise click.ClickException(str(e)) from None
    rows = [verify(n, revision=revision, cache_dir=cache_dir) for n in chosen]
    if as_json:
        _echo_json(rows)
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
    from .hub import HubError, push

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
    from .cards import write_cards
    from .registry import CARDS_DIR, UnknownModelError

    if bool(names) == all_:
        raise click.UsageError("give NAME... or --all (not both)")
    try:
        done = write_cards(Path(root) if root else CARDS_DIR, list(names) or None, check=check)
    except (UnknownModelError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        _echo_json([d.as_dict() for d in done])
    else:
        for d in done:
            click.echo(f"{d.status:<8} {d.path}")
    stale = [d for d in done if d.status == "stale"]
    if stale:
        click.echo(f"{len(stale)} card(s) stale: run `lipzoo card --all` and commit the result", err=True)
        sys.exit(1)


@main.command("plot")
@click.option("--bench", "bench_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A benchmark CSV (default: the newest benchmark-*.csv in --results).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Folder of the benchmark files.")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="Training run folders (recipe.yaml + metrics.jsonl) for the accuracies.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Where the PNGs go (default --results).")
@click.option("--size", type=click.Choice(["xs", "s", "m", "l"]), default=None,
              help="Size of the radar chart (default: the one with the most measured layers).")
@click.option("--dataset", default=None, help="Data set of the accuracies and epoch times (default: the most trained one, else cifar10).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plot_cmd(bench_file, results_dir, runs_dir, out_dir, size, dataset, as_json) -> None:
    """Radar and Pareto charts (PNG) from the benchmark results and the measured accuracies."""
    from .bench import BenchError
    from .plots import PlotError, make_plots

    try:
        done = make_plots(bench_file, results_dir=results_dir, runs_dir=runs_dir, out_dir=out_dir, size=size,
                          dataset=dataset)
    except (PlotError, BenchError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        _echo_json(done)
        return
    click.echo(f"from {done['bench']}")
    click.echo(f"wrote {done['radar']['path']}")
    for axis, layers in done["radar"]["not_measured"].items():
        click.echo(f"  {axis}: not measured yet for {', '.join(layers)}")
    p = done["pareto"]
    click.echo(f"wrote {p['path']}  ({p['measured']} of {p['points']} points with a measured certified accuracy)")
    for note in done["notes"]:
        click.echo(f"note: {note}", err=True)


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
    from .convert import ConversionError, ImportError1LLC, import_1llc
    from .registry import CARDS_DIR

    if all_ and names:
        raise click.UsageError("give NAME... or --all, not both")
    try:
        done = import_1llc(names, all_releases=all_, out=out_dir or CARDS_DIR, base_url=url_base,
                           paper_compatible=not sound, force=force, audit=not no_audit, progress=not as_json,
                           echo=(lambda msg: click.echo(msg, err=True)) if as_json else click.echo)
    except (ImportError1LLC, ConversionError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        _echo_json([r.as_dict() for r in done])
        return
    for r in done:
        click.echo(f"wrote {r.folder}  (model.safetensors sha256 {r.weights_sha256})")


# --- audit and export ------------------------------------------------------------------------------
def _model_for_audit(name: str, in_chans: int, num_classes: int, seed: int):
    """A run directory or pretrained name (trained weights, strict load), else a fresh architecture."""
    import torch

    from .registry import PRETRAINED, create_model

    path = Path(name)
    if (path.is_dir() and (path / "recipe.yaml").is_file()) or name in PRETRAINED:
        model, _, source = _load_model_for_eval(name, None, seed, True)
        return model, source
    if path.is_dir():
        raise click.ClickException(f"{path} is a folder but holds no recipe.yaml; expected a run directory "
                                   "written by `lipzoo train` or an architecture name such as convnet_xs_aol")
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
    from .audit import AuditError, audit

    model, source = _model_for_audit(model_or_run_dir, in_chans, num_classes, seed)
    try:
        result = audit(model, lower=not no_lower, attack_steps=attack_steps, attack_batch=attack_batch,
                       power_iters=power_iters, seed=seed, name=model_or_run_dir, progress=not as_json)
    except AuditError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        _echo_json({"weights": source, **result.as_dict()})
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
    from .export import export_model

    model, source = _model_for_audit(model_or_run_dir, in_chans, num_classes, seed)
    if out_path is None:
        stem = Path(model_or_run_dir).name if Path(model_or_run_dir).is_dir() else model_or_run_dir
        out_path = f"{stem}.{'onnx' if fmt == 'onnx' else 'pt'}"
    path = export_model(model, out_path, fmt)
    if as_json:
        _echo_json({"model": model_or_run_dir, "weights": source, "format": fmt, "file": str(path)})
    else:
        click.echo(f"wrote {path} ({fmt}, weights: {source})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
