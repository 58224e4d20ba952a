"""scripts/precision_check.py: fp32 and bf16 short runs of a zoo recipe side by side, the verdict per layer,
and the result file and picture scripts/train_zoo.py reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripttools import load_script

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pc():
    return load_script(ROOT / "scripts" / "precision_check.py", "precision_check")


def _run(acc: float, cert: float, seconds: float) -> dict:
    return {"val_accuracy": acc, "val_certified_36": cert, "train_seconds": seconds}


def test_bf16_passes_only_within_the_tolerance_on_both_clean_and_certified(pc):
    fp32 = _run(0.80, 0.70, 100.0)
    ok = pc.verdict(fp32, _run(0.79, 0.71, 70.0), tolerance=1.5)
    assert ok == {"clean_drop_points": 1.0, "certified_drop_points": -1.0, "bf16_ok": True, "bf16_speedup": 1.429}
    assert not pc.verdict(fp32, _run(0.80, 0.68, 70.0), tolerance=1.5)["bf16_ok"]  # certified fell 2 points
    assert not pc.verdict(fp32, _run(0.78, 0.70, 70.0), tolerance=1.5)["bf16_ok"]  # clean fell 2 points
    assert pc.verdict(fp32, _run(0.78, 0.70, 70.0), tolerance=2.5)["bf16_ok"]


def test_an_unknown_layer_or_bad_sizes_are_one_clear_error(pc, capsys, tmp_path):
    with pytest.raises(SystemExit):
        pc.main(["--layer", "aol,nosuch", "--runs", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--layer" in err and "nosuch" in err and "convnet_xs_<layer>.yaml" in err
    with pytest.raises(SystemExit):
        pc.main(["--layer", "aol", "--runs", str(tmp_path), "--val-images", "0"])
    assert "--val-images in 1..5000" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_a_tiny_check_trains_both_precisions_and_writes_what_train_zoo_reads(pc, tmp_path):
    out, runs = tmp_path / "precision-xs", tmp_path / "runs"
    args = ["--layer", "aol", "--images", "128", "--val-images", "64", "--runs", str(runs), "--out", str(out),
            "--quiet"]
    assert pc.main(args) == 0
    [result_file] = out.glob("accuracy-*.json")
    result = json.loads(result_file.read_text())
    assert result["hardware"]["cpu"] and result["protocol"]["images"] == 128
    assert [(r["layer"], r["precision"]) for r in result["runs"]] == [("aol", "fp32"), ("aol", "bf16")]
    for r in result["runs"]:
        recipe = json.loads((Path(r["run"]) / "run.json").read_text())
        assert recipe["complete"] and 0 <= r["val_accuracy"] <= 1 and r["train_seconds"] > 0
    assert (Path(result["runs"][1]["run"]) / "recipe.yaml").read_text().count("precision: bf16") == 1
    assert set(result["verdicts"]["aol"]) == {"clean_drop_points", "certified_drop_points", "bf16_ok", "bf16_speedup"}
    assert result_file.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".png"]  # written whole, nothing left over
    tz = load_script(ROOT / "scripts" / "train_zoo.py", "train_zoo")
    _, why = tz.measured_precision("aol", out)  # no bench file here: the speed is unmeasured
    assert why.startswith("Precision fp32: bf16 was not measured")
    again = pc.main(args)  # the finished runs are reused
    assert again == 0 and len(list(out.glob("accuracy-*.json"))) >= 1
