"""``lipzoo train``, ``budget``, ``evaluate`` and ``publish``: from a recipe to a published model
folder. The zoo tooling is imported inside each command (``lipzoo list`` never loads it)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..data import DatasetNotFoundError
from ._app import DeviceType, FiniteFloat, Ticker, echo_json, eps_label, main


@main.command("train")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Run directory (default runs/<name>).")
@click.option("--device", default="cpu", show_default=True, type=DeviceType(), help="cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--data-root", default=None, help="Folder with the data set (else $LIPZOO_DATA / system paths).")
@click.option("--checkpoint-every", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds of training between mid-epoch checkpoints (a checkpoint also ends every epoch).")
def train_cmd(recipe, out_dir, device, resume, data_root, checkpoint_every) -> None:
    """Train the zoo entry described by RECIPE (a YAML file); works under torchrun for DDP."""
    from ..zoo.recipe import Recipe, RecipeError
    from ..zoo.trainer import DivergenceError, train

    try:
        r = Recipe.load(recipe)
    except (RecipeError, KeyError) as e:
        raise click.ClickException(str(e)) from None
    out = Path(out_dir or Path("runs") / r.name)
    try:
        record = train(r, out, device=device, resume=resume, data_root=data_root, checkpoint_every_s=checkpoint_every)
    except (DivergenceError, FileExistsError, DatasetNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps({k: record[k] for k in ("name", "epochs_done", "complete", "wall_time_s")} | {"out": str(out)}))


@main.command("budget")
@click.argument("recipes", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--hours", type=FiniteFloat(0.0, min_open=True, what="a finite number of hours > 0"), default=None,
              help="Wall-clock budget in hours.")
@click.option("--seconds", type=FiniteFloat(0.0, min_open=True, what="a finite number of seconds > 0"), default=None,
              help="Wall-clock budget in seconds.")
@click.option("--device", default="cpu", show_default=True, type=DeviceType())
@click.option("--batches", type=click.IntRange(min=1), default=5, show_default=True, help="Timed training batches per model.")
@click.option("--write", is_flag=True, help="Write the epochs (and the measurement) into each recipe.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def budget_cmd(recipes, hours, seconds, device, batches, write, as_json) -> None:
    """Turn a wall-clock budget into epochs per recipe by timing a few batches (the paper's estimator).

    A budget shorter than one epoch gives one epoch over the first train_limit images of the
    (seeded, shuffled) training split, as many whole batches as fit the budget. A progress bar
    on stderr shows which recipe is being timed and for how long."""
    from ..zoo.lrsearch import apply_budget, estimate_epochs
    from ..zoo.recipe import Recipe

    if (hours is None) == (seconds is None):
        raise click.UsageError("give exactly one of --hours or --seconds")
    budget = seconds if seconds is not None else hours * 3600
    loaded = [(path, Recipe.load(path)) for path in recipes]  # every recipe is checked before any timing
    rows = []
    with Ticker(len(loaded), "budget", "recipe", enabled=not as_json) as ticker:
        for path, r in loaded:
            ticker.bar.set_postfix_str(f"timing 1 warm-up + {batches} batches of {r.name} (batch {r.batch_size})")
            est = estimate_epochs(r, budget, device=device, batches=batches)
            ticker.bar.update(1)
            rows.append({"recipe": path, "name": r.name} | est)
            if write:
                apply_budget(r, est).dump(path)
            if not as_json:
                sub = f" over {est['train_limit']} images (budget < 1 epoch)" if est.get("train_limit") else ""
                ticker.bar.write(f"{r.name:<40} {est['epoch_seconds']:9.1f} s/epoch -> {est['epochs']} epochs{sub}")
    if as_json:
        echo_json(rows)


@main.command("evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images (quick looks).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True, type=DeviceType())
@click.option("--speed/--no-speed", default=True, show_default=True,
              help="Also measure inference images/s and peak memory (lipzoo bench's method).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate_cmd(run_dir, split, limit, batch_size, device, speed, as_json) -> None:
    """Certify a finished run on the test split with its audited Lipschitz bound and measure its
    inference cost; writes RUN_DIR/eval.json (what `lipzoo publish` puts on the card)."""
    from ..zoo.evaluation import RunError, evaluate_run

    try:
        out = evaluate_run(run_dir, split=split, limit=limit, batch_size=batch_size, device=device, speed=speed,
                           progress=not as_json)
    except (RunError, DatasetNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        echo_json(out)
        return
    c = out["certification"]
    click.echo(f"{out['name']}: clean {100 * c['clean_accuracy']:.2f}%, "
               + ", ".join(f"cert {eps_label(k)}: {100 * v:.2f}%" for k, v in c["certified_accuracy"].items())
               + f" ({c['n']} {split} images, L = {c['lipschitz_bound']:.6g}); wrote {Path(run_dir) / 'eval.json'}")


@main.command("publish")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "cards_root", type=click.Path(file_okay=False), default=None,
              help="Folder of the model folders (default: cards/ of this checkout).")
@click.option("--force", is_flag=True,
              help="Replace an existing model folder; publish a run that fails the gate, marked 'undertrained'.")
@click.option("--reproduction", is_flag=True,
              help="The runs retrain published models from their committed recipes: compare their test numbers "
                   "with the published ones and record that on the cards; the published weights stay.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def publish_cmd(run_dirs, cards_root, force, reproduction, as_json) -> None:
    """Publish finished, evaluated runs as cards/<name>/ (weights, config.json with their sha256, card)."""
    from ..zoo.cards import write_cards
    from ..zoo.publish import RunError, publish_run
    from ..zoo.reproduction import record_reproduction

    if reproduction and force:
        raise click.UsageError("--reproduction records a retrain next to the published weights; it takes no --force")
    rows = []
    for run in run_dirs:
        try:
            if reproduction:
                entry = record_reproduction(run, cards_root)
                rows.append({"run": run, "name": entry.name, "reproduction": entry.provenance["reproduction"]})
                if not as_json:
                    r = entry.provenance["reproduction"]
                    click.echo(f"{run}: {'reproduces' if r['reproduced'] else 'does NOT reproduce'} {entry.name} "
                               f"(largest difference {100 * r['max_abs_difference']:.2f} points, tolerance "
                               f"{100 * r['tolerance']:.1f}); recorded on its card")
                continue
            entry = publish_run(run, cards_root, force=force)
        except RunError as e:
            raise click.ClickException(str(e)) from None
        rows.append({"run": run, "name": entry.name, "folder": str(entry.folder), "sha256": entry.sha256,
                     "status": entry.status})
        if not as_json:
            click.echo(f"published {run} -> {entry.folder} (sha256 {entry.sha256[:12]}...)")
    if cards_root:  # the index of the folder published into
        write_cards(cards_root)
    else:
        write_cards()
    if as_json:
        echo_json(rows)
