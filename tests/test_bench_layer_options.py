"""scripts/bench_layer_options.py: one architecture timed per layer-option value, beside standard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripttools import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_layer_options.py"


@pytest.fixture(scope="module")
def blo():
    return load_script(SCRIPT, "bench_layer_options")


def test_options_parse_as_yaml_scalars_and_combine(blo):
    assert blo.parse_option("step_bound=gram,spectral") == ("step_bound", ["gram", "spectral"])
    assert blo.parse_option("paper_compatible=false,true") == ("paper_compatible", [False, True])
    assert blo.variants([("a", [1, 2]), ("b", ["x"])]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        blo.parse_option("step_bound")


def test_times_every_variant_beside_standard_and_writes_the_file(blo, tmp_path, capsys):
    argv = ["--arch", "convnet_xs_cpl", "--option", "step_bound=gram,spectral", "--batch-size", "2", "--rounds", "1",
            "--out", str(tmp_path), "--json"]
    assert blo.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["options"]) for r in rows] == [
        ("convnet_xs_standard", {}), ("convnet_xs_cpl", {"step_bound": "gram"}), ("convnet_xs_cpl", {"step_bound": "spectral"})]
    assert rows[0]["train_x_standard"] == 1.0 and rows[1]["train_x_first"] == 1.0 and rows[0]["train_x_first"] is None
    assert rows[2]["train_x_first"] == pytest.approx(rows[2]["train_s"] / rows[1]["train_s"])
    (saved,) = tmp_path.glob("layer-options-convnet_xs_cpl-*.json")
    record = json.loads(saved.read_text())
    assert record["rows"] == rows and record["batch_size"] == 2 and record["hardware"]["cpu_model"]


@pytest.mark.parametrize("argv,message", [
    (["--arch", "convnet_xs_aol", "--option", "step_bound=gram"], "convnet_xs_aol does not take the option(s)"),
    (["--arch", "convnet_xs_nope", "--option", "step_bound=gram"], "unknown model 'convnet_xs_nope'"),
    (["--arch", "convnet_xs_cpl", "--option", "step_bound"], "expected KEY=VALUE"),
])
def test_bad_input_is_one_line(blo, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        blo.main(argv + ["--no-save", "--batch-size", "1", "--rounds", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1]
