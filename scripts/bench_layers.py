#!/usr/bin/env python
"""Training and inference images/s of every layer at ConvNet-XS and -S, as ratios to standard.

A driver over lipzoo.zoo.bench (no logic of its own); same as `lipzoo bench`.
    python scripts/bench_layers.py [--size xs,s] [--batch-size 64] [--out results/]
"""

import sys

from lipzoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
