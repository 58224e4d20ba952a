"""Model cards: front matter, tables, usage, citations, the overview, --check (also over the real cards/)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from lipzoo.zoo.cards import render_card, render_index, write_cards
from lipzoo.cli import main as cli
from lipzoo.factory import entrypoint_doc
from lipzoo.registry import CARDS_DIR, PRETRAINED, PretrainedEntry, RegistryError, metrics_summary

from hubtools import copy_folder, make_checkpoint


@pytest.fixture(scope="module")
def entry(tmp_path_factory) -> PretrainedEntry:
    return make_checkpoint(tmp_path_factory.mktemp("cards"))


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_front_matter_is_hugging_face_metadata(entry):
    meta = _front_matter(render_card(entry))
    assert meta["library_name"] == "lipzoo" and meta["license"] == "mit"
    assert meta["datasets"] == ["zalando-datasets/fashion_mnist"] and "aol" in meta["tags"]
    (result,) = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == entry.name
    metrics = {m["name"]: m for m in result["metrics"]}
    assert metrics["Clean accuracy"]["value"] == 81.0
    assert metrics["Certified accuracy (l2, eps=36/255)"]["value"] == 62.0
    assert metrics["Certified accuracy (l2, eps=72/255)"]["args"]["eps"] == pytest.approx(72 / 255, abs=1e-6)
    assert metrics["Certified accuracy (l2, eps=1)"]["value"] == 5.0


def test_card_body_tables_usage_reproduce_citations(entry):
    text = render_card(entry)
    assert "| 36/255 | 62.00% |" in text and "| 0 (clean accuracy) | 81.00% |" in text
    assert "| training time | 1.50 h (5400 s) |" in text and "| hardware | NVIDIA H100, cuda |" in text
    assert "| peak memory (training) | 812 MiB |" in text
    assert f'lipzoo.create_model("{entry.name}", pretrained=True)' in text
    assert ('torch.hub.load("path/to/lipzoo", "convnet_xs_aol", source="local", pretrained=True, '
            'dataset="fashion_mnist")') in text
    assert "lipzoo train recipes/fashion_mnist/convnet_xs_aol.yaml" in text
    assert "Prach, Bernd and Brau, Fabio and Buttazzo, Giorgio and Lampert, Christoph H." in text and "CVPR" in text
    assert "Prach & Lampert, ECCV 2022" in text and "Almost-Orthogonal Layers" in text
    assert entry.sha256 in text


def test_card_does_not_depend_on_environment(entry, monkeypatch):
    before = render_card(entry)
    monkeypatch.setenv("LIPZOO_HUB_ORG", "elsewhere")
    assert render_card(entry) == before


def test_index_with_and_without_models(entry):
    empty = render_index({})
    assert "| model | layer | dataset | clean | audited L | train time |" in empty and "No pretrained models" in empty
    full = render_index([entry], ["../results/radar-cpu-xs.png"])
    assert f"[{entry.name}]({entry.name}/README.md)" in full and "| cert. 36/255 |" in full and "62.00%" in full
    assert "![radar-cpu-xs](../results/radar-cpu-xs.png)" in full and "## Pictures" not in render_index([entry])


def test_index_pictures_are_the_plots_of_the_datasets_present(entry, tmp_path):
    from lipzoo.zoo.cards import index_pictures

    cards, results = tmp_path / "cards", tmp_path / "results"
    results.mkdir()
    for f in ("radar-cpu-xs.png", f"pareto-cpu-{entry.dataset}.png", "pareto-cpu-cifar100.png",
              f"curves-{entry.dataset}.png", "curves-cifar100.png"):
        (results / f).write_bytes(b"png")
    assert index_pictures(cards) == []  # no models, no pictures
    copy_folder(entry.folder, cards / entry.name)
    assert index_pictures(cards) == ["../results/radar-cpu-xs.png", f"../results/pareto-cpu-{entry.dataset}.png",
                                     f"../results/curves-{entry.dataset}.png"]


def test_write_and_check_cards(entry, tmp_path):
    copy_folder(entry.folder, tmp_path / entry.name)
    runner = CliRunner()
    r = runner.invoke(cli, ["card", "--all", "--check", "--root", str(tmp_path)])
    assert r.exit_code == 1 and "stale" in r.output  # nothing rendered yet
    r = runner.invoke(cli, ["card", "--all", "--root", str(tmp_path), "--json"])
    assert r.exit_code == 0 and {d["status"] for d in json.loads(r.output)} == {"written"}
    assert (tmp_path / entry.name / "README.md").is_file() and (tmp_path / "README.md").is_file()
    r = runner.invoke(cli, ["card", "--all", "--check", "--root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / entry.name / "config.json").read_text())
    cfg["metrics"]["clean_accuracy"] = 0.5  # a new result: the card is now stale
    (tmp_path / entry.name / "config.json").write_text(json.dumps(cfg))
    r = runner.invoke(cli, ["card", entry.name, "--check", "--root", str(tmp_path)])
    assert r.exit_code == 1
    assert [s.status for s in write_cards(tmp_path, [entry.name])] == ["written"]
    r = runner.invoke(cli, ["card", "--all", "--check", "--root", str(tmp_path)])
    assert r.exit_code == 1  # the overview table still shows the old number
    r = runner.invoke(cli, ["card", "convnet_xs_aol.nope", "--root", str(tmp_path)])
    assert r.exit_code != 0 and "no config.json for convnet_xs_aol.nope" in r.output
    r = runner.invoke(cli, ["card", "--root", str(tmp_path)])
    assert r.exit_code == 2 and "NAME... or --all" in r.output


def test_checkout_cards_are_fresh():
    """What CI runs: `lipzoo card --all --check` over the cards/ folder of this checkout."""
    r = CliRunner().invoke(cli, ["card", "--all", "--check"])
    assert r.exit_code == 0, r.output
    assert (CARDS_DIR / "README.md").is_file()


def test_entrypoint_doc_lists_pretrained_weights(entry, monkeypatch):
    assert "none registered yet" in entrypoint_doc("convnet_s_aol", "fashion_mnist")  # no S weights yet
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    doc = entrypoint_doc("convnet_xs_aol", "fashion_mnist")
    assert "fashion_mnist: clean 81.00%, certified 36/255: 62.00%" in doc


# --- imported weights: reported numbers, the audited bound, provenance, no invented recipe -------
def _imported_entry(upper: float | None, measured: bool = False) -> PretrainedEntry:
    """A tiny synthetic config.json of weights trained elsewhere (no weights file is needed to render)."""
    metrics: dict = {"reported": {
        "label": "reported by the authors", "paper": "Some Paper (2024)", "run": "20230822_081440.7",
        "source": "statistics.csv", "split": "test", "n": 10000, "clean_accuracy": 0.749,
        "certified_accuracy": {f"{36 / 255:.6g}": 0.625, f"{72 / 255:.6g}": 0.485, "1": 0.042}, "epochs": 14957}}
    if upper is not None:
        metrics["audit"] = {"lipschitz_upper": upper, "method": "lipzoo.audit upper bound", "lipzoo_version": "9.9"}
    if measured:
        metrics |= {"n": 50, "split": "test", "lipschitz_bound": 1.5, "clean_accuracy": 0.7,
                    "certified_accuracy": {f"{36 / 255:.6g}": 0.5}}
    cfg = {
        "name": "convnet_xs_cpl.cifar10_1llc", "architecture": "convnet_xs_cpl", "dataset": "cifar10", "recipe": None,
        "data": {"input_size": 32, "in_chans": 3, "num_classes": 10, "class_names": [f"c{i}" for i in range(10)],
                 "mean": [0.49, 0.48, 0.45]},
        "file": {"sha256": "ab" * 32, "size": 1234}, "metrics": metrics, "license": "unknown",
        "provenance": {"source": "a paper's release", "source_url": "http://127.0.0.1:1/w/XS_CPL.pth",
                       "source_file": "XS_CPL.pth", "source_sha256": "cd" * 32, "source_trust": "first use",
                       "run": "20230822_081440.7", "trained_by": "the paper's authors",
                       "source_repository": "https://github.com/someone/somerepo",
                       "import_command": "lipzoo import-1llc convnet_xs_cpl.cifar10_1llc",
                       "commit": "1" * 40, "date": "2024-06-01T00:00:00Z"},
    }
    return PretrainedEntry.from_dict(cfg, "synthetic config")


def test_card_of_imported_weights_shows_reported_numbers_bound_and_provenance():
    entry = _imported_entry(upper=1.4686381)
    text = render_card(entry)
    assert render_card(entry) == text  # deterministic
    reported = text.split("### Reported by the authors")[1].split("## Training cost")[0]
    assert "| 0 (clean accuracy) | 74.90% |" in reported and "| 36/255 | 62.50% |" in reported
    assert "| 72/255 | 48.50% |" in reported and "| 1 | 4.20% |" in reported
    assert "| epochs | 14957 |" in reported and "| run id | `20230822_081440.7` |" in reported
    assert "| source | statistics.csv |" in reported and "did not measure them" in reported
    measured = text.split("### Measured by lipzoo")[1].split("### Lipschitz bound")[0]
    assert "Not measured by lipzoo yet: `lipzoo certify convnet_xs_cpl.cifar10_1llc --dataset cifar10`." in measured
    assert "74.90%" not in measured  # the authors' numbers are never shown as lipzoo's
    assert "The proven bound is L = 1.46864; its certificates use this L, not 1." in text
    assert "L <= 1.46864 (lipzoo.audit upper bound, lipzoo 9.9)" in text
    assert "Its logits are l2-Lipschitz with the proven bound L = 1.46864" in text and "1-Lipschitz in l2" not in text
    assert "- downloaded from: <http://127.0.0.1:1/w/XS_CPL.pth> (`XS_CPL.pth`)" in text
    assert f"- sha256 of the downloaded file: `{'cd' * 32}` (trusted on first use" in text
    reproduce = text.split("## Reproduce")[1].split("## Provenance")[0]
    assert "lipzoo train" not in text and "recipes/" not in text  # no invented recipe
    assert "trained by the paper's authors ([their repository](https://github.com/someone/somerepo)), " \
           "run `20230822_081440.7`, not by lipzoo" in reproduce
    assert "lipzoo import-1llc convnet_xs_cpl.cifar10_1llc" in reproduce
    meta = _front_matter(text)
    assert "model-index" not in meta and meta["license"] == "unknown"  # reported numbers are not lipzoo's results


def test_card_bound_sentence_only_above_one_and_measured_numbers_beside_reported():
    within = render_card(_imported_entry(upper=1.00005, measured=True))
    assert "its certificates use this L, not 1" not in within and "L <= 1.00005" in within
    assert "Its logits are 1-Lipschitz in l2" in within
    measured = within.split("### Measured by lipzoo")[1].split("### Lipschitz bound")[0]
    assert "| 0 (clean accuracy) | 70.00% |" in measured and "| 36/255 | 50.00% |" in measured
    assert "Measured on CIFAR-10 (50 test images)." in measured and "Not measured" not in measured
    assert "The certified accuracies measured by lipzoo above were computed with L = 1.5." in within
    assert "| 36/255 | 62.50% |" in within.split("### Reported by the authors")[1]
    unaudited = render_card(_imported_entry(upper=None))
    assert "Not audited yet: `lipzoo audit convnet_xs_cpl.cifar10_1llc`" in unaudited and "L <=" not in unaudited


def test_save_pretrained_does_not_invent_a_recipe(tmp_path):
    from lipzoo.hub import _recipe_path

    assert _recipe_path(None, "convnet_xs_aol", "fashion_mnist") == "recipes/fashion_mnist/convnet_xs_aol.yaml"
    assert not (CARDS_DIR.parent / "recipes/cifar10/convnet_xs_standard.yaml").exists()
    assert _recipe_path(None, "convnet_xs_standard", "cifar10") is None
    assert _recipe_path("", "convnet_xs_aol", "fashion_mnist") is None
    assert _recipe_path("my/recipe.yaml", "convnet_xs_aol", "fashion_mnist") == "my/recipe.yaml"
    import torch

    import lipzoo
    from lipzoo.data import dataset_info
    from lipzoo.hub import save_pretrained

    torch.manual_seed(0)
    model = lipzoo.create_model("convnet_xs_aol", num_classes=10, in_chans=1, input_mean=dataset_info("fashion_mnist").mean)
    entry = save_pretrained(model, tmp_path / "m", dataset="fashion_mnist", name="convnet_xs_aol.fashion_mnist_x",
                            recipe="")
    assert entry.recipe is None and json.loads((tmp_path / "m" / "config.json").read_text())["recipe"] is None
    text = render_card(entry)
    assert "No recipe is recorded for these weights." in text and "lipzoo train" not in text


# --- what a card claims: only working commands, one L rule, the baseline, status, hardware, cost ----
def _with(entry: PretrainedEntry, **changes) -> PretrainedEntry:
    cfg = entry.as_dict()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = cfg[key] | value
        else:
            cfg[key] = value
    return PretrainedEntry.from_dict(cfg, "test config", folder=entry.folder)


def test_card_shows_only_commands_that_work(entry):
    text = render_card(entry)  # no Hub repo recorded
    assert entry.hf_repo_id is None
    assert "pip install lipzoo" not in text and "hf_hub_download" not in text and "lipzoo download" not in text
    assert "`pip install -e .`" in text and 'source="local"' in text
    pushed = render_card(_with(entry, hub={"repo_id": "someorg/x.y", "revision": None, "filename": "model.safetensors"}))
    assert 'hf_hub_download("someorg/x.y", "model.safetensors")' in pushed and f"lipzoo download {entry.name}" in pushed


def test_card_states_the_lipschitz_rule_once_and_the_l_it_used(entry):
    audited = _with(entry, metrics={"lipschitz_bound": 1.0, "audit": {"lipschitz_upper": 0.858558, "ok": True}})
    text = render_card(audited)
    assert text.count("L = max(1, ") == 1 and "L <= 0.858558" in text
    assert "computed with L = 1." in text and "Lipschitz bound L = 1" not in text
    bound = text.split("### Lipschitz bound")[1].split("## ")[0]
    assert bound.index("max(1, ") < bound.index("L <= 0.858558") < bound.index("computed with L = 1.")


def test_standard_card_is_the_unconstrained_baseline_without_certificate():
    from hubtools import METRICS

    cfg = _imported_entry(upper=45.56).as_dict() | {"name": "convnet_xs_standard.cifar10",
                                                    "architecture": "convnet_xs_standard", "provenance": {}}
    cfg["metrics"] |= METRICS | {"lipschitz_bound": 45.56}
    del cfg["metrics"]["reported"]
    std = PretrainedEntry.from_dict(cfg, "standard config")
    text = render_card(std)
    assert "certifiably robust" not in text and "unconstrained baseline" in text and "no certificate" in text
    measured = text.split("### Measured by lipzoo")[1].split("### Lipschitz bound")[0]
    assert "| 36/255 | n/a (no certificate) |" in measured and "62.00%" not in measured
    assert "| 0 (clean accuracy) | 81.00% |" in measured
    assert "max(1, " not in text and "L <= 45.56" in text
    meta = _front_matter(text)
    names = [m["name"] for m in meta["model-index"][0]["results"][0]["metrics"]]
    assert names == ["Clean accuracy"] and "certified-robustness" not in meta["tags"]
    row = next(ln for ln in render_index([std]).splitlines() if ln.startswith("| [convnet_xs_standard"))
    assert "| n/a | n/a |" in row and "62.00%" not in row
    assert "no certificate" in metrics_summary(std) and "36/255" not in metrics_summary(std)


def test_undertrained_entry_is_marked_on_card_and_index(entry):
    bad = _with(entry, status="undertrained", provenance={"status_reasons": ["test clean accuracy 11.00% is near chance"]})
    body = render_card(bad).split(f"# {entry.name}\n\n", 1)[1]
    assert body.startswith("> **Warning: undertrained.** Published with `--force` although test clean accuracy "
                           "11.00% is near chance.")
    assert f"[{entry.name}]({entry.name}/README.md) **UNDERTRAINED** |" in render_index([bad])
    assert "Warning" not in render_card(entry) and "UNDERTRAINED**" not in render_index([entry])
    with pytest.raises(RegistryError, match="status must be one of"):
        _with(entry, status="bogus")


def test_hardware_is_the_cpu_model_name_never_the_kernel_string(entry):
    kernel = "Linux-6.18.44-fc-v1045-x86_64-with-glibc2.36"
    hw = {"platform": kernel, "cpu": "x86_64", "cpu_threads": 4, "device": "cpu"}
    named = render_card(_with(entry, timing={"hardware": hw | {"cpu_model": "AMD EPYC 9654"}}))
    assert "| hardware | AMD EPYC 9654, 4 threads, cpu |" in named and "- trained on: AMD EPYC 9654, 4 threads, cpu" in named
    unnamed = render_card(_with(entry, timing={"hardware": hw}))
    assert "| hardware | CPU model not recorded (x86_64), 4 threads, cpu |" in unnamed
    assert kernel not in named + unnamed and kernel not in render_index([_with(entry, timing={"hardware": hw})])


def test_training_cost_section_and_learning_curve_reference(entry, tmp_path):
    from lipzoo.zoo.cards import CURVE_FILENAME

    text = render_card(entry)
    cost = text.split("## Training cost")[1].split("## Usage")[0]
    assert "- wall-clock time: 90.0 min (5400 s), 3 epochs" in cost and "- training throughput: 12,000 images/s" in cost
    assert "learning curve" not in cost  # no picture in the folder
    folder = copy_folder(entry.folder, tmp_path / entry.name)
    (folder / CURVE_FILENAME).write_bytes(b"png")
    with_curve = render_card(PretrainedEntry.from_folder(folder))
    assert f"![learning curve]({CURVE_FILENAME})" in with_curve.split("## Training cost")[1].split("## Usage")[0]


@pytest.mark.parametrize("curve,verdict", [
    ([(0.70, 0.74), (0.78, 0.80)], "it underfits"),  # rising, train below val
    ([(0.90, 0.84), (0.97, 0.845)], "overfits"),  # train far above val
    ([(0.84, 0.83), (0.845, 0.832)], "levelled off"),  # flat
    # one-cycle: the annealed last epoch is flat, but the last third still rose 2.2 points
    ([(0.7, 0.73), (0.74, 0.76), (0.77, 0.78), (0.78, 0.80), (0.79, 0.81), (0.8, 0.80), (0.8, 0.813),
      (0.81, 0.829), (0.815, 0.834), (0.816, 0.835)], "it underfits"),
    # rose early, flat over the last third although the last epoch gained 0.6 points
    ([(0.7, 0.73), (0.8, 0.80), (0.83, 0.83), (0.84, 0.84), (0.845, 0.845), (0.85, 0.848), (0.85, 0.85),
      (0.85, 0.846), (0.85, 0.845), (0.85, 0.851)], "levelled off"),
])
def test_undertrained_card_says_why_from_its_learning_curve(entry, tmp_path, curve, verdict):
    folder = copy_folder(entry.folder, tmp_path / entry.name)
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i, "train_accuracy": t, "val_accuracy": v}) + "\n" for i, (t, v) in enumerate(curve)))
    base = PretrainedEntry.from_folder(folder)
    card = render_card(_with(base, status="undertrained"))
    why = next(ln for ln in card.splitlines() if ln.startswith("Why it is below its line"))
    t, v = curve[-1]
    assert f"training accuracy (on augmented images) was {100 * t:.2f}%" in why and f"{100 * v:.2f}%" in why
    assert verdict in why
    assert "Why it is below" not in render_card(base)  # a model that met its line has no such paragraph
