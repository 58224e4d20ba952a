#!/usr/bin/env python
"""Inference images/s of each parametrised model, its ``lipzoo.to_plain`` copy and the standard
ConvNet of the same size, measured in one run, with the ratios between them.

A driver over lipzoo (timing: lipzoo.zoo.bench; plain copies: lipzoo.export). Run it on a quiet machine:
    python scripts/bench_plain.py [--size xs] [--layer '*'] [--batch-size 64] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys

import torch

from lipzoo.zoo.bench import hardware_fingerprint
from lipzoo.zoo.measure import timed
from lipzoo.export import CIRCULAR_FORMS, to_plain
from lipzoo.layers import LAYERS
from lipzoo.factory import create_model


def _images_per_s(model: torch.nn.Module, x: torch.Tensor, device: str, warmup: int, repeats: int) -> float:
    model.eval()

    def step() -> None:
        with torch.no_grad():
            model(x)

    return x.shape[0] / timed(step, device, warmup, repeats)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="xs", choices=["xs", "s", "m", "l"])
    ap.add_argument("--family", default="convnet", choices=["convnet", "tconvnet"])
    ap.add_argument("--layer", default="*", help="layer ids, shell wildcards (standard is always measured)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--circular", default="auto", choices=CIRCULAR_FORMS, help="to_plain form of Cayley/LOT/Sandwich")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    layers = [lid for lid in LAYERS if fnmatch.fnmatchcase(lid, a.layer)]
    if not layers:
        ap.error(f"--layer {a.layer!r} matches no layer id; known: {', '.join(LAYERS)}")

    def measure(layer: str) -> dict:
        name = f"{a.family}_{a.size}_{layer}"
        torch.manual_seed(0)
        model = create_model(name).to(a.device).eval()
        x = torch.rand(a.batch_size, model.in_chans, model.input_size, model.input_size, device=a.device)
        param = _images_per_s(model, x, a.device, a.warmup, a.repeats)
        plain = _images_per_s(to_plain(model, circular=a.circular).to(a.device), x, a.device, a.warmup, a.repeats)
        return {"model": name, "param_images_per_s": param, "plain_images_per_s": plain}

    rows, std = [], None
    for layer in ["standard"] + [lid for lid in layers if lid != "standard"]:
        print(f"measuring {layer} ...", file=sys.stderr, flush=True)
        r = measure(layer)
        std = std or r["param_images_per_s"]
        r.update(plain_vs_param=r["plain_images_per_s"] / r["param_images_per_s"],
                 param_vs_standard=r["param_images_per_s"] / std, plain_vs_standard=r["plain_images_per_s"] / std)
        rows.append(r)
    hw = hardware_fingerprint(a.device)
    if a.json:
        print(json.dumps({"hardware": hw, "batch_size": a.batch_size, "circular": a.circular, "results": rows}, indent=2))
        return 0
    print(f"hardware: {hw}  batch {a.batch_size}, to_plain circular={a.circular}")
    head = f"{'model':<24} {'param img/s':>12} {'plain img/s':>12} {'plain/param':>12} {'param/std':>10} {'plain/std':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<24} {r['param_images_per_s']:>12.1f} {r['plain_images_per_s']:>12.1f} "
              f"{r['plain_vs_param']:>12.2f} {r['param_vs_standard']:>10.2f} {r['plain_vs_standard']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
