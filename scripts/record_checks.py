#!/usr/bin/env python
"""Write the per-image check records (``check.json``) of published model folders that lack them.

``lipzoo evaluate`` writes ``check.json`` for every new run (and ``lipzoo publish`` copies it next
to the weights); this script adds it to folders published before that: for each folder it loads the
sha256-verified weights, certifies the first ``lipzoo.zoo.evaluation.RECORD_N`` test images in float64
with the bound audited on this machine, exactly as ``evaluate`` does, and writes the records
(label, prediction, certified radius per image; the CPU model). The test suite recomputes a prefix
of them on whatever machine it runs on and compares image by image.

    python scripts/record_checks.py            # every cards/*/ folder without check.json
    python scripts/record_checks.py --force cards/convnet_xs_sll.fashion_mnist
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import lipzoo
    from lipzoo._io import atomic_write_text
    from lipzoo.registry import PretrainedEntry
    from lipzoo.zoo.evaluation import CHECK_FILENAME, RECORD_N, check_records

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", type=Path, help="model folders (default: every cards/*/ with a config.json)")
    p.add_argument("--force", action="store_true", help="rewrite an existing check.json")
    args = p.parse_args()
    folders = args.folders or sorted(f.parent for f in (ROOT / "cards").glob("*/config.json"))
    for folder in folders:
        out = folder / CHECK_FILENAME
        if out.exists() and not args.force:
            print(f"{folder.name}: has {CHECK_FILENAME}")
            continue
        entry = PretrainedEntry.from_folder(folder)
        model = lipzoo.create_model(entry.name, pretrained=True, weights=folder)
        split = entry.metrics.get("split", "test")
        images, labels = lipzoo.data.load_tensors(entry.dataset, split, limit=RECORD_N)
        cert = lipzoo.certify(model, images, labels)
        atomic_write_text(out, json.dumps(check_records(cert, labels, split), indent=1))
        print(f"{folder.name}: wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} "
              f"(clean {cert.clean_accuracy:.3f} on {cert.n}, L {cert.lipschitz:.8g})", flush=True)


if __name__ == "__main__":
    main()
