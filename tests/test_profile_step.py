"""scripts/profile_step.py: a training step's self CPU time, split by operator kind, with its files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from scripttools import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_step.py"


@pytest.fixture(scope="module")
def ps():
    return load_script(SCRIPT, "profile_step")


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


def test_conv_rate_times_every_conv_shape_of_the_standard_convnet_against_a_matmul(ps, tmp_path, capsys):
    shapes = ps.conv_shapes("xs", 2)
    assert len({(s["cin"], s["cout"], s["k"], s["h"]) for s in shapes}) == len(shapes)  # distinct
    assert {(s["cin"], s["k"]) for s in shapes} >= {(16, 3), (32, 3), (64, 3), (128, 3), (16, 1), (256, 1)}
    rc = ps.main(["--layer", "soc", "--batch-size", "2", "--warmup", "0", "--repeats", "1", "--conv-rate",
                  "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| 16 -> 16, 3x3 | 32x32 |" in out and "matmul GMAC/s" in out
    (js,) = tmp_path.glob("profile-cpu-xs-*.json")
    rates = json.loads(js.read_text())["conv_rates"]
    assert len(rates) == len(shapes)
    r = next(r for r in rates if (r["cin"], r["k"]) == (16, 3))
    assert (r["h_out"], r["w_out"]) == (32, 32)  # circular padding keeps the image size
    assert r["gmacs_per_fwd"] == pytest.approx(2 * 32 * 32 * 16 * 16 * 9 / 1e9)
    assert all(r[k] > 0 for r in rates for k in ("conv_gmac_s", "conv_channels_last_gmac_s", "matmul_gmac_s"))


def test_without_conv_rate_the_json_has_no_rates(ps, tmp_path):
    ps.main(["--layer", "aol", "--batch-size", "2", "--warmup", "0", "--repeats", "1", "--out", str(tmp_path)])
    (js,) = tmp_path.glob("profile-cpu-xs-*.json")
    assert json.loads(js.read_text())["conv_rates"] == []
