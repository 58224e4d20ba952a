"""Interleaved timing: the models of one benchmark group timed in turns, one step each per round.

Timing the models one after another (each model's warm-up and repeats, then the next model) lets
a change of the machine's speed during the run (another process on a shared machine, a thermal or
frequency change) fall on some models and not on others, and every ratio to ``standard`` inherits
it. Here every model of one family, size and precision is built first; then, for each phase
(inference, plain inference, training), every round times one call of every model, in an order
that rotates by one model per round (so no model always follows the same neighbour). A slow
stretch of the machine then slows a call of every model alike, and each model's median is taken
over the rounds. The figures are the same as :func:`lipzoo.zoo.measure.measure`'s (median of
``repeats`` timed calls after ``warmup`` untimed ones; the first compiling call untimed).

A model whose building or call raises is reported with that error (out of memory included) and
leaves the rotation; the others go on. ``max_seconds`` bounds the time spent in one model's own
calls: when its calls so far plus its slowest call times the calls it has left in the phase
exceed it, it leaves the rotation with :class:`~lipzoo.zoo.measure.TooSlow`.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..registry import get_architecture
from .measure import TooSlow, build_inference, build_plain, build_training, sync

__all__ = ["measure_interleaved", "PHASES"]

#: the timed phases, in the order they run, and the figure each one gives
PHASES = (("infer", "infer_s"), ("plain", "plain_s"), ("train", "train_s"))


@dataclass
class _Subject:
    """One model in the rotation: its timed calls per phase and what is known about it so far."""

    name: str
    calls: dict[str, Callable[[], None]] = field(default_factory=dict)
    out: dict = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)  # the timed calls per phase
    slowest: dict[str, float] = field(default_factory=dict)  # the slowest call per phase, warm-up included
    spent: float = 0.0
    error: BaseException | None = None

    def fail(self, e: BaseException) -> None:
        self.error, self.calls = e, {}  # drops the models: their memory goes back before the next call


def _build(s: _Subject, x: torch.Tensor, in_chans: int, device: str, plain: bool, compile: bool,
           precision: str) -> None:
    """Build ``s``'s inference model, its plain copy and a training model (each as measure() does)."""
    try:
        model, s.calls["infer"] = build_inference(s.name, x, in_chans, device, compile, precision)
        if plain:
            plain_call, note = build_plain(model, x, device, precision)
            if plain_call is None:
                s.out["note"] = note
            else:
                s.calls["plain"] = plain_call
        s.calls["train"], s.out["params"], compile_s = build_training(s.name, x, in_chans, device, compile, precision)
        if compile_s is not None:
            s.out["compile_s"] = compile_s
    except Exception as e:  # noqa: BLE001 - a model that cannot be built is a row, not a crash
        s.fail(e)


def _call(s: _Subject, phase: str, device: str, timed: bool, left: int, max_seconds: float | None) -> None:
    """One call of ``s`` in ``phase``; ``left``: its calls still to come in the phase after this one."""
    try:
        sync(device)
        t0 = time.perf_counter()
        s.calls[phase]()
        sync(device)
        dt = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - reported in the model's row
        s.fail(e)
        return
    s.spent += dt
    s.slowest[phase] = max(s.slowest.get(phase, 0.0), dt)
    if timed:
        s.times.setdefault(phase, []).append(dt)
    if max_seconds is not None and left and s.spent + s.slowest[phase] * left > max_seconds:
        s.fail(TooSlow(f"one step took {dt:.3g} s; {left} more would overrun the time limit"))


def measure_interleaved(
    names: list[str], *, batch_size: int, device: str, in_chans: int, warmup: int, repeats: int, plain: bool,
    max_seconds: float | None, compile: bool = False, precision: str = "fp32", progress: bool = True,
) -> dict[str, dict | BaseException]:
    """Time ``names`` (architectures of one input size) in turns; per name the figures that
    :func:`~lipzoo.zoo.measure.measure` returns (without memory), or the exception that stopped it."""
    sizes = {get_architecture(n).input_size for n in names}
    if len(sizes) != 1:
        raise ValueError(f"interleaved timing needs models of one input size, got sizes {sorted(sizes)} for {names}")
    size = sizes.pop()
    x = torch.rand(batch_size, in_chans, size, size, device=device)
    subjects = [_Subject(n) for n in names]
    for s in subjects:
        _build(s, x, in_chans, device, plain, compile, precision)
    total = warmup + repeats
    bar = tqdm(total=total * len(PHASES), desc="bench rounds", unit="round", disable=not progress)
    for phase, _ in PHASES:
        for i in range(total):
            bar.set_postfix_str(f"{phase} ({len(names)} models)")
            for k in range(len(subjects)):
                s = subjects[(i + k) % len(subjects)]
                if s.error is None and phase in s.calls:
                    _call(s, phase, device, i >= warmup, total - i - 1, max_seconds)
            bar.update()
        gc.collect()
    bar.close()
    results: dict[str, dict | BaseException] = {}
    for s in subjects:
        if s.error is not None:
            results[s.name] = s.error
            continue
        results[s.name] = s.out | {key: statistics.median(s.times[ph]) for ph, key in PHASES if ph in s.times}
    return results
