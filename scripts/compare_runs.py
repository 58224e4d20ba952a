#!/usr/bin/env python
"""Several training runs' validation curves in one picture, to compare recipes of one layer.

Draws the validation clean and certified accuracy after each epoch of every given run folder
(finished or still training), each labelled by its recipe (architecture, layer options, epochs, lr),
into a PNG, and writes the drawn numbers beside it as JSON (``--out X.png`` also writes
``X.json``). Numbers come from the runs' own ``metrics.jsonl``; nothing is typed in.

    python scripts/compare_runs.py ~/lipzoo-runs/zoo/convnet_xs_soc ~/lipzoo-runs/zoo-spec/convnet_xs_soc \\
        --out results/runs/soc-variants.png --title "SOC: gram vs spectral bound"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from lipzoo._io import atomic_write_text
    from lipzoo.zoo.curves import runs_curves
    from lipzoo.zoo.plots import PlotError

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (lipzoo train --out), finished or not, or published models' cards/ folders")
    p.add_argument("--out", required=True, help="the PNG to write (its numbers go to the same name with .json)")
    p.add_argument("--title", default="", help="the picture's title")
    p.add_argument("--json", action="store_true", help="print the drawn numbers as JSON")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".png":
        p.error(f"--out must name a .png file, got {args.out!r}")
    try:
        drawn = runs_curves(args.runs, out, title=args.title)
    except PlotError as e:
        p.error(str(e))
    atomic_write_text(out.with_suffix(".json"), json.dumps(drawn, indent=1) + "\n")
    if args.json:
        print(json.dumps(drawn, indent=1))
    else:
        for d in drawn["runs"]:
            last = len(d["epochs"]) - 1
            print(f"{d['label']}: {len(d['epochs'])} epoch(s), last val {d['val_accuracy'][last]} / "
                  f"{d['val_certified'][last]} ({d['run']})")
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
