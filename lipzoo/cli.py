"""The ``lipzoo`` command line: thin wrappers over the library.

Errors: every command ends a bad input or a failure with ONE line on stderr,
``lipzoo <command>: error: <what was wrong and what is expected>``, and exit status 2 for usage
errors (bad options, unknown names) or 1 for failures (missing data, bad files, failed checks).
The global ``--debug`` flag shows the full traceback instead.

The library is imported at module level. The zoo tooling that only some commands need
(``lipzoo.zoo``: the trainer, publishing, benchmarks, plots, cards, the paper importer) is
imported inside those commands, so that ``lipzoo list``, ``info`` or ``certify`` start without
loading it; those are the only imports of lipzoo modules inside functions in the package.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import click

from ._version import __version__
from .audit import AuditError, audit
from .certify import DEFAULT_EPS, certify, empirical_robust_accuracy, resolve_bound
from .data import DATASETS, DatasetNotFoundError, dataset_info, load_tensors
from .export import export_model
from .factory import create_model
from .hub import HubError, download, verify
from .layers import LAYERS
from .radius import Radius
from .registry import (
    CARDS_DIR,
    PRETRAINED,
    PretrainedEntry,
    UnknownModelError,
    get_architecture,
    get_pretrained,
    list_models,
    model_info,
)

#: exit status of usage errors (bad options, unknown names) and of failures
EXIT_USAGE, EXIT_FAILURE = 2, 1


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def _message(e: BaseException) -> str:
    """The exception's own message (a KeyError's without the quotes repr adds)."""
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) and type(e).__str__ is KeyError.__str__:
        return e.args[0]
    return str(e) or type(e).__name__


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class CLIError(click.ClickException):
    """A library error shown as one line, with the exit status of its kind."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _is_user_error(e: BaseException) -> bool:
    """Errors that describe bad input or a failed operation (not a bug): lipzoo's own exception
    types and the standard library's ValueError, KeyError and OSError (FileNotFoundError ...)."""
    return isinstance(e, (ValueError, KeyError, OSError)) or type(e).__module__.split(".")[0] == "lipzoo"


class LipzooGroup(click.Group):
    """The ``lipzoo`` group: one place that turns errors into one line on stderr."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            if getattr(e, "ctx", None) is None and not hasattr(e, "command_path"):
                e.command_path = " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if ctx.params.get("debug") or not _is_user_error(e):
                raise

            err = CLIError(_message(e), EXIT_USAGE if isinstance(e, UnknownModelError) else EXIT_FAILURE)
            err.command_path = " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
            raise err from e

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            if isinstance(e, _NO_ARGS_IS_HELP):  # `lipzoo` alone: the help text, as click shows it
                e.show()
                sys.exit(e.exit_code)
            ctx = getattr(e, "ctx", None)
            where = getattr(e, "command_path", None) or (ctx.command_path if ctx is not None else None) or "lipzoo"
            msg = _one_line(e.format_message())
            if isinstance(e, click.UsageError):
                msg += f" (see '{where} --help')"
            click.echo(f"{where}: error: {msg}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo(f"{prog_name or 'lipzoo'}: aborted", err=True)
            sys.exit(EXIT_FAILURE)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


@click.group(name="lipzoo", cls=LipzooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lipzoo")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error instead of one line.")
def main(debug: bool) -> None:
    """lipzoo: certifiably robust 1-Lipschitz image classifiers.

    Errors end in one line on stderr (exit status 2: bad usage or unknown name; 1: failure);
    --debug shows the traceback.
    """


@main.command("list")
@click.argument("pattern", default="*")
@click.option("--layer", default=None, help="Only this layer id (wildcards allowed), e.g. 'sll'.")
@click.option("--pretrained", is_flag=True, help="List pretrained entries (arch.dataset) instead of architectures.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(pattern: str, layer: str | None, pretrained: bool, as_json: bool) -> None:
    """List model names matching PATTERN (shell wildcards, e.g. 'convnet_xs_*')."""

    names = list_models(pattern, pretrained=pretrained)
    if layer:
        import fnmatch

        names = [n for n in names if fnmatch.fnmatchcase(get_architecture(n).layer, layer)]
    if as_json:
        _echo_json([model_info(n) for n in names])
        return
    for n in names:
        status = model_info(n).get("status") if pretrained else None
        click.echo(f"{n}  [{status}]" if status else n)
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
    for key, value in _info_lines(info):
        click.echo(f"{key:<10} {value}")


def _eps_label(key: str) -> str:
    """The label of a stored radius key ('0.141176' -> '36/255'); a key that is no number as it is."""
    try:
        return Radius.parse(key).label
    except ValueError:
        return key


def _info_lines(info: dict) -> list[tuple[str, str]]:
    """The few lines of ``lipzoo info`` (the full record is ``--json``)."""
    kind = "orthogonal" if info["orthogonal"] else ("1-Lipschitz" if info["lipschitz"] else "unconstrained")
    lines = [
        ("name", info["name"] if not info.get("pretrained") else f"{info['name']} (pretrained weights)"),
        ("model", f"{info['family']} size {info['size']}: {info['blocks']} blocks, base width {info['base_width']}, "
                  f"{info['input_size']}x{info['input_size']} input, {info['trainable_parameters']:,} trainable parameters"),
        ("layer", f"{info['layer']} ({kind}): {info['citation']}, {info['paper']}"),
    ]
    if not info.get("pretrained"):
        entries = info.get("pretrained_entries") or []
        lines.append(("weights", ", ".join(entries) if entries else "none registered (lipzoo list --pretrained)"))
        return lines
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
        cert = ", ".join(f"{_eps_label(k)} {100 * v:.2f}%" for k, v in (m.get("certified_accuracy") or {}).items())
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


class FiniteFloat(click.ParamType):
    """A finite float (no NaN or infinity) >= ``min`` (> ``min`` when ``min_open``)."""

    name = "float"

    def __init__(self, min: float, min_open: bool = False, what: str = "a number") -> None:
        self.min, self.min_open, self.what = min, min_open, what

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float) and math.isfinite(value):
            v = value
        else:
            try:
                v = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number; expected {self.what}", param, ctx)
        if not math.isfinite(v) or v < self.min or (self.min_open and v == self.min):
            self.fail(f"{value!r} is not allowed; expected {self.what}", param, ctx)
        return v


class DeviceType(click.ParamType):
    """A torch device string that exists on this machine (cpu, cuda, cuda:N, mps)."""

    name = "device"

    def convert(self, value, param, ctx) -> str:
        import torch

        try:
            dev = torch.device(value)
        except (RuntimeError, ValueError):
            self.fail(f"{value!r} is not a device; expected cpu, cuda or cuda:N", param, ctx)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                self.fail(f"{value!r}: CUDA is not available on this machine; use --device cpu", param, ctx)
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                self.fail(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)", param, ctx)
        elif dev.type == "mps" and not torch.backends.mps.is_available():
            self.fail(f"{value!r}: MPS is not available on this machine; use --device cpu", param, ctx)
        elif dev.type not in ("cpu", "cuda", "mps"):
            self.fail(f"{value!r} is not supported; expected cpu, cuda or cuda:N", param, ctx)
        return value


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
            from .zoo.publish import load_run_model

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
    import torch


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


def _dataset_choice() -> click.Choice:
    return click.Choice(list(DATASETS))


@main.command("certify")
@click.argument("name")
@click.option("--dataset", default=None, type=_dataset_choice(),
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
        _echo_json(out)
        return
    click.echo(f"{name} on {dataset} ({split}, {result.n} images), weights: {source}")
    click.echo(f"L = {lip:.8g} ({why})")
    click.echo(result.table())
    if attack:
        click.echo("l2 PGD attack (" + str(attack_steps) + " steps), empirical robust accuracy: "
                   + ", ".join(f"{Radius(e).label}: {100 * a:.2f}%" for e, a in emp.items()))


@main.command("train")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Run directory (default runs/<name>).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--data-root", default=None, help="Folder with the data set (else $LIPZOO_DATA / system paths).")
@click.option("--checkpoint-every", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds of training between mid-epoch checkpoints (a checkpoint also ends every epoch).")
def train_cmd(recipe, out_dir, device, resume, data_root, checkpoint_every) -> None:
    """Train the zoo entry described by RECIPE (a YAML file); works under torchrun for DDP."""
    from .zoo.recipe import Recipe, RecipeError
    from .zoo.trainer import DivergenceError, train

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
    from .zoo.publish import RunError, evaluate_run

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
               + ", ".join(f"cert {_eps_label(k)}: {100 * v:.2f}%" for k, v in c["certified_accuracy"].items())
               + f" ({c['n']} {split} images, L = {c['lipschitz_bound']:.6g}); wrote {Path(run_dir) / 'eval.json'}")


@main.command("publish")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "cards_root", type=click.Path(file_okay=False), default=None,
              help="Folder of the model folders (default: cards/ of this checkout).")
@click.option("--force", is_flag=True,
              help="Replace an existing model folder; publish a run that fails the gate, marked 'undertrained'.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def publish_cmd(run_dirs, cards_root, force, as_json) -> None:
    """Publish finished, evaluated runs as cards/<name>/ (weights, config.json with their sha256, card)."""
    from .zoo.cards import write_cards
    from .zoo.publish import RunError, publish_run

    rows = []
    for run in run_dirs:
        try:
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
        _echo_json(rows)


class _Ticker:
    """A progress bar over a few long calls whose elapsed time keeps moving while each call runs
    (a background thread refreshes it twice a second); a no-op when disabled."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool) -> None:
        import threading

        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True) if enabled else None

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self.bar.refresh()

    def __enter__(self) -> "_Ticker":
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.close()


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
    from .zoo.lrsearch import apply_budget, estimate_epochs
    from .zoo.recipe import Recipe

    if (hours is None) == (seconds is None):
        raise click.UsageError("give exactly one of --hours or --seconds")
    budget = seconds if seconds is not None else hours * 3600
    loaded = [(path, Recipe.load(path)) for path in recipes]  # every recipe is checked before any timing
    rows = []
    with _Ticker(len(loaded), "budget", "recipe", enabled=not as_json) as ticker:
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
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, show_default="lipzoo-results",
              help="Folder of the results file benchmark-<device>-<timestamp>.csv (--out results/ updates the "
                   "checkout's committed results).")
@click.option("--compile", "compile_", is_flag=True,
              help="Time the torch.compile'd models (the compilation is reported as compile_s, not timed).")
@click.option("--precision", "precisions", default="fp32", show_default=True,
              help="Comma-separated: fp32, bf16 (forward passes under bf16 autocast); a row per model and precision, "
                   "ratios to standard of the same precision.")
@click.option("--no-save", is_flag=True, help="Print only; write no results file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench_cmd(layer_pattern, sizes, family, device, batch_size, warmup, repeats, max_seconds, memory, plain,
              compile_, precisions, out_dir, no_save, as_json) -> None:
    """Speed (training, inference, plain inference), peak memory and parameters per layer and size,
    each also as a ratio to the standard ConvNet of the same size measured in the same run."""
    from .zoo.bench import DEFAULT_OUT, BenchError, bench_layers, format_table, hardware_fingerprint, save_results

    size_list = tuple(s.strip() for s in sizes.split(",") if s.strip())
    precision_list = tuple(dict.fromkeys(p.strip().lower() for p in precisions.split(",") if p.strip()))
    try:
        results = bench_layers(layer_pattern, size_list, family=family, batch_size=batch_size, device=device,
                               warmup=warmup, repeats=repeats, memory=memory, plain=plain,
                               max_seconds=max_seconds or None, progress=not as_json, compile=compile_,
                               precisions=precision_list)
    except BenchError as e:
        raise click.UsageError(str(e)) from None
    hw = hardware_fingerprint(device)
    path = None if no_save else save_results(results, out_dir or DEFAULT_OUT, fingerprint=hw)
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

    chosen = _pretrained_names(names, default_all=True)  # an unknown name: one line, exit 2
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
    from .zoo.publish import push_entry as push

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
    from .zoo.cards import write_cards

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


def _layer_ids(patterns: str) -> list[str]:
    """Layer ids of the table matching comma-separated shell wildcards (standard left out); a
    pattern that matches nothing is a usage error."""
    import fnmatch

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
    """Radar and Pareto charts (PNG) from the benchmark results and the measured accuracies.

    Refuses (exit 1, naming them) when the benchmark file lacks any of the --layer layers."""
    from .zoo.bench import DEFAULT_OUT
    from .zoo.plots import make_plots

    results_dir = results_dir or DEFAULT_OUT
    layers = _layer_ids(layer_pattern)
    done = make_plots(bench_file, results_dir=results_dir, runs_dir=runs_dir, out_dir=out_dir, size=size,
                      dataset=dataset, layers=layers)
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
    from .zoo.convert import ConversionError, ImportError1LLC, import_1llc

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
    """Trained weights (run directory, model folder or pretrained name; strict load), else a
    freshly initialised architecture with ``in_chans`` and ``num_classes``."""
    import torch


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
