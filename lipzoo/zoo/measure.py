"""How one architecture is measured: timed steps, peak memory, and the CPU memory subprocess.

- **training**: one step is forward + ``out.sum().backward()`` + SGD(momentum 0.9) step, as in the
  paper's timing code; **inference**: eval mode under ``torch.no_grad()`` with the eval weight
  caches warm (the warm-up pass builds them), of the parametrised model and of its plain-torch
  copy (:func:`lipzoo.export.to_plain`). Warm-up steps are excluded; every time is the median of
  ``repeats`` timed steps; on CUDA the device is synchronised around every timed step.
- **peak memory**, training and inference, each in a fresh model: on CUDA
  ``torch.cuda.max_memory_allocated`` above the allocation before the model was built
  (``cuda_max_allocated``); on CPU the growth of the peak resident set size (``VmHWM``, reset
  through ``/proc/self/clear_refs``), measured in a fresh interpreter per model
  (:func:`memory_subprocess`, ``python -m lipzoo.zoo.measure --memory-worker``) after one
  unmeasured pass of the same model (``cpu_peak_rss``). See :mod:`lipzoo.zoo.bench` for the whole
  method and the result files.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

from ..export import to_plain
from ..factory import create_model
from ..registry import get_architecture
from .recipe import training_autocast

__all__ = ["TooSlow", "PeakMemory", "timed", "measure", "memory_subprocess", "cpu_memory_supported", "plain_converter",
           "is_oom", "MIB", "build_inference", "build_plain", "build_training", "inference_call", "sync"]

MIB = 2**20


class TooSlow(Exception):
    """A model whose measurement would run past its deadline."""


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def timed(fn: Callable[[], object], device: str, warmup: int, repeats: int, deadline: float | None = None) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed ones.

    With a ``deadline`` (a ``time.perf_counter()`` value) raises :class:`TooSlow` as soon as the
    remaining calls, predicted from the slowest call so far, cannot finish before it.
    """
    times, slowest = [], 0.0
    total = warmup + repeats
    for i in range(total):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        slowest = max(slowest, dt)
        if i >= warmup:
            times.append(dt)
        if deadline is not None and i + 1 < total and time.perf_counter() + slowest * (total - i - 1) > deadline:
            raise TooSlow(f"one step took {dt:.3g} s; {total - i - 1} more would overrun the time limit")
    return statistics.median(times)


class PeakMemory:
    """Peak memory of the ``with`` block above what was in use when it began (bytes in ``.peak``)."""

    def __init__(self, method: str | None, device: str) -> None:
        self.method, self.device, self.peak = method, device, None

    def __enter__(self) -> "PeakMemory":
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


def cpu_memory_supported() -> bool:
    return os.access("/proc/self/clear_refs", os.W_OK) and os.path.exists("/proc/self/status")


def plain_converter() -> tuple[Callable | None, str]:
    """The converter of the plain-inference column and an empty note: ``lipzoo.export.to_plain``.
    A converter of ``None`` comes with the note that says why plain inference was not measured."""
    return to_plain, ""


def is_oom(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def measure(
    name: str, *, batch_size: int, device: str, in_chans: int, warmup: int, repeats: int,
    memory: str | None, plain: bool, deadline: float | None, compile: bool = False, precision: str = "fp32",
) -> dict:
    """The figures of one architecture, measured in this process (raises on OOM or :class:`TooSlow`).

    ``memory``: the peak-memory method (``cuda_max_allocated``, ``cpu_peak_rss``) or ``None``.
    ``compile``: the forward passes go through ``torch.compile``; the first call of each (the
    compilation) runs untimed before the warm-up, the training one's time is ``compile_s``.
    ``precision="bf16"``: every forward pass runs under bf16 autocast (the weights, their
    parametrisation and the loss stay float32), as a recipe with ``precision: bf16`` trains.
    """
    size = get_architecture(name).input_size
    x = torch.rand(batch_size, in_chans, size, size, device=device)
    times = functools.partial(timed, device=device, warmup=warmup, repeats=repeats, deadline=deadline)
    out = _inference(name, x, in_chans, device, times, memory, plain, compile, precision)
    gc.collect()
    return out | _training(name, x, in_chans, device, times, memory, compile, precision)


def build_inference(name: str, x: torch.Tensor, in_chans: int, device: str, compile: bool,
                    precision: str) -> tuple[torch.nn.Module, Callable[[], None]]:
    """A fresh eval-mode model and its timed call (a ``no_grad`` forward of ``x``); with ``compile``
    the compiling first call has run."""
    model = create_model(name, in_chans=in_chans).to(device).eval()
    infer = inference_call(torch.compile(model) if compile else model, x, device, precision)
    if compile:
        infer()
    return model, infer


def inference_call(model: Callable, x: torch.Tensor, device: str, precision: str) -> Callable[[], None]:
    """One inference of ``x``: ``model(x)`` under ``no_grad`` (and bf16 autocast for ``precision="bf16"``)."""

    def infer() -> None:
        with torch.no_grad(), training_autocast(precision, device):
            model(x)

    return infer


def build_plain(model: torch.nn.Module, x: torch.Tensor, device: str, precision: str) -> tuple[Callable | None, str]:
    """The timed inference of ``model``'s plain-torch copy, or ``None`` and the note that says why not."""
    convert, why = plain_converter()
    if convert is None:
        return None, why
    try:
        plain_model = convert(model).to(device)
    except Exception as e:  # a layer the exporter cannot convert is reported, not fatal
        return None, f"to_plain failed: {type(e).__name__}: {e}"[:300]
    return inference_call(plain_model, x, device, precision), ""


def build_training(name: str, x: torch.Tensor, in_chans: int, device: str, compile: bool,
                   precision: str) -> tuple[Callable[[], None], int, float | None]:
    """A fresh model's training step (forward + ``sum().backward()`` + SGD with momentum), its number
    of trainable parameters and, with ``compile``, the seconds of the compiling first step (else ``None``)."""
    model = create_model(name, in_chans=in_chans).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    fwd = torch.compile(model) if compile else model

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with training_autocast(precision, device):
            z = fwd(x)
        z.float().sum().backward()
        opt.step()

    compile_s = None
    if compile:
        t0 = time.perf_counter()
        train_step()
        sync(device)
        compile_s = time.perf_counter() - t0
    return train_step, sum(p.numel() for p in params), compile_s


def _inference(name: str, x: torch.Tensor, in_chans: int, device: str, times: Callable, memory: str | None,
               plain: bool, compile: bool, precision: str) -> dict:
    """Inference of a fresh model: its time, peak memory (weights, eval caches, activations) and
    the time of its plain-torch copy."""
    out: dict = {}
    with PeakMemory(memory, device) as mem:
        model, infer = build_inference(name, x, in_chans, device, compile, precision)
        out["infer_s"] = times(infer)
    out["infer_peak_mib"] = mem.mib
    if plain:
        plain_infer, note = build_plain(model, x, device, precision)
        if plain_infer is None:
            out["note"] = note
        else:
            out["plain_s"] = times(plain_infer)
    return out


def _training(name: str, x: torch.Tensor, in_chans: int, device: str, times: Callable, memory: str | None,
              compile: bool, precision: str) -> dict:
    """Training steps of a fresh model: their time, the compilation time and the peak memory
    (weights, gradients, momentum buffers and activations of a step)."""
    out: dict = {}
    with PeakMemory(memory, device) as mem:
        train_step, out["params"], compile_s = build_training(name, x, in_chans, device, compile, precision)
        if compile_s is not None:
            out["compile_s"] = compile_s
        out["train_s"] = times(train_step)
    out["train_peak_mib"] = mem.mib
    return out


def memory_subprocess(name: str, *, batch_size: int, in_chans: int, timeout: float, precision: str = "fp32") -> dict:
    """CPU peak memory of one architecture, measured in a fresh interpreter (see the module doc)."""
    args = json.dumps({"name": name, "batch_size": batch_size, "in_chans": in_chans, "threads": torch.get_num_threads(),
                       "precision": precision})
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run([sys.executable, "-m", "lipzoo.zoo.measure", "--memory-worker", args], capture_output=True,
                          text=True, timeout=timeout, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        if proc.returncode in (-9, 137) or "memory" in tail.lower():
            raise MemoryError(f"memory subprocess of {name} died ({tail})")
        raise RuntimeError(f"memory subprocess of {name} failed: {tail}")
    return json.loads(lines[-1])


def memory_worker(args: str) -> None:
    a = json.loads(args)
    torch.set_num_threads(a["threads"])
    kw = dict(batch_size=a["batch_size"], device="cpu", in_chans=a["in_chans"], plain=False, deadline=None,
              precision=a.get("precision", "fp32"))
    # a first, unmeasured pass of the same model: the resident set also counts the pages of the
    # torch libraries that each kernel touches the first time (about 150 MiB), which are not the model's
    measure(a["name"], warmup=0, repeats=1, memory=None, **kw)
    out = measure(a["name"], warmup=1, repeats=2, memory="cpu_peak_rss", **kw)
    print(json.dumps({"train_peak_mib": out["train_peak_mib"], "infer_peak_mib": out["infer_peak_mib"]}))


if __name__ == "__main__":  # the CPU memory worker (see memory_subprocess)
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
        memory_worker(sys.argv[2])
    else:
        sys.exit("usage: python -m lipzoo.zoo.measure --memory-worker JSON (internal); use `lipzoo bench`")
