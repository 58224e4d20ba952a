#!/usr/bin/env python
"""Does bf16 training hurt accuracy? A short fp32 and bf16 run of each layer, side by side.

For each layer, its zoo recipe (``recipes/fashion_mnist/convnet_xs_<layer>.yaml``) is trained twice
from the same seed, for one epoch over ``--images`` training images (the shape of one lr-search
trial): once in fp32 and once with the training forward under bf16 autocast. Both are then scored
in float32 on ``--val-images`` held-out training images (the test split is never used). bf16
passes for a layer when neither its validation accuracy nor its certified accuracy at 36/255 is
more than ``--tolerance`` points below fp32's.

Writes ``<out>/accuracy-<UTC time>.json`` (CPU model, threads, protocol, every run's numbers and
training time, the verdict per layer) and a PNG beside it. ``scripts/train_zoo.py`` picks bf16 for
a recipe only when the newest check on the same CPU model passed for its layer (and bf16 was also
measured faster there by ``lipzoo bench --precision fp32,bf16``).

    python scripts/precision_check.py --layer soc,aol --images 6400 --runs ~/lipzoo-runs/precision
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VAL_SIZE = 5000  # the zoo recipes' held-out validation split (scripts/train_zoo.py)


def verdict(fp32: dict, bf16: dict, tolerance: float) -> dict:
    """How far bf16's validation accuracy and certified accuracy (in points) fell below fp32's, and
    whether both drops are within ``tolerance`` points."""
    clean = 100 * (fp32["val_accuracy"] - bf16["val_accuracy"])
    cert = 100 * (fp32["val_certified_36"] - bf16["val_certified_36"])
    speed = fp32["train_seconds"] / bf16["train_seconds"] if bf16["train_seconds"] > 0 else None
    return {"clean_drop_points": round(clean, 2), "certified_drop_points": round(cert, 2),
            "bf16_ok": bool(clean <= tolerance and cert <= tolerance),
            "bf16_speedup": None if speed is None else round(speed, 3)}


def short_run(layer: str, precision: str, args: argparse.Namespace, data) -> dict:
    """One epoch of ``layer``'s zoo recipe over ``args.images`` images in ``precision`` (a finished
    run in the same folder is reused); its validation numbers and training time."""
    from lipzoo.zoo.lrsearch import SEARCH_RADIUS
    from lipzoo.zoo.training import Recipe, train

    recipe = Recipe.load(ROOT / "recipes" / "fashion_mnist" / f"convnet_xs_{layer}.yaml")
    recipe = replace(recipe, name=f"{recipe.name}-{precision}-check", precision=precision, epochs=1, budget=None,
                     train_limit=args.images, val_size=VAL_SIZE, val_limit=args.val_images,
                     schedule_step="batch", publish_floor=None, publish_clean_floor=None)
    run = Path(args.runs) / f"convnet_xs_{layer}-{precision}"
    done = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    if not done.get("complete"):
        done = train(recipe, run, resume=(run / "checkpoint.safetensors").exists(), progress=not args.quiet,
                     data=data)
    final = done["final"]
    return {"layer": layer, "precision": precision, "lr": recipe.lr, "val_accuracy": final["val_accuracy"],
            "val_certified_36": final["val_certified"][SEARCH_RADIUS.key],
            "train_seconds": final["epoch_time_s"], "run": str(run)}


def draw(result: dict, png: Path) -> None:
    """Bars: validation clean and certified accuracy per layer, fp32 beside bf16."""
    from lipzoo.zoo.plots import _figure, _save  # the project's pyplot-free figure and atomic PNG write

    layers = list(result["verdicts"])
    rows = {(r["layer"], r["precision"]): r for r in result["runs"]}
    fig = _figure(figsize=(1.6 + 1.4 * len(layers), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.2
    for i, (prec, key, hatch) in enumerate([("fp32", "val_accuracy", ""), ("bf16", "val_accuracy", "//"),
                                            ("fp32", "val_certified_36", ""), ("bf16", "val_certified_36", "//")]):
        xs = [j + (i - 1.5) * width for j in range(len(layers))]
        ax.bar(xs, [100 * rows[(la, prec)][key] for la in layers], width, hatch=hatch,
               color="tab:blue" if key == "val_accuracy" else "tab:orange",
               label=f"{prec} {'clean' if key == 'val_accuracy' else 'certified 36/255'}")
    ax.set_xticks(range(len(layers)), layers)
    ax.set_ylabel("validation accuracy (%)")
    p = result["protocol"]
    ax.set_title(f"fp32 vs bf16 training, 1 epoch over {p['images']} images\n{result['hardware']['cpu']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", required=True, help="comma-separated layers with a zoo recipe, e.g. soc,aol")
    p.add_argument("--images", type=int, default=6400, help="training images of the one-epoch runs (default 6400)")
    p.add_argument("--val-images", type=int, default=VAL_SIZE, help=f"validation images scored (default {VAL_SIZE})")
    p.add_argument("--tolerance", type=float, default=1.5, help="points bf16 may lose, clean and certified (default 1.5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--runs", required=True, help="folder for the run folders (finished runs are reused)")
    p.add_argument("--out", default=str(ROOT / "results" / "precision-xs"), help="folder of the result file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    layers = [s.strip() for s in args.layer.split(",") if s.strip()]
    missing = [la for la in layers if not (ROOT / "recipes" / "fashion_mnist" / f"convnet_xs_{la}.yaml").is_file()]
    if missing:
        p.error(f"--layer: no zoo recipe recipes/fashion_mnist/convnet_xs_<layer>.yaml for {', '.join(missing)}")
    if args.images <= 0 or args.val_images <= 0 or not 0 < args.val_images <= VAL_SIZE:
        p.error(f"--images must be > 0 and --val-images in 1..{VAL_SIZE}")

    import torch

    from lipzoo._io import atomic_write_text
    from lipzoo._provenance import fingerprint
    from lipzoo.zoo.training import Recipe, load_splits

    torch.set_num_threads(args.threads)
    first = Recipe.load(ROOT / "recipes" / "fashion_mnist" / f"convnet_xs_{layers[0]}.yaml")
    data = load_splits(replace(first, val_size=VAL_SIZE, train_limit=None, val_limit=None))
    runs = [short_run(la, prec, args, data) for la in layers for prec in ("fp32", "bf16")]
    by = {(r["layer"], r["precision"]): r for r in runs}
    result = {"hardware": fingerprint("cpu"), "threads": args.threads, "tolerance_points": args.tolerance,
              "protocol": {"images": args.images, "epochs": 1, "val_images": args.val_images, "seed": "the recipe's"},
              "runs": runs,
              "verdicts": {la: verdict(by[(la, "fp32")], by[(la, "bf16")], args.tolerance) for la in layers}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"accuracy-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    draw(result, stem.with_suffix(".png"))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for la, v in result["verdicts"].items():
            print(f"{la}: bf16 {'passes' if v['bf16_ok'] else 'FAILS'} (against fp32: clean {-v['clean_drop_points']:+.2f}, "
                  f"certified {-v['certified_drop_points']:+.2f} points; training {v['bf16_speedup']}x as fast)")
        print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
