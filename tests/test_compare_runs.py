"""scripts/compare_runs.py and ``runs_curves``: several runs' validation curves in one picture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipzoo.zoo.recipe import Recipe
from scripttools import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_runs.py"


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT, "compare_runs")


def _epochs(folder: Path, vals: list[tuple[float, float]]) -> None:
    lines = [json.dumps({"epoch": i, "val_accuracy": a, "val_certified": {"0.141176": c}, "epoch_time_s": 10.0})
             for i, (a, c) in enumerate(vals)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _run(tmp: Path, name: str, options: dict, vals: list[tuple[float, float]]) -> Path:
    folder = tmp / name
    folder.mkdir()
    Recipe(name="convnet_xs_soc.fashion_mnist", architecture="convnet_xs_soc", dataset="fashion_mnist",
           epochs=len(vals) + 2, lr=0.05, weight_decay=0.0, layer_options=options).dump(folder / "recipe.yaml")
    _epochs(folder, vals)
    return folder


def test_runs_and_a_published_folder_are_drawn_with_their_numbers(script, tmp_path, capsys):
    a = _run(tmp_path, "a", {}, [(0.7, 0.6), (0.8, 0.7)])
    b = _run(tmp_path, "b", {"skew_bound": "spectral"}, [(0.72, 0.61)])
    card = tmp_path / "card"
    card.mkdir()
    (card / "config.json").write_text(json.dumps({"name": "convnet_xs_soc.fashion_mnist", "layer_kwargs": {}}))
    (card / "run.json").write_text(json.dumps({"epochs_done": 3}))
    _epochs(card, [(0.6, 0.5), (0.7, 0.6), (0.75, 0.65)])
    out = tmp_path / "pics" / "cmp.png"
    assert script.main([str(a), str(b), str(card), "--out", str(out), "--title", "t"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = json.loads(out.with_suffix(".json").read_text())
    assert [d["label"] for d in drawn["runs"]] == [
        "convnet_xs_soc 4 ep, lr 0.05", "convnet_xs_soc (skew_bound=spectral) 3 ep, lr 0.05",
        "convnet_xs_soc.fashion_mnist 3 ep, published"]
    assert drawn["runs"][0]["epochs"] == [1, 2] and drawn["runs"][0]["val_certified"] == [0.6, 0.7]
    assert "2 epoch(s), last val 0.8 / 0.7" in capsys.readouterr().out


def test_bad_folders_and_outputs_are_one_clear_error(script, tmp_path, capsys):
    good = _run(tmp_path, "good", {}, [(0.7, 0.6)])
    empty = _run(tmp_path, "empty", {}, [])
    (empty / "metrics.jsonl").write_text("")
    for args, message in (([str(tmp_path / "nothing")], "neither a run folder"), ([str(empty)], "has no epoch yet")):
        with pytest.raises(SystemExit) as e:
            script.main(args + ["--out", str(tmp_path / "x.png")])
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        script.main([str(good), "--out", str(tmp_path / "x.jpg")])
    assert e.value.code == 2 and "--out must name a .png file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
