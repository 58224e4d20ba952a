#!/usr/bin/env python
"""Redraw the README's per-step cost table from two benchmark files (a driver over lipzoo.zoo.costtable).

    python scripts/cost_table.py --before results/benchmark-cpu-A.csv --after results/benchmark-cpu-B.csv

Without --before/--after it redraws every cost table of the README from the files its own markers name
(one block per CPU model), and every run-to-run spread block (<!-- bench-spread files=A,B,... -->);
with them, block --block (default 0, the first). --print shows the table without touching the README;
--spread A.csv B.csv ... prints the spread table of those files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lipzoo.zoo.costtable import MARKER, cost_table, spread_table, update_readme, update_spread

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", help="benchmark CSV before the speed work (path relative to the README)")
    p.add_argument("--after", help="benchmark CSV after it")
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--block", type=int, default=0, help="which cost-table block --before/--after set (0: the first)")
    p.add_argument("--print", action="store_true", help="print the table; leave the README alone")
    p.add_argument("--spread", nargs="+", metavar="CSV",
                   help="print the run-to-run spread table of these benchmark files (same code, one CPU) and exit")
    args = p.parse_args(argv)
    if args.spread:
        missing = [f for f in args.spread if not Path(f).is_file()]
        if missing:
            p.error(f"benchmark file(s) not found: {', '.join(missing)}")
        print(spread_table(args.spread))
        return 0
    readme = Path(args.readme)
    found = list(MARKER.finditer(readme.read_text()))
    if (args.before is None) != (args.after is None):
        p.error("give both --before and --after, or neither")
    if not found and args.before is None:
        p.error(f"{readme} has no '<!-- cost-table before=... after=... -->' block: give --before and --after")
    pairs = ([(args.before, args.after)] if args.before is not None
             else [m.group(1, 2) for m in found])
    for f in (f for pair in pairs for f in pair):
        if not (readme.parent / f).is_file():
            p.error(f"benchmark file {f} not found (paths are relative to {readme.parent})")
    if args.print:
        for before, after in pairs:
            print(cost_table(readme.parent / before, readme.parent / after))
        return 0
    try:
        changed = update_readme(readme, args.before, args.after, args.block)
    except ValueError as e:  # no block to write into, or --block out of range
        p.error(str(e))
    if args.before is None:
        changed = update_spread(readme) or changed  # the bench-spread blocks too
    print(f"{readme}: {'table redrawn' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
