#!/usr/bin/env python
"""Redraw the README's per-step cost table from two benchmark files (a driver over lipzoo.zoo.costtable).

    python scripts/cost_table.py --before results/benchmark-cpu-A.csv --after results/benchmark-cpu-B.csv

Without --before/--after it redraws the table from the files its README markers name. --print shows
the table without touching the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lipzoo.zoo.costtable import MARKER, cost_table, update_readme

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", help="benchmark CSV before the speed work (path relative to the README)")
    p.add_argument("--after", help="benchmark CSV after it")
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--print", action="store_true", help="print the table; leave the README alone")
    args = p.parse_args(argv)
    readme = Path(args.readme)
    found = MARKER.search(readme.read_text())
    before = args.before or (found and found.group(1))
    after = args.after or (found and found.group(2))
    if not before or not after:
        p.error("give --before and --after (the README has no cost-table block naming them)")
    for f in (before, after):
        if not (readme.parent / f).is_file():
            p.error(f"benchmark file {f} not found (paths are relative to {readme.parent})")
    if args.print:
        print(cost_table(readme.parent / before, readme.parent / after), end="")
        return 0
    changed = update_readme(readme, before, after)
    print(f"{readme}: {'table redrawn' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
