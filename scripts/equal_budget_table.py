#!/usr/bin/env python
"""Table and picture of what each layer reaches under ONE equal CPU budget (Fashion-MNIST, ConvNet-XS).

Reads the run records kept in ``results/equal-budget-fashion-mnist/<run>/`` (``eval.json`` written
by ``lipzoo evaluate`` on the test split, ``run.json`` and ``recipe.yaml`` written by the trainer)
and writes ``README.md`` (the table) and ``equal-budget.png`` next to them. Nothing is typed in:
every number comes from those files.

    python scripts/equal_budget_table.py [--dir results/equal-budget-fashion-mnist]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipzoo._io import atomic_path, atomic_write_text  # noqa: E402
from lipzoo.radius import Radius  # noqa: E402


def rows(folder: Path) -> list[dict]:
    out = []
    for run in sorted(p for p in folder.iterdir() if (p / "eval.json").is_file()):
        ev = json.loads((run / "eval.json").read_text())
        rec = json.loads((run / "run.json").read_text())
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        c = ev["certification"]
        budget = recipe.get("budget") or {}
        out.append({
            "model": ev["architecture"], "layer": ev["architecture"].rsplit("_", 1)[-1],
            "clean": c["clean_accuracy"], "cert36": c["certified_accuracy"][Radius.of_steps(36).key],
            "cert72": c["certified_accuracy"][Radius.of_steps(72).key], "lipschitz": c["lipschitz_bound"],
            "budget_s": budget.get("seconds"), "train_images": recipe.get("train_limit"),
            "wall_s": rec.get("wall_time_s"), "images_per_s": rec["final"].get("images_per_s"),
            "cpu": ev.get("hardware", {}).get("cpu_model") or rec.get("hardware", {}).get("cpu"),
            "threads": budget.get("threads"),
        })
    return out


def note(r: dict) -> str:
    """What a reader must know before comparing a row (derived from the row itself)."""
    parts = []
    if r["clean"] <= 1.5 / 10:
        parts.append("at chance: did not train in this budget")
    if r["lipschitz"] > 1 + 1e-3:
        parts.append("unconstrained: no certificate (L is the audited bound)")
    return "; ".join(parts)


def render(folder: Path) -> None:
    data = rows(folder)
    if not data:
        raise SystemExit(f"no run records (eval.json) under {folder}")
    cpus = sorted({str(r["cpu"]) for r in data})
    lines = [
        "# One equal CPU budget per layer (Fashion-MNIST, ConvNet-XS)", "",
        "Each layer trained for the same wall-clock budget on the same CPU; this answers the paper's",
        "question (what does a layer reach for a fixed cost) on a 2-core CPU. These runs are far from",
        "converged and are NOT zoo entries. Written by `scripts/equal_budget_table.py` from the run records",
        f"in this folder. CPU: {', '.join(cpus)}.", "",
        "| layer | budget (s) | training images seen | train img/s | clean | cert 36/255 | cert 72/255 | L used | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(data, key=lambda r: -r["cert36"]):
        lines.append(f"| {r['layer']} | {r['budget_s']:g} | {r['train_images']:,} | {r['images_per_s']:.1f} | "
                     f"{100 * r['clean']:.2f}% | {100 * r['cert36']:.2f}% | {100 * r['cert72']:.2f}% | "
                     f"{r['lipschitz']:.6g} | {note(r)} |")
    lines += ["", "![accuracy under one equal CPU budget](equal-budget.png)", ""]
    atomic_write_text(folder / "README.md", "\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data.sort(key=lambda r: -r["cert36"])
    x = range(len(data))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar([i - 0.2 for i in x], [100 * r["clean"] for r in data], 0.4, label="clean")
    ax.bar([i + 0.2 for i in x], [100 * r["cert36"] for r in data], 0.4, label="certified at 36/255")
    ax.set_xticks(list(x), [f"{r['layer']}\n{r['train_images'] // 1000}k img" for r in data], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"ConvNet-XS, Fashion-MNIST: {data[0]['budget_s']:g} s of training per layer ({cpus[0]})",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(folder / "equal-budget.png", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=str(ROOT / "results" / "equal-budget-fashion-mnist"))
    render(Path(p.parse_args().dir))


if __name__ == "__main__":
    main()
