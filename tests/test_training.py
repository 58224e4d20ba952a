"""The trainer: loss, recipes, resumable and deterministic runs, divergence guard, DDP, a real-data smoke run."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file

from lipzoo.certify import certify, pgd_attack
from lipzoo.cli import main as cli
from lipzoo.zoo.training import DivergenceError, Recipe, RecipeError, augment, offset_cross_entropy, train

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def tiny_recipe(**kw) -> Recipe:
    base = dict(name="t", architecture="convnet_xs_aol", dataset="fashion_mnist", epochs=3, lr=0.05,
                weight_decay=1e-5, batch_size=32, crop_padding=2, hflip=False, seed=1)
    base.update(kw)
    return Recipe(**base)


def synthetic(n=64, n_val=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n + n_val,), generator=g)
    x = torch.rand(n + n_val, 1, 32, 32, generator=g) * 0.2
    x[torch.arange(len(y)), 0, 2 * y + 5, 10:20] = 1.0  # a learnable stripe per class
    return x[:n], y[:n], x[n:], y[n:]


def write_idx(path: Path, arr: np.ndarray) -> None:
    code = {np.uint8: 0x08}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_offset_cross_entropy_matches_its_definition():
    z = torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    assert torch.allclose(offset_cross_entropy(z, y, 0.0, 1.0), F.cross_entropy(z, y))
    m, t = 0.4, 0.25
    ref = t * F.cross_entropy((z - m * F.one_hot(y, 10)) / t, y)
    assert torch.allclose(offset_cross_entropy(z, y, m, t), ref)
    # tiny temperature: a hinge on the margin (zero loss once the margin exceeds the offset)
    z2 = torch.zeros(1, 3)
    z2[0, 0] = 1.0
    assert offset_cross_entropy(z2, torch.tensor([0]), 0.5, 1e-3) < 1e-6
    assert abs(float(offset_cross_entropy(z2, torch.tensor([0]), 1.5, 1e-3)) - 0.5) < 1e-3
    assert math.isclose(Recipe(name="x", architecture="convnet_xs_aol", dataset="mnist", epochs=1, lr=1,
                               weight_decay=0).loss_offset, 0.39931, rel_tol=1e-4)


def test_recipe_errors_name_the_problem(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: a\narchitecture: convnet_xs_aol\ndataset: mnist\nepochs: 1\nlr: 0.1\n")
    with pytest.raises(RecipeError, match="weight_decay"):
        Recipe.load(p)
    p.write_text("name: a\narchitecture: convnet_xs_aol\ndataset: mnist\nepochs: 1\nlr: 0.1\nweight_decay: 0\nlrr: 1\n")
    with pytest.raises(RecipeError, match="lrr"):
        Recipe.load(p)
    p.write_text("name: a\narchitecture: convnet_xs_aol\ndataset: mnist\nepochs: 0\nlr: 0.1\nweight_decay: 0\n")
    with pytest.raises(RecipeError, match="epochs"):
        Recipe.load(p)
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.load(tmp_path / "missing.yaml")
    r = tiny_recipe()
    r.dump(p)
    assert Recipe.load(p) == r


def test_augment_is_a_seeded_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    fill = torch.tensor([-1.0])
    a = augment(x, 1, True, fill, torch.Generator().manual_seed(0))
    b = augment(x, 1, True, fill, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    vals = set(a.flatten().tolist())
    assert vals <= set(x.flatten().tolist()) | {-1.0}
    assert torch.equal(augment(x, 0, False, fill, torch.Generator()), x)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    data = synthetic()
    r = tiny_recipe(val_limit=16)
    full = train(r, tmp_path / "full", data=data, progress=False)
    assert full["complete"]
    part = train(r, tmp_path / "cut", data=data, progress=False, stop_after_epochs=1)
    assert not part["complete"] and not (tmp_path / "cut" / "model.safetensors").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train(r, tmp_path / "cut", data=data, progress=False)
    train(r, tmp_path / "cut", data=data, progress=False, resume=True)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1, 2]
    assert {"train_loss", "val_accuracy", "val_certified", "epoch_time_s", "images_per_s"} <= set(lines[-1])
    run = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert run["complete"] and run["hardware"]["torch"] == torch.__version__ and "commit" in run
    assert 0 < run["lipschitz_upper"] <= 1 + 1e-4  # the audited bound of the trained AOL model
    assert (tmp_path / "cut" / "recipe.yaml").is_file()


def test_mid_epoch_checkpoint_resumes_to_the_same_weights(tmp_path):
    data = synthetic(n=96)
    r = tiny_recipe(val_limit=16, epochs=2, schedule_step="batch")
    train(r, tmp_path / "full", data=data, progress=False)
    part = train(r, tmp_path / "cut", data=data, progress=False, stop_after_batches=4)  # epoch 2, batch 2 of 3
    assert not part["complete"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "cut" / "checkpoint.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["epoch"], meta["batch"]) == ("1", "1")
    train(r, tmp_path / "cut", data=data, progress=False, resume=True)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    fm = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cm = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [m["train_loss"] for m in fm] == pytest.approx([m["train_loss"] for m in cm], rel=1e-12)
    assert [m["train_certified"] for m in fm] == [m["train_certified"] for m in cm]


def test_resume_refuses_a_finished_run_a_changed_recipe_and_a_missing_checkpoint(tmp_path):
    data = synthetic()
    r = tiny_recipe(val_limit=16, epochs=1)
    train(r, tmp_path / "done", data=data, progress=False)
    before = {f: (tmp_path / "done" / f).read_bytes() for f in ("run.json", "model.safetensors", "recipe.yaml")}
    from lipzoo.zoo.training import RunFinishedError

    with pytest.raises(RunFinishedError, match="finished run"):
        train(r, tmp_path / "done", data=data, progress=False, resume=True)
    assert before == {f: (tmp_path / "done" / f).read_bytes() for f in before}
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(r, tmp_path / "empty", data=data, progress=False, resume=True)
    assert not (tmp_path / "empty").exists()  # the refusal created no folder (nor a lock file in it)
    r2 = tiny_recipe(val_limit=16, epochs=3)
    train(r2, tmp_path / "cut", data=data, progress=False, stop_after_epochs=1)
    stored = (tmp_path / "cut" / "recipe.yaml").read_text()
    for change in ({"lr": 0.5}, {"epochs": 5, "batch_size": 16}, {"architecture": "convnet_xs_sll"}):
        with pytest.raises(RecipeError, match="differs.*" + sorted(change)[0]):
            train(tiny_recipe(val_limit=16, **({"epochs": 3} | change)), tmp_path / "cut", data=data,
                  progress=False, resume=True)
        assert (tmp_path / "cut" / "recipe.yaml").read_text() == stored


def test_a_run_directory_is_locked_while_training(tmp_path):
    from lipzoo.zoo.training import RunLockedError, run_lock

    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
            train(tiny_recipe(), tmp_path / "run", data=synthetic(), progress=False)
    assert not (tmp_path / "run" / "recipe.yaml").exists()


def test_divergence_guard_keeps_the_last_good_checkpoint(tmp_path):
    data = synthetic()
    r = tiny_recipe(architecture="convnet_xs_standard", lr=1e12, schedule="constant", epochs=4)
    with pytest.raises(DivergenceError, match="last good checkpoint|no checkpoint was written yet") as info:
        train(r, tmp_path / "run", data=data, progress=False)
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    # the message names a checkpoint only when one exists (an lr that diverges at once never wrote one)
    assert ("last good checkpoint" in str(info.value)) == ckpt.exists(), (str(info.value), ckpt.exists())
    if ckpt.exists():  # every checkpoint written is finite
        for k, v in load_file(ckpt).items():
            if k.startswith("model.") and v.is_floating_point():
                assert torch.isfinite(v).all(), k
    assert not (tmp_path / "run" / "model.safetensors").exists()


def write_fake_fashion(data_dir: Path, n_train: int = 64, n_test: int = 16) -> Path:
    """Random images in the real (gzipped IDX) on-disk format of Fashion-MNIST."""
    rng = np.random.default_rng(0)
    data_dir.mkdir()
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(data_dir / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(data_dir / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))
    return data_dir


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """SIGKILL a real `lipzoo train` process mid-run, resume it, compare with an uninterrupted run."""
    import signal
    import time

    data_dir = write_fake_fashion(tmp_path / "data", n_train=32)
    r = tiny_recipe(epochs=8, val_limit=16, architecture="convnet_xs_standard", lr=0.01)  # mechanics only
    recipe = tmp_path / "r.yaml"
    r.dump(recipe)
    env = dict(os.environ, LIPZOO_DATA=str(data_dir), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lipzoo.cli", "train", str(recipe), "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run finished before it could be killed"
    resume_and_compare_with_a_straight_run(cmd, env, r, tmp_path, data_dir, monkeypatch)
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == list(range(8))


def resume_and_compare_with_a_straight_run(cmd, env, recipe, tmp_path, data_dir, monkeypatch) -> None:
    """`cmd --resume` the killed run in tmp_path/killed; its weights must equal an uninterrupted run's."""
    res = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    monkeypatch.setenv("LIPZOO_DATA", str(data_dir))
    train(recipe, tmp_path / "straight", progress=False)
    a = load_file(tmp_path / "killed" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ddp_two_cpu_processes_match_a_single_process(tmp_path, monkeypatch):
    data_dir = write_fake_fashion(tmp_path / "data")
    r = tiny_recipe(epochs=2, lr=0.01)  # a gentle lr: this test is about DDP == one process, not about learning
    recipe = tmp_path / "r.yaml"
    r.dump(recipe)
    env = dict(os.environ, LIPZOO_DATA=str(data_dir), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(29500 + os.getpid() % 1000), "-m", "lipzoo.cli", "train", str(recipe),
           "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.setenv("LIPZOO_DATA", str(data_dir))
    train(r, tmp_path / "single", progress=False)
    a = load_file(tmp_path / "ddp" / "model.safetensors")
    b = load_file(tmp_path / "single" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2


@pytest.mark.skipif(not FMNIST.is_dir(), reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_smoke_training_on_real_fashion_mnist(tmp_path):
    """1,200 real images, three short epochs: far above chance, certified, attack never beats a certificate."""
    r = tiny_recipe(epochs=3, batch_size=32, lr=0.01, schedule_step="batch", train_limit=1200, val_limit=200)
    r.dump(tmp_path / "recipe.yaml")
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["certify", str(tmp_path / "run"), "--limit", "200", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["weights"].startswith("trained run") and out["dataset"] == "fashion_mnist", out  # the run's own
    assert "freshly initialised" not in res.output
    assert out["clean_accuracy"] > 0.4, out  # chance is 0.1
    assert out["certified_accuracy"][f"{36 / 255:.6g}"] > 0.2, out
    # the attack must never flip a certified point
    from lipzoo.data import load_tensors
    from lipzoo.zoo.training import build_model

    model = build_model(r)
    model.load_state_dict(load_file(tmp_path / "run" / "model.safetensors"))
    x, y = load_tensors("fashion_mnist", "test", limit=100)
    eps = 72 / 255
    result = certify(model, x, y, (eps,))
    certified = result.radii > eps
    for p in model.parameters():
        p.requires_grad_(False)
    adv = pgd_attack(model, x, y, eps, steps=20)
    assert ((adv - x).flatten(1).norm(dim=1) <= eps + 1e-5).all()
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    assert certified.any() and fooled.any()
    assert not (fooled & certified).any(), "the attack flipped a certified point: the certificate is unsound"


def test_budget_estimator_writes_epochs_into_the_recipe(tmp_path):
    r = tiny_recipe(batch_size=8, epochs=1)
    p = tmp_path / "r.yaml"
    r.dump(p)
    res = CliRunner().invoke(cli, ["budget", str(p), "--seconds", "60", "--batches", "2", "--write", "--json"])
    assert res.exit_code == 0, res.output
    est = json.loads(res.output)[0]
    assert est["epoch_seconds"] > 0 and est["epochs"] == max(1, int(60 // est["epoch_seconds"]))
    back = Recipe.load(p)
    assert back.epochs == est["epochs"] and back.budget["seconds"] == 60 and "hardware" in back.budget
    res = CliRunner().invoke(cli, ["budget", str(p)])
    assert res.exit_code != 0 and "--hours or --seconds" in res.output


def test_budget_under_one_epoch_trains_a_subset_that_fits():
    from lipzoo.zoo.training import apply_budget, plan_budget

    r = tiny_recipe(batch_size=100)
    many = plan_budget(r, 100.0, 0.5, 1000)  # 10 batches = 5 s per epoch
    assert many["epochs"] == 20 and many["train_limit"] is None
    few = plan_budget(r, 3.2, 0.5, 1000)  # 6 whole batches fit, not one epoch
    assert few["epochs"] == 1 and few["train_limit"] == 600
    planned = apply_budget(r, few | {"hardware": {"cpu": "x"}})
    assert (planned.epochs, planned.train_limit) == (1, 600) and planned.budget["seconds"] == 3.2
    assert "epochs" not in planned.budget and r.train_limit is None  # a copy


def test_lr_search_scores_on_validation_and_reuses_finished_trials(tmp_path, monkeypatch):
    from lipzoo.zoo import lrsearch
    from lipzoo.zoo.training import search_lr

    data = synthetic(n=64, n_val=32)
    r = tiny_recipe(epochs=1, val_size=32, batch_size=32)
    with pytest.raises(RecipeError, match="validation"):
        search_lr(tiny_recipe(), 1.0, tmp_path, data=data)
    est = {"batch_seconds": 0.5, "device": "cpu"}
    out = search_lr(r, 2.0, tmp_path / "s", factors=(0.5, 2.0), estimate=est, progress=False, data=data)
    assert [t["lr"] for t in out["trials"]] == [0.025, 0.1]
    assert all(t["epochs"] == 2 and t["train_limit"] is None for t in out["trials"])  # 2 batches of 0.5 s = 1 s per epoch
    best = max(out["trials"], key=lambda t: (t["val_certified"][f"{36 / 255:.6g}"], t["val_accuracy"]))
    assert out["best_lr"] == best["lr"]
    assert (tmp_path / "s" / "lr0.5" / "model.safetensors").is_file()
    monkeypatch.setattr(lrsearch, "train", lambda *a, **k: pytest.fail("a finished trial was trained again"))
    assert search_lr(r, 2.0, tmp_path / "s", factors=(0.5, 2.0), estimate=est, data=data) == out
    with pytest.raises(RecipeError, match="holds a finished trial at lr 0.025, not 0.035"):  # folders are named by factor
        search_lr(replace(r, lr=0.07), 2.0, tmp_path / "s", factors=(0.5, 2.0), estimate=est, data=data)
    with pytest.raises(RecipeError, match="holds a finished trial with layer_options {}, not {'step_bound': 'spectral'}"):
        search_lr(replace(r, layer_options={"step_bound": "spectral"}), 2.0, tmp_path / "s", factors=(0.5, 2.0),
                  estimate=est, data=data)


@pytest.mark.parametrize("peak, extend, extended, best, edge", [
    (4.0, 3, [4.0, 8.0], 4.0, None),      # rising at the top: doubled until a larger factor scores lower
    (0.25, 2, [0.25, 0.125], 0.25, None),  # falling at the bottom: halved likewise
    (1.0, 2, [], 1.0, None),              # bracketed by the first trials: nothing added
    (8.0, 0, [], 2.0, "largest"),         # no extension asked: the edge winner stands, and is said to be one
    (16.0, 2, [4.0, 8.0], 8.0, "largest"),  # at most `extend` extra trials: still not bracketed
    (1 / 16, 1, [0.25], 0.25, "smallest"),
])
def test_lr_search_extends_beyond_an_edge_winner_until_bracketed(tmp_path, monkeypatch, peak, extend, extended, best,
                                                                 edge):
    from lipzoo.zoo import lrsearch
    from lipzoo.zoo.training import search_lr

    r = tiny_recipe(epochs=1, val_size=32, lr=1.0)
    trained = []

    def fake_train(cand, run, **kw):  # validation score peaks at lr == peak (log scale)
        trained.append(cand.lr)
        score = 1.0 / (1.0 + abs(math.log2(cand.lr / peak)))
        return {"complete": True, "final": {"val_accuracy": score, "val_certified": {lrsearch.SEARCH_RADIUS.key: score}}}

    monkeypatch.setattr(lrsearch, "train", fake_train)
    out = search_lr(r, 1.0, tmp_path, factors=(0.5, 1.0, 2.0), estimate={"batch_seconds": 0.1}, data=synthetic(),
                    extend=extend)
    assert out["extended"] == extended and trained == [0.5, 1.0, 2.0] + extended
    assert out["best_lr"] == best and [t["factor"] for t in out["trials"]] == trained
    assert out["edge"] == edge


def test_every_shipped_recipe_is_valid_and_complete():
    root = Path(__file__).resolve().parents[1] / "recipes"
    recipes = {p.relative_to(root).as_posix(): Recipe.load(p) for p in sorted(root.glob("*/*.yaml"))}
    from lipzoo.layers import LAYERS

    for size in ("xs", "s", "m", "l"):
        for layer in LAYERS:  # every Fashion-MNIST zoo entry: 9 layers x 4 sizes
            r = recipes[f"fashion_mnist/convnet_{size}_{layer}.yaml"]
            assert r.name == f"convnet_{size}_{layer}.fashion_mnist" and r.dataset == "fashion_mnist"
    paper = [k for k in recipes if k.startswith("cifar10/")]
    assert len(paper) == 27  # 7 layers x 4 sizes, no LOT-L (never run by the paper)
    r = recipes["cifar10/convnet_xs_aol.yaml"]
    assert (r.lr, r.weight_decay, r.epochs) == (0.05729, 3.68e-5, 10044)  # the paper's 24 h XS-AOL run
    assert recipes["tiny_imagenet/tconvnet_s_sll.yaml"].rand_augment == [2, 9]
    for r in recipes.values():
        assert r.name.split(".")[0] == r.architecture
