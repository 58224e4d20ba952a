#!/usr/bin/env python
"""Time another lipzoo checkout's models with THIS checkout's ``lipzoo bench`` harness.

A "before" file for a cost table should be measured the same way as the "after" file. When the
harness itself has changed since (e.g. the models now take turns), run the old code's models
through today's harness:

    git worktree add /tmp/before b365c213
    OMP_NUM_THREADS=1 python scripts/bench_checkout.py /tmp/before --layer 'aol,bcop,cayley,cpl,lot,sll,soc,sandwich' \\
        --size xs,s --repeats 5 --out results/baseline-b365c213/

The other checkout's ``lipzoo`` package is loaded under another name (it must import itself only
relatively); its ``create_model`` builds every measured model and its ``to_plain`` the plain copies.
Architecture names and input sizes come from this checkout's registry, so only layers that both
know can be measured. The file's ``hw_commit`` is the other checkout's commit. Peak memory is not
measured (its fresh-interpreter worker would build this checkout's models).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from lipzoo.zoo import bench, measure
from lipzoo.zoo.bench import BenchError, bench_layers, format_table, hardware_fingerprint, save_results

PACKAGE = "lipzoo_checkout"


def load_checkout(path: Path):
    """The ``lipzoo`` package of the checkout at ``path``, imported as :data:`PACKAGE`."""
    init = path / "lipzoo" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"{path} is not a lipzoo checkout (no lipzoo/__init__.py)")
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkout", type=Path, help="the other checkout (e.g. a git worktree of an older commit)")
    p.add_argument("--layer", default="*", help="layer ids, shell wildcards, comma-separated (standard is added)")
    p.add_argument("--size", default="xs,s", help="comma-separated sizes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument("--sequential", action="store_true", help="time one model after another instead of in turns")
    p.add_argument("--out", default="lipzoo-results", help="folder of the results file")
    args = p.parse_args(argv)
    other = load_checkout(args.checkout.resolve())
    create = other.create_model
    to_plain = importlib.import_module(f"{PACKAGE}.export").to_plain
    measure.create_model = bench.create_model = create
    measure.plain_converter = lambda: (to_plain, "")
    commit = subprocess.run(["git", "-C", str(args.checkout), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    try:
        results = bench_layers(args.layer, tuple(s for s in args.size.split(",") if s), batch_size=args.batch_size,
                               warmup=args.warmup, repeats=args.repeats, max_seconds=args.max_seconds or None,
                               interleave=not args.sequential, memory=False)
    except BenchError as e:
        p.error(str(e))
    hw = hardware_fingerprint("cpu") | {"commit": commit}
    path = save_results(results, args.out, fingerprint=hw)
    print(format_table(results))
    print(f"wrote {path} (models of {args.checkout} at commit {commit[:8]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
