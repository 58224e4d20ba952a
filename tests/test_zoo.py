"""The shipped Fashion-MNIST zoo: every bundled model loads by name, passes the audit, and
reproduces the numbers its card was generated from (torchvision's 'metadata against reality')."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import lipzoo
from lipzoo.audit import UPPER_TOL
from lipzoo.certify import certifying_bound, proven_audit
from lipzoo.cli import main as cli
from lipzoo.layers import LAYERS
from lipzoo.registry import PRETRAINED

FMNIST = Path("/usr/share/datasets/fashion-mnist")
# the published Fashion-MNIST ConvNet-XS entries (layers added after the zoo was trained have none yet)
ZOO = sorted(n for n, e in PRETRAINED.items() if e.architecture.startswith("convnet_xs_") and e.dataset == "fashion_mnist")
CROSS_CPU_REL = 5e-5
CARDS = Path(__file__).resolve().parents[1] / "cards"
RECHECK_N = 100  #: images of a model's per-image check records recomputed here
PAPER_LAYERS = ("aol", "bcop", "cayley", "cpl", "lot", "sandwich", "sll", "soc", "standard")  # the nine trained


def test_list_pretrained_shows_the_nine_fashion_mnist_models():
    res = CliRunner().invoke(cli, ["list", "--pretrained", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    names = [row["name"] if isinstance(row, dict) else row for row in listed]
    assert set(ZOO) <= set(names)
    assert len(ZOO) >= 9 and {f"convnet_xs_{lid}.fashion_mnist" for lid in PAPER_LAYERS} <= set(ZOO)


def test_list_pretrained_text_shows_each_models_test_accuracies_and_status():
    res = CliRunner().invoke(cli, ["list", "--pretrained"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines()}
    for name in ZOO:
        m = PRETRAINED[name].metrics
        want = (f"clean {100 * m['clean_accuracy']:5.2f}%  certified {100 * m['certified_accuracy']['0.141176']:5.2f}%"
                " at 36/255")
        assert want in lines[name], lines[name]
        assert lines[name].endswith("[undertrained]") == (PRETRAINED[name].status == "undertrained")


@pytest.mark.parametrize("name", ZOO)
def test_zoo_entry_is_complete_and_measured(name):
    e = PRETRAINED[name]
    m, t = e.metrics, e.timing
    assert m["split"] == "test" and m["n"] == 10_000
    assert set(m["certified_accuracy"]) == {f"{x:.6g}" for x in lipzoo.DEFAULT_EPS}
    assert m["lipschitz_bound"] == certifying_bound(m["audit"]["lipschitz_upper"])
    for key in ("train_time_s", "train_images_per_s", "inference_images_per_s", "peak_memory_mb", "params",
                "hardware"):
        assert key in t, key
    assert e.recipe and (Path(__file__).resolve().parents[1] / e.recipe).is_file()
    # a zoo budget is a training time (time-budget recipes) or an epoch count (recipes meant to converge)
    budget = e.provenance.get("budget", {})
    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / e.recipe).read_text())
    if str(budget.get("zoo", "")).endswith("--epochs"):
        assert recipe["epochs"] >= 1 and budget.get("epochs", recipe["epochs"]) == recipe["epochs"]
    else:
        assert budget.get("seconds", 0) > 0


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_loads_verified_passes_the_audit_and_reproduces_its_check(name):
    e = PRETRAINED[name]
    model = lipzoo.create_model(name, pretrained=True)  # sha256-verified, strict load
    proof = proven_audit(model)  # lipzoo.audit(model, lower=False), kept for certify() below
    assert proof.upper <= 1 + UPPER_TOL or LAYERS[e.architecture.split("_")[-1]].lipschitz is False
    # the weight parametrisations run in float32: another CPU (or thread count) computes the effective
    # weights, hence the proven bound, a few 1e-6 differently. 5e-5 relative admits that and still
    # catches a changed parametrisation or changed weights (the layers' own tests pin 1e-4 slack).
    assert proof.upper == pytest.approx(e.metrics["audit"]["lipschitz_upper"], rel=CROSS_CPU_REL)
    # the per-image records `lipzoo evaluate` wrote (scripts/record_checks.py for older folders)
    rec = json.loads((CARDS / name / "check.json").read_text())
    k = min(RECHECK_N, rec["n"])
    images, labels = lipzoo.data.load_tensors("fashion_mnist", rec["split"], limit=k)
    assert labels.tolist() == rec["labels"][:k]
    # certify with the bound proven HERE (never the stored one), in float64 as `lipzoo evaluate` does
    res = lipzoo.certify(model, images, labels)
    want = torch.tensor(rec["radii"][:k], dtype=torch.float64)
    # another CPU computes the weights, hence margins and L, a few 1e-6 relative differently; a
    # prediction may flip only where the top two logits (nearly) tie: at most one image
    same_pred = res.predictions == torch.tensor(rec["predictions"][:k])
    close = (res.radii - want).abs() <= 1e-4 + 1e-3 * want
    assert int((~(same_pred & close)).sum()) <= 1, (res.radii[~close][:5], want[~close][:5])


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
@pytest.mark.parametrize("name", ZOO)
def test_certified_margins_carry_round_off_far_below_the_slack(name):
    """Certificates use the float64 network: two evaluation orders of it (batch 64 vs 16) differ by
    round-off only, which must be orders of magnitude below the slack subtracted from every margin.
    The float32 network's margins (what a float32 deployment computes) stay within a few slacks.
    ``LIPZOO_ROUNDOFF_N=10000`` runs it on the whole test set (default: the first 64 images)."""
    from lipzoo.certify import ROUNDOFF_SLACK, as_float64, margins

    model = lipzoo.create_model(name, pretrained=True)
    m64 = as_float64(model)
    n = int(os.environ.get("LIPZOO_ROUNDOFF_N", "64"))
    images, labels = lipzoo.data.load_tensors("fashion_mnist", "test", limit=n)
    with torch.no_grad():
        big = torch.cat([m64(images[i : i + 256].double()) for i in range(0, len(images), 256)])
        small = torch.cat([m64(images[i : i + 16].double()) for i in range(0, len(images), 16)])
        z32 = torch.cat([model(images[i : i + 256]).double() for i in range(0, len(images), 256)])
    scale = big.abs().amax(dim=1)
    assert float(((margins(big, labels) - margins(small, labels)).abs() / scale).max()) < 1e-3 * ROUNDOFF_SLACK
    assert float(((margins(z32, labels) - margins(big, labels)).abs() / scale).max()) < 10 * ROUNDOFF_SLACK


#: the zoo's searched recipes (scripts/train_zoo.py wrote an lr search into their budget record)
SEARCHED = sorted(p for p in (CARDS.parent / "recipes").rglob("*.yaml")
                  if ((yaml.safe_load(p.read_text()) or {}).get("budget") or {}).get("lr_search"))


def test_the_zoo_recipes_were_searched():
    assert {f"convnet_xs_{lid}" for lid in PAPER_LAYERS} <= {p.stem for p in SEARCHED}


@pytest.mark.parametrize("path", SEARCHED, ids=lambda p: p.stem)
def test_a_searched_recipe_trains_its_winner_or_says_why_not(path):
    recipe = yaml.safe_load(path.read_text())
    budget = recipe["budget"]
    search = budget["lr_search"]
    tried = [t["lr"] for t in search["trials"]]
    assert search["best_lr"] in tried and recipe["lr"] in tried
    if recipe["lr"] != search["best_lr"]:  # scripts/train_zoo.py --lr-instead: a smaller searched lr, with the reason
        assert budget.get("chosen_lr") == recipe["lr"] < search["best_lr"] and budget.get("chosen_why")
        assert f"chosen lr {recipe['lr']:.4g}" in recipe["notes"] or f"takes lr {recipe['lr']:.4g}" in recipe["notes"]
    else:
        assert "chosen_lr" not in budget
