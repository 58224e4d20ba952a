"""Model cards: front matter, tables, usage, citations, the overview, --check (also over the real cards/)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from lipzoo.cards import entrypoint_doc, render_card, render_index, write_cards
from lipzoo.cli import main as cli
from lipzoo.registry import CARDS_DIR, PRETRAINED, PretrainedEntry

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
    assert 'torch.hub.load("lipzoo/lipzoo", "convnet_xs_aol", pretrained=True, dataset="fashion_mnist")' in text
    assert f'hf_hub_download("lipzoo/{entry.name}", "model.safetensors")' in text
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
    assert "| model | layer | dataset | clean | train time | hardware |" in empty and "No pretrained models" in empty
    full = render_index([entry])
    assert f"[{entry.name}]({entry.name}/README.md)" in full and "| cert. 36/255 |" in full and "62.00%" in full


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
    assert "none registered yet" in entrypoint_doc("convnet_xs_aol", "fashion_mnist")
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    doc = entrypoint_doc("convnet_xs_aol", "fashion_mnist")
    assert "fashion_mnist: clean 81.00%, certified 36/255: 62.00%" in doc
