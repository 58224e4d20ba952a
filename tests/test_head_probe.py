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


def test_scores_count_a_margin_as_certified_only_above_sqrt2_eps(hp):
    eps = 0.1
    need = math.sqrt(2) * eps
    logits = torch.tensor([[need + 1e-6, 0.0], [need - 1e-6, 0.0], [0.0, 1.0]])
    got = hp.scores(logits, torch.tensor([0, 0, 0]), eps)
    assert got == {"accuracy": pytest.approx(2 / 3), "certified": pytest.approx(1 / 3)}


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
