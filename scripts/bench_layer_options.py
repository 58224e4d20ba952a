#!/usr/bin/env python
"""What a layer option costs: training and inference time of one architecture per option value.

Times the architecture once per combination of the ``--option`` values (e.g. CPL's
``step_bound=gram,spectral``, or ``paper_compatible=false,true``) beside the standard ConvNet of
the same size, side by side in one process: each round times one training step and one inference
pass of every variant in turn (``lipzoo bench``'s step: forward, ``out.sum().backward()``, SGD
with momentum; inference in eval mode under ``torch.no_grad()`` with the weight caches warm), and
every figure is the median over the rounds, so all variants see the same machine load. Writes
``<out>/layer-options-<arch>-<UTC time>.json`` (hardware, threads, batch size, rows) and prints
a table with each variant's ratio to the standard ConvNet and to the first variant.

    python scripts/bench_layer_options.py --arch convnet_xs_cpl --option step_bound=gram,spectral
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_option(text: str) -> tuple[str, list]:
    """``KEY=V1,V2`` -> (key, [v1, v2]) with YAML scalars (``true`` -> True, ``3`` -> 3)."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ValueError(f"--option {text!r}: expected KEY=VALUE[,VALUE...], e.g. step_bound=gram,spectral")
    return key.strip(), [yaml.safe_load(v) for v in values.split(",")]


def variants(options: list[tuple[str, list]]) -> list[dict]:
    """Every combination of the option values, in the order given."""
    keys = [k for k, _ in options]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in options))]


def _steps(arch: str, opts: dict, batch: int, in_chans: int, size: int):
    import lipzoo

    model = lipzoo.create_model(arch, in_chans=in_chans, **opts).train()
    frozen = lipzoo.create_model(arch, in_chans=in_chans, **opts).eval()  # its own model: eval caches stay warm
    sgd = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    x = torch.rand(batch, in_chans, size, size)

    def train() -> None:
        sgd.zero_grad(set_to_none=True)
        model(x).sum().backward()
        sgd.step()

    def infer() -> None:
        with torch.no_grad():
            frozen(x)

    return train, infer


def run(arch: str, option_list: list[tuple[str, list]], batch: int, rounds: int, in_chans: int = 1) -> list[dict]:
    """One row per variant (the standard ConvNet of the same size first), figures in seconds."""
    from lipzoo.registry import get_architecture

    a = get_architecture(arch)
    baseline = f"{a.family}_{a.size}_standard"
    jobs = [(baseline, {})] + [(a.name, v) for v in variants(option_list)]
    fns = []
    for name, opts in jobs:
        try:
            fns.append(_steps(name, opts, batch, in_chans, a.input_size))
        except TypeError as e:
            raise ValueError(f"{name} does not take the option(s) {opts}: {e}") from None
    for train, infer in fns:  # warm-up: untimed, builds the eval caches
        train(), infer(), train()
    times: list[dict[str, list[float]]] = [{"train": [], "infer": []} for _ in jobs]
    for _ in range(rounds):
        for (train, infer), t in zip(fns, times):
            for kind, fn in (("train", train), ("infer", infer)):
                start = time.perf_counter()
                fn()
                t[kind].append(time.perf_counter() - start)
    rows = []
    for (name, opts), t in zip(jobs, times):
        rows.append({"model": name, "options": opts, "train_s": statistics.median(t["train"]),
                     "infer_s": statistics.median(t["infer"])})
    for r in rows:
        for kind in ("train", "infer"):
            r[f"{kind}_x_standard"] = r[f"{kind}_s"] / rows[0][f"{kind}_s"]
            r[f"{kind}_x_first"] = r[f"{kind}_s"] / rows[1][f"{kind}_s"] if r is not rows[0] else None
        r["train_images_per_s"] = batch / r["train_s"]
    return rows


def save(rows: list[dict], arch: str, batch: int, rounds: int, out: Path) -> Path:
    from lipzoo._provenance import hardware

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"layer-options-{arch}-{stamp}.json"
    record = {"arch": arch, "batch_size": batch, "rounds": rounds, "threads": torch.get_num_threads(),
              "hardware": hardware("cpu"), "rows": rows}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="architecture, e.g. convnet_xs_cpl")
    p.add_argument("--option", action="append", required=True, metavar="KEY=V1,V2",
                   help="a layer option and the values to compare (repeatable: every combination)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (each times every variant once)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--in-chans", type=int, default=1, help="input channels (default 1, Fashion-MNIST)")
    p.add_argument("--out", default=str(ROOT / "results" / "layer-options"), help="folder of the result file")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.rounds < 1 or args.threads < 1:
        p.error("--batch-size, --rounds and --threads must be >= 1")
    from lipzoo.registry import get_architecture

    try:
        get_architecture(args.arch)
        options = [parse_option(o) for o in args.option]
        torch.set_num_threads(args.threads)
        rows = run(args.arch, options, args.batch_size, args.rounds, args.in_chans)
    except (KeyError, ValueError) as e:
        p.error(str(e.args[0]) if e.args else type(e).__name__)
    path = None if args.no_save else save(rows, args.arch, args.batch_size, args.rounds, Path(args.out))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print("| model | options | train s | train x std | train x first | img/s | infer s | infer x std |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            first = f"{r['train_x_first']:.2f}" if r["train_x_first"] is not None else "-"
            print(f"| {r['model']} | {r['options'] or '-'} | {r['train_s']:.3f} | {r['train_x_standard']:.2f} | {first} | "
                  f"{r['train_images_per_s']:.1f} | {r['infer_s']:.3f} | {r['infer_x_standard']:.2f} |")
    if path is not None:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
