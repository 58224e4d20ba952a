"""Speed, memory and size of every layer x size, side by side with the ``standard`` baseline.

What is measured for each architecture ``{family}_{size}_{layer}`` (random inputs of the
family's native size, 3 channels, 10 classes):

- **training throughput**: one step is forward + ``out.sum().backward()`` + SGD(momentum 0.9)
  step, as in the paper's timing code; images/s = batch size / median step time. From the same
  median step time, **seconds per epoch** of every data set of :data:`lipzoo.data.DATASETS`
  whose input size is the family's: ``ceil(train_size / batch_size) * step time``. (1-channel
  and 100-class data sets differ from the measured model only in the first 1x1 convolution and
  the head, which this derivation ignores.)
- **inference throughput**: eval mode under ``torch.no_grad()`` with the eval weight caches warm
  (the warm-up pass builds them; the one-off cost is excluded), of the parametrised model and,
  when :func:`lipzoo.export.to_plain` is available, of its plain-torch copy.
- **peak memory**, training (weights, gradients, momentum buffers, activations of a step) and
  inference (weights, eval caches, activations of a forward pass), each in a fresh model:

  * CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the model was moved
    to the device (``method = cuda_max_allocated``), as the paper measured it;
  * CPU: growth of the peak resident set size (Linux ``VmHWM``, reset through
    ``/proc/self/clear_refs``) over the resident size before the model was built, measured in a
    fresh Python subprocess per model so that no other model's freed memory is reused, with
    glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the system, after
    one unmeasured pass of the same model (else the ~150 MiB of torch library pages that the
    first kernels touch would be counted) (``method = cpu_peak_rss``). It counts everything the
    process touched (allocator slack, oneDNN scratch), so read it as an upper bound and compare
    through the ratio to standard. ``--no-memory`` skips it (one subprocess per model).
- **trainable parameters**.

Every model is measured once per asked-for precision (``precision`` column; ``--precision
fp32,bf16``): with ``bf16`` the forward passes (training, inference, plain inference) run under
bf16 autocast as a recipe with ``precision: bf16`` trains (weights, their parametrisation and
the loss stay float32), and its ratios are to the ``standard`` row of the same precision.

Warm-up steps are excluded; every time is the median of ``repeats`` timed steps; on CUDA the
device is synchronised around every timed step. By default the models of one size and precision
are timed in turns, one step of each per round (:mod:`lipzoo.zoo.interleave`), so a slow spell of
a shared machine falls on every model alike; ``interleave=False`` times one model after another. ``standard`` is always measured in the same run
and every figure is also given as ``<figure>_vs_standard`` (value / the standard model's value
of the same family and size; > 1 means faster for throughputs, larger for memory, parameters
and epoch times; epoch time ratios are the same for every data set, hence one column).

Models that do not fit are reported, not fatal: a CUDA (or CPU) out-of-memory gives
``status = oom``; on any device a model whose measurement would take longer than
``max_seconds`` (predicted from its first step, or its memory subprocess running over) gives
``status = too_slow``. Results go to ``<out>/benchmark-<device>-<UTC timestamp>.csv`` with
the hardware and software fingerprint in its ``hw_*`` columns (written atomically). ``<out>``
defaults to :data:`DEFAULT_OUT` (``./lipzoo-results``), never the checkout's committed
``results/``: pass ``results/`` explicitly to update the committed files.
"""

from __future__ import annotations

import fnmatch
import gc
import math
import subprocess
import time
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from ..data import DATASETS
from ..factory import create_model
from ..layers import LAYERS
from ..models import SIZES
from ..registry import get_architecture
from .bench_results import (
    BASELINE,
    CSV_COLUMNS,
    DEFAULT_OUT,
    EPOCH_PREFIX,
    PRECISIONS,
    RATIO_FIGURES,
    BenchError,
    BenchResult,
    add_ratios,
    format_table,
    hardware_fingerprint,
    latest_results,
    read_results,
    save_results,
)
from .interleave import measure_interleaved
from .measure import TooSlow, cpu_memory_supported, is_oom, measure, memory_subprocess

__all__ = [
    "BenchOptions",
    "BenchResult",
    "BenchError",
    "bench_model",
    "bench_layers",
    "format_table",
    "hardware_fingerprint",
    "save_results",
    "DEFAULT_OUT",
    "read_results",
    "latest_results",
    "CSV_COLUMNS",
    "RATIO_FIGURES",
    "add_ratios",
    "BASELINE",
    "EPOCH_PREFIX",
    "PRECISIONS",
]


@dataclass(frozen=True)
class BenchOptions:
    """How every model of a benchmark run is measured (:func:`bench_model`, :func:`bench_layers`).

    ``memory=False`` skips the peak-memory figures (on CPU they cost a subprocess per model);
    ``plain=False`` skips the inference of ``to_plain``. ``max_seconds`` bounds the time spent on
    one model (``None``: no bound); a model over it gets ``status = "too_slow"``. ``compile=True``
    times the ``torch.compile``d model (the compilation itself is ``compile_s``; peak memory is
    still that of the eager model). ``interleave=True`` (:func:`bench_layers`) times the models of
    one size and precision in turns, a step of each per round (:mod:`lipzoo.zoo.interleave`);
    ``False`` times them one after another.
    """

    batch_size: int = 64
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 3
    memory: bool = True
    plain: bool = True
    max_seconds: float | None = 300.0
    compile: bool = False
    interleave: bool = True

    def check(self) -> None:
        """Raise :class:`BenchError` naming what is wrong (numbers out of range, an unusable device)."""
        if self.batch_size < 1 or self.repeats < 1 or self.warmup < 0:
            raise BenchError(f"batch_size and repeats must be >= 1 and warmup >= 0 "
                             f"(got batch_size={self.batch_size}, repeats={self.repeats}, warmup={self.warmup})")
        try:
            dev = torch.device(self.device)
        except RuntimeError as e:
            raise BenchError(f"bad device {self.device!r} ({e}); expected cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BenchError(f"device {self.device!r} asked for but CUDA is not available here; use --device cpu")
        if dev.type not in ("cpu", "cuda"):
            raise BenchError(f"device {self.device!r} is not supported; expected cpu, cuda or cuda:N")


# --- one model ----------------------------------------------------------------------------------
def bench_model(name: str, options: BenchOptions | None = None, *, in_chans: int = 3, precision: str = "fp32",
                **overrides) -> BenchResult:
    """All figures of one architecture (no ratios: :func:`bench_layers` adds those).

    Measured as ``options`` says (:class:`BenchOptions`; default its defaults), with ``overrides``
    of its fields, e.g. ``bench_model(name, batch_size=8, memory=False)``. ``precision="bf16"``
    measures everything with the forward passes under bf16 autocast (see
    :func:`lipzoo.zoo.measure.measure`). A model that runs out of memory, over ``max_seconds`` or
    into an error is a row with that ``status``, not an exception.
    """
    opts = replace(options or BenchOptions(), **overrides)
    if precision not in PRECISIONS:
        raise BenchError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    arch = get_architecture(name)
    res = _new_result(name, opts, precision, interleaved=False)
    cuda = opts.device.startswith("cuda")
    notes: list[str] = []
    t_start = time.perf_counter()
    try:
        res.memory_method = _memory_method(res, opts, in_chans, precision, notes)
        deadline = None if opts.max_seconds is None else t_start + opts.max_seconds
        out = measure(arch.name, batch_size=opts.batch_size, device=opts.device, in_chans=in_chans,
                      warmup=opts.warmup, repeats=opts.repeats, memory=res.memory_method if cuda else None,
                      plain=opts.plain, deadline=deadline, compile=opts.compile, precision=precision)
    except Exception as e:  # noqa: BLE001 - a model that cannot be measured is a row, not a crash
        _failed(res, e, opts)
    else:
        notes += _fill(res, out, opts, arch.input_size)
    finally:
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
    return _finish(res, notes, in_chans)


def _new_result(name: str, opts: BenchOptions, precision: str, interleaved: bool) -> BenchResult:
    arch = get_architecture(name)
    return BenchResult(model=arch.name, family=arch.family, layer=arch.layer, size=arch.size, device=opts.device,
                       batch_size=opts.batch_size, warmup=opts.warmup, repeats=opts.repeats, compiled=opts.compile,
                       precision=precision, interleaved=interleaved)


def _failed(res: BenchResult, e: BaseException, opts: BenchOptions) -> None:
    """``res``'s status and one-line error for the exception that stopped its measurement."""
    if isinstance(e, subprocess.TimeoutExpired):
        res.status, res.error = "too_slow", f"memory measurement ran over --max-seconds {opts.max_seconds:g}"
    elif isinstance(e, TooSlow):
        res.status, res.error = "too_slow", f"{e} (--max-seconds {opts.max_seconds:g})"
    else:
        first = (str(e).splitlines() or [""])[0][:200]
        if is_oom(e):
            res.status, res.error = "oom", f"out of memory at batch size {opts.batch_size}: {first}"
        else:
            res.status, res.error = "error", f"{type(e).__name__}: {first}"


def _finish(res: BenchResult, notes: list[str], in_chans: int) -> BenchResult:
    if res.params is None:  # still report the size of a model that did not fit
        res.params = sum(p.numel() for p in create_model(res.model, in_chans=in_chans).parameters() if p.requires_grad)
    res.note = "; ".join(notes)
    return res


def _memory_method(res: BenchResult, opts: BenchOptions, in_chans: int, precision: str,
                   notes: list[str]) -> str | None:
    """How peak memory is measured for ``res`` (``None``: not at all). On CPU this is the
    fresh-interpreter measurement, run here (its figures go into ``res``)."""
    if not opts.memory:
        return None
    if opts.device.startswith("cuda"):
        return "cuda_max_allocated"
    if not cpu_memory_supported():
        notes.append("CPU peak memory needs Linux /proc/self/clear_refs; not measured")
        return None
    mem = memory_subprocess(res.model, batch_size=opts.batch_size, in_chans=in_chans, timeout=opts.max_seconds,
                            precision=precision)
    res.train_peak_mib, res.infer_peak_mib = mem["train_peak_mib"], mem["infer_peak_mib"]
    return "cpu_peak_rss"


def _fill(res: BenchResult, out: dict, opts: BenchOptions, input_size: int) -> list[str]:
    """Put the measured figures ``out`` into ``res`` (throughputs, epoch times); returns their notes."""
    res.params = out["params"]
    res.train_batch_s = out["train_s"]
    res.compile_s = out.get("compile_s")
    res.train_images_per_s = opts.batch_size / out["train_s"]
    res.infer_images_per_s = opts.batch_size / out["infer_s"]
    if "plain_s" in out:
        res.plain_images_per_s = opts.batch_size / out["plain_s"]
    if opts.device.startswith("cuda") and opts.memory:
        res.train_peak_mib, res.infer_peak_mib = out["train_peak_mib"], out["infer_peak_mib"]
    for ds, info in DATASETS.items():
        if info.input_size == input_size:
            res.epoch_s[ds] = math.ceil(info.train_size / opts.batch_size) * out["train_s"]
    return [out["note"]] if out.get("note") else []


# --- the grid -----------------------------------------------------------------------------------
def _select_layers(layer_pattern: str) -> list[str]:
    patterns = [p.strip() for p in layer_pattern.split(",") if p.strip()] or ["*"]
    chosen = [lid for lid in LAYERS if any(fnmatch.fnmatchcase(lid, p) for p in patterns)]
    if not chosen:
        raise BenchError(f"no layer matches {layer_pattern!r}; known layers: {', '.join(LAYERS)} "
                         "(shell wildcards and comma-separated lists allowed)")
    return [BASELINE] + [lid for lid in chosen if lid != BASELINE]


def _check_grid(sizes: tuple[str, ...], precisions: tuple[str, ...]) -> None:
    bad_prec = [p for p in precisions if p not in PRECISIONS]
    if bad_prec or not precisions:
        raise BenchError(f"unknown precision(s) {bad_prec or list(precisions)!r}; expected some of {', '.join(PRECISIONS)}")
    bad = [s for s in sizes if s not in SIZES]
    if bad or not sizes:
        raise BenchError(f"unknown size(s) {bad or sizes!r}; expected some of {', '.join(SIZES)}")


def bench_layers(
    layer_pattern: str = "*",
    sizes: tuple[str, ...] = ("xs", "s"),
    options: BenchOptions | None = None,
    *,
    family: str = "convnet",
    progress: bool = True,
    precisions: tuple[str, ...] = ("fp32",),
    **overrides,
) -> list[BenchResult]:
    """Benchmark every matching layer at every size, always with ``standard`` in the same run.

    ``layer_pattern``: shell wildcards, comma-separated (``"aol,s*"``). Every model is measured as
    ``options`` says, with ``overrides`` of its fields (``bench_layers("aol", ("xs",), memory=False)``;
    see :class:`BenchOptions`). Per size and precision, ``standard`` is measured first; the other
    layers follow in the table's order. Ratios to it (of the same precision) are filled in.
    ``precisions``: some of :data:`PRECISIONS`, each a row per model ("bf16": forward passes under
    bf16 autocast).

    With ``interleave`` (the default) the models of one size and precision are timed in turns
    (:func:`_bench_group`). Else they are timed one after another, and before the first model one
    untimed training and inference pass of it runs (per precision): the process's first kernels
    pay one-off costs (library pages, oneDNN primitive caches, thread pools) that would otherwise
    slow whichever model happens to be measured first and skew every ratio.
    """
    opts = replace(options or BenchOptions(), **overrides)
    sizes, precisions = tuple(sizes), tuple(precisions)
    _check_grid(sizes, precisions)
    opts.check()
    layers = _select_layers(layer_pattern)
    jobs = [(f"{family}_{s}_{lid}", p) for s in sizes for p in precisions for lid in layers]
    for name, _ in jobs:
        get_architecture(name)  # an unknown family fails here, before anything is measured
    if opts.interleave:
        results = [r for s in sizes for p in precisions
                   for r in _bench_group([f"{family}_{s}_{lid}" for lid in layers], opts, p, progress)]
        add_ratios(results)
        return results
    results: list[BenchResult] = []
    for p in precisions:  # the process warm-up (see above), never recorded
        measure(jobs[0][0], batch_size=opts.batch_size, device=opts.device, in_chans=3, warmup=1, repeats=1,
                memory=None, plain=False, deadline=None, precision=p)
    bar = tqdm(jobs, desc="bench", unit="model", disable=not progress)
    for name, p in bar:
        bar.set_postfix_str(name if len(precisions) == 1 else f"{name} {p}")
        results.append(bench_model(name, opts, precision=p))
    add_ratios(results)
    return results


def _bench_group(names: list[str], opts: BenchOptions, precision: str, progress: bool) -> list[BenchResult]:
    """The rows of ``names`` (one size), timed in turns by :func:`~lipzoo.zoo.interleave.measure_interleaved`;
    peak memory is measured per model first, as :func:`bench_model` measures it (on CUDA in a pass of its own)."""
    rows, notes, left = [], {}, []
    for name in names:
        res, notes[name] = _new_result(name, opts, precision, interleaved=True), []
        rows.append(res)
        try:
            res.memory_method = _memory_method(res, opts, 3, precision, notes[name])
            if res.memory_method == "cuda_max_allocated":
                peaks = measure(name, batch_size=opts.batch_size, device=opts.device, in_chans=3, warmup=0, repeats=1,
                                memory=res.memory_method, plain=False, deadline=None, precision=precision)
                res.train_peak_mib, res.infer_peak_mib = peaks["train_peak_mib"], peaks["infer_peak_mib"]
        except Exception as e:  # noqa: BLE001 - reported in its row; the others are still timed
            _failed(res, e, opts)
        else:
            left.append(name)
    timed = measure_interleaved(left, batch_size=opts.batch_size, device=opts.device, in_chans=3, warmup=opts.warmup,
                                repeats=opts.repeats, plain=opts.plain, max_seconds=opts.max_seconds,
                                compile=opts.compile, precision=precision, progress=progress) if left else {}
    for res in rows:
        out = timed.get(res.model)
        if isinstance(out, BaseException):
            _failed(res, out, opts)
        elif out is not None:
            notes[res.model] += _fill(res, out, opts, get_architecture(res.model).input_size)
        _finish(res, notes[res.model], 3)
    if opts.device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
    return rows
