"""The zoo's learning curves in one picture (``lipzoo plot``): every bundled model's validation accuracy
against the hours it trained, read from the per-epoch records in its folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lipzoo.registry import PRETRAINED
from lipzoo.zoo.curves import _hours_and_values, zoo_curves
from lipzoo.zoo.plots import PlotError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FASHION = sorted(n for n, e in PRETRAINED.items() if e.dataset == "fashion_mnist")


def _records(folder: Path, times: list[float | None], acc: float = 0.8) -> Path:
    folder.mkdir(parents=True)
    recs = [{"epoch": i, "val_accuracy": acc + 0.01 * i, "val_certified": {"0.141176": acc - 0.1 + 0.01 * i}}
            | ({} if t is None else {"epoch_time_s": t}) for i, t in enumerate(times)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


def test_the_bundled_models_curves_are_drawn_from_their_folders(tmp_path):
    out = zoo_curves(None, tmp_path / "curves-fashion_mnist.png", dataset="fashion_mnist")  # None: the registry
    assert out["models"] == FASHION and out["skipped"] == []
    assert (tmp_path / "curves-fashion_mnist.png").read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["curves-fashion_mnist.png"]  # written whole, nothing left over


def test_the_time_axis_is_the_cumulative_wall_time_of_the_epochs():
    recs = [{"epoch_time_s": 1800, "v": 0.5}, {"epoch_time_s": 3600, "v": None}, {"epoch_time_s": 900, "v": 0.7}]
    assert _hours_and_values(recs, lambda r: r["v"]) == ([0.5, 1.75], [0.5, 0.7])
    assert _hours_and_values(recs[:1] + [{"v": 0.6}], lambda r: r["v"]) == ([], [])  # a record without its time


def test_a_model_without_timed_records_is_skipped_and_no_model_is_an_error(tmp_path):
    base = PRETRAINED[FASHION[0]]
    timed = replace(base, name="a.fashion_mnist", folder=_records(tmp_path / "a", [600.0, 600.0]))
    untimed = replace(base, name="b.fashion_mnist", folder=_records(tmp_path / "b", [600.0, None]))
    out = zoo_curves([timed, untimed], tmp_path / "c.png", dataset="fashion_mnist")
    assert out["models"] == ["a.fashion_mnist"] and out["skipped"] == ["b.fashion_mnist"]
    with pytest.raises(PlotError, match="no cifar10 model with per-epoch records and wall times"):
        zoo_curves([timed], tmp_path / "d.png", dataset="cifar10")
    assert not (tmp_path / "d.png").exists()
