#!/usr/bin/env python
"""Write one recipe YAML per zoo entry under recipes/<dataset>/<architecture>.yaml.

The learning rates, weight decays and epoch budgets are those of "1-Lipschitz Layers Compared"
(Prach et al., CVPR 2024): the best lr/wd of its random search on CIFAR-10, the epochs of its
2-hour and 24-hour budgets on its GPU. CIFAR-100 and TinyImageNet use CIFAR-10's values, as the
paper's default settings do. Fashion-MNIST recipes start from the paper's CIFAR-10 2-hour
budget; re-derive the epochs for the device at hand with `lipzoo budget RECIPE --hours H --write`.

A recipe planned by scripts/train_zoo.py (its ``budget`` records ``zoo``: a measured budget and a
learning-rate search) is never touched. ``--notes-only`` rewrites only the ``notes:`` of the
existing recipes (every other field stays as it is in the file); ``--dry-run`` writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipzoo.data import default_augmentation  # noqa: E402
from lipzoo._io import atomic_write_text  # noqa: E402
from lipzoo.zoo.training import Recipe  # noqa: E402

SIZES = ("xs", "s", "m", "l")
# (lr, weight decay) per layer and size: the paper's CIFAR-10 best values
PAPER_LR_WD = {
    "aol": [(0.05729, 3.68e-5), (0.01257, 5.43e-5), (0.01544, 1.03e-4), (0.02179, 6.86e-5)],
    "bcop": [(0.006522, 2.56e-4), (0.003627, 7.74e-5), (0.006024, 6.55e-6), (0.001302, 9.14e-6)],
    "cpl": [(0.03427, 1.27e-4), (0.07039, 1.50e-4), (0.08444, 9.94e-5), (0.05319, 2.81e-4)],
    "cayley": [(0.01740, 2.35e-5), (0.01388, 1.05e-5), (0.01303, 5.59e-6), (0.007517, 1.64e-4)],
    "lot": [(0.08290, 4.09e-6), (0.03140, 6.60e-5), (0.02349, 8.68e-6), None],
    "sll": [(0.09070, 1.99e-5), (0.03988, 1.94e-4), (0.09475, 8.70e-5), (0.06452, 1.92e-4)],
    "soc": [(0.05082, 7.23e-6), (0.01744, 2.13e-5), (0.07118, 1.31e-4), (0.02235, 1.58e-4)],
}
# epochs of the paper's 2-hour budget on CIFAR-10; 24 h = 12x
PAPER_EPOCHS_2H = {
    "aol": [837, 763, 367, 83], "bcop": [127, 125, 94, 24], "cpl": [836, 797, 522, 194],
    "cayley": [356, 214, 70, 17], "lot": [222, 68, 11, None], "sll": [735, 703, 353, 79],
    "soc": [371, 336, 201, 77],
}
# layers the paper did not train: borrow a paper layer's settings (stated in the recipe notes)
BORROW = {"sandwich": "cayley", "standard": "aol"}


def paper_recipe(dataset: str, family: str, size: str, layer: str, hours: int) -> Recipe | None:
    i = SIZES.index(size)
    src = BORROW.get(layer, layer)
    lrwd, ep2 = PAPER_LR_WD[src][i], PAPER_EPOCHS_2H[src][i]
    borrowed_size = None
    if (lrwd is None or ep2 is None) and dataset == "fashion_mnist":  # the zoo has every entry: use the next size down
        borrowed_size = SIZES[i - 1]
        lrwd, ep2 = PAPER_LR_WD[src][i - 1], PAPER_EPOCHS_2H[src][i - 1]
    if lrwd is None or ep2 is None:
        return None
    epochs = ep2 * hours // 2
    arch = f"{family}_{size}_{layer}"
    aug = default_augmentation(dataset, include_rand_augment=True)
    aug["rand_augment"] = list(aug["rand_augment"]) if aug.get("rand_augment") else None
    notes = (f"lr/wd: the best CIFAR-10 values of the random search of Prach et al., CVPR 2024 (1-Lipschitz "
             f"Layers Compared) for {src.upper()} {size.upper()}; epochs: that paper's {hours}-hour budget on its "
             f"GPU ({ep2} epochs per 2 h).")
    if dataset not in ("cifar10", "fashion_mnist"):
        notes += f" The paper ran no {dataset} training: lr/wd/epochs are its CIFAR-10 values, as its default settings."
    if dataset == "fashion_mnist":
        notes += " Fashion-MNIST: re-derive the epochs for the device at hand with `lipzoo budget RECIPE --hours H --write`."
    if borrowed_size:
        notes += f" The paper never ran {src.upper()} {size.upper()} (out of memory); these are its {borrowed_size.upper()} values."
    if src != layer:
        notes += f" The paper never trained {layer}; these settings are borrowed from {src}."
    return Recipe(name=f"{arch}.{dataset}", architecture=arch, dataset=dataset, epochs=epochs, lr=lrwd[0],
                  weight_decay=lrwd[1], seed=0, notes=notes, budget={"hours": hours, "source": "paper (CIFAR-10, 24 GB GPU)"},
                  **aug)


def paper_recipes():
    """Every recipe this script makes, with its file."""
    jobs = [("fashion_mnist", "convnet", 2, list(PAPER_LR_WD) + list(BORROW))]
    jobs += [(ds, "convnet", 24, list(PAPER_LR_WD)) for ds in ("cifar10", "cifar100")]
    jobs += [("tiny_imagenet", "tconvnet", 24, list(PAPER_LR_WD))]
    for dataset, family, hours, layers in jobs:
        for size in SIZES:
            for layer in layers:
                r = paper_recipe(dataset, family, size, layer, hours)
                if r is not None:
                    yield r, ROOT / "recipes" / dataset / f"{r.architecture}.yaml"


def with_notes(path: Path, notes: str) -> str | None:
    """The text of the recipe file ``path`` with only its ``notes`` replaced (None: already so)."""
    fields = yaml.safe_load(path.read_text())
    if fields.get("notes") == notes:
        return None
    fields["notes"] = notes
    return yaml.safe_dump(fields, sort_keys=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--notes-only", action="store_true",
                   help="only rewrite the notes of existing recipes (a missing recipe is still written whole)")
    p.add_argument("--dry-run", action="store_true", help="write nothing; list what would change")
    args = p.parse_args()
    written = kept = same = 0
    for r, path in paper_recipes():
        if path.is_file() and (Recipe.load(path).budget or {}).get("zoo"):
            kept += 1  # planned by scripts/train_zoo.py (measured budget, lr search): keep it
            continue
        if args.notes_only and path.is_file():
            text = with_notes(path, r.notes)
        else:
            text = yaml.safe_dump(r.to_dict(), sort_keys=False)
            text = None if path.is_file() and path.read_text() == text else text
        if text is None:
            same += 1
            continue
        if args.dry_run:
            print(f"would write {path.relative_to(ROOT)}")
        else:
            atomic_write_text(path, text)
        written += 1
    verb = "would write" if args.dry_run else "wrote"
    print(f"{verb} {written} recipes under {ROOT / 'recipes'} ({same} already up to date); kept {kept} zoo "
          f"recipes of scripts/train_zoo.py")


if __name__ == "__main__":
    main()
