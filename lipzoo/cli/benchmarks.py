"""``lipzoo bench`` and ``plot``: speed and memory per layer and size, and the comparison pictures."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import click

from ..layers import LAYERS
from ._app import echo_json, main


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
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, show_default="lipzoo-results",
              help="Folder of the results file benchmark-<device>-<timestamp>.csv (--out results/ updates the "
                   "checkout's committed results).")
@click.option("--compile", "compile_", is_flag=True,
              help="Time the torch.compile'd models (the compilation is reported as compile_s, not timed).")
@click.option("--precision", "precisions", default="fp32", show_default=True,
              help="Comma-separated: fp32, bf16 (forward passes under bf16 autocast); a row per model and precision, "
                   "ratios to standard of the same precision.")
@click.option("--interleave/--sequential", default=True, show_default=True,
              help="Time the models of one size in turns, a step of each per round (a slow stretch of the machine "
                   "then slows every model alike), or one model after another.")
@click.option("--no-save", is_flag=True, help="Print only; write no results file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench_cmd(layer_pattern, sizes, family, device, batch_size, warmup, repeats, max_seconds, memory, plain,
              compile_, precisions, interleave, out_dir, no_save, as_json) -> None:
    """Speed (training, inference, plain inference), peak memory and parameters per layer and size,
    each also as a ratio to the standard ConvNet of the same size measured in the same run."""
    from ..zoo.bench import DEFAULT_OUT, BenchError, bench_layers, format_table, hardware_fingerprint, save_results

    size_list = tuple(s.strip() for s in sizes.split(",") if s.strip())
    precision_list = tuple(dict.fromkeys(p.strip().lower() for p in precisions.split(",") if p.strip()))
    try:
        results = bench_layers(layer_pattern, size_list, family=family, batch_size=batch_size, device=device,
                               warmup=warmup, repeats=repeats, memory=memory, plain=plain,
                               max_seconds=max_seconds or None, progress=not as_json, compile=compile_,
                               precisions=precision_list, interleave=interleave)
    except BenchError as e:
        raise click.UsageError(str(e)) from None
    hw = hardware_fingerprint(device)
    path = None if no_save else save_results(results, out_dir or DEFAULT_OUT, fingerprint=hw)
    if as_json:
        echo_json({"hardware": hw, "file": str(path) if path else None, "results": [r.as_dict() for r in results]})
        return
    click.echo(f"hardware: {hw}")
    click.echo("timing: " + ("the models of each size in turns, a step of each per round" if interleave
                             else "one model after another"))
    click.echo(format_table(results))
    if path:
        click.echo(f"wrote {path}")


def _layer_ids(patterns: str) -> list[str]:
    """Layer ids of the table matching comma-separated shell wildcards (standard left out); a
    pattern that matches nothing is a usage error."""
    ids: list[str] = []
    for pat in (p.strip() for p in patterns.split(",")):
        if not pat:
            continue
        hits = [lid for lid in LAYERS if fnmatch.fnmatchcase(lid, pat) and lid != "standard"]
        if not hits:
            raise click.BadParameter(f"{pat!r} matches no layer; expected ids (or wildcards) of: "
                                     f"{', '.join(lid for lid in LAYERS if lid != 'standard')}", param_hint="'--layer'")
        ids += [h for h in hits if h not in ids]
    if not ids:
        raise click.BadParameter("give at least one layer id or pattern", param_hint="'--layer'")
    return ids


@main.command("plot")
@click.option("--bench", "bench_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A benchmark CSV (default: the newest benchmark-*.csv in --results).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=None, show_default="lipzoo-results",
              help="Folder of the benchmark files (results/ for the checkout's committed ones).")
@click.option("--layer", "layer_pattern", default="*", show_default=True,
              help="Layers to compare (shell wildcards, comma-separated); the file must cover every one of them.")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="Training run folders (recipe.yaml + metrics.jsonl) for the accuracies.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where the PNGs go (default --results; --out results/ updates the committed pictures).")
@click.option("--size", type=click.Choice(["xs", "s", "m", "l"]), default=None,
              help="Size of the radar chart (default: the one with the most measured layers).")
@click.option("--dataset", default=None, help="Data set of the accuracies and epoch times (default: the most trained one, else cifar10).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plot_cmd(bench_file, results_dir, layer_pattern, runs_dir, out_dir, size, dataset, as_json) -> None:
    """Radar and Pareto charts (PNG) from the benchmark results and the measured accuracies, and the
    bundled models' learning curves against training time (curves-<dataset>.png).

    Refuses (exit 1, naming them) when the benchmark file lacks any of the --layer layers."""
    from ..zoo.bench import DEFAULT_OUT
    from ..zoo.curves import zoo_curves
    from ..zoo.plots import PlotError, make_plots

    results_dir = results_dir or DEFAULT_OUT
    layers = _layer_ids(layer_pattern)
    done = make_plots(bench_file, results_dir=results_dir, runs_dir=runs_dir, out_dir=out_dir, size=size,
                      dataset=dataset, layers=layers)
    ds = done["pareto"]["dataset"]
    try:
        done["curves"] = zoo_curves(None, Path(out_dir or results_dir) / f"curves-{ds}.png", dataset=ds)
    except PlotError as err:  # no bundled model of this data set has per-epoch records: the charts stand alone
        done["curves"], done["notes"] = None, done["notes"] + [f"no learning-curve picture: {err}"]
    if as_json:
        echo_json(done)
        return
    click.echo(f"from {done['bench']}")
    click.echo(f"wrote {done['radar']['path']}")
    for axis, layers in done["radar"]["not_measured"].items():
        click.echo(f"  {axis}: not measured yet for {', '.join(layers)}")
    p = done["pareto"]
    click.echo(f"wrote {p['path']}  ({p['measured']} of {p['points']} points with a measured certified accuracy)")
    if done["curves"]:
        click.echo(f"wrote {done['curves']['path']}  (learning curves of {len(done['curves']['models'])} bundled models)")
    for note in done["notes"]:
        click.echo(f"note: {note}", err=True)
