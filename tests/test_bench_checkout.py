"""scripts/bench_checkout.py: another checkout's models timed by this checkout's bench harness."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from lipzoo.zoo import bench, measure
from lipzoo.zoo.bench import read_results
from scripttools import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_the_other_checkouts_models_are_measured_and_named(tmp_path, monkeypatch):
    script = load_script(ROOT / "scripts" / "bench_checkout.py", "bench_checkout")
    other = tmp_path / "other"
    shutil.copytree(ROOT / "lipzoo", other / "lipzoo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("create_model", "plain_converter"):  # restored after the test
        monkeypatch.setattr(measure, name, getattr(measure, name))
    monkeypatch.setattr(bench, "create_model", bench.create_model)
    try:
        assert script.main([str(other), "--layer", "aol", "--size", "xs", "--batch-size", "2", "--warmup", "0",
                            "--repeats", "1", "--out", str(tmp_path / "out")]) == 0
        assert measure.create_model.__module__.startswith(script.PACKAGE)  # the other checkout's factory
        assert measure.plain_converter()[0].__module__ == f"{script.PACKAGE}.export"
    finally:
        for mod in [m for m in sys.modules if m == script.PACKAGE or m.startswith(script.PACKAGE + ".")]:
            del sys.modules[mod]
    (path,) = (tmp_path / "out").glob("benchmark-cpu-*.csv")
    rows = read_results(path)
    assert [(r["model"], r["status"], r["interleaved"]) for r in rows] == [
        ("convnet_xs_standard", "ok", True), ("convnet_xs_aol", "ok", True)]
    assert rows[0]["hw_commit"] == "unknown"  # not a git checkout: never this checkout's commit
    assert rows[1]["train_images_per_s_vs_standard"] > 0 and rows[1]["train_peak_mib"] is None


def test_a_folder_without_lipzoo_is_refused(tmp_path):
    script = load_script(ROOT / "scripts" / "bench_checkout.py", "bench_checkout")
    with pytest.raises(SystemExit, match="not a lipzoo checkout"):
        script.main([str(tmp_path)])
