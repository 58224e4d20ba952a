"""The ``lipzoo`` group and what its commands share: one-line errors, parameter types, helpers.

Errors: every command ends a bad input or a failure with ONE line on stderr,
``lipzoo <command>: error: <what was wrong and what is expected>``, and exit status 2 for usage
errors (bad options, unknown names) or 1 for failures (missing data, bad files, failed checks).
The global ``--debug`` flag shows the full traceback instead.
"""

from __future__ import annotations

import json
import math
import re
import sys

import click

from .._version import __version__
from ..data import DATASETS
from ..radius import Radius
from ..registry import UnknownModelError

__all__ = ["main", "CLIError", "LipzooGroup", "EXIT_USAGE", "EXIT_FAILURE", "echo_json", "eps_label", "FiniteFloat",
           "DeviceType", "dataset_choice", "Ticker"]

#: exit status of usage errors (bad options, unknown names) and of failures

EXIT_USAGE, EXIT_FAILURE = 2, 1


def echo_json(obj) -> None:
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


def eps_label(key: str) -> str:
    """The label of a stored radius key ('0.141176' -> '36/255'); a key that is no number as it is."""
    try:
        return Radius.parse(key).label
    except ValueError:
        return key


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


def dataset_choice() -> click.Choice:
    return click.Choice(list(DATASETS))


class Ticker:
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

    def __enter__(self) -> "Ticker":
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.close()
