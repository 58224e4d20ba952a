"""A published model retrained from its committed recipe alone: compared, recorded, shown on its card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lipzoo.cli import main as cli
from lipzoo.registry import PretrainedEntry
from lipzoo.zoo.evaluation import evaluate_run
from lipzoo.zoo.publish import RunError, publish_run
from lipzoo.zoo.reproduction import TOLERANCE, record_reproduction
from lipzoo.zoo.training import Recipe, train

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
NAME = "convnet_xs_standard.fashion_mnist"


def _recipe() -> Recipe:
    return Recipe(name=NAME, architecture="convnet_xs_standard", dataset="fashion_mnist", epochs=1, lr=0.01,
                  weight_decay=1e-5, batch_size=64, crop_padding=2, hflip=False, schedule_step="batch",
                  val_size=200, train_limit=256, seed=5, notes="the original run")


def _trained(recipe: Recipe, out: Path) -> Path:
    train(recipe, out, progress=False)
    evaluate_run(out, limit=200, batch_size=100, speed=False, progress=False)
    return out


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    """A checkout-shaped folder: the committed recipe, a published (forced) entry, and a retrain of it."""
    root = tmp_path_factory.mktemp("checkout")
    recipe_file = root / "recipes" / "fashion_mnist" / "convnet_xs_standard.yaml"
    recipe_file.parent.mkdir(parents=True)
    _recipe().dump(recipe_file)
    original = _trained(Recipe.load(recipe_file), root / "runs" / "original")
    publish_run(original, root / "cards", force=True, recipe_path="recipes/fashion_mnist/convnet_xs_standard.yaml")
    again = _trained(Recipe.load(recipe_file), root / "runs" / "again")
    return {"root": root, "cards": root / "cards", "original": original, "again": again}


def _copy(run: Path, dest: Path, *, eval_clean_delta: float = 0.0, recipe_extra: dict | None = None) -> Path:
    out = shutil.copytree(run, dest)
    if eval_clean_delta:
        ev = json.loads((out / "eval.json").read_text())
        ev["certification"]["clean_accuracy"] += eval_clean_delta
        (out / "eval.json").write_text(json.dumps(ev))
    if recipe_extra:
        r = yaml.safe_load((out / "recipe.yaml").read_text()) | recipe_extra
        (out / "recipe.yaml").write_text(yaml.safe_dump(r))
    return out


def _cards_copy(zoo: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the checkout (recipes + cards), so each test records into its own cards."""
    root = tmp_path / "checkout"
    shutil.copytree(zoo["root"] / "recipes", root / "recipes")
    shutil.copytree(zoo["cards"], root / "cards")
    return root / "cards"


def test_a_retrain_on_the_same_cpu_reproduces_and_the_card_says_so(zoo, tmp_path):
    cards = _cards_copy(zoo, tmp_path)
    weights_before = (cards / NAME / "model.safetensors").read_bytes()
    res = CliRunner().invoke(cli, ["publish", str(zoo["again"]), "--out", str(cards), "--reproduction", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output[res.output.index("["):])[0]
    entry = PretrainedEntry.from_folder(cards / NAME)
    r = entry.provenance["reproduction"]
    assert row["reproduction"] == r
    ev = json.loads((zoo["again"] / "eval.json").read_text())["certification"]
    assert r["clean_accuracy"] == ev["clean_accuracy"] and r["n"] == 200
    assert r["reproduced"] and r["max_abs_difference"] <= TOLERANCE
    assert set(r["difference"]) == {"clean"} | set(entry.metrics["certified_accuracy"])
    # same recipe, same seeds, same CPU and threads: the trainer is deterministic on CPU
    assert r["weights_identical"]
    assert r["hardware"] and r["hardware"] == r["published_hardware"] and r["threads"] == r["published_threads"]
    assert (cards / NAME / "model.safetensors").read_bytes() == weights_before  # the published weights stay
    card = (cards / NAME / "README.md").read_text()
    assert "### Reproduced" in card and "**reproduced**" in card and "bit-identical" in card
    assert f"(the published weights: {r['published_hardware']}" in card
    res = CliRunner().invoke(cli, ["card", "--all", "--check", "--root", str(cards)])
    assert res.exit_code == 0, res.output  # the card on disk is the one config.json renders


def test_a_difference_over_half_a_point_is_recorded_as_not_reproduced(zoo, tmp_path):
    cards = _cards_copy(zoo, tmp_path)
    run = _copy(zoo["again"], tmp_path / "off", eval_clean_delta=0.02)
    entry = record_reproduction(run, cards)
    r = entry.provenance["reproduction"]
    assert not r["reproduced"] and r["difference"]["clean"] == pytest.approx(0.02)
    card = (cards / NAME / "README.md").read_text()
    assert "**not reproduced**: clean (+2.00) exceeded, every other difference is within 0.5 points" in card


@pytest.mark.parametrize("case", ["changed_lr", "the_original", "limited_eval", "unpublished", "unevaluated"])
def test_what_is_not_a_reproduction_is_refused_before_anything_is_written(zoo, tmp_path, case):
    cards = _cards_copy(zoo, tmp_path)
    before = (cards / NAME / "config.json").read_bytes()
    run, match = zoo["again"], None
    if case == "changed_lr":
        run, match = _copy(zoo["again"], tmp_path / "lr", recipe_extra={"lr": 0.02}), "differs from the committed recipe in lr"
    elif case == "the_original":
        run, match = zoo["original"], "the published run itself"
    elif case == "limited_eval":
        run = _copy(zoo["again"], tmp_path / "lim")
        evaluate_run(run, limit=100, batch_size=100, speed=False, progress=False)
        match = "evaluate it on the same split"
    elif case == "unpublished":
        shutil.rmtree(cards / NAME)
        match = "publish the original run first"
    else:
        run = _copy(zoo["again"], tmp_path / "noeval")
        (run / "eval.json").unlink()
        match = "lipzoo evaluate"
    with pytest.raises(RunError, match=match):
        record_reproduction(run, cards)
    if case != "unpublished":
        assert (cards / NAME / "config.json").read_bytes() == before
    res = CliRunner().invoke(cli, ["publish", str(run), "--out", str(cards), "--reproduction"])
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1
