"""How much a published model loses in its last layer: refit only the head on frozen features.

For each zoo model (e.g. ``convnet_xs_soc.fashion_mnist``) the script

1. computes, in eval mode and float32, the features that enter the model's ``ClassificationHead``
   for its recipe's training images (not augmented) and its 5,000 held-out validation images
   (the split the recipe trains against; the test split is never touched);
2. scores the trained head on both (clean accuracy, and certified accuracy at 36/255 with the
   margin test at L = 1, as the training run's validation does);
3. refits a copy of the head (``ClassificationHead`` and what follows it) with its own layer and
   parametrisation, so it stays exactly as 1-Lipschitz as before, by Adam on the recipe's loss,
   ``--steps`` minibatches of ``--batch-size`` training features, starting from the trained head;
4. scores the refit head the same way.

A large gain says the end-to-end training left the last layer short of what its own features
allow. Writes ``<out>/head-probe-<UTC>.json`` (hardware, settings, per model: trained and refit
scores, times) and a bar chart ``.png`` beside it; with ``--record`` also each model's row into its
card folder (``head_probe.json``, rendered in its card while the weights are unchanged)::

    python scripts/head_probe.py convnet_xs_soc.fashion_mnist convnet_xs_cayley.fashion_mnist --out results/head-probe --record
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

EPS = 36 / 255


def scores(logits: torch.Tensor, labels: torch.Tensor, eps: float = EPS) -> dict:
    """Clean accuracy and certified accuracy at ``eps`` (L = 1), by the package's own margin test.

    A point counts as certified when :func:`lipzoo.certify.certified_radius` (its margin less the
    round-off slack, divided by sqrt(2)) exceeds ``eps``, as in ``lipzoo certify``.
    """
    from lipzoo.certify import certified_radius

    correct = logits.double().argmax(dim=1) == labels
    cert = certified_radius(logits, labels) > eps  # 0 for a misclassified point
    return {"accuracy": correct.double().mean().item(), "certified": cert.double().mean().item()}


def split_head(model: torch.nn.Module) -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
    """(body, head) of a sequential model: the head starts at its ``ClassificationHead``."""
    names = [n for n, _ in model.named_children()]
    if "ClassificationHead" not in names:
        raise ValueError(f"head_probe: {type(model).__name__} has no ClassificationHead child; expected a lipzoo ConvNet")
    cut = names.index("ClassificationHead")
    children = list(model.children())
    return torch.nn.Sequential(*children[:cut]), torch.nn.Sequential(*children[cut:])


def features(body: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    from lipzoo.zoo.trainer import as_float

    with torch.no_grad():
        return torch.cat([body(as_float(x[i:i + batch])) for i in range(0, len(x), batch)])


def refit(head: torch.nn.Module, f: torch.Tensor, y: torch.Tensor, recipe, *, steps: int, lr: float,
          batch_size: int, seed: int = 0) -> torch.nn.Module:
    """A copy of ``head`` trained by Adam on the recipe's loss over the features ``f``."""
    from lipzoo.zoo.recipe import offset_cross_entropy

    head = copy.deepcopy(head).train()
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(f), (min(batch_size, len(f)),), generator=g)
        loss = offset_cross_entropy(head(f[idx]), y[idx], recipe.loss_offset, recipe.loss_temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def probe(name: str, args: argparse.Namespace) -> dict:
    import dataclasses

    import lipzoo
    from lipzoo.zoo.recipe import Recipe
    from lipzoo.zoo.trainer import load_splits

    model = lipzoo.create_model(name, pretrained=True).eval()
    checkout = Path(lipzoo.__file__).resolve().parents[1]
    config = json.loads((checkout / "cards" / name / "config.json").read_text())
    recipe = Recipe.load(checkout / config["recipe"])
    recipe = dataclasses.replace(recipe, train_limit=args.train_limit, val_limit=args.val_limit)
    tx, ty, vx, vy = load_splits(recipe, args.data_root)
    body, head = split_head(model)
    t0 = time.perf_counter()
    ftr, fva = features(body, tx), features(body, vx)
    extract_s = time.perf_counter() - t0
    with torch.no_grad():
        trained = {"train": scores(head(ftr), ty), "val": scores(head(fva), vy)}
    t0 = time.perf_counter()
    new = refit(head, ftr, ty, recipe, steps=args.steps, lr=args.lr, batch_size=args.batch_size)
    refit_s = time.perf_counter() - t0
    with torch.no_grad():
        refitted = {"train": scores(new(ftr), ty), "val": scores(new(fva), vy)}
    return {"model": name, "recipe": config["recipe"], "weights_sha256": config["file"]["sha256"],
            "clean_floor": recipe.publish_clean_floor, "certified_floor": recipe.publish_floor,
            "train_images": len(tx), "val_images": len(vx),
            "trained_head": trained, "refit_head": refitted, "extract_s": extract_s, "refit_s": refit_s}


def record(result: dict, result_file: Path, cards: Path) -> list[Path]:
    """Write ``<cards>/<model>/head_probe.json`` for every probed model: its row, the settings, the
    hardware, the result file's name and the other models' validation scores of the same run. The
    card renders it only while the folder's weights are the ones probed (same sha256)."""
    from lipzoo._io import atomic_write_text
    from lipzoo.zoo.card_sections import HEAD_PROBE_FILENAME

    written = []
    for row in result["models"]:
        others = [{"model": o["model"], "trained_head": o["trained_head"]["val"], "refit_head": o["refit_head"]["val"]}
                  for o in result["models"] if o is not row]
        rec = {"result_file": result_file.as_posix(), "hardware": result["hardware"], "threads": result["threads"],
               "settings": result["settings"], "model": row, "others": others}
        path = cards / row["model"] / HEAD_PROBE_FILENAME
        atomic_write_text(path, json.dumps(rec, indent=1) + "\n")
        written.append(path)
    return written


def draw(result: dict, png: Path) -> Path:
    from lipzoo.zoo.plots import _figure, _save

    rows = result["models"]
    fig = _figure(figsize=(2.0 + 2.2 * len(rows), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.2
    for j, (head, metric, color) in enumerate([("trained_head", "accuracy", "#9ecae1"), ("refit_head", "accuracy", "#3182bd"),
                                               ("trained_head", "certified", "#fdae6b"), ("refit_head", "certified", "#e6550d")]):
        vals = [100 * r[head]["val"][metric] for r in rows]
        xs = [i + (j - 1.5) * width for i in range(len(rows))]
        ax.bar(xs, vals, width, color=color, label=f"{head.replace('_', ' ')}: {'clean' if metric == 'accuracy' else 'certified 36/255'}")
        for x, v in zip(xs, vals):
            ax.text(x, v + 0.3, f"{v:.1f}", ha="center", fontsize=6)
    ax.set_xticks(range(len(rows)), [r["model"].replace(".fashion_mnist", "") for r in rows], fontsize=8)
    low = min(100 * r[h]["val"]["certified"] for r in rows for h in ("trained_head", "refit_head"))
    ax.set_ylim(max(0.0, low - 8), 100)
    ax.set_ylabel("held-out validation accuracy (%)")
    s = result["settings"]
    ax.set_title(f"head refit on frozen features: Adam, {s['steps']} steps of {s['batch_size']}, lr {s['lr']:g}\n"
                 f"{result['hardware']['cpu']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4)
    return _save(fig, png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="published zoo models, e.g. convnet_xs_soc.fashion_mnist")
    p.add_argument("--steps", type=int, default=300, help="Adam steps of the refit (default 300)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=4096, help="training features per step (default 4096)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training images only (default: all)")
    p.add_argument("--val-limit", type=int, default=None, help="first N validation images only (default: all 5,000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--data-root", default=None, help="folder with the data set (else $LIPZOO_DATA / system paths)")
    p.add_argument("--out", type=Path, default=Path("results/head-probe"), help="folder of the result files")
    p.add_argument("--record", action="store_true",
                   help="also write each model's result into its card folder (head_probe.json), for its card")
    p.add_argument("--cards", type=Path, default=None, help="the card folders for --record (default: the checkout's cards/)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if args.record and (args.train_limit is not None or args.val_limit is not None):
        p.error("--record needs the full splits: drop --train-limit and --val-limit")
    for bad, what in ((args.steps < 1, "--steps"), (args.batch_size < 1, "--batch-size"), (not args.lr > 0, "--lr")):
        if bad:
            p.error(f"{what} must be positive")
    torch.set_num_threads(args.threads)

    from lipzoo._io import atomic_write_text
    from lipzoo._provenance import fingerprint

    rows = []
    for name in args.models:
        row = probe(name, args)
        rows.append(row)
        t, r = row["trained_head"]["val"], row["refit_head"]["val"]
        print(f"{name}: validation clean {100 * t['accuracy']:.2f} -> {100 * r['accuracy']:.2f}, certified 36/255 "
              f"{100 * t['certified']:.2f} -> {100 * r['certified']:.2f} (features {row['extract_s']:.0f} s, refit "
              f"{row['refit_s']:.0f} s)", file=sys.stderr)
    result = {"hardware": fingerprint("cpu"), "threads": args.threads,
              "settings": {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "eps": EPS,
                           "train_limit": args.train_limit, "val_limit": args.val_limit},
              "models": rows}
    stem = args.out / f"head-probe-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    draw(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and .png", file=sys.stderr)
    if args.record:
        import lipzoo

        cards = args.cards or Path(lipzoo.__file__).resolve().parents[1] / "cards"
        for path in record(result, stem.with_suffix(".json"), cards):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
