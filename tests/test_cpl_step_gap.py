"""scripts/cpl_step_gap.py: how much larger a sound, size-specific step would be than CPL's gram-bound step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scripttools import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cpl_step_gap.py"


@pytest.fixture(scope="module")
def gap():
    return load_script(SCRIPT, "cpl_step_gap")


def test_the_three_norms_are_ordered_and_the_gap_is_their_ratio(gap):
    from lipzoo.layers.cpl import CPLConv2d

    torch.manual_seed(0)
    net = torch.nn.Sequential(CPLConv2d(4, 4, 3), torch.nn.AvgPool2d(2), CPLConv2d(4, 4, 3))
    rows = gap.step_gaps(net, (4, 8, 8))
    assert [(r["layer"], r["input"]) for r in rows] == [("0", [8, 8]), ("2", [4, 4])]
    for r in rows:  # every one an upper bound on the exact norm; the circular one the tighter here
        assert r["exact"] <= r["circular_bound"] * (1 + 1e-9) and r["circular_bound"] <= r["gram_bound"] * (1 + 1e-9)
        assert r["step_gap"] == pytest.approx((r["gram_bound"] / r["circular_bound"]) ** 2)
    tight = torch.nn.Sequential(CPLConv2d(4, 4, 3, step_bound="spectral"), torch.nn.AvgPool2d(2),
                                CPLConv2d(4, 4, 3, step_bound="spectral"))
    tight.load_state_dict(net.state_dict())
    for r in gap.step_gaps(tight, (4, 8, 8)):  # the spectral step is the circular bound's (up to its margin)
        assert r["step_bound"] == "spectral" and r["step_gap"] == pytest.approx(1.0, rel=3e-4)


def test_json_rows_and_a_model_without_cpl_refused(gap, capsys, monkeypatch):
    from lipzoo.layers.cpl import CPLConv2d

    with pytest.raises(SystemExit) as e:  # a real bundled model, without CPL layers
        gap.main(["convnet_xs_aol.fashion_mnist"])
    assert e.value.code == 2 and "has no CPL convolution" in capsys.readouterr().err
    torch.manual_seed(1)
    monkeypatch.setattr(gap, "load", lambda model: (torch.nn.Sequential(CPLConv2d(2, 2, 3)), (2, 6, 6)))
    assert gap.main(["tiny", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["layer"] == "0" and row["kernel"] == [2, 2, 3, 3] and row["step_gap"] >= 1 - 1e-9
