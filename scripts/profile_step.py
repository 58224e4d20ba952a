#!/usr/bin/env python
"""Where a training step's time goes, per layer: the evidence behind the speed table.

For each layer, one training step of ConvNet-<size> (``lipzoo bench``'s step: forward,
``out.sum().backward()``, SGD with momentum) is run under ``torch.profiler`` after warm-up steps,
and the self CPU time of every operator is summed into a few kinds:

- ``convolution``  convolutions and their backward (``aten::convolution*``, ``mkldnn``/``slow_conv``);
- ``matmul``       matrix products (``mm``, ``bmm``, ``addmm``, ``matmul``, ``linalg_*``);
- ``fft``          FFTs (``_fft_*``);
- ``copy``         copies and layout changes (``copy_``, ``clone``, ``contiguous``, ``cat``, ``stack``);
- ``elementwise``  everything else (activations, sums, scaling, optimizer updates, autograd glue).

The profiled step is the median of ``--repeats`` profiled steps (by total time). Each kind is also
expressed in units of the ``standard`` ConvNet's whole step, so a row reads "this layer spends
1.1 standard-steps in convolutions" and shows which part of its cost is the layer's maths
(e.g. CPL and SLL convolve twice per layer, SOC once per Taylor term) and which is overhead.

    python scripts/profile_step.py --layer standard,cpl,sll,soc --size xs --batch-size 64 --out results/profile-xs

Writes ``profile-<device>-<size>-<UTC time>.json`` (every operator's self time, hardware included)
and ``.csv`` (kinds per layer) and a stacked bar PNG into ``--out`` (default ``./lipzoo-results``),
each through a temporary name, and prints a markdown table. Run it on an otherwise idle core.

``--conv-rate`` adds the roof those convolutions run against: for every distinct convolution shape
of the ``standard`` ConvNet-<size> (channels, kernel, image size, at ``--batch-size``) it times a
forward + backward of that convolution alone (input needing its gradient, as inside a network), in
the default and in channels-last memory, and a plain matrix product with the same
multiply-accumulates as the forward (the im2col form: out-channels x in-channels*k*k times
in-channels*k*k x batch*pixels); all three as GMAC/s (a forward + backward counts 3 forwards).
Convolutions near the matrix product's rate leave nothing for a faster convolution code to gain.
The rows go into the JSON (``conv_rates``) and a second table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import torch

KINDS = ("convolution", "matmul", "fft", "copy", "elementwise")
_CONV = ("convolution", "conv2d", "mkldnn_conv", "slow_conv", "conv_depthwise", "_convolution")
_MATMUL = ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::baddbmm", "aten::linalg_", "aten::_linalg_")
_COPY = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::stack", "aten::_to_copy",
         "aten::resolve_conj", "aten::_conj_physical", "aten::conj_physical")


def kind_of(op: str) -> str:
    """The kind of a profiler operator name (see the module doc)."""
    if any(c in op for c in _CONV):
        return "convolution"
    if op.startswith(_MATMUL):
        return "matmul"
    if op.startswith("aten::_fft") or op.startswith("aten::fft"):
        return "fft"
    if op.startswith(_COPY):
        return "copy"
    return "elementwise"


def profile_layer(layer: str, size: str, batch_size: int, warmup: int, repeats: int) -> dict:
    """Self CPU time per operator (seconds) of the median of ``repeats`` profiled training steps."""
    from torch.profiler import ProfilerActivity, profile

    from lipzoo import create_model

    torch.manual_seed(0)
    model = create_model(f"convnet_{size}_{layer}", in_chans=1).train()
    x = torch.rand(batch_size, 1, 32, 32)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).sum().backward()
        opt.step()

    for _ in range(warmup):
        step()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        wall = time.perf_counter() - t0
        ops: dict[str, float] = {}
        calls = 0
        for e in prof.key_averages():
            ops[e.key] = ops.get(e.key, 0.0) + e.self_cpu_time_total / 1e6
            calls += e.count
        runs.append({"wall_s": wall, "ops": ops, "op_calls": calls})
    runs.sort(key=lambda r: sum(r["ops"].values()))
    best = runs[len(runs) // 2]
    kinds = dict.fromkeys(KINDS, 0.0)
    for op, s in best["ops"].items():
        kinds[kind_of(op)] += s
    return {"layer": layer, "size": size, "batch_size": batch_size, "step_s": sum(best["ops"].values()),
            "wall_s": best["wall_s"], "op_calls": best["op_calls"], "kinds_s": kinds,
            "wall_s_all": [r["wall_s"] for r in runs],
            "top_ops": sorted(best["ops"].items(), key=lambda kv: -kv[1])[:15]}


def conv_shapes(size: str, batch_size: int) -> list[dict]:
    """The distinct (in, out, kernel, stride, padding, height, width) of the standard ConvNet's convs.

    Recorded from every ``conv2d`` call of one forward (whatever module makes it): the input as the
    convolution sees it, after any explicit (e.g. circular) padding.
    """
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    from lipzoo import create_model

    seen: dict[tuple, dict] = {}

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (F.conv2d, torch.conv2d):
                x, w = args[0], args[1]
                stride = kwargs.get("stride", args[3] if len(args) > 3 else 1)
                pad = kwargs.get("padding", args[4] if len(args) > 4 else 0)
                stride, pad = (v[0] if isinstance(v, (tuple, list)) else v for v in (stride, pad))
                key = (w.shape[1], w.shape[0], w.shape[-1], stride, pad, *x.shape[-2:])
                seen.setdefault(key, dict(zip(("cin", "cout", "k", "stride", "pad", "h", "w"), key)))
            return func(*args, **kwargs)

    model = create_model(f"convnet_{size}_standard", in_chans=1).eval()
    with torch.no_grad(), Record():
        model(torch.rand(1, 1, 32, 32))
    return [s | {"batch_size": batch_size} for s in seen.values()]


def conv_rate(shape: dict, repeats: int) -> dict:
    """GMAC/s of one convolution's forward + backward (both memory layouts) and of the same-size matmul."""
    import torch.nn.functional as F

    from lipzoo.zoo.measure import timed

    b, cin, cout, k, h, w = (shape[n] for n in ("batch_size", "cin", "cout", "k", "h", "w"))
    weight = torch.randn(cout, cin, k, k, requires_grad=True)
    x0 = torch.randn(b, cin, h, w)
    h_out, w_out = F.conv2d(x0[:1], weight, stride=shape["stride"], padding=shape["pad"]).shape[-2:]
    macs = b * h_out * w_out * cout * cin * k * k
    row = dict(shape, h_out=h_out, w_out=w_out, gmacs_per_fwd=macs / 1e9)
    for name, fmt in (("conv", torch.contiguous_format), ("conv_channels_last", torch.channels_last)):
        x = x0.contiguous(memory_format=fmt).requires_grad_()

        def step() -> None:
            F.conv2d(x, weight, stride=shape["stride"], padding=shape["pad"]).sum().backward()
        row[f"{name}_gmac_s"] = 3 * macs / 1e9 / timed(step, "cpu", 1, repeats)
    a, m = torch.randn(cout, cin * k * k), torch.randn(cin * k * k, b * h_out * w_out)
    row["matmul_gmac_s"] = macs / 1e9 / timed(lambda: a @ m, "cpu", 1, repeats)
    return row


def rate_table(rows: list[dict]) -> str:
    """Markdown: per convolution shape, GMAC/s of the convolution (two layouts) and of the matmul."""
    out = ["| in -> out, k | output pixels | conv fwd+bwd GMAC/s | channels-last | matmul GMAC/s |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['cin']} -> {r['cout']}, {r['k']}x{r['k']} | {r['h_out']}x{r['w_out']} | {r['conv_gmac_s']:.1f} "
                   f"| {r['conv_channels_last_gmac_s']:.1f} | {r['matmul_gmac_s']:.1f} |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    """Markdown: per layer, each kind in units of standard's whole step (and the step itself)."""
    std = next((r["step_s"] for r in rows if r["layer"] == "standard"), None)
    unit = std or 1.0
    head = ["layer", "step x std"] + [f"{k} (std steps)" for k in KINDS] + ["op calls"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["layer"], f"{r['step_s'] / unit:.2f}"] + [f"{r['kinds_s'][k] / unit:.2f}" for k in KINDS]
        out.append("| " + " | ".join(cells + [str(r["op_calls"])]) + " |")
    return "\n".join(out)


def _draw(rows: list[dict], png: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    std = next((r["step_s"] for r in rows if r["layer"] == "standard"), None) or 1.0
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = [0.0] * len(rows)
    for k in KINDS:
        vals = [r["kinds_s"][k] / std for r in rows]
        ax.bar([r["layer"] for r in rows], vals, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("training step, in standard steps")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    from lipzoo._io import atomic_write_bytes
    atomic_write_bytes(png, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--layer", default="standard,cpl,sll,soc", help="comma-separated layer ids (standard is added first)")
    p.add_argument("--size", default="xs", help="ConvNet size (default xs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="lipzoo-results", help="folder of the result files")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--conv-rate", action="store_true",
                   help="also time each convolution shape of the standard ConvNet against a matmul of its size")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--batch-size, --threads and --repeats must be >= 1, --warmup >= 0")
    from lipzoo._io import atomic_write_text
    from lipzoo._provenance import fingerprint
    from lipzoo.layers import LAYERS

    layers = ["standard"] + [lid for lid in args.layer.split(",") if lid and lid != "standard"]
    unknown = [lid for lid in layers if lid not in LAYERS]
    if unknown:
        p.error(f"unknown layer id(s) {unknown}; expected some of {sorted(LAYERS)}")
    torch.set_num_threads(args.threads)
    rows = []
    for lid in layers:
        rows.append(profile_layer(lid, args.size, args.batch_size, args.warmup, args.repeats))
        print(f"{lid}: step {rows[-1]['step_s']:.3f} s (self CPU), {rows[-1]['op_calls']} op calls", flush=True)
    rates = []
    if args.conv_rate:
        rates = [conv_rate(shape, max(args.repeats, 3)) for shape in conv_shapes(args.size, args.batch_size)]
    hw = fingerprint("cpu") | {"threads": torch.get_num_threads()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"profile-cpu-{args.size}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps({"settings": vars(args), "hardware": hw, "rows": rows, "conv_rates": rates}, indent=1))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["layer", "size", "batch_size", "step_s", "op_calls"] + [f"{k}_s" for k in KINDS] + ["hw_cpu_model", "threads"])
    for r in rows:
        w.writerow([r["layer"], r["size"], r["batch_size"], f"{r['step_s']:.6g}", r["op_calls"]]
                   + [f"{r['kinds_s'][k]:.6g}" for k in KINDS] + [hw.get("cpu_model"), hw["threads"]])
    atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())
    _draw(rows, stem.with_suffix(".png"), f"ConvNet-{args.size.upper()} training step by operator kind, batch "
          f"{args.batch_size}, {hw['threads']} thread(s), {hw.get('cpu_model')}; median of {args.repeats}")
    print(json.dumps({"rows": rows, "conv_rates": rates}, indent=1) if args.json else table(rows))
    if rates and not args.json:
        print(rate_table(rates))
    print(f"wrote {stem}.json/.csv/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
