"""Run -> evaluate -> publish: a tiny real Fashion-MNIST run becomes a loadable, verified zoo entry."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import lipzoo
from lipzoo.cli import main as cli
from lipzoo.zoo.curves import learning_curve, read_epochs
from lipzoo.zoo.plots import PlotError
from lipzoo.zoo.publish import GATE_EPS_KEY, RunError, evaluate_run, publish_gate, publish_run
from lipzoo.registry import PRETRAINED, PretrainedEntry, load_pretrained_dir
from lipzoo.zoo.training import Recipe, train

from hubtools import free_port, make_checkpoint

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
NAME = "convnet_xs_aol.fashion_mnist"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    r = Recipe(name="convnet_xs_aol.fashion_mnist", architecture="convnet_xs_aol", dataset="fashion_mnist",
               epochs=1, lr=0.05, weight_decay=1e-5, batch_size=64, crop_padding=2, hflip=False,
               schedule_step="batch", val_size=500, train_limit=640, seed=3,
               budget={"seconds": 12.0, "batch_seconds": 1.2, "device": "cpu", "hardware": {"cpu": "test cpu"}})
    out = tmp_path_factory.mktemp("run") / "convnet_xs_aol"
    train(r, out, progress=False)
    return out


@needs_fmnist
def test_publish_needs_an_evaluation_first(run_dir, tmp_path):
    if (run_dir / "eval.json").exists():
        pytest.skip("evaluated already")
    with pytest.raises(RunError, match="lipzoo evaluate"):
        publish_run(run_dir, tmp_path)
    with pytest.raises(RunError, match="recipe.yaml"):
        evaluate_run(tmp_path)


@needs_fmnist
def test_evaluate_then_publish_gives_a_loadable_card_whose_numbers_reproduce(run_dir, tmp_path, monkeypatch):
    res = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--limit", "100", "--batch-size", "50", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output[res.output.index("{"):])
    assert ev == json.loads((run_dir / "eval.json").read_text())
    c = ev["certification"]
    assert c["n"] == 100 and c["split"] == "test" and c["lipschitz_bound"] >= 1.0
    assert ev["audit"]["ok"] and ev["audit"]["lipschitz_upper"] <= 1 + 1e-4
    assert ev["inference"]["status"] == "ok" and ev["inference"]["infer_images_per_s"] > 0

    cards = tmp_path / "cards"
    res = CliRunner().invoke(cli, ["publish", str(run_dir), "--out", str(cards), "--json"])
    if c["clean_accuracy"] <= 0.15:  # ten training batches: usually near chance, which the gate refuses
        assert res.exit_code != 0 and "near chance" in res.output and not (cards / NAME).exists()
        res = CliRunner().invoke(cli, ["publish", str(run_dir), "--out", str(cards), "--json", "--force"])
    assert res.exit_code == 0, res.output
    folder = cards / "convnet_xs_aol.fashion_mnist"
    entry = PretrainedEntry.from_folder(folder)
    assert entry.status == ("undertrained" if c["clean_accuracy"] <= 0.15 else None)
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
    images, labels = lipzoo.data.load_tensors("fashion_mnist", "test", limit=100)
    again = lipzoo.certify(model, images, labels, tuple(float(e) for e in c["certified_accuracy"]),
                           lipschitz=c["lipschitz_bound"])
    assert again.clean_accuracy == c["clean_accuracy"]
    assert entry.metrics["check"]["n"] == 100 and entry.metrics["check"]["clean_accuracy"] == c["clean_accuracy"]
    assert {f"{e:.6g}": a for e, a in again.certified_accuracy.items()} == c["certified_accuracy"]


# --- publishing: names, the gate, replacing a folder as a whole -----------------------------------
@pytest.fixture(scope="module")
def evaluated(run_dir, tmp_path_factory) -> Path:
    """A copy of the finished run, evaluated on 300 test images (no speed measurement)."""
    out = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("eval.json"))
    evaluate_run(out, limit=300, batch_size=100, speed=False, progress=False)
    # ten training batches leave the model near chance, which the publish gate refuses; the gate has
    # its own tests, so here the measured clean accuracy is replaced by one that passes it
    ev = json.loads((out / "eval.json").read_text())
    ev["certification"]["clean_accuracy"] = 0.5
    (out / "eval.json").write_text(json.dumps(ev))
    return out


def _run_copy(evaluated: Path, dest: Path, *, name: str | None = None, clean: float | None = None,
              eval_extra: dict | None = None, recipe_extra: dict | None = None) -> Path:
    """A copy of the evaluated run with its recipe/eval.json edited as a user (or a bug) would."""
    run = shutil.copytree(evaluated, dest)
    recipe, ev = yaml.safe_load((run / "recipe.yaml").read_text()), json.loads((run / "eval.json").read_text())
    if name is not None:
        recipe["name"] = ev["name"] = name
    if clean is not None:
        ev["certification"]["clean_accuracy"] = clean
    ev |= eval_extra or {}
    recipe |= recipe_extra or {}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (run / "eval.json").write_text(json.dumps(ev))
    return run


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.exists() else {}


@needs_fmnist
@pytest.mark.parametrize("bad", ["det", "convnet_xs_sll.fashion_mnist", "convnet_xs_aol.mnist",
                                 "convnet_xs_aol.fashion_mnist_../../x", "convnet_xs_aol.fashion_mnist_Big"])
def test_publish_refuses_a_name_that_is_not_the_recipes_arch_dataset_before_writing(evaluated, tmp_path, bad):
    run = _run_copy(evaluated, tmp_path / "run", name=bad)
    cards = tmp_path / "cards"
    (cards / "keep").mkdir(parents=True)
    (cards / "keep" / "note.txt").write_text("untouched")
    before = _snapshot(cards)
    with pytest.raises(RunError, match=r"name .* must be 'convnet_xs_aol\.fashion_mnist'"):
        publish_run(run, cards)
    assert _snapshot(cards) == before and sorted(p.name for p in cards.iterdir()) == ["keep"]
    res = CliRunner().invoke(cli, ["publish", str(run), "--out", str(cards)])
    assert res.exit_code != 0 and "must be 'convnet_xs_aol.fashion_mnist'" in res.output
    assert _snapshot(cards) == before
    load_pretrained_dir(cards)  # what `import lipzoo` does with the cards folder still works


@needs_fmnist
def test_publish_replaces_an_existing_folder_only_with_force_and_as_a_whole(evaluated, tmp_path, monkeypatch):
    cards = tmp_path / "cards"
    entry = publish_run(evaluated, cards)
    folder = cards / NAME
    assert entry.folder == folder and sorted(p.name for p in cards.iterdir()) == [NAME]  # no temporary left
    first = _snapshot(cards)
    with pytest.raises(RunError, match=f"{NAME} already exists; pass --force"):
        publish_run(evaluated, cards)
    res = CliRunner().invoke(cli, ["publish", str(evaluated), "--out", str(cards)])
    assert res.exit_code != 0 and "already exists" in res.output
    assert _snapshot(cards) == first

    # a publish that fails half-way (here: rendering the card) leaves the old folder as it was
    import lipzoo.zoo.publish

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(lipzoo.zoo.publish, "write_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        publish_run(evaluated, cards, force=True)
    assert _snapshot(cards) == first and sorted(p.name for p in cards.iterdir()) == [NAME]
    monkeypatch.undo()

    (folder / "stale.txt").write_text("from the old folder")
    again = publish_run(evaluated, cards, force=True)
    assert again.folder == folder and not (folder / "stale.txt").exists()  # replaced as a whole
    assert sorted(p.name for p in cards.iterdir()) == [NAME] and list(load_pretrained_dir(cards)) == [NAME]


@needs_fmnist
def test_published_card_has_learning_curve_training_cost_and_cpu_model(evaluated, tmp_path):
    cards = tmp_path / "cards"
    entry = publish_run(evaluated, cards)
    folder = cards / NAME
    png = (folder / "learning_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    card = (folder / "README.md").read_text()
    assert "![learning curve](learning_curve.png)" in card and "## Training cost" in card
    ev, run = json.loads((evaluated / "eval.json").read_text()), json.loads((evaluated / "run.json").read_text())
    model = ev["hardware"].get("cpu_model")
    if model:  # the evaluation ran on the training machine: its CPU model name is the card's hardware
        assert entry.timing["hardware"]["cpu_model"] == model and f"- trained on: {model}, 1 thread, cpu" in card
    assert run["hardware"]["platform"] not in card  # never the kernel string
    assert f"{entry.timing['train_images_per_s']:,.0f} images/s" in card
    assert "pip install lipzoo" not in card and "hf_hub_download" not in card  # no Hub repo recorded


def test_publish_gate_rules():
    cert = {GATE_EPS_KEY: 0.30}
    assert publish_gate(0.151, cert, 10) == []
    (why,) = publish_gate(0.15, cert, 10)
    assert "near chance" in why and "15.00%" in why
    assert publish_gate(0.02, cert, 100) == [] and publish_gate(0.015, cert, 100)
    assert publish_gate(0.8, cert, 10, floor=0.30) == []
    (why,) = publish_gate(0.8, cert, 10, floor=0.31)
    assert "30.00% is below the publish_floor 31.00%" in why
    assert "cannot be checked" in publish_gate(0.8, {}, 10, floor=0.1)[0]
    # the unconstrained baseline has no certificate: no certified floor, only the chance rule
    assert publish_gate(0.8, {GATE_EPS_KEY: 0.0}, 10, certifies=False, floor=0.5) == []
    assert len(publish_gate(0.1, {GATE_EPS_KEY: 0.0}, 10, certifies=False, floor=0.5)) == 1


@needs_fmnist
def test_publish_gate_refuses_near_chance_and_force_marks_it_undertrained(evaluated, tmp_path, monkeypatch):
    run = _run_copy(evaluated, tmp_path / "run", clean=0.12)
    cards = tmp_path / "cards"
    with pytest.raises(RunError, match=r"refusing to publish .*near chance.*--force"):
        publish_run(run, cards)
    assert _snapshot(cards) == {}
    res = CliRunner().invoke(cli, ["publish", str(run), "--out", str(cards), "--force", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("["):])[0]["status"] == "undertrained"
    cfg = json.loads((cards / NAME / "config.json").read_text())
    assert cfg["status"] == "undertrained" and "near chance" in cfg["provenance"]["status_reasons"][0]
    entry = PretrainedEntry.from_folder(cards / NAME)
    assert entry.status == "undertrained"
    body = (cards / NAME / "README.md").read_text().split(f"# {NAME}\n\n", 1)[1]
    assert body.startswith("> **Warning: undertrained.**") and "near chance" in body.splitlines()[0]
    assert f"[{NAME}]({NAME}/README.md) **UNDERTRAINED**" in (cards / "README.md").read_text()
    monkeypatch.setitem(PRETRAINED, NAME, entry)
    res = CliRunner().invoke(cli, ["list", "--pretrained", NAME])
    clean, cert = cfg["metrics"]["clean_accuracy"], cfg["metrics"]["certified_accuracy"][GATE_EPS_KEY]
    assert res.exit_code == 0 and res.output.strip() == (
        f"{NAME}  clean {100 * clean:5.2f}%  certified {100 * cert:5.2f}% at 36/255  [undertrained]")


@needs_fmnist
@pytest.mark.parametrize("where", ["eval", "recipe"])
def test_publish_floor_from_eval_or_recipe(evaluated, tmp_path, where):
    certified = json.loads((evaluated / "eval.json").read_text())["certification"]["certified_accuracy"][GATE_EPS_KEY]
    floor = {"publish_floor": min(1.0, certified + 0.01)}
    run = _run_copy(evaluated, tmp_path / "run", clean=0.9, **{f"{where}_extra": floor})
    with pytest.raises(RunError, match="is below the publish_floor"):
        publish_run(run, tmp_path / "cards")
    assert not (tmp_path / "cards").exists()
    bad = _run_copy(evaluated, tmp_path / "bad", clean=0.9, **{f"{where}_extra": {"publish_floor": "high"}})
    with pytest.raises(RunError, match="publish_floor must be a fraction between 0 and 1"):
        publish_run(bad, tmp_path / "cards")


# --- learning curve -----------------------------------------------------------------------------
def test_learning_curve_renders_from_a_synthetic_metrics_file(tmp_path):
    import matplotlib.image

    records = [{"epoch": i, "train_loss": 1.0 / (i + 1), "train_accuracy": 0.3 + 0.1 * i, "val_accuracy": 0.35 + 0.1 * i,
                "train_certified": {GATE_EPS_KEY: 0.1 * i}, "val_certified": {GATE_EPS_KEY: 0.1 * i, "1": 0.01},
                "epoch_time_s": 10.0, "images_per_s": 100.0} for i in range(3)]
    del records[0]["train_certified"]  # runs from before the trainer recorded it
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    epochs = read_epochs(path)
    assert epochs == records
    out = learning_curve(epochs, tmp_path / "curve.png", title="synthetic")
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 2 * img.shape[0] - 400
    assert img[..., :3].std() > 0.01  # something was drawn
    assert learning_curve(epochs[:1], tmp_path / "one.png", certified=False).is_file()
    with pytest.raises(PlotError, match="no epoch records"):
        learning_curve([], tmp_path / "none.png")
    with pytest.raises(PlotError, match="hold none of"):
        learning_curve([{"epoch": 0, "lr": 0.1}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    path.write_text(json.dumps(records[0]) + "\n[1, 2]\n")
    with pytest.raises(PlotError, match=r"metrics\.jsonl:2 .*expected one JSON object"):
        read_epochs(path)


# --- push: nothing is recorded until the upload succeeded ------------------------------------------
def _card_folder(tmp_path: Path) -> Path:
    from lipzoo.zoo.cards import write_cards

    entry = make_checkpoint(tmp_path / "cards")
    write_cards(tmp_path / "cards")
    return entry.folder


def test_failed_push_leaves_the_folder_untouched(tmp_path, monkeypatch):
    folder = _card_folder(tmp_path)
    before = _snapshot(folder.parent)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("LIPZOO_HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    res = CliRunner().invoke(cli, ["push", folder.name, "--repo-id", f"myorg/{folder.name}", "--folder", str(folder)])
    assert res.exit_code != 0 and "failed" in res.output and "left unchanged" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert _snapshot(folder.parent) == before  # neither config.json's repo_id nor the card changed
    assert json.loads((folder / "config.json").read_text())["hub"]["repo_id"] is None


def test_push_records_repo_id_and_revision_only_after_the_upload(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from lipzoo.zoo.cards import write_card
    from lipzoo.zoo.publish import push_entry

    folder = _card_folder(tmp_path)
    seen = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)

    def upload_folder(self, *, repo_id, folder_path, **kw):
        seen["cfg"] = json.loads((Path(folder_path) / "config.json").read_text())
        seen["card"] = (Path(folder_path) / "README.md").read_text()
        seen["local"] = json.loads((folder / "config.json").read_text())  # the folder itself, during the upload
        return types.SimpleNamespace(oid="c" * 40)

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert push_entry(folder.name, f"myorg/{folder.name}", folder=folder) == "c" * 40
    assert seen["cfg"]["hub"]["repo_id"] == f"myorg/{folder.name}" and seen["local"]["hub"]["repo_id"] is None
    assert f'hf_hub_download("myorg/{folder.name}", "model.safetensors")' in seen["card"]
    entry = PretrainedEntry.from_folder(folder)
    assert entry.repo_id == f"myorg/{folder.name}" and entry.revision == "c" * 40
    assert (folder / "README.md").read_text() == seen["card"]
    assert write_card(entry, folder.parent, check=True).status == "fresh"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["README.md", folder.name]  # no temporary left


def test_publish_gate_clean_floor():
    cert = {GATE_EPS_KEY: 0.8}
    assert publish_gate(0.86, cert, 10, clean_floor=0.85) == []
    (why,) = publish_gate(0.84, cert, 10, clean_floor=0.85)
    assert "84.00% is below the publish_clean_floor 85.00%" in why
