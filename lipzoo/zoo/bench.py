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
device is synchronised around every timed step. ``standard`` is always measured in the same run
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

import csv
import fnmatch
import functools
import gc
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .._io import atomic_write_text
from .._provenance import fingerprint
from ..data import DATASETS
from ..export import to_plain
from ..factory import create_model
from ..layers import LAYERS
from ..models import SIZES
from ..registry import get_architecture
from .recipe import training_autocast

__all__ = [
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
]

BASELINE = "standard"
#: figures that get a ``<figure>_vs_standard`` column
RATIO_FIGURES = (
    "params", "train_images_per_s", "infer_images_per_s", "plain_images_per_s",
    "train_peak_mib", "infer_peak_mib",
)
EPOCH_PREFIX = "epoch_s_"
CSV_COLUMNS = (
    ["model", "family", "layer", "size", "device", "batch_size", "status", "params",
     "train_batch_s", "train_images_per_s", "infer_images_per_s", "plain_images_per_s",
     "train_peak_mib", "infer_peak_mib", "memory_method"]
    + [EPOCH_PREFIX + d for d in DATASETS]
    + [f"{f}_vs_standard" for f in RATIO_FIGURES]
    + ["epoch_s_vs_standard", "warmup", "repeats", "compiled", "compile_s", "note", "error", "precision"]
)
#: ``--precision`` choices: "bf16" runs the forward passes under bf16 autocast (weights stay float32)
PRECISIONS = ("fp32", "bf16")
MIB = 2**20


class BenchError(ValueError):
    """Bad benchmark arguments (unknown layer pattern or size, unusable device, ...)."""


class _TooSlow(Exception):
    pass


@dataclass
class BenchResult:
    """One architecture's figures; ``None`` where a figure was not measured (see ``note``/``error``)."""

    model: str
    family: str
    layer: str
    size: str
    device: str
    batch_size: int
    status: str = "ok"  # ok | oom | too_slow | error
    params: int | None = None
    train_batch_s: float | None = None
    train_images_per_s: float | None = None
    infer_images_per_s: float | None = None
    plain_images_per_s: float | None = None
    train_peak_mib: float | None = None
    infer_peak_mib: float | None = None
    memory_method: str | None = None
    epoch_s: dict[str, float | None] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    warmup: int = 2
    repeats: int = 3
    compiled: bool = False  # forward passes through torch.compile (training and inference)
    compile_s: float | None = None  # seconds of the first (compiling) training step, not in the timings
    note: str = ""
    error: str | None = None
    precision: str = "fp32"  # "bf16": forward passes (training, inference, plain) under bf16 autocast

    # backwards-compatible names (the ``bench`` table of earlier versions)
    @property
    def train_ratio(self) -> float | None:
        return self.ratios.get("train_images_per_s_vs_standard")

    @property
    def infer_ratio(self) -> float | None:
        return self.ratios.get("infer_images_per_s_vs_standard")

    def as_dict(self) -> dict:
        """A flat dict with exactly the :data:`CSV_COLUMNS` keys."""
        d = asdict(self)
        epoch, ratios = d.pop("epoch_s"), d.pop("ratios")
        d.update({EPOCH_PREFIX + ds: epoch.get(ds) for ds in DATASETS})
        d.update({c: ratios.get(c) for c in CSV_COLUMNS if c.endswith("_vs_standard")})
        return {c: d[c] for c in CSV_COLUMNS}


# --- fingerprint ------------------------------------------------------------------------------
def hardware_fingerprint(device: str = "cpu") -> dict:
    """Hardware and software the figures were measured on (stored in every results row)."""
    return fingerprint(device)


# --- measuring ----------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _timed(fn: Callable[[], object], device: str, warmup: int, repeats: int, deadline: float | None = None) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed ones.

    With a ``deadline`` (a ``time.perf_counter()`` value) raises :class:`_TooSlow` as soon as the
    remaining calls, predicted from the slowest call so far, cannot finish before it.
    """
    times, slowest = [], 0.0
    total = warmup + repeats
    for i in range(total):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        slowest = max(slowest, dt)
        if i >= warmup:
            times.append(dt)
        if deadline is not None and i + 1 < total and time.perf_counter() + slowest * (total - i - 1) > deadline:
            raise _TooSlow(f"one step took {dt:.3g} s; {total - i - 1} more would overrun the time limit")
    return statistics.median(times)


class _PeakMemory:
    """Peak memory of the ``with`` block above what was in use when it began (bytes in ``.peak``)."""

    def __init__(self, method: str | None, device: str) -> None:
        self.method, self.device, self.peak = method, device, None

    def __enter__(self) -> "_PeakMemory":
        gc.collect()
        if self.method == "cuda_max_allocated":
            dev = torch.device(self.device)
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            self.base = torch.cuda.memory_allocated(dev)
        elif self.method == "cpu_peak_rss":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            self.base = _proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        if self.method == "cuda_max_allocated":
            torch.cuda.synchronize(torch.device(self.device))
            self.peak = torch.cuda.max_memory_allocated(torch.device(self.device)) - self.base
        elif self.method == "cpu_peak_rss":
            self.peak = _proc_status_kib("VmHWM") * 1024 - self.base

    @property
    def mib(self) -> float | None:
        return None if self.peak is None else self.peak / MIB


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")


def _cpu_memory_supported() -> bool:
    return os.access("/proc/self/clear_refs", os.W_OK) and os.path.exists("/proc/self/status")


def _plain_converter() -> tuple[Callable | None, str]:
    """The converter of the plain-inference column and an empty note: ``lipzoo.export.to_plain``.
    A converter of ``None`` comes with the note that says why plain inference was not measured."""
    return to_plain, ""


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _autocast(precision: str, device: str):
    """The context of a timed forward pass: the training recipes' (:func:`lipzoo.zoo.recipe.training_autocast`)."""
    return training_autocast(precision, device)


def _measure(
    name: str, *, batch_size: int, device: str, in_chans: int, warmup: int, repeats: int,
    memory: str | None, plain: bool, deadline: float | None, compile: bool = False, precision: str = "fp32",
) -> dict:
    """The figures of one architecture, measured in this process (raises on OOM or time-out).

    ``compile``: the forward passes go through ``torch.compile``; the first call of each (the
    compilation) runs untimed before the warm-up, the training one's time is ``compile_s``.
    ``precision="bf16"``: every forward pass runs under bf16 autocast (the weights, their
    parametrisation and the loss stay float32), as a recipe with ``precision: bf16`` trains.
    """
    size = get_architecture(name).input_size
    x = torch.rand(batch_size, in_chans, size, size, device=device)
    out: dict = {}

    # inference, fresh model: the memory counts its weights, eval caches and activations
    with _PeakMemory(memory, device) as mem:
        model = create_model(name, in_chans=in_chans).to(device).eval()
        fwd = torch.compile(model) if compile else model

        def infer(m=fwd) -> None:
            with torch.no_grad(), _autocast(precision, device):
                m(x)

        if compile:
            infer()
        out["infer_s"] = _timed(infer, device, warmup, repeats, deadline)
    out["infer_peak_mib"] = mem.mib
    if plain:
        to_plain, why = _plain_converter()
        if to_plain is None:
            out["note"] = why
        else:
            try:
                plain_model = to_plain(model).to(device)
            except Exception as e:  # a layer the exporter cannot convert is reported, not fatal
                out["note"] = f"to_plain failed: {type(e).__name__}: {e}"[:300]
            else:
                out["plain_s"] = _timed(functools.partial(infer, plain_model), device, warmup, repeats, deadline)
                del plain_model
    del model, fwd, infer
    gc.collect()

    # training, fresh model: weights, gradients, momentum buffers and activations of a step
    with _PeakMemory(memory, device) as mem:
        model = create_model(name, in_chans=in_chans).to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        fwd = torch.compile(model) if compile else model

        def train_step() -> None:
            opt.zero_grad(set_to_none=True)
            with _autocast(precision, device):
                z = fwd(x)
            z.float().sum().backward()
            opt.step()

        if compile:
            t0 = time.perf_counter()
            train_step()
            _sync(device)
            out["compile_s"] = time.perf_counter() - t0
        out["train_s"] = _timed(train_step, device, warmup, repeats, deadline)
    out["train_peak_mib"] = mem.mib
    out["params"] = sum(p.numel() for p in params)
    return out


def _memory_subprocess(name: str, *, batch_size: int, in_chans: int, timeout: float, precision: str = "fp32") -> dict:
    """CPU peak memory of one architecture, measured in a fresh interpreter (see the module doc)."""
    args = json.dumps({"name": name, "batch_size": batch_size, "in_chans": in_chans, "threads": torch.get_num_threads(),
                       "precision": precision})
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run([sys.executable, "-m", "lipzoo.zoo.bench", "--memory-worker", args], capture_output=True,
                          text=True, timeout=timeout, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        if proc.returncode in (-9, 137) or "memory" in tail.lower():
            raise MemoryError(f"memory subprocess of {name} died ({tail})")
        raise RuntimeError(f"memory subprocess of {name} failed: {tail}")
    return json.loads(lines[-1])


def _memory_worker(args: str) -> None:
    a = json.loads(args)
    torch.set_num_threads(a["threads"])
    kw = dict(batch_size=a["batch_size"], device="cpu", in_chans=a["in_chans"], plain=False, deadline=None,
              precision=a.get("precision", "fp32"))
    # a first, unmeasured pass of the same model: the resident set also counts the pages of the
    # torch libraries that each kernel touches the first time (about 150 MiB), which are not the model's
    _measure(a["name"], warmup=0, repeats=1, memory=None, **kw)
    out = _measure(a["name"], warmup=1, repeats=2, memory="cpu_peak_rss", **kw)
    print(json.dumps({"train_peak_mib": out["train_peak_mib"], "infer_peak_mib": out["infer_peak_mib"]}))


def bench_model(
    name: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    warmup: int = 2,
    repeats: int = 3,
    in_chans: int = 3,
    memory: bool = True,
    plain: bool = True,
    max_seconds: float | None = 300.0,
    compile: bool = False,
    precision: str = "fp32",
) -> BenchResult:
    """All figures of one architecture (no ratios: :func:`bench_layers` adds those).

    ``memory=False`` skips the peak-memory figures (on CPU they cost a subprocess per model);
    ``plain=False`` skips the inference of ``to_plain``. ``max_seconds`` bounds the time spent on
    this model (``None``: no bound); a model over it gets ``status = "too_slow"``.
    ``compile=True`` times the ``torch.compile``d model (the compilation itself is ``compile_s``;
    peak memory is still that of the eager model). ``precision="bf16"`` measures everything with the
    forward passes under bf16 autocast (see :func:`_measure`).
    """
    if precision not in PRECISIONS:
        raise BenchError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    arch = get_architecture(name)
    res = BenchResult(model=arch.name, family=arch.family, layer=arch.layer, size=arch.size, device=device,
                      batch_size=batch_size, warmup=warmup, repeats=repeats, compiled=compile, precision=precision)
    cuda = device.startswith("cuda")
    method = None
    notes: list[str] = []
    t_start = time.perf_counter()
    try:
        if memory and cuda:
            method = "cuda_max_allocated"
        elif memory and _cpu_memory_supported():
            method = "cpu_peak_rss"
            timeout = max_seconds if max_seconds is not None else None
            mem = _memory_subprocess(arch.name, batch_size=batch_size, in_chans=in_chans, timeout=timeout,
                                     precision=precision)
            res.train_peak_mib, res.infer_peak_mib = mem["train_peak_mib"], mem["infer_peak_mib"]
        elif memory:
            notes.append("CPU peak memory needs Linux /proc/self/clear_refs; not measured")
        res.memory_method = method
        deadline = None if max_seconds is None else t_start + max_seconds
        out = _measure(arch.name, batch_size=batch_size, device=device, in_chans=in_chans, warmup=warmup,
                       repeats=repeats, memory=method if cuda else None, plain=plain, deadline=deadline,
                       compile=compile, precision=precision)
    except subprocess.TimeoutExpired:
        res.status, res.error = "too_slow", f"memory measurement ran over --max-seconds {max_seconds:g}"
    except _TooSlow as e:
        res.status, res.error = "too_slow", f"{e} (--max-seconds {max_seconds:g})"
    except Exception as e:  # noqa: BLE001 - a model that cannot be measured is a row, not a crash
        first = (str(e).splitlines() or [""])[0][:200]
        if _is_oom(e):
            res.status, res.error = "oom", f"out of memory at batch size {batch_size}: {first}"
        else:
            res.status, res.error = "error", f"{type(e).__name__}: {first}"
    else:
        res.params = out["params"]
        res.train_batch_s = out["train_s"]
        res.compile_s = out.get("compile_s")
        res.train_images_per_s = batch_size / out["train_s"]
        res.infer_images_per_s = batch_size / out["infer_s"]
        if "plain_s" in out:
            res.plain_images_per_s = batch_size / out["plain_s"]
        if cuda and memory:
            res.train_peak_mib, res.infer_peak_mib = out["train_peak_mib"], out["infer_peak_mib"]
        notes += [out["note"]] if out.get("note") else []
        for ds, info in DATASETS.items():
            if info.input_size == arch.input_size:
                res.epoch_s[ds] = math.ceil(info.train_size / batch_size) * out["train_s"]
    finally:
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
    if res.params is None:  # still report the size of a model that did not fit
        res.params = sum(p.numel() for p in create_model(arch.name, in_chans=in_chans).parameters() if p.requires_grad)
    res.note = "; ".join(notes)
    return res


# --- the grid -----------------------------------------------------------------------------------
def _select_layers(layer_pattern: str) -> list[str]:
    patterns = [p.strip() for p in layer_pattern.split(",") if p.strip()] or ["*"]
    chosen = [lid for lid in LAYERS if any(fnmatch.fnmatchcase(lid, p) for p in patterns)]
    if not chosen:
        raise BenchError(f"no layer matches {layer_pattern!r}; known layers: {', '.join(LAYERS)} "
                         "(shell wildcards and comma-separated lists allowed)")
    return [BASELINE] + [lid for lid in chosen if lid != BASELINE]


def _check_args(sizes, device: str, batch_size: int, warmup: int, repeats: int,
                precisions: tuple[str, ...] = ("fp32",)) -> None:
    bad_prec = [p for p in precisions if p not in PRECISIONS]
    if bad_prec or not precisions:
        raise BenchError(f"unknown precision(s) {bad_prec or list(precisions)!r}; expected some of {', '.join(PRECISIONS)}")
    bad = [s for s in sizes if s not in SIZES]
    if bad or not sizes:
        raise BenchError(f"unknown size(s) {bad or sizes!r}; expected some of {', '.join(SIZES)}")
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise BenchError(f"batch_size and repeats must be >= 1 and warmup >= 0 "
                         f"(got batch_size={batch_size}, repeats={repeats}, warmup={warmup})")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise BenchError(f"bad device {device!r} ({e}); expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise BenchError(f"device {device!r} is not supported; expected cpu, cuda or cuda:N")


def add_ratios(results: list[BenchResult]) -> None:
    """Fill ``ratios`` of every result from the standard model of the same family, size, batch and precision."""
    base = {(r.family, r.size, r.batch_size, r.device, r.precision): r
            for r in results if r.layer == BASELINE and r.status == "ok"}
    for r in results:
        b = base.get((r.family, r.size, r.batch_size, r.device, r.precision))
        r.ratios = {}
        for f in RATIO_FIGURES:
            v, bv = getattr(r, f), getattr(b, f) if b else None
            r.ratios[f"{f}_vs_standard"] = v / bv if v is not None and bv else None
        bt = b.train_batch_s if b else None
        r.ratios["epoch_s_vs_standard"] = r.train_batch_s / bt if r.train_batch_s is not None and bt else None


def bench_layers(
    layer_pattern: str = "*",
    sizes: tuple[str, ...] = ("xs", "s"),
    *,
    family: str = "convnet",
    batch_size: int = 64,
    device: str = "cpu",
    warmup: int = 2,
    repeats: int = 3,
    memory: bool = True,
    plain: bool = True,
    max_seconds: float | None = 300.0,
    progress: bool = True,
    compile: bool = False,
    precisions: tuple[str, ...] = ("fp32",),
) -> list[BenchResult]:
    """Benchmark every matching layer at every size, always with ``standard`` in the same run.

    ``layer_pattern``: shell wildcards, comma-separated (``"aol,s*"``). Per size and precision,
    ``standard`` is measured first; the other layers follow in the table's order. Ratios to it
    (of the same precision) are filled in. ``precisions``: some of :data:`PRECISIONS`, each a row
    per model ("bf16": forward passes under bf16 autocast).

    Before the first model one untimed training and inference pass of it runs (per precision):
    the process's first kernels pay one-off costs (library pages, oneDNN primitive caches, thread
    pools) that would otherwise slow whichever model happens to be measured first and skew every ratio.
    """
    sizes, precisions = tuple(sizes), tuple(precisions)
    _check_args(sizes, device, batch_size, warmup, repeats, precisions)
    layers = _select_layers(layer_pattern)
    jobs = [(f"{family}_{s}_{lid}", p) for s in sizes for p in precisions for lid in layers]
    for name, _ in jobs:
        get_architecture(name)  # an unknown family fails here, before anything is measured
    results: list[BenchResult] = []
    for p in precisions:  # the process warm-up (see above), never recorded
        _measure(jobs[0][0], batch_size=batch_size, device=device, in_chans=3, warmup=1, repeats=1, memory=None,
                 plain=False, deadline=None, precision=p)
    bar = tqdm(jobs, desc="bench", unit="model", disable=not progress)
    for name, p in bar:
        bar.set_postfix_str(name if len(precisions) == 1 else f"{name} {p}")
        results.append(bench_model(name, batch_size=batch_size, device=device, warmup=warmup, repeats=repeats,
                                   memory=memory, plain=plain, max_seconds=max_seconds, compile=compile,
                                   precision=p))
    add_ratios(results)
    return results


# --- result files -----------------------------------------------------------------------------
#: where results files go unless a folder is given: a folder of the current directory, not the
#: checkout's committed ``results/`` (which only ``--out results/`` updates)
DEFAULT_OUT = "lipzoo-results"


def save_results(results: list[BenchResult], out_dir: str | os.PathLike = DEFAULT_OUT, *,
                 fingerprint: dict | None = None, stamp: str | None = None) -> Path:
    """Write ``<out_dir>/benchmark-<device>-<UTC timestamp>.csv`` atomically; returns its path.

    Every row holds :data:`CSV_COLUMNS` followed by the fingerprint as ``hw_<key>`` columns.
    """
    if not results:
        raise BenchError("no results to save")
    device = results[0].device.split(":")[0]
    fp = fingerprint if fingerprint is not None else hardware_fingerprint(results[0].device)
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(out_dir) / f"benchmark-{device}-{stamp}.csv"
    n = 1
    while path.exists():
        path = Path(out_dir) / f"benchmark-{device}-{stamp}-{n}.csv"
        n += 1
    hw = {f"hw_{k}": v for k, v in fp.items()}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS + list(hw), lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow({k: _csv_value(v) for k, v in (r.as_dict() | hw).items()})
    atomic_write_text(path, buf.getvalue())
    return path


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows of a benchmark CSV with numbers as floats/ints and empty cells as ``None``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist; write one with `lipzoo bench --out DIR`")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("model", "layer", "size", "status") if c not in (reader.fieldnames or [])]
        if missing:
            raise BenchError(f"{path} is not a lipzoo benchmark file (missing columns {missing})")
        rows = list(reader)
    text_cols = {"model", "family", "layer", "size", "device", "status", "memory_method", "note", "error", "precision"}
    out = []
    for row in rows:
        typed: dict = {}
        for k, v in row.items():
            if v == "" or v is None:
                typed[k] = None
            elif v in ("True", "False"):
                typed[k] = v == "True"
            elif k in text_cols or k.startswith("hw_"):
                typed[k] = v
            else:
                try:
                    typed[k] = int(v) if v.lstrip("-").isdigit() else float(v)
                except ValueError:
                    typed[k] = v
        out.append(typed)
    return out


def latest_results(out_dir: str | os.PathLike = DEFAULT_OUT, device: str | None = None) -> Path:
    """The newest ``benchmark-*.csv`` in ``out_dir`` (of ``device`` if given)."""
    pattern = f"benchmark-{device.split(':')[0]}-*.csv" if device else "benchmark-*.csv"
    files = sorted(Path(out_dir).glob(pattern), key=lambda p: (p.stat().st_mtime, p.name))
    if not files:
        raise FileNotFoundError(f"no {pattern} in {out_dir}; run `lipzoo bench --out {out_dir}` first")
    return files[-1]


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: list[BenchResult]) -> str:
    """A fixed-width text table (the human form of ``lipzoo bench``); a ``prec`` column when any row is not fp32."""
    prec = any(r.precision != "fp32" for r in results)
    head = (f"{'model':<24} {'prec ' if prec else ''}{'params':>10} {'train img/s':>11} {'x std':>6} "
            f"{'infer img/s':>11} {'x std':>6} {'plain img/s':>11} {'train MiB':>9} {'x std':>6} {'infer MiB':>9}  status")
    rows = [head, "-" * len(head)]
    for r in results:
        q = r.ratios
        rows.append(
            f"{r.model:<24} {f'{r.precision:<4} ' if prec else ''}{_fmt(r.params, ',d'):>10} "
            f"{_fmt(r.train_images_per_s, '.1f'):>11} "
            f"{_fmt(q.get('train_images_per_s_vs_standard'), '.2f'):>6} {_fmt(r.infer_images_per_s, '.1f'):>11} "
            f"{_fmt(q.get('infer_images_per_s_vs_standard'), '.2f'):>6} {_fmt(r.plain_images_per_s, '.1f'):>11} "
            f"{_fmt(r.train_peak_mib, '.1f'):>9} {_fmt(q.get('train_peak_mib_vs_standard'), '.2f'):>6} "
            f"{_fmt(r.infer_peak_mib, '.1f'):>9}  {r.status}{': ' + r.error if r.error else ''}"
        )
    notes = sorted({r.note for r in results if r.note})
    return "\n".join(rows + [f"note: {n}" for n in notes])


if __name__ == "__main__":  # the CPU memory worker (see _memory_subprocess)
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
        _memory_worker(sys.argv[2])
    else:
        sys.exit("usage: python -m lipzoo.zoo.bench --memory-worker JSON (internal); use `lipzoo bench`")
