"""The README's per-step cost table is drawn from benchmark files, never typed in."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lipzoo.zoo.costtable import MARKER, SPREAD_MARKER, cost_table, spread_table, update_readme, update_spread

ROOT = Path(__file__).resolve().parents[1]
COLS = ["model", "layer", "size", "status", "batch_size", "train_images_per_s_vs_standard",
        "infer_images_per_s_vs_standard", "epoch_s_fashion_mnist", "hw_cpu_model", "hw_cpu_threads", "hw_torch",
        "hw_commit", "precision", "interleaved"]


def _bench(path: Path, ratios: dict[str, tuple[float, float]], epoch_s: float = 600.0, interleaved: bool = False) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS)
        w.writeheader()
        for layer, (train, infer) in {"standard": (1.0, 1.0), **ratios}.items():
            w.writerow({"model": f"convnet_xs_{layer}", "layer": layer, "size": "xs", "status": "ok", "batch_size": 64,
                        "train_images_per_s_vs_standard": train, "infer_images_per_s_vs_standard": infer,
                        "epoch_s_fashion_mnist": epoch_s / train, "hw_cpu_model": "Test CPU", "hw_cpu_threads": 1,
                        "hw_torch": "2.x", "hw_commit": "abcdef0123", "precision": "fp32", "interleaved": interleaved})
    return path


def test_table_shows_step_time_multiples_of_standard_before_and_after(tmp_path):
    before = _bench(tmp_path / "a.csv", {"lot": (0.08, 0.4)})
    after = _bench(tmp_path / "b.csv", {"lot": (0.25, 0.5)})
    table = cost_table(before, after)
    assert "| lot | 12.50 → **4.00** | 2.50 → **2.00** | 40 min |" in table
    assert "| standard | 1 | 1 | 10 min |" in table
    assert "Test CPU, 1 thread(s), batch 64" in table


def test_a_model_that_was_not_measured_shows_why(tmp_path):
    before = _bench(tmp_path / "a.csv", {"lot": (0.08, 0.4)})
    after = _bench(tmp_path / "b.csv", {"lot": (0.25, 0.5), "soc": (0.2, 0.1)})
    rows = list(csv.DictReader(open(after)))
    for r in rows:
        if r["layer"] == "soc":
            r.update(status="too_slow: one step took 13 s", train_images_per_s_vs_standard="",
                     infer_images_per_s_vs_standard="", epoch_s_fashion_mnist="")
    with open(after, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS)
        w.writeheader()
        w.writerows(rows)
    table = cost_table(before, after)
    assert "| soc | - → **too_slow** | - → **too_slow** | - |" in table
    assert "`too_slow`: over the benchmark's time limit" in table


def test_the_readme_tables_are_the_ones_their_files_give():
    text = (ROOT / "README.md").read_text()
    found = list(MARKER.finditer(text))
    assert found, "README.md lost its cost-table block"
    for m in found:
        before, after, block = m.groups()
        assert block == cost_table(ROOT / before, ROOT / after), "README cost table is stale: run scripts/cost_table.py"


def test_update_readme_rewrites_only_the_marked_block(tmp_path):
    _bench(tmp_path / "a.csv", {"aol": (0.5, 1.0)})
    _bench(tmp_path / "b.csv", {"aol": (0.8, 1.0)})
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- cost-table before=a.csv after=b.csv -->\nstale\n<!-- /cost-table -->\nend\n")
    assert update_readme(readme, "a.csv", "b.csv") is True
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "stale" not in text
    assert "| aol | 2.00 → **1.25** |" in text
    assert update_readme(readme, "a.csv", "b.csv") is False
    (tmp_path / "plain.md").write_text("no block\n")
    with pytest.raises(ValueError, match="no '<!-- cost-table"):
        update_readme(tmp_path / "plain.md", "a.csv", "b.csv")


def test_each_block_is_drawn_from_its_own_files(tmp_path):
    _bench(tmp_path / "a.csv", {"aol": (0.5, 1.0)})
    _bench(tmp_path / "b.csv", {"aol": (0.8, 1.0)})
    _bench(tmp_path / "c.csv", {"aol": (0.25, 1.0)})
    readme = tmp_path / "README.md"
    readme.write_text("<!-- cost-table before=a.csv after=b.csv -->\nold\n<!-- /cost-table -->\nmiddle\n"
                      "<!-- cost-table before=a.csv after=c.csv -->\nold\n<!-- /cost-table -->\n")
    assert update_readme(readme) is True  # both blocks, each from its own marker
    text = readme.read_text()
    assert "old" not in text and "\nmiddle\n" in text
    assert text.index("| aol | 2.00 → **1.25** |") < text.index("middle") < text.index("| aol | 2.00 → **4.00** |")
    assert update_readme(readme, "c.csv", "b.csv", block=1) is True  # only the second block changes
    text = readme.read_text()
    assert "before=a.csv after=b.csv" in text and "before=c.csv after=b.csv" in text
    assert "| aol | 4.00 → **1.25** |" in text and "| aol | 2.00 → **1.25** |" in text
    with pytest.raises(ValueError, match="block must be 0..1"):
        update_readme(readme, "a.csv", "b.csv", block=2)
    with pytest.raises(ValueError, match="both before and after"):
        update_readme(readme, "a.csv")


def test_spread_table_compares_runs_per_timing_schedule(tmp_path):
    files = [_bench(tmp_path / "benchmark-cpu-1.csv", {"lot": (0.25, 0.5), "aol": (0.5, 1.0)}),
             _bench(tmp_path / "benchmark-cpu-2.csv", {"lot": (0.2, 0.5), "aol": (0.4, 1.0)}),
             _bench(tmp_path / "benchmark-cpu-3.csv", {"lot": (0.25, 0.5), "aol": (0.5, 1.0)}, interleaved=True),
             _bench(tmp_path / "benchmark-cpu-4.csv", {"lot": (0.25, 0.5), "aol": (0.5, 1.0)}, interleaved=True)]
    table = spread_table(files)
    assert "| layer | size | 1 (sequential) | 2 (sequential) | 3 (interleaved) | 4 (interleaved) | spread, sequential (2 files) " \
           "| spread, interleaved (2 files) |" in table
    assert "| lot | XS | 4.00 | 5.00 | 4.00 | 4.00 | 1.25x | 1.00x |" in table
    assert "| aol | XS | 2.00 | 2.50 | 2.00 | 2.00 | 1.25x | 1.00x |" in table
    assert "| median | | " in table and "**1.25x** | **1.00x** |" in table
    readme = tmp_path / "README.md"
    names = ",".join(f.name for f in files)
    readme.write_text(f"a\n<!-- bench-spread files={names} -->\nstale\n<!-- /bench-spread -->\nb\n")
    assert update_spread(readme) is True and "stale" not in readme.read_text() and table in readme.read_text()
    assert update_spread(readme) is False


def test_the_readme_spread_blocks_are_the_ones_their_files_give():
    text = (ROOT / "README.md").read_text()
    for m in SPREAD_MARKER.finditer(text):
        files = [ROOT / n for n in m.group(1).split(",")]
        assert m.group(2) == spread_table(files), "README spread table is stale: run scripts/cost_table.py"
