#!/usr/bin/env python
"""Apply the publish gate, with the zoo's quality line, to entries that are already published.

An entry whose stored test metrics miss the line gets ``status: undertrained`` and the reasons in
``provenance.status_reasons`` (its card and the cards index then say so); its weights are not
touched. The line: clean >= 85% and certified >= 75% at 36/255 for 1-Lipschitz layers, clean >=
91% for the unconstrained ``standard`` baseline (the thresholds of scripts/train_zoo.py).

    python scripts/gate_entries.py 'convnet_xs_*.fashion_mnist'
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from lipzoo.zoo.cards import write_cards  # noqa: E402
from lipzoo.data import dataset_info  # noqa: E402
from lipzoo.hub import write_config  # noqa: E402
from lipzoo.layers import LAYERS  # noqa: E402
from lipzoo.zoo.publish import publish_gate  # noqa: E402
from lipzoo.registry import ARCHITECTURES, list_models, get_pretrained  # noqa: E402
from train_zoo import STANDARD_CLEAN_FLOOR, ZOO_CERT_FLOOR, ZOO_CLEAN_FLOOR  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pattern", help="pretrained names (shell wildcards)")
    args = p.parse_args()
    for name in list_models(args.pattern, pretrained=True):
        e = get_pretrained(name)
        lipschitz = LAYERS[ARCHITECTURES[e.architecture].layer].lipschitz
        m = e.metrics
        reasons = publish_gate(m["clean_accuracy"], m["certified_accuracy"], dataset_info(e.dataset).num_classes,
                               certifies=lipschitz, floor=ZOO_CERT_FLOOR if lipschitz else None,
                               clean_floor=ZOO_CLEAN_FLOOR if lipschitz else STANDARD_CLEAN_FLOOR)
        if not reasons:
            print(f"{name}: meets the line")
            continue
        entry = replace(e, status="undertrained", provenance=e.provenance | {"status_reasons": reasons})
        write_config(entry, e.folder)
        print(f"{name}: undertrained ({'; '.join(reasons)})")
    write_cards(ROOT / "cards")  # every card and the index, from the config.json files just written


if __name__ == "__main__":
    main()
