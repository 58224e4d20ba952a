"""scripts/thread_policy.py: the thread-policy measurement writes its files and picks winners."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "thread_policy.py"


@pytest.fixture(scope="module")
def tp():
    spec = importlib.util.spec_from_file_location("thread_policy", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


# --- scripts/train_zoo.py takes its default thread policy from the newest measurement -----------

@pytest.fixture(scope="module")
def tz():
    path = SCRIPT.with_name("train_zoo.py")
    spec = importlib.util.spec_from_file_location("train_zoo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _policy_file(folder: Path, stamp: str, winners: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"thread-policy-{stamp}.json").write_text(json.dumps({"hardware": {}, "rows": [], "winners": winners}))


def test_train_zoo_follows_the_newest_measured_winner_at_its_batch_size(tz, tmp_path):
    assert tz.measured_policy(64, tmp_path)[0] == tz.DEFAULT_POLICY  # nothing measured
    _policy_file(tmp_path, "20260101T000000Z", {"aol@64": "1x1", "sll@64": "1x1"})
    _policy_file(tmp_path, "20260102T000000Z", {"aol@64": "1x2-passive", "sll@64": "1x2-passive",
                                                "lot@64": "2x1", "aol@256": "2x1", "sll@256": "2x1"})
    policy, why = tz.measured_policy(64, tmp_path)
    assert policy == "1x2-passive" and "20260102T000000Z" in why and "2 of 3" in why
    assert tz.measured_policy(256, tmp_path)[0] == "2x1"
    policy, why = tz.measured_policy(128, tmp_path)  # not measured at 128: all batch sizes vote
    assert policy == "2x1" and "no run at this batch size" in why
    assert tz.POLICY_SHAPE[policy] == (2, 1)


def _precision_file(folder: Path, cpu: str, speeds: dict[tuple[str, str], float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "benchmark-cpu-20260101T000000Z.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "layer", "size", "status", "precision", "train_images_per_s",
                                          "hw_cpu_model"])
        w.writeheader()
        for (layer, prec), v in speeds.items():
            w.writerow({"model": f"convnet_xs_{layer}", "layer": layer, "size": "xs", "status": "ok",
                        "precision": prec, "train_images_per_s": v, "hw_cpu_model": cpu})


def test_train_zoo_uses_bf16_only_where_this_cpu_measured_it_faster(tz, tmp_path):
    from lipzoo._provenance import cpu_model

    assert tz.measured_precision("aol", tmp_path)[0] == "fp32"  # nothing measured
    _precision_file(tmp_path / "slow", cpu_model(), {("standard", "fp32"): 70.0, ("standard", "bf16"): 7.0,
                                                     ("aol", "fp32"): 30.0, ("aol", "bf16"): 45.0})
    choice, why = tz.measured_precision("aol", tmp_path / "slow")
    assert choice == "bf16" and "0.67x as long" in why and why.startswith("Precision bf16")
    choice, why = tz.measured_precision("sll", tmp_path / "slow")  # not measured: standard decides
    assert choice == "fp32" and "of standard took 10.00x" in why
    _precision_file(tmp_path / "other", "Some Other CPU", {("aol", "fp32"): 30.0, ("aol", "bf16"): 45.0})
    assert tz.measured_precision("aol", tmp_path / "other") == ("fp32", f"Precision fp32: bf16 was not measured on {cpu_model()}")


def test_train_zoo_notes_say_when_the_lr_search_left_its_winner_at_an_edge(tz):
    def search(scores: dict[float, float]) -> dict:
        return {"trials": [{"factor": f, "lr": f, "val_accuracy": s, "val_certified": {"0.141176": s}}
                           for f, s in scores.items()]}

    assert tz.edge_text(search({0.5: 0.1, 1.0: 0.3, 2.0: 0.2})) == ""
    assert "the largest lr tried: the search did not bracket it" in tz.edge_text(search({0.5: 0.1, 1.0: 0.2, 2.0: 0.3}))
    assert "the smallest lr tried" in tz.edge_text(search({0.5: 0.3, 1.0: 0.2, 2.0: 0.1}))
