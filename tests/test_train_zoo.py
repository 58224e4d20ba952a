"""scripts/train_zoo.py: a longer run of a searched recipe keeps its search and says its new length everywhere."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest

from lipzoo.zoo.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tz():
    spec = importlib.util.spec_from_file_location("train_zoo", ROOT / "scripts" / "train_zoo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_with_epochs_rewrites_epochs_budget_and_notes_and_keeps_the_search(tz, tmp_path):
    recipe = Recipe.load(ROOT / "recipes" / "fashion_mnist" / "convnet_xs_bcop.yaml")
    assert recipe.budget["epochs"] == recipe.epochs and f"{recipe.epochs} epochs" in recipe.notes
    longer = tz.with_epochs(recipe, recipe.epochs + 7)
    n = recipe.epochs + 7
    assert longer.epochs == n and longer.budget["epochs"] == n
    assert f"--epochs {n}" in longer.notes and f"{n} epochs over" in longer.notes
    assert f"{recipe.epochs} epochs" not in longer.notes
    assert longer.lr == recipe.lr and longer.budget["lr_search"] == recipe.budget["lr_search"]
    assert recipe.epochs != n and recipe.budget["epochs"] != n  # the loaded recipe is not changed
    longer.dump(tmp_path / "r.yaml")
    assert Recipe.load(tmp_path / "r.yaml") == longer


def test_with_epochs_leaves_a_recipe_without_budget_record_without_one(tz):
    recipe = Recipe.load(ROOT / "recipes" / "fashion_mnist" / "convnet_xs_bcop.yaml")
    bare = tz.with_epochs(replace(recipe, budget=None), 3)
    assert bare.epochs == 3 and bare.budget is None
