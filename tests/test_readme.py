"""Every code block of README.md runs, or each command in it is one lipzoo actually has.

- ``python`` blocks run in README order in one fresh interpreter (like a reader pasting them),
  in a temporary folder, offline; a block may be skipped only with a stated reason
  (``<!-- readme-test: skip (why) -->`` on the line before it).
- Command lines (``lipzoo ...``, ``python scripts/....py``) in the other blocks: the command
  exists and every ``--option`` it uses is in its ``--help``; every model name is registered.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import lipzoo
from lipzoo.cli import main as cli
from lipzoo.zoo.convert import PAPER_RELEASES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"(?:<!-- readme-test: skip \((?P<why>[^)]+)\) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
BLOCKS = [(m["lang"], m["body"], m["why"]) for m in FENCE.finditer(README)]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def command_lines() -> list[str]:
    out = []
    for lang, body, _ in BLOCKS:
        if lang == "python":
            continue
        for line in body.splitlines():
            for part in re.split(r"&&|\s{3,}", line):  # chained commands; two-column listings
                part = part.strip()
                part = re.sub(r"^(\.venv/bin/|torchrun .*?-m lipzoo\.cli )", "", part)
                if part.startswith("torchrun"):
                    part = "lipzoo " + part.split("-m lipzoo.cli ", 1)[-1]
                if part.startswith(("lipzoo ", "python scripts/")):
                    out.append(part.split("#", 1)[0].strip())
    return out


def test_the_readme_has_code_to_check():
    assert sum(lang == "python" for lang, _, _ in BLOCKS) >= 4
    assert len(command_lines()) >= 30


@pytest.mark.parametrize("line", command_lines())
def test_each_readme_command_exists_with_its_options(line):
    words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))
    if words[0] == "python":
        script = ROOT / words[1]
        assert script.is_file(), script
        res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300)
        helptext = res.stdout
        assert res.returncode == 0, res.stderr[-500:]
    else:
        sub = words[1]
        res = CliRunner().invoke(cli, [sub, "--help"])
        assert res.exit_code == 0, f"`lipzoo {sub}` is not a command: {res.output[-300:]}"
        helptext = res.output
    for opt in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
        assert opt in helptext, f"{opt} is not an option of `{' '.join(words[:2])}`"
    known = set(lipzoo.list_models("*")) | set(lipzoo.list_models("*", pretrained=True)) | set(PAPER_RELEASES)
    for word in words[1:]:
        if word.endswith((".yaml", ".py")):
            assert (ROOT / word).is_file(), f"{word} (in `{line}`) does not exist"
        elif re.fullmatch(r"t?convnet_[a-z]+_[a-z]+(\.[a-z0-9_]+)?", word):
            assert word in known, f"{word} (in `{line}`) is not a registered model"


def test_every_skipped_block_says_why():
    for lang, body, why in BLOCKS:
        if why is not None:
            assert len(why) > 20, why


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_the_python_blocks_run_in_order(tmp_path):
    code = "\n\n".join(body for lang, body, why in BLOCKS if lang == "python" and why is None)
    script = tmp_path / "readme_blocks.py"
    script.write_text(code)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "audited on this machine" in res.stdout


def test_zoo_status_quotes_match_the_cards():
    """Each "LAYER (N epochs: clean% / certified%)" in the README's zoo status is the card's own numbers."""
    from lipzoo.registry import PRETRAINED

    quote = r"\*{0,2}(\w+)\*{0,2}\s+\((\d+)\s+epochs:\s+([\d.]+)%(?:\s+/\s+([\d.]+)%|\s+clean)\)"
    quotes = re.findall(quote, README)
    assert len(quotes) >= 8, quotes
    for layer, epochs, clean, certified in quotes:
        entry = PRETRAINED[f"convnet_xs_{layer.lower()}.fashion_mnist"]
        m = entry.metrics
        assert f"{100 * m['clean_accuracy']:.2f}" == clean, layer
        if certified:
            assert f"{100 * m['certified_accuracy']['0.141176']:.2f}" == certified, layer
        run = json.loads((entry.folder / "run.json").read_text())  # what the card's model was trained for
        assert run["epochs_done"] == int(epochs), layer


def test_zoo_status_sorts_each_model_by_its_registry_status():
    """A model quoted under "meet the line" is published normally; one under "still below it" is marked undertrained."""
    from lipzoo.registry import PRETRAINED

    meet = re.search(r"^- meet the line: (.*?)(?=^- |^$)", README, re.M | re.S)
    below = re.search(r"^- converging runs still below it(.*?)(?=^- |^$)", README, re.M | re.S)
    assert meet and below, "the README's zoo status has lost one of its two bullets"
    name = r"\*{0,2}(\w+)\*{0,2}\s+\(\d+\s+epochs:"
    for bullet, wanted in ((meet, None), (below, "undertrained")):
        layers = re.findall(name, bullet.group(1))
        assert layers, bullet.group(0)
        for layer in layers:
            assert PRETRAINED[f"convnet_xs_{layer.lower()}.fashion_mnist"].status == wanted, layer
