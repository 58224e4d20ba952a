"""torch.compile should see every lipzoo model as ONE graph: no graph breaks, in train and eval mode.

For each layer id of the layer table, a small ConvNet of the paper's shape (zero-channel
concatenation, 1x1 first conv, blocks of conv + MaxMin, channel halving and pixel unshuffle, the
last block with 1x1 kernels, max pooling, the layer's own conv or dense head) with a quarter of
ConvNet-XS's width (4), two blocks of one layer each and 8x8 inputs, so every code path of the
layer is traced (3x3 and 1x1 convs, the head) at a fraction of the XS model's tracing time, is
traced by ``torch._dynamo.explain`` on two images (Dynamo tracing only: the captured graphs run
eagerly, nothing is compiled by inductor):

- ``train``: train mode, a forward pass with gradients (what ``compile: true`` recipes compile);
- ``eval``: eval mode under ``torch.no_grad()``, twice: the first call builds the eval weight
  caches, the second takes them (a compiled model re-traces that path on its second call).

Breaks that cannot be avoided go into :data:`ALLOWED` (with the reason; none so far). Breaks
that are known and fixable in the layer files are listed in :data:`KNOWN` with their exact cause:
while they occur, the test reports the combination as xfail naming them; a break that matches no
entry fails the test, and so does an entry whose break no longer occurs (remove it: the list
only shrinks). The combinations in :data:`SLOW` trace for long (many breaks, or loops of many
small ops unrolled: 6-20 s of CPU each where most others take 2-5 s): they run only with
``LIPZOO_SLOW_TESTS=1``, so that the default run stays under about a minute.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import pytest
import torch

from lipzoo.layers import LAYERS
from lipzoo.models.convnet import ConvNet, ConvNetConfig

dynamo = pytest.importorskip("torch._dynamo")

MODES = ("train", "eval")
ALL = frozenset(LAYERS)


@dataclass(frozen=True)
class Cause:
    """A graph break: its Dynamo reason, and a frame of its stack (file name, text of the source line)."""

    reason: str  # first line of Dynamo's break reason
    file: str  # a file of the break's user stack (its name)...
    line: str  # ...whose source line contains this text
    layers: frozenset[str]
    modes: tuple[str, ...]
    why: str

    def matches(self, brk) -> bool:
        return brk.reason.splitlines()[0].strip() == self.reason and any(
            f.filename.endswith("/" + self.file) and self.line in (f.line or "") for f in brk.user_stack or ())


#: unavoidable breaks (none so far); same form as KNOWN
ALLOWED: tuple[Cause, ...] = ()

#: fixable breaks, found on torch 2.14 (CPU); the layer files are not this test's to change
KNOWN: tuple[Cause, ...] = (
    Cause("Unsupported method call", "_linalg.py", "torch._C._DisableFuncTorch()", frozenset({"bcop", "aoc"}),
          ("train", "eval"),
          "power_start_vector's `with torch._C._DisableFuncTorch():` (pybind11 __new__) inside "
          "power_iteration_sigma, the Bjorck prescaling of BCOP/BjorckLinear and AOC; its seeded "
          "torch.Generator breaks the graph too"),
)

#: (layer id, mode) whose tracing takes long (see the module doc); revisit when KNOWN shrinks
SLOW: frozenset[tuple[str, str]] = frozenset({
    ("bcop", "train"), ("bcop", "eval"), ("aoc", "train"), ("aoc", "eval"),  # Bjorck loops + 30-40 breaks
})

RUN_SLOW = os.environ.get("LIPZOO_SLOW_TESTS") == "1"


def small_model(layer: str) -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(ConvNetConfig(layer=layer, base_width=4, num_blocks=2, input_size=8, layers_per_block=1,
                                 in_chans=1))


@pytest.fixture(autouse=True)
def quiet_dynamo_trace_log():
    """torch's structured trace logger emits DEBUG records while tracing; pytest's log capture
    would format every one of them (several times slower tracing)."""
    log = logging.getLogger("torch.__trace")
    old = log.propagate
    log.propagate = False
    yield
    log.propagate = old
    dynamo.reset()  # no compiled code or guards of these models outlive the test


def _explain(model: torch.nn.Module, x: torch.Tensor):
    dynamo.reset()
    return dynamo.explain(model)(x)


def _where(brk) -> str:
    frames = [f for f in brk.user_stack or () if "/lipzoo/" in f.filename] or list(brk.user_stack or ())
    f = frames[-1] if frames else None
    return f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} ({(f.line or '').strip()})" if f else "?"


@pytest.mark.parametrize(("layer", "mode"), [
    pytest.param(lid, mode, marks=pytest.mark.skipif((lid, mode) in SLOW and not RUN_SLOW,
                                                     reason="slow to trace; LIPZOO_SLOW_TESTS=1 runs it"))
    for lid in LAYERS for mode in MODES])
def test_no_graph_breaks(layer, mode):
    model = small_model(layer).train(mode == "train")
    x = torch.rand(2, 1, 8, 8)
    t0 = time.process_time()
    if mode == "train":
        outs = [_explain(model, x)]
    else:
        with torch.no_grad():
            outs = [_explain(model, x), _explain(model, x)]  # cache miss, then cache hit
    took = time.process_time() - t0
    causes = [c for c in ALLOWED + KNOWN if layer in c.layers and mode in c.modes]
    seen: set[Cause] = set()
    for call, out in enumerate(outs, 1):
        assert out.graph_count >= 1
        for brk in out.break_reasons:
            hit = next((c for c in causes if c.matches(brk)), None)
            assert hit is not None, (f"{layer} ({mode}, call {call}): undocumented graph break at {_where(brk)}:\n"
                                     f"{brk.reason[:600]}")
            seen.add(hit)
        if not out.break_reasons:
            assert out.graph_break_count == 0, (layer, mode, call, out.graph_break_count)
    gone = [c for c in causes if c not in seen]
    assert not gone, f"{layer} ({mode}): no longer breaks at {[c.file + ': ' + c.line for c in gone]}; remove the entry"
    assert took < 60 or (layer, mode) in SLOW, f"tracing {layer} ({mode}) took {took:.0f} s of CPU: add it to SLOW"
    known = [c for c in seen if c in KNOWN]
    if known:
        n = sum(o.graph_break_count for o in outs)
        pytest.xfail(f"{n} known graph break(s): " + "; ".join(f"{c.file} `{c.line}`: {c.reason}" for c in known))


def test_the_lists_name_real_layers_and_modes():
    for c in ALLOWED + KNOWN:
        assert c.layers <= ALL and c.layers and set(c.modes) <= set(MODES) and len(c.why) > 20
    assert {lid for lid, _ in SLOW} <= ALL and {m for _, m in SLOW} <= set(MODES)
