"""scripts/roundoff_check.py: the measured forward round-off of bundled models, next to the slack."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from scripttools import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "roundoff_check.py"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def ro():
    return load_script(SCRIPT, "roundoff_check")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_measures_a_bundled_model_and_writes_json_and_csv(ro, tmp_path, capsys):
    assert ro.main(["--models", "convnet_xs_aol.fashion_mnist", "--limit", "32", "--out", str(tmp_path)]) == 0
    js, = tmp_path.glob("roundoff-*.json")
    data = json.loads(js.read_text())
    r, = data["results"]
    assert r["model"] == "convnet_xs_aol.fashion_mnist" and r["images"] == 32
    assert 0 <= r["f64_order"] < 1e-3 and 0 <= r["f32_vs_f64"] < 10  # what the zoo test pins, measured
    assert "cpu" in json.dumps(data["environment"]).lower()
    rows = list(csv.DictReader(js.with_suffix(".csv").open()))
    assert rows[0]["model"] == r["model"] and not list(tmp_path.glob("*.tmp"))
    assert "| convnet_xs_aol.fashion_mnist | 32 |" in capsys.readouterr().out


@pytest.mark.parametrize("args,expect", [(["--models", "convnet_xs_nope.fashion_mnist"], "unknown bundled model"),
                                         (["--limit", "0"], "--limit must be a positive")])
def test_bad_arguments_are_one_line_usage_errors(ro, capsys, args, expect):
    with pytest.raises(SystemExit) as e:
        ro.main(args)
    assert e.value.code == 2 and expect in capsys.readouterr().err


def test_the_readme_quotes_the_committed_measurement():
    """The README's round-off sentence names a committed result file and the range that file holds."""
    import re

    root = SCRIPT.parents[1]
    readme = (root / "README.md").read_text()
    link = re.search(r"\(results/roundoff/(roundoff-\w+\.csv)\)", readme)
    assert link, "README links a results/roundoff CSV"
    rows = list(csv.DictReader((root / "results" / "roundoff" / link.group(1)).open()))
    f32 = [float(r["f32_vs_f64"]) for r in rows]
    assert f"within {min(f32):.2f}-{max(f32):.2f} slacks" in " ".join(readme.split())
    assert all(float(r["f64_order"]) == 0.0 for r in rows) and all(r["f32_over_slack"] == "0" for r in rows)
