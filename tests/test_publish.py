"""Run -> evaluate -> publish: a tiny real Fashion-MNIST run becomes a loadable, verified zoo entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import lipzoo
from lipzoo.cli import main as cli
from lipzoo.publish import RunError, evaluate_run, publish_run
from lipzoo.registry import PRETRAINED, PretrainedEntry
from lipzoo.training import Recipe, train

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    r = Recipe(name="convnet_xs_aol.fashion_mnist", architecture="convnet_xs_aol", dataset="fashion_mnist",
               epochs=1, lr=0.05, weight_decay=1e-5, batch_size=64, crop_padding=2, hflip=False,
               schedule_step="batch", val_size=500, train_limit=640, seed=3,
               budget={"seconds": 12.0, "batch_seconds": 1.2, "device": "cpu", "hardware": {"cpu": "test cpu"}})
    out = tmp_path_factory.mktemp("run") / "convnet_xs_aol"
    train(r, out, progress=False)
    return out


def test_publish_needs_an_evaluation_first(run_dir, tmp_path):
    if (run_dir / "eval.json").exists():
        pytest.skip("evaluated already")
    with pytest.raises(RunError, match="lipzoo evaluate"):
        publish_run(run_dir, tmp_path)
    with pytest.raises(RunError, match="recipe.yaml"):
        evaluate_run(tmp_path)


def test_evaluate_then_publish_gives_a_loadable_card_whose_numbers_reproduce(run_dir, tmp_path, monkeypatch):
    res = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--limit", "300", "--batch-size", "64", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output[res.output.index("{"):])
    assert ev == json.loads((run_dir / "eval.json").read_text())
    c = ev["certification"]
    assert c["n"] == 300 and c["split"] == "test" and c["lipschitz_bound"] >= 1.0
    assert ev["audit"]["ok"] and ev["audit"]["lipschitz_upper"] <= 1 + 1e-4
    assert ev["inference"]["status"] == "ok" and ev["inference"]["infer_images_per_s"] > 0

    cards = tmp_path / "cards"
    res = CliRunner().invoke(cli, ["publish", str(run_dir), "--out", str(cards), "--json"])
    assert res.exit_code == 0, res.output
    folder = cards / "convnet_xs_aol.fashion_mnist"
    entry = PretrainedEntry.from_folder(folder)
    assert entry.metrics["clean_accuracy"] == c["clean_accuracy"]
    assert entry.metrics["certified_accuracy"] == c["certified_accuracy"]
    assert entry.metrics["audit"]["lipschitz_upper"] == ev["audit"]["lipschitz_upper"]
    run = json.loads((run_dir / "run.json").read_text())
    assert entry.timing["train_time_s"] == run["wall_time_s"] and entry.timing["train_images"] == 640
    assert entry.timing["inference_images_per_s"] == ev["inference"]["infer_images_per_s"]
    assert entry.timing["params"] == 1_572_288
    assert json.loads((folder / "eval.json").read_text()) == ev and (folder / "metrics.jsonl").is_file()
    card = (folder / "README.md").read_text()
    assert f"{100 * c['clean_accuracy']:.2f}%" in card and "CPU budget" in card
    assert "convnet_xs_aol.fashion_mnist" in (cards / "README.md").read_text()

    # the published weights load by their verified sha256 and certify to the card's numbers
    monkeypatch.setitem(PRETRAINED, entry.name, entry)  # this test's entry, not the bundled model of that name
    model = lipzoo.create_model(entry.name, pretrained=True, weights=folder)
    images, labels = lipzoo.data.load_tensors("fashion_mnist", "test", limit=300)
    again = lipzoo.certify(model, images, labels, tuple(float(e) for e in c["certified_accuracy"]),
                           lipschitz=c["lipschitz_bound"])
    assert again.clean_accuracy == c["clean_accuracy"]
    assert entry.metrics["check"]["n"] == 300 and entry.metrics["check"]["clean_accuracy"] == c["clean_accuracy"]
    assert {f"{e:.6g}": a for e, a in again.certified_accuracy.items()} == c["certified_accuracy"]
