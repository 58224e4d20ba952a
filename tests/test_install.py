"""A real (non-editable) install: the wheel carries the pretrained index, the weights come from the Hub.

The wheel is built offline from an sdist of a copy of the checkout (so MANIFEST.in and setup.py
are exercised as a user's ``pip install lipzoo`` would), installed with ``pip --target`` (no
dependencies: the test venv's torch is reused), and imported from a folder outside the checkout.
The zoo's weights are then fetched from an olah mirror on 127.0.0.1 serving the ``cards/``
folders as Hugging Face repos.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import try_to_load_from_cache

from lipzoo.registry import load_pretrained_dir

from hubtools import Olah, commit_folder

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "cards"
MODEL = "convnet_xs_aol.fashion_mnist"


def _pip(*args: str, cwd: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--no-build-isolation",
                          "--disable-pip-version-check", "-q"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"pip {args[0]} failed: {out.stderr[-3000:]}"


def _source_copy(dst: Path) -> Path:
    """The files a release is built from: packaging, the package, and the cards' config.json."""
    dst.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    shutil.copytree(ROOT / "lipzoo", dst / "lipzoo", ignore=shutil.ignore_patterns("__pycache__", "_index"))
    for cfg in CARDS.glob("*/config.json"):
        (dst / "cards" / cfg.parent.name).mkdir(parents=True)
        shutil.copy2(cfg, dst / "cards" / cfg.parent.name / "config.json")
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the --target folder it was installed into)."""
    from setuptools import build_meta

    work = tmp_path_factory.mktemp("install")
    src = _source_copy(work / "src")
    old = Path.cwd()
    try:  # the sdist, as uploaded to an index
        os.chdir(src)
        sdist = work / build_meta.build_sdist(str(work))
    finally:
        os.chdir(old)
    _pip("wheel", str(sdist), "-w", str(work / "dist"), cwd=work)
    (wheel,) = (work / "dist").glob("lipzoo-*.whl")
    _pip("install", "--target", str(work / "site"), str(wheel), cwd=work)
    return wheel, work / "site"


def test_wheel_index_is_a_copy_of_the_cards(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        packaged = {n.removeprefix("lipzoo/_index/"): z.read(n) for n in z.namelist() if n.startswith("lipzoo/_index/")}
        assert not [n for n in z.namelist() if n.endswith(".safetensors")]  # weights are never packaged
    cards = {f"{p.parent.name}/config.json": p.read_bytes() for p in CARDS.glob("*/config.json")}
    assert cards and packaged == cards


def test_wheel_holds_every_module_of_the_package(installed):
    wheel, site = installed
    with zipfile.ZipFile(wheel) as z:
        packaged = set(z.namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lipzoo").rglob("*.py")}
    assert "lipzoo/zoo/__init__.py" in modules and modules <= packaged  # subpackages (zoo, layers, models) too
    assert (site / "lipzoo" / "zoo" / "training.py").is_file()


def test_installed_package_lists_the_zoo_and_loads_from_the_hub(installed, tmp_path):
    _, site = installed
    srv = Olah(tmp_path / "olah")
    commit_folder(srv.repo_dir(f"lipzoo/{MODEL}"), CARDS / MODEL, "the card folder as a Hub repo")
    try:
        srv.start()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"the olah mirror server could not start: {e}")
    run = tmp_path / "elsewhere"  # not the checkout: `import lipzoo` must find the installed copy
    run.mkdir()
    script = (
        "import json, sys, lipzoo\n"
        "from safetensors.torch import save_file\n"
        "from lipzoo.registry import PRETRAINED, index_dir\n"
        "model = lipzoo.create_model(sys.argv[1].split('.')[0], pretrained=True)\n"
        "save_file(model.state_dict(), 'state.safetensors')\n"
        "print(json.dumps({'file': lipzoo.__file__, 'index': str(index_dir()), 'loaded': model.pretrained_entry.name,\n"
        "                  'pretrained': lipzoo.list_models(pretrained=True),\n"
        "                  'entries': {n: e.as_dict() for n, e in PRETRAINED.items()}}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIPZOO_", "HF_", "http_", "https_", "HTTP"))}
    env |= {"PYTHONPATH": str(site), "HF_HUB_CACHE": str(tmp_path / "hf"), "LIPZOO_HF_ENDPOINT": srv.endpoint,
            "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    try:
        out = subprocess.run([sys.executable, "-c", script, MODEL], cwd=run, env=env, capture_output=True, text=True,
                             timeout=300)
    finally:
        srv.stop()
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(got["file"]).is_relative_to(site) and Path(got["index"]) == site / "lipzoo" / "_index"
    cards = load_pretrained_dir(CARDS)
    assert got["pretrained"] == sorted(cards) and got["entries"] == {n: e.as_dict() for n, e in cards.items()}
    assert got["loaded"] == MODEL  # the architecture name resolved to its default entry
    cached = try_to_load_from_cache(f"lipzoo/{MODEL}", "model.safetensors", cache_dir=tmp_path / "hf")
    assert isinstance(cached, str)  # it came from the Hub (the install has no cards/ and no mirrors)
    from safetensors.torch import load_file

    state, expected = load_file(run / "state.safetensors"), load_file(CARDS / MODEL / "model.safetensors")
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
