"""scripts/profile_step.py: a training step's self CPU time, split by operator kind, with its files."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_step.py"


@pytest.fixture(scope="module")
def ps():
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("op,kind", [
    ("aten::convolution_backward", "convolution"), ("aten::mkldnn_convolution", "convolution"),
    ("aten::bmm", "matmul"), ("aten::mm", "matmul"), ("aten::_linalg_eigh", "matmul"),
    ("aten::_fft_r2c", "fft"), ("aten::copy_", "copy"), ("aten::cat", "copy"),
    ("aten::relu", "elementwise"), ("aten::add_", "elementwise"),
])
def test_operators_are_sorted_into_kinds(ps, op, kind):
    assert ps.kind_of(op) == kind


def test_profiles_standard_and_a_layer_and_writes_json_csv_png(ps, tmp_path, capsys):
    rc = ps.main(["--layer", "cpl", "--batch-size", "2", "--warmup", "0", "--repeats", "1", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| standard | 1.00 |" in out and "| cpl |" in out
    (js,) = tmp_path.glob("profile-cpu-xs-*.json")
    data = json.loads(js.read_text())
    assert [r["layer"] for r in data["rows"]] == ["standard", "cpl"]
    for r in data["rows"]:  # the kinds partition the step: nothing is lost or counted twice
        assert sum(r["kinds_s"].values()) == pytest.approx(r["step_s"], rel=1e-9)
        assert r["kinds_s"]["convolution"] > 0
    assert data["hardware"]["cpu_model"]
    rows = list(csv.DictReader(open(js.with_suffix(".csv"))))
    assert [r["layer"] for r in rows] == ["standard", "cpl"]
    assert js.with_suffix(".png").stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp*"))


def test_an_unknown_layer_is_one_line(ps, capsys):
    with pytest.raises(SystemExit) as e:
        ps.main(["--layer", "nope"])
    assert e.value.code == 2
    assert "unknown layer id(s) ['nope']" in capsys.readouterr().err
