#!/usr/bin/env python
"""How large the forward round-off of each bundled model is, next to the slack certificates subtract.

Certificates (``lipzoo.certify``) are computed on the float64 network whose weights are exactly the
float32 effective weights the audit bounds; every margin then loses ``ROUNDOFF_SLACK`` x the largest
|logit|. This script measures, per bundled model on the Fashion-MNIST test split:

- ``f64_order``  the largest change of a float64 margin between two evaluation orders (batch 256
  vs 16), relative to the largest |logit|, in units of the slack: the round-off that the float64
  certificate actually carries (must be far below 1);
- ``f32_vs_f64`` the same between the float32 network (what a float32 deployment computes) and the
  float64 one, in units of the slack (how far a float32 margin may be from the certified one);
- ``f32_over_slack`` how many images have a float32 margin above the float64 one by more than the
  slack (float32 margins are never used to certify; this shows why).

    python scripts/roundoff_check.py --out results/roundoff            # every bundled model, 10,000 images
    python scripts/roundoff_check.py --models convnet_xs_cayley.fashion_mnist --limit 1000

Writes ``roundoff-<UTC time>.json`` (hardware and torch included) and ``.csv`` into ``--out``, each
through a temporary name, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm


def measure(name: str, limit: int | None, progress: bool = True) -> dict:
    """The round-off figures of the bundled model ``name`` on the first ``limit`` test images."""
    import lipzoo
    from lipzoo.certify import ROUNDOFF_SLACK, as_float64, margins

    model = lipzoo.create_model(name, pretrained=True).eval()
    m64 = as_float64(model)
    images, labels = lipzoo.data.load_tensors(lipzoo.registry.PRETRAINED[name].dataset, "test", limit=limit)
    rows = {"big": [], "small": [], "f32": []}
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in tqdm(range(0, len(images), 256), desc=name, unit="batch", disable=not progress, leave=False):
            x = images[i : i + 256]
            rows["big"].append(m64(x.double()))
            rows["small"].append(torch.cat([m64(x[j : j + 16].double()) for j in range(0, len(x), 16)]))
            rows["f32"].append(model(x).double())
    big, small, z32 = (torch.cat(v) for v in rows.values())
    scale = big.abs().amax(dim=1)
    slack = ROUNDOFF_SLACK * scale
    m_big, m_small, m32 = margins(big, labels), margins(small, labels), margins(z32, labels)
    return {
        "model": name, "images": len(images), "slack": ROUNDOFF_SLACK,
        "f64_order": float(((m_big - m_small).abs() / scale).max()) / ROUNDOFF_SLACK,
        "f32_vs_f64": float(((m32 - m_big).abs() / scale).max()) / ROUNDOFF_SLACK,
        "f32_over_slack": int(((m32 - m_big) > slack).sum()),
        "seconds": time.perf_counter() - t0,
    }


def write_results(results: list[dict], out: Path) -> tuple[Path, Path]:
    """``roundoff-<UTC time>.json`` and ``.csv`` in ``out``, each written beside and renamed."""
    from lipzoo._io import atomic_write_text
    from lipzoo._provenance import fingerprint

    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"roundoff-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(results[0]))
    w.writeheader()
    w.writerows(results)
    js, cs = stem.with_suffix(".json"), stem.with_suffix(".csv")
    atomic_write_text(js, json.dumps({"environment": fingerprint("cpu"), "results": results}, indent=2))
    atomic_write_text(cs, buf.getvalue())
    return js, cs


def table(results: list[dict]) -> str:
    """A markdown table of ``results``."""
    lines = ["| model | images | float64 order / slack | float32 vs float64 / slack | float32 above by > slack |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['images']} | {r['f64_order']:.2e} | {r['f32_vs_f64']:.2f} | "
                     f"{r['f32_over_slack']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import lipzoo

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=None, help="comma-separated bundled model names (default: every bundled one)")
    p.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--out", default="lipzoo-results", help="folder for the result files (default ./lipzoo-results)")
    args = p.parse_args(argv)
    names = args.models.split(",") if args.models else lipzoo.list_models(pretrained=True)
    unknown = [n for n in names if n not in lipzoo.registry.PRETRAINED]
    if unknown:
        p.error(f"unknown bundled model(s) {', '.join(unknown)}; see `lipzoo list --pretrained`")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be a positive number of images, got {args.limit}")
    results = [measure(n, args.limit) for n in names]
    js, cs = write_results(results, Path(args.out))
    print(table(results))
    print(f"wrote {js} and {cs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
