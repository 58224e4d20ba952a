"""Fault injection: kills, corrupt files, a full disk, bad recipes, concurrent writers.

Each test pins one promise: nothing a command did not finish changes what is on disk, and every
mistake ends in one clear line.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors import safe_open

from lipzoo.cli import main as cli
from lipzoo.zoo.training import CheckpointError, Recipe, RecipeError, train

from test_training import resume_and_compare_with_a_straight_run, synthetic, tiny_recipe, write_fake_fashion

# The trainer's mechanics (kills, locks, resumes) do not depend on the layer: the unconstrained
# network has no weight parametrisation to pay for on every step, so these runs stay short.
MECHANICS = {"architecture": "convnet_xs_standard", "lr": 0.01}

GOOD = ("name: a\narchitecture: convnet_xs_aol\ndataset: fashion_mnist\nepochs: 1\nlr: 0.1\n"
        "weight_decay: 0\n")


@pytest.mark.parametrize("extra,field", [
    ("train_limit: -5\n", "train_limit"), ("val_limit: 0\n", "val_limit"), ("crop_padding: -2\n", "crop_padding"),
    ("momentum: 1.5\n", "momentum"), ("eval_eps: [0.1, -1]\n", "eval_eps"), ("batch_size: 0\n", "batch_size"),
    ("hflip: 'yes'\n", "hflip"), ("rand_augment: [2]\n", "rand_augment"), ("seed: -1\n", "seed"),
])
def test_bad_recipe_values_are_refused_naming_the_field(tmp_path, extra, field):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD + extra)
    with pytest.raises(RecipeError, match=field):
        Recipe.load(p)


@pytest.mark.parametrize("replace,field", [
    ("lr: 0.1", "lr: 'abc'"), ("epochs: 1", "epochs: '3'"), ("epochs: 1", "epochs: 2.5"),
    ("lr: 0.1", "lr: .inf"), ("lr: 0.1", "lr: .nan"), ("epochs: 1", "epochs: true"),
])
def test_wrongly_typed_or_non_finite_recipe_fields_are_refused(tmp_path, replace, field):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD.replace(replace, field))
    name = field.split(":")[0]
    with pytest.raises(RecipeError, match=name):
        Recipe.load(p)


def test_broken_yaml_is_one_clear_line_from_the_cli(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(GOOD + "lr: [0.1\n")
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        Recipe.load(p)
    res = CliRunner().invoke(cli, ["train", str(p), "--out", str(tmp_path / "run")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not valid YAML" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_corrupt_checkpoint_on_resume_is_one_clear_error(tmp_path):
    data = synthetic()
    r = tiny_recipe(val_limit=16, epochs=3)
    train(r, tmp_path / "run", data=data, progress=False, stop_after_epochs=1)
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(r, tmp_path / "run", data=data, progress=False, resume=True)
    ckpt.write_bytes(b"\x00" * 64)  # garbage
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(r, tmp_path / "run", data=data, progress=False, resume=True)


def test_a_killed_and_resumed_run_still_counts_the_time_of_its_epochs(tmp_path):
    data = synthetic()
    r = tiny_recipe(val_limit=16, epochs=3)
    train(r, tmp_path / "run", data=data, progress=False, stop_after_epochs=2)
    (tmp_path / "run" / "run.json").unlink()  # killed: this process never wrote its share of the time
    record = train(r, tmp_path / "run", data=data, progress=False, resume=True)
    epochs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 3
    total = sum(e["epoch_time_s"] for e in epochs)
    assert record["epochs_time_s"] == pytest.approx(total)
    assert record["wall_time_s"] >= total
    assert json.loads((tmp_path / "run" / "run.json").read_text())["wall_time_s"] >= total


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    data = synthetic()
    r = tiny_recipe(val_limit=16, epochs=3)
    train(r, tmp_path / "run", data=data, progress=False, stop_after_epochs=1)
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    before = ckpt.read_bytes()

    def full(tensors, filename, metadata=None):  # safetensors writes part of the file, then the disk is full
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is kept"):
        train(r, tmp_path / "run", data=data, progress=False, resume=True)
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".checkpoint")) == []
    monkeypatch.undo()
    record = train(r, tmp_path / "run", data=data, progress=False, resume=True)  # space again: it finishes
    assert record["complete"] and (tmp_path / "run" / "model.safetensors").is_file()


def _checkpoint_batch(path: Path) -> int:
    try:
        with safe_open(str(path), "pt") as f:
            return int((f.metadata() or {}).get("batch", 0))
    except Exception:  # noqa: BLE001 - not written yet, or being renamed into place
        return 0


def test_a_run_killed_mid_epoch_resumes_mid_epoch_to_the_same_weights(tmp_path, monkeypatch):
    """SIGKILL a real `lipzoo train` inside its only epoch, after a mid-epoch checkpoint; resume; compare."""
    data_dir = write_fake_fashion(tmp_path / "data", n_train=160, n_test=16)
    r = tiny_recipe(epochs=1, batch_size=8, schedule_step="batch", val_limit=16, **MECHANICS)
    recipe = tmp_path / "r.yaml"
    r.dump(recipe)
    env = dict(os.environ, LIPZOO_DATA=str(data_dir), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lipzoo.cli", "train", str(recipe), "--out", str(tmp_path / "killed"),
           "--checkpoint-every", "0.001"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _checkpoint_batch(ckpt) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut = _checkpoint_batch(ckpt)
    assert 3 <= cut < 20, f"killed at batch {cut} of 20"
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resume_and_compare_with_a_straight_run(cmd, env, r, tmp_path, data_dir, monkeypatch)
    m = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in m] == [0]


def test_two_trainers_into_one_folder_one_is_refused(tmp_path, monkeypatch):
    """A trainer (here: a thread of this process, held inside its first batch) owns the folder; a
    second `lipzoo train` process into it is refused in one line and writes nothing."""
    import threading

    import lipzoo.zoo.trainer as trainer

    data_dir = write_fake_fashion(tmp_path / "data", n_train=64, n_test=16)
    r = tiny_recipe(epochs=2, val_limit=16, **MECHANICS)
    recipe = tmp_path / "r.yaml"
    r.dump(recipe)
    out = tmp_path / "run"
    inside, release = threading.Event(), threading.Event()
    loss = trainer.offset_cross_entropy

    def held(*a, **k):  # the first trainer waits inside its first batch until the second was refused
        inside.set()
        assert release.wait(timeout=300)
        return loss(*a, **k)

    monkeypatch.setattr(trainer, "offset_cross_entropy", held)
    record: dict = {}
    first = threading.Thread(target=lambda: record.update(train(r, out, data=synthetic(), progress=False)))
    first.start()
    try:
        assert inside.wait(timeout=300)
        env = dict(os.environ, LIPZOO_DATA=str(data_dir), OMP_NUM_THREADS="1")
        second = subprocess.run([sys.executable, "-m", "lipzoo.cli", "train", str(recipe), "--out", str(out)],
                                env=env, capture_output=True, text=True, timeout=300)
        metrics = out / "metrics.jsonl"
        metrics_while_held = metrics.read_text() if metrics.exists() else ""
    finally:
        release.set()
        first.join(timeout=600)
    assert second.returncode != 0 and "is locked" in second.stderr and f"process {os.getpid()}" in second.stderr
    assert "Traceback" not in second.stderr and metrics_while_held == ""  # the refused one wrote no epoch
    assert record["complete"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]  # one writer's epochs, not two


def test_train_refuses_to_resume_a_finished_run_from_the_cli(tmp_path):
    data_dir = write_fake_fashion(tmp_path / "data", n_train=64, n_test=16)
    r = tiny_recipe(epochs=1, val_limit=16, **MECHANICS)
    recipe = tmp_path / "r.yaml"
    r.dump(recipe)
    env = dict(os.environ, LIPZOO_DATA=str(data_dir), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lipzoo.cli", "train", str(recipe), "--out", str(tmp_path / "run")]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
    run_json = (tmp_path / "run" / "run.json").read_bytes()
    res = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1 and "finished run" in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "run" / "run.json").read_bytes() == run_json
    res = subprocess.run(cmd[:-2] + ["--out", str(tmp_path / "none"), "--resume"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 1 and "nothing to resume" in res.stderr


def test_a_fresh_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path):
    r = tiny_recipe(epochs=1, val_limit=16, **MECHANICS)
    tx, ty, vx, vy = synthetic()
    broken = (tx[:, :, :20], ty, vx, vy)  # 32x20 images: the first batch fails in the network's input check
    out = tmp_path / "run"
    with pytest.raises(ValueError):
        train(r, out, data=broken, progress=False)
    assert not out.exists()  # no recipe.yaml, no .lock, no empty folder that looks like a run
    # into an existing folder: only what the run wrote goes, the user's own files stay
    mine = tmp_path / "existing"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ValueError):
        train(r, mine, data=broken, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # a run that wrote a checkpoint is kept whole (it can be resumed)
    kept = tmp_path / "kept"
    train(tiny_recipe(epochs=2, val_limit=16, **MECHANICS), kept, data=synthetic(), progress=False,
          stop_after_epochs=1)
    assert (kept / "checkpoint.safetensors").exists() and (kept / "recipe.yaml").exists()
