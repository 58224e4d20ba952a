"""scripts/thread_policy.py: the thread-policy measurement writes its files and picks winners."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from scripttools import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "thread_policy.py"


@pytest.fixture(scope="module")
def tp():
    return load_script(SCRIPT, "thread_policy")


def test_winner_is_the_policy_with_most_images_per_second(tp):
    rows = [
        {"policy": "1x1", "layer": "aol", "batch_size": 64, "train_images_per_s": 10.0},
        {"policy": "2x1", "layer": "aol", "batch_size": 64, "train_images_per_s": 17.0},
        {"policy": "1x2-passive", "layer": "aol", "batch_size": 64, "train_images_per_s": 12.0},
        {"policy": "1x1", "layer": "aol", "batch_size": 128, "train_images_per_s": 14.0},
        {"policy": "2x1", "layer": "aol", "batch_size": 128, "train_images_per_s": 13.0},
    ]
    assert tp.winners(rows) == {("aol", 64): "2x1", ("aol", 128): "1x1"}
    table = tp.markdown(rows)
    assert "| aol | 64 | 10.0 | 12.0 | 17.0 | 2x1 |" in table
    assert "| aol | 128 | 14.0 |  | 13.0 | 1x1 |" in table


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="policy 2x1 needs 2 cores")
def test_measures_each_policy_in_fresh_processes_and_writes_csv_json_png(tp, tmp_path, capsys):
    rc = tp.main(["--layer", "standard", "--batch-size", "2", "--policy", "2x1", "--warmup", "0",
                  "--repeats", "1", "--out", str(tmp_path), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    rows = printed["rows"]
    assert [r["policy"] for r in rows] == ["2x1"]
    assert rows[0]["processes"] == 2 and rows[0]["train_images_per_s"] > 0
    (csv_path,) = tmp_path.glob("thread-policy-*.csv")
    with open(csv_path) as f:
        written = list(csv.DictReader(f))
    assert len(written) == 1 and written[0]["hw_cpu_model"]
    assert csv_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "standard@2" in json.loads(csv_path.with_suffix(".json").read_text())["winners"]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--batch-size", "x"], "--batch-size must be comma-separated integers"),
    (["--policy", "3x3"], "unknown --policy 3x3"),
])
def test_bad_arguments_get_one_clear_line(tp, args, message, capsys):
    with pytest.raises(SystemExit) as e:
        tp.main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
