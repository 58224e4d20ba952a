"""scripts/train_zoo.py: what it takes from measurements (thread policy, precision), what its recipe notes say,
and how a longer run of a searched recipe keeps its search and says its new length everywhere."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from lipzoo.zoo.recipe import Recipe

from scripttools import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tz():
    return load_script(ROOT / "scripts" / "train_zoo.py", "train_zoo")


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


# --- scripts/train_zoo.py takes its default thread policy from the newest measurement -----------

def _policy_file(folder: Path, stamp: str, winners: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"thread-policy-{stamp}.json").write_text(json.dumps({"hardware": {}, "rows": [], "winners": winners}))


def test_train_zoo_follows_the_newest_measured_winner_at_its_batch_size(tz, tmp_path):
    assert tz.measured_policy(64, tmp_path)[0] == tz.DEFAULT_POLICY  # nothing measured
    _policy_file(tmp_path, "20260101T000000Z", {"aol@64": "1x1", "sll@64": "1x1"})
    _policy_file(tmp_path, "20260102T000000Z", {"aol@64": "1x2-passive", "sll@64": "1x2-passive",
                                                "lot@64": "2x1", "aol@256": "2x1", "sll@256": "2x1"})
    policy, why = tz.measured_policy(64, tmp_path)
    assert policy == "1x2-passive" and "20260102T000000Z" in why and "2 of 3" in why
    assert tz.measured_policy(256, tmp_path)[0] == "2x1"
    policy, why = tz.measured_policy(128, tmp_path)  # not measured at 128: all batch sizes vote
    assert policy == "2x1" and "no run at this batch size" in why
    assert tz.POLICY_SHAPE[policy] == (2, 1)


def _precision_file(folder: Path, cpu: str, speeds: dict[tuple[str, str], float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "benchmark-cpu-20260101T000000Z.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "layer", "size", "status", "precision", "train_images_per_s",
                                          "hw_cpu_model"])
        w.writeheader()
        for (layer, prec), v in speeds.items():
            w.writerow({"model": f"convnet_xs_{layer}", "layer": layer, "size": "xs", "status": "ok",
                        "precision": prec, "train_images_per_s": v, "hw_cpu_model": cpu})


def _accuracy_file(folder: Path, stamp: str, cpu: str, verdicts: dict[str, bool]) -> None:
    check = {"hardware": {"cpu": cpu}, "tolerance_points": 1.5, "protocol": {"images": 6400},
             "verdicts": {la: {"bf16_ok": ok, "clean_drop_points": 0.4 if ok else 3.1,
                               "certified_drop_points": -0.2 if ok else 5.0} for la, ok in verdicts.items()}}
    (folder / f"accuracy-{stamp}.json").write_text(json.dumps(check))


def test_train_zoo_uses_bf16_only_where_this_cpu_measured_it_faster_and_as_accurate(tz, tmp_path):
    from lipzoo._provenance import cpu_model

    assert tz.measured_precision("aol", tmp_path)[0] == "fp32"  # nothing measured
    _precision_file(tmp_path / "slow", cpu_model(), {("standard", "fp32"): 70.0, ("standard", "bf16"): 7.0,
                                                     ("aol", "fp32"): 30.0, ("aol", "bf16"): 45.0,
                                                     ("soc", "fp32"): 10.0, ("soc", "bf16"): 14.0})
    choice, why = tz.measured_precision("aol", tmp_path / "slow")  # faster, but its accuracy never checked
    assert choice == "fp32" and "0.67x as long" in why and "not checked for accuracy" in why
    _accuracy_file(tmp_path / "slow", "20260101T000000Z", cpu_model(), {"aol": True, "soc": True})
    _accuracy_file(tmp_path / "slow", "20260102T000000Z", cpu_model(), {"soc": False})  # newest for soc
    _accuracy_file(tmp_path / "slow", "20260103T000000Z", "Some Other CPU", {"aol": False, "soc": True})
    choice, why = tz.measured_precision("aol", tmp_path / "slow")
    assert choice == "bf16" and why.startswith("Precision bf16") and "0.67x as long" in why
    assert "accuracy-20260101T000000Z.json" in why and "accuracy by -0.4 and certified accuracy by +0.2 points" in why
    choice, why = tz.measured_precision("soc", tmp_path / "slow")  # faster but less accurate
    assert choice == "fp32" and "0.71x as long" in why and "certified accuracy by -5 points" in why
    assert "accuracy-20260102T000000Z.json" in why
    choice, why = tz.measured_precision("sll", tmp_path / "slow")  # not measured: standard decides
    assert choice == "fp32" and "of standard took 10.00x" in why
    _precision_file(tmp_path / "other", "Some Other CPU", {("aol", "fp32"): 30.0, ("aol", "bf16"): 45.0})
    assert tz.measured_precision("aol", tmp_path / "other") == ("fp32", f"Precision fp32: bf16 was not measured on {cpu_model()}")


def test_train_zoo_notes_say_when_the_lr_search_left_its_winner_at_an_edge(tz):
    def search(scores: dict[float, float]) -> dict:
        return {"trials": [{"factor": f, "lr": f, "val_accuracy": s, "val_certified": {"0.141176": s}}
                           for f, s in scores.items()]}

    assert tz.edge_text(search({0.5: 0.1, 1.0: 0.3, 2.0: 0.2})) == ""
    assert "the largest lr tried: the search did not bracket it" in tz.edge_text(search({0.5: 0.1, 1.0: 0.2, 2.0: 0.3}))
    assert "the smallest lr tried" in tz.edge_text(search({0.5: 0.3, 1.0: 0.2, 2.0: 0.1}))


# --- a planned recipe trained at a smaller searched lr (the winner diverged), said in the recipe -----

def test_with_lr_instead_takes_a_smaller_searched_lr_and_says_why_everywhere(tz, tmp_path):
    recipe = Recipe.load(ROOT / "recipes" / "fashion_mnist" / "convnet_xs_sll.yaml")
    best = recipe.budget["lr_search"]["best_lr"]
    smaller = max(t["lr"] for t in recipe.budget["lr_search"]["trials"] if t["lr"] < best)
    assert recipe.lr == best and f"chosen lr {best:.4g}" in recipe.notes
    taken = tz.with_lr_instead(recipe, round(smaller, 3), "the winner diverged in the full run.")
    assert taken.lr == smaller and taken.budget["chosen_lr"] == smaller
    assert taken.budget["chosen_why"] == "the winner diverged in the full run."
    assert (f"chosen lr {smaller:.4g} instead of the search's winner {best:.4g}: the winner diverged in the full run"
            in taken.notes) and f"chosen lr {best:.4g}" not in taken.notes
    assert taken.budget["lr_search"] == recipe.budget["lr_search"] and recipe.lr == best  # search kept, input unchanged
    assert tz.with_lr_instead(taken, smaller, "again") is taken  # already chosen: nothing rewritten
    taken.dump(tmp_path / "r.yaml")
    assert Recipe.load(tmp_path / "r.yaml") == taken


def test_with_lr_instead_refuses_an_lr_the_search_did_not_try_below_its_winner(tz):
    recipe = Recipe.load(ROOT / "recipes" / "fashion_mnist" / "convnet_xs_sll.yaml")
    best = recipe.budget["lr_search"]["best_lr"]
    with pytest.raises(ValueError, match=r"--lr-instead 1 was not searched below the winner .*expected one of: 0\.1814"):
        tz.with_lr_instead(recipe, 1.0, "why")
    with pytest.raises(ValueError, match="not searched below the winner"):
        tz.with_lr_instead(recipe, best, "the winner itself")
    with pytest.raises(ValueError, match="--lr-why is empty"):
        tz.with_lr_instead(recipe, 0.1814, "  ")
    with pytest.raises(ValueError, match="has no lr search in its budget record"):
        tz.with_lr_instead(replace(recipe, budget=None), 0.1814, "why")


def test_train_zoo_rejects_a_bad_lr_instead_before_any_worker_starts(tmp_path):
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "train_zoo.py"), "--epochs", "15", "--out",
                               str(tmp_path), *args], capture_output=True, text=True, timeout=120)

    res = run("--layers", "sll", "--lr-instead", "1.0", "--lr-why", "diverged")
    assert res.returncode == 2 and "--lr-instead 1 was not searched below the winner" in res.stderr, res.stderr
    res = run("--layers", "aol,sll", "--lr-instead", "0.1814", "--lr-why", "diverged")
    assert res.returncode == 2 and "--lr-instead takes exactly one layer, got 2: aol, sll" in res.stderr, res.stderr
    res = run("--layers", "sll", "--lr-instead", "0.1814", "--lr-why", "diverged", "--replan")
    assert res.returncode == 2 and "cannot go with --replan" in res.stderr, res.stderr
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_a_replan_finds_the_searchs_base_lr_without_a_factor_one_trial(tz):
    trials = [{"lr": 0.54832, "factor": 8.0}, {"lr": 1.09664, "factor": 16.0}]
    assert tz.search_base_lr({"trials": trials}) == pytest.approx(0.06854)
    assert tz.search_base_lr({"trials": [{"lr": 0.1, "factor": 1.0}]}) == 0.1
