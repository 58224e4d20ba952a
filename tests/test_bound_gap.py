"""scripts/bound_gap.py: how much further a sound, size-specific bound would let CPL and SOC layers go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scripttools import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bound_gap.py"


@pytest.fixture(scope="module")
def gap():
    return load_script(SCRIPT, "bound_gap")


def _ordered(r: dict) -> None:
    """Every norm an upper bound on the exact one; the circular one the tighter here."""
    assert r["exact"] <= r["circular_bound"] * (1 + 1e-9) and r["circular_bound"] <= r["gram_bound"] * (1 + 1e-9)


def test_cpl_norms_are_ordered_and_the_gap_is_their_ratio(gap):
    from lipzoo.layers.cpl import CPLConv2d

    torch.manual_seed(0)
    net = torch.nn.Sequential(CPLConv2d(4, 4, 3), torch.nn.AvgPool2d(2), CPLConv2d(4, 4, 3))
    rows = gap.bound_gaps(net, (4, 8, 8))
    assert [(r["layer"], r["input"], r["family"]) for r in rows] == [("0", [8, 8], "cpl"), ("2", [4, 4], "cpl")]
    for r in rows:
        _ordered(r)
        assert r["gap"] == pytest.approx((r["gram_bound"] / r["circular_bound"]) ** 2) == r["default_gap"]
    tight = torch.nn.Sequential(CPLConv2d(4, 4, 3, step_bound="spectral"), torch.nn.AvgPool2d(2),
                                CPLConv2d(4, 4, 3, step_bound="spectral"))
    tight.load_state_dict(net.state_dict())
    for r in gap.bound_gaps(tight, (4, 8, 8)):  # the spectral step is the circular bound's (up to its margin)
        assert r["bound"] == "spectral" and r["gap"] == pytest.approx(1.0, rel=3e-4)


def test_soc_rows_use_the_skew_filter_on_the_folded_map(gap):
    from lipzoo.layers.soc import SOCConv2d

    torch.manual_seed(0)
    net = torch.nn.Sequential(SOCConv2d(2, 8, 3, stride=2), SOCConv2d(8, 8, 3))
    rows = gap.bound_gaps(net, (2, 8, 8))
    assert [(r["input"], r["kernel"], r["family"]) for r in rows] == [([4, 4], [8, 8, 3, 3], "soc")] * 2
    for r in rows:
        _ordered(r)
        assert r["gap"] == pytest.approx(r["gram_bound"] / r["circular_bound"], rel=1e-6)
    tight = torch.nn.Sequential(SOCConv2d(2, 8, 3, stride=2, skew_bound="spectral"),
                                SOCConv2d(8, 8, 3, skew_bound="spectral"))
    tight.load_state_dict(net.state_dict())
    for r, loose in zip(gap.bound_gaps(tight, (2, 8, 8)), rows):
        assert r["bound"] == "spectral" and r["gap"] == pytest.approx(1.0, rel=3e-4)
        assert r["default_gap"] == pytest.approx(loose["gap"])


def test_json_rows_and_a_model_without_cpl_or_soc_refused(gap, capsys, monkeypatch):
    from lipzoo.layers.cpl import CPLConv2d

    with pytest.raises(SystemExit) as e:  # a real bundled model, without CPL or SOC layers
        gap.main(["convnet_xs_aol.fashion_mnist"])
    assert e.value.code == 2 and "has no CPL or SOC convolution" in capsys.readouterr().err
    torch.manual_seed(1)
    monkeypatch.setattr(gap, "load", lambda model: (torch.nn.Sequential(CPLConv2d(2, 2, 3)), (2, 6, 6)))
    assert gap.main(["tiny", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["layer"] == "0" and row["kernel"] == [2, 2, 3, 3] and row["gap"] >= 1 - 1e-9
