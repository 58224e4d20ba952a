"""scripts/head_probe.py: refit a published model's head on frozen features, still 1-Lipschitz."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scripttools import load_script

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def hp():
    return load_script(ROOT / "scripts" / "head_probe.py", "head_probe")


def test_scores_certify_only_a_margin_above_sqrt2_eps_plus_the_round_off_slack(hp):
    eps = 0.1
    need = math.sqrt(2) * eps
    # above the line by far; above it by less than the package's round-off slack; below; misclassified
    logits = torch.tensor([[need + 1e-3, 0.0], [need + 1e-7, 0.0], [need - 1e-3, 0.0], [0.0, 1.0]],
                          dtype=torch.float64)
    got = hp.scores(logits, torch.tensor([0, 0, 0, 0]), eps)
    assert got == {"accuracy": pytest.approx(3 / 4), "certified": pytest.approx(1 / 4)}


def test_the_refit_head_lowers_the_loss_and_stays_1_lipschitz(hp):
    import lipzoo
    from lipzoo.audit import layer_bound
    from lipzoo.zoo.recipe import Recipe, offset_cross_entropy

    torch.manual_seed(0)
    model = lipzoo.create_model("convnet_xs_soc", num_classes=10, in_chans=1).eval()
    body, head = hp.split_head(model)
    f = torch.randn(256, 512, 1, 1)
    y = torch.randint(0, 10, (256,))
    recipe = Recipe.load(ROOT / "recipes" / "fashion_mnist" / "convnet_xs_soc.yaml")
    original = head[0][0].random_conv_filter.detach().clone()
    new = hp.refit(head, f, y, recipe, steps=30, lr=1e-2, batch_size=64)
    with torch.no_grad():
        before = offset_cross_entropy(head(f), y, recipe.loss_offset, recipe.loss_temperature).item()
        after = offset_cross_entropy(new(f), y, recipe.loss_offset, recipe.loss_temperature).item()
    assert after < before
    assert torch.equal(head[0][0].random_conv_filter, original), "the model's own head is untouched"
    assert not torch.equal(new[0][0].random_conv_filter, original)
    upper, *_ = layer_bound(new[0][0], (512, 1, 1))
    assert upper <= 1.0 + 1e-9
    with torch.no_grad():
        matrix = new[0][0](torch.eye(512).view(512, 512, 1, 1)) - new[0][0].bias.view(1, -1, 1, 1)
    assert torch.linalg.matrix_norm(matrix[:, :, 0, 0].double(), ord=2).item() <= 1.0 + 1e-5


def test_a_model_without_a_classification_head_is_one_clear_error(hp):
    with pytest.raises(ValueError, match="has no ClassificationHead child; expected a lipzoo ConvNet"):
        hp.split_head(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_bad_settings_are_one_clear_error(hp, capsys, tmp_path):
    with pytest.raises(SystemExit):
        hp.main(["convnet_xs_aol.fashion_mnist", "--steps", "0", "--out", str(tmp_path)])
    assert "--steps must be positive" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_a_tiny_probe_writes_the_result_and_its_picture(hp, tmp_path):
    args = ["convnet_xs_aol.fashion_mnist", "--train-limit", "256", "--val-limit", "100", "--steps", "3",
            "--out", str(tmp_path)]
    assert hp.main(args) == 0
    [result_file] = tmp_path.glob("head-probe-*.json")
    result = json.loads(result_file.read_text())
    assert result["hardware"]["cpu"] and result["settings"]["steps"] == 3
    [row] = result["models"]
    assert row["model"] == "convnet_xs_aol.fashion_mnist" and (row["train_images"], row["val_images"]) == (256, 100)
    for head in ("trained_head", "refit_head"):
        for split in ("train", "val"):
            s = row[head][split]
            assert 0 <= s["certified"] <= s["accuracy"] <= 1
    assert result_file.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".png"]


def _probe_result(sha: str, refit_clean: float) -> dict:
    def row(model, sha, trained, refit):
        return {"model": model, "recipe": "recipes/x.yaml", "weights_sha256": sha, "clean_floor": 0.85,
                "certified_floor": 0.75, "train_images": 55000, "val_images": 5000,
                "trained_head": {"train": {"accuracy": 0.8, "certified": 0.7}, "val": {"accuracy": trained, "certified": 0.7}},
                "refit_head": {"train": {"accuracy": 0.8, "certified": 0.7}, "val": {"accuracy": refit, "certified": 0.71}},
                "extract_s": 1.0, "refit_s": 1.0}
    return {"hardware": {"cpu_model": "Test CPU 9000", "cpu_threads": 1, "device": "cpu"}, "threads": 1,
            "settings": {"steps": 300, "lr": 1e-3, "batch_size": 4096, "eps": 36 / 255},
            "models": [row("the_model", sha, 0.8402, refit_clean), row("other_model", "0" * 64, 0.86, 0.87)]}


@pytest.mark.parametrize("refit_clean,verdict", [
    (0.8454, "Its clean gain, +0.52 points (the other models of the run: +1.00 to +1.00), is less than its "
             "0.94-point shortfall from the 85% clean line on the test split: the head alone does not explain"),
    (0.8512, "Its clean gain, +1.10 points (the other models of the run: +1.00 to +1.00), covers its 0.94-point "
             "shortfall from the 85% clean line on the test split: the trained head may be what falls short"),
])
def test_a_recorded_probe_is_on_the_card_of_the_weights_it_measured(hp, tmp_path, refit_clean, verdict):
    from hubtools import copy_folder, make_checkpoint
    from lipzoo.registry import PretrainedEntry
    from lipzoo.zoo.card_sections import HEAD_PROBE_FILENAME
    from lipzoo.zoo.cards import render_card

    base = make_checkpoint(tmp_path / "made")
    cards = tmp_path / "cards"
    folder = copy_folder(base.folder, cards / "the_model")
    entry = PretrainedEntry.from_folder(folder)
    result = _probe_result(entry.sha256, refit_clean)
    written = hp.record(result, Path("results/head-probe/head-probe-x.json"), cards)
    assert written[0] == folder / HEAD_PROBE_FILENAME
    rec = json.loads(written[0].read_text())
    assert rec["others"] == [{"model": "other_model", "trained_head": {"accuracy": 0.86, "certified": 0.7},
                              "refit_head": {"accuracy": 0.87, "certified": 0.71}}]

    card = render_card(entry)
    [line] = [ln for ln in card.splitlines() if ln.startswith("Head refit probe")]
    assert "results/head-probe/head-probe-x.json; Test CPU 9000, 1 thread, cpu)" in line
    assert f"clean accuracy 84.02% -> {100 * refit_clean:.2f}%, certified at 36/255 70.00% -> 71.00%" in line
    assert "other_model 86.00% -> 87.00%" in line and "shortfall" not in line  # no verdict: met its line
    cfg = entry.as_dict()
    bad = PretrainedEntry.from_dict(cfg | {"status": "undertrained", "metrics": cfg["metrics"] | {"clean_accuracy": 0.8406}},
                                    "test", folder=folder)
    assert verdict in render_card(bad)

    rec["model"]["weights_sha256"] = "f" * 64  # measured on other weights: not shown
    (folder / HEAD_PROBE_FILENAME).write_text(json.dumps(rec))
    assert "Head refit probe" not in render_card(entry)
    (folder / HEAD_PROBE_FILENAME).write_text("{not json")
    assert "Head refit probe" not in render_card(entry)


def test_record_needs_the_full_splits(hp, capsys, tmp_path):
    with pytest.raises(SystemExit):
        hp.main(["convnet_xs_aol.fashion_mnist", "--record", "--val-limit", "10", "--out", str(tmp_path)])
    assert "--record needs the full splits" in capsys.readouterr().err
