"""The README's per-step cost table, generated from two benchmark files (before and after).

Each layer's training and inference time per step as a multiple of the ``standard`` ConvNet of the
same size, measured in the same run (``1 / *_images_per_s_vs_standard``), for each size in both
files, and the predicted Fashion-MNIST epoch time of the "after" file on its CPU. The table lives
in the README between two markers that name the files it was drawn from, so a test can redraw it
and compare::

    <!-- cost-table before=results/A.csv after=results/B.csv -->
    ...generated...
    <!-- /cost-table -->

A README may hold several such blocks (e.g. one per CPU model: the ratios to ``standard`` depend on the
CPU); each is drawn from the files its own marker names.
"""

from __future__ import annotations

import os
import re
import statistics
from pathlib import Path

from .bench import read_results

__all__ = ["cost_table", "update_readme", "MARKER", "spread_table", "update_spread", "SPREAD_MARKER"]

MARKER = re.compile(r"<!-- cost-table before=(\S+) after=(\S+) -->\n(.*?)<!-- /cost-table -->", re.S)
#: a README block comparing several benchmark files of the same code (comma-separated paths)
SPREAD_MARKER = re.compile(r"<!-- bench-spread files=(\S+) -->\n(.*?)<!-- /bench-spread -->", re.S)


def _index(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["layer"], r["size"]): r for r in rows if r.get("precision") in (None, "fp32")}


def _times_std(row: dict | None, key: str) -> str:
    """``row``'s step time as a multiple of standard's; ``-`` where the file has no such row, and the
    row's status (e.g. ``too_slow``) where it was not measured."""
    if row is None:
        return "-"
    ratio = row.get(f"{key}_vs_standard")
    if not ratio:
        return str(row.get("status") or "-").split(":")[0]
    return f"{1.0 / float(ratio):.2f}"


def _cell(before: str, after: str) -> str:
    return f"{before} → **{after}**"


def _setup(rows: list[dict]) -> str:
    r = rows[0]
    return (f"{r.get('hw_cpu_model') or r.get('hw_cpu')}, {r.get('hw_cpu_threads')} thread(s), batch "
            f"{r.get('batch_size')}, torch {r.get('hw_torch')}, lipzoo commit {str(r.get('hw_commit') or '?')[:8]}, "
            f"models timed {'in turns' if _schedule(rows) == 'interleaved' else 'one after another'}")


def cost_table(before: str | os.PathLike, after: str | os.PathLike) -> str:
    """Markdown: per layer, train and inference step time x standard (before → after) per size."""
    rows_b, rows_a = read_results(before), read_results(after)
    b, a = _index(rows_b), _index(rows_a)
    sizes = [s for s in ("xs", "s", "m", "l") if any(k[1] == s for k in a)]
    layers = [r["layer"] for r in rows_a if r["size"] == sizes[0] and r["layer"] != "standard"]
    head = ["layer"] + [f"train x std, {s.upper()}" for s in sizes] + [f"inference x std, {s.upper()}" for s in sizes]
    head.append("Fashion-MNIST epoch, XS")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for layer in dict.fromkeys(layers):
        cells = [layer]
        for key in ("train_images_per_s", "infer_images_per_s"):
            cells += [_cell(_times_std(b.get((layer, s)), key), _times_std(a.get((layer, s)), key)) for s in sizes]
        epoch = (a.get((layer, "xs")) or {}).get("epoch_s_fashion_mnist")
        cells.append("-" if epoch is None else f"{epoch / 60:.0f} min")
        lines.append("| " + " | ".join(cells) + " |")
    std = a.get(("standard", "xs")) or {}
    if std.get("epoch_s_fashion_mnist"):
        lines.append("| standard | 1 | " + " | ".join(["1"] * (2 * len(sizes) - 1))
                     + f" | {std['epoch_s_fashion_mnist'] / 60:.0f} min |")
    lines += ["", "`-`: not in that file; `too_slow`: over the benchmark's time limit per model.",
              "", f"Before: `{Path(before).name}` ({_setup(rows_b)}).",
              f"After: `{Path(after).name}` ({_setup(rows_a)})."]
    return "\n".join(lines) + "\n"


def _schedule(rows: list[dict]) -> str:
    return "interleaved" if rows and rows[0].get("interleaved") else "sequential"


def spread_table(paths: list[str | os.PathLike]) -> str:
    """Markdown: each layer's training step x standard in every file, and per timing schedule the
    spread of that ratio over the files (largest / smallest), for sizes in every file."""
    files = [(Path(p), read_results(p)) for p in paths]
    groups: dict[str, list[int]] = {}
    for i, (_, rows) in enumerate(files):
        groups.setdefault(_schedule(rows), []).append(i)
    index = [_index(rows) for _, rows in files]
    sizes = [s for s in ("xs", "s", "m", "l") if all(any(k[1] == s for k in ix) for ix in index)]
    layers = dict.fromkeys(r["layer"] for _, rows in files for r in rows if r["layer"] != "standard")
    head = ["layer", "size"] + [f"{p.stem.rsplit('-', 1)[-1]} ({_schedule(rows)})" for p, rows in files]
    head += [f"spread, {g} ({len(ix)} files)" for g, ix in groups.items()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    per_group: list[list[float]] = [[] for _ in groups]
    for layer in layers:
        for size in sizes:
            found = [ix.get((layer, size)) for ix in index]
            ratios = [(r or {}).get("train_images_per_s_vs_standard") for r in found]
            spreads = []
            for g, ix in enumerate(groups.values()):
                vals = [float(ratios[i]) for i in ix if ratios[i]]
                spread = max(vals) / min(vals) if len(vals) > 1 else None
                if spread is not None:
                    per_group[g].append(spread)
                spreads.append("-" if spread is None else f"{spread:.2f}x")
            cells = [_times_std(r, "train_images_per_s") for r in found]
            lines.append("| " + " | ".join([layer, size.upper()] + cells + spreads) + " |")
    medians = [f"**{statistics.median(v):.2f}x**" if v else "-" for v in per_group]
    lines.append("| median | | " + " | ".join([""] * len(files) + medians) + " |")
    lines += ["", "Files (training step x standard; spread = largest / smallest over the files of one schedule):"]
    lines += [f"`{p.name}` ({_setup(rows)})." for p, rows in files]
    return "\n".join(lines) + "\n"


def update_spread(readme: str | os.PathLike) -> bool:
    """Redraw every ``bench-spread`` block of the README from the files its marker names; returns
    whether the README changed (written through a temporary file, then renamed)."""
    readme = Path(readme)
    text = readme.read_text()

    def draw(m: re.Match) -> str:
        names = m.group(1)
        return f"<!-- bench-spread files={names} -->\n{spread_table([readme.parent / n for n in names.split(',')])}" \
               "<!-- /bench-spread -->"

    new = SPREAD_MARKER.sub(draw, text)
    if new == text:
        return False
    _replace_text(readme, new)
    return True


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def update_readme(readme: str | os.PathLike, before: str | None = None, after: str | None = None,
                  block: int = 0) -> bool:
    """Redraw the README's cost tables (paths relative to the README's folder).

    With ``before`` and ``after``, block number ``block`` (0: the first) is drawn from those files;
    without them every block is redrawn from the files its own marker names. Returns whether the
    README changed; writes through a temporary file, then renames.
    """
    readme = Path(readme)
    text = readme.read_text()
    found = list(MARKER.finditer(text))
    if not found:
        raise ValueError(f"{readme} has no '<!-- cost-table before=... after=... -->' ... '<!-- /cost-table -->' block")
    if (before is None) != (after is None):
        raise ValueError("give both before and after, or neither (then every block is redrawn from its own files)")
    if not 0 <= block < len(found):
        raise ValueError(f"{readme} has {len(found)} cost-table block(s); block must be 0..{len(found) - 1}, got {block}")
    root = readme.parent
    pieces, pos = [], 0
    for i, m in enumerate(found):
        b, a = (before, after) if before is not None and i == block else m.group(1, 2)
        pieces += [text[pos:m.start()],
                   f"<!-- cost-table before={b} after={a} -->\n{cost_table(root / b, root / a)}<!-- /cost-table -->"]
        pos = m.end()
    new = "".join(pieces) + text[pos:]
    if new == text:
        return False
    _replace_text(readme, new)
    return True
