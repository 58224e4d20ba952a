"""Pretrained weights: save_pretrained, registry entries, resolution, sha256, HF cache, olah mirror, CLI."""

from __future__ import annotations

import itertools
import json
import re
import time
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import try_to_load_from_cache

import lipzoo
from lipzoo.cli import main as cli
from lipzoo.factory import load_pretrained
from lipzoo.hub import ChecksumError, DownloadError, HubError, WeightsNotFoundError
from lipzoo.registry import PRETRAINED, PretrainedEntry, RegistryError, load_pretrained_dir, model_info

from hubtools import (CuttingProxy, NAME, Olah, commit_folder, copy_folder, free_port, make_checkpoint,
                      prefill_cache, with_name)

ROOT = Path(__file__).resolve().parents[1]
TAMPERED = NAME.replace("_test", "_tampered")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> PretrainedEntry:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture
def env(monkeypatch, tmp_path) -> Path:
    """A clean environment: own HF cache, no mirrors, online, default org and endpoint."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for k in ("LIPZOO_WEIGHTS", "HF_HUB_OFFLINE", "LIPZOO_OFFLINE", "HF_ENDPOINT", "LIPZOO_HUB_ORG"):
        monkeypatch.delenv(k, raising=False)
    # safety net: a test that goes online by mistake reaches a closed local port, never the internet
    monkeypatch.setenv("LIPZOO_HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    return tmp_path / "hf"


@pytest.fixture
def registered(tiny, monkeypatch) -> PretrainedEntry:
    monkeypatch.setitem(PRETRAINED, tiny.name, tiny)
    return tiny


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if anything gets as far as parsing a safetensors file."""
    import safetensors.torch

    def boom(*a, **k):
        raise AssertionError("safetensors was asked to load a file that failed verification")

    monkeypatch.setattr(safetensors.torch, "load", boom)


def _reference_output(entry: PretrainedEntry, model) -> None:
    ref = load_pretrained(entry.name, weights=entry.folder)
    x = torch.rand(3, 1, 32, 32)
    assert torch.equal(ref(x), model(x))


# --- save_pretrained and the registry entry ---------------------------------------------------------
def test_save_pretrained_writes_hf_shaped_folder(tiny):
    from safetensors import safe_open

    files = sorted(p.name for p in tiny.folder.iterdir())
    assert files == ["config.json", "model.safetensors"]  # no temporary file left behind
    with safe_open(tiny.folder / "model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == "convnet_xs_aol" and meta["lipzoo_version"] == lipzoo.__version__
    cfg = json.loads((tiny.folder / "config.json").read_text())
    assert cfg == tiny.as_dict()
    assert PretrainedEntry.from_folder(tiny.folder) == tiny
    assert cfg["data"]["in_chans"] == 1 and cfg["data"]["mean"] == [0.286] and len(cfg["data"]["class_names"]) == 10
    assert cfg["file"]["size"] == (tiny.folder / "model.safetensors").stat().st_size
    assert cfg["recipe"] == "recipes/fashion_mnist/convnet_xs_aol.yaml"
    assert set(cfg["provenance"]) >= {"commit", "torch_version", "date", "lipzoo_version"}


def test_save_pretrained_loads_back_identically(tmp_path):
    entry = make_checkpoint(tmp_path, seed=3)
    torch.manual_seed(3)
    info = lipzoo.data.DATASETS["fashion_mnist"]
    original = lipzoo.create_model("convnet_xs_aol", num_classes=10, in_chans=1, input_mean=info.mean).eval()
    _reference_output(entry, original)
    loaded = lipzoo.create_model(str(entry.folder), pretrained=True)  # a folder path works as a name
    assert not loaded.training and loaded.pretrained_entry.name == entry.name


def test_save_pretrained_rejects_model_not_built_for_the_dataset(tmp_path):
    plain = lipzoo.create_model("convnet_xs_aol", num_classes=10, in_chans=1)  # no input_mean
    with pytest.raises(ValueError, match="input_mean=.*0.286"):
        lipzoo.save_pretrained(plain, tmp_path / "x", dataset="fashion_mnist")
    assert not (tmp_path / "x").exists()


def test_registry_reads_config_folders_and_rejects_bad_ones(tiny, tmp_path):
    copy_folder(tiny.folder, tmp_path / tiny.name)
    assert list(load_pretrained_dir(tmp_path)) == [tiny.name]
    bad = tmp_path / "wrong_folder_name"
    copy_folder(tiny.folder, bad)
    with pytest.raises(RegistryError, match="differs from its folder name"):
        load_pretrained_dir(tmp_path)
    cfg = json.loads((bad / "config.json").read_text())
    del cfg["file"]["sha256"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RegistryError, match=r"config.json: missing field file\.'sha256'"):
        load_pretrained_dir(tmp_path)


def test_list_models_and_model_info(registered, monkeypatch):
    assert registered.name in lipzoo.list_models("*aol*", pretrained=True)
    info = model_info(registered.name)
    assert info["repo_id"] == f"lipzoo/{registered.name}" and info["file"]["sha256"] == registered.sha256
    assert info["metrics"]["certified_accuracy"] and info["data"]["num_classes"] == 10
    monkeypatch.setenv("LIPZOO_HUB_ORG", "someorg")
    assert model_info(registered.name)["repo_id"] == f"someorg/{registered.name}"
    arch = model_info("convnet_xs_aol")
    assert arch["pretrained"] is False and registered.name in arch["pretrained_entries"]
    with pytest.raises(lipzoo.UnknownModelError):
        model_info("convnet_xs_aol.nonexistent")


def test_unknown_pretrained_name(env):
    with pytest.raises(lipzoo.UnknownModelError, match="convnet_xs_aol.nope"):
        lipzoo.create_model("convnet_xs_aol.nope", pretrained=True)


# --- local mirrors ----------------------------------------------------------------------------------
def test_loads_from_mirror_folder_offline(registered, env, monkeypatch, tmp_path):
    mirror = tmp_path / "mirror"
    copy_folder(registered.folder, mirror / registered.name)
    monkeypatch.setenv("LIPZOO_WEIGHTS", str(mirror))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = lipzoo.create_model(registered.name, pretrained=True, device="cpu")
    _reference_output(registered, model)


def test_tampered_mirror_file_is_rejected_before_loading(registered, env, monkeypatch, tmp_path, no_load):
    mirror = tmp_path / "mirror"
    f = copy_folder(registered.folder, mirror / registered.name) / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed in the last tensor
    f.write_bytes(bytes(data))
    monkeypatch.setenv("LIPZOO_WEIGHTS", str(mirror))
    for _ in range(2):  # every use is re-verified
        with pytest.raises(ChecksumError, match="Nothing was loaded"):
            lipzoo.create_model(registered.name, pretrained=True)


def test_state_dict_is_loaded_strictly(tiny, monkeypatch, env, tmp_path):
    from safetensors.torch import load_file, save_file

    from lipzoo.hub import sha256_file

    folder = copy_folder(tiny.folder, tmp_path / tiny.name)
    sd = load_file(folder / "model.safetensors")
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, folder / "model.safetensors", metadata={"architecture": tiny.architecture})
    f = folder / "model.safetensors"
    monkeypatch.setitem(PRETRAINED, tiny.name, with_name(tiny, tiny.name, sha256=sha256_file(f), size=f.stat().st_size))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        lipzoo.create_model(tiny.name, pretrained=True, weights=f)
    save_file(load_file(f), f, metadata={"architecture": "convnet_xs_sll"})
    monkeypatch.setitem(PRETRAINED, tiny.name, with_name(tiny, tiny.name, sha256=sha256_file(f), size=f.stat().st_size))
    with pytest.raises(HubError, match="holds a 'convnet_xs_sll' model"):
        lipzoo.create_model(tiny.name, pretrained=True, weights=f)


# --- pre-filled Hugging Face cache ------------------------------------------------------------------
def test_loads_from_prefilled_cache_offline(registered, env, monkeypatch):
    prefill_cache(env, registered, (registered.folder / "model.safetensors").read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _reference_output(registered, lipzoo.create_model(registered.name, pretrained=True))


def test_tampered_cache_blob_is_rejected_and_never_used_again(registered, env, monkeypatch, no_load):
    data = bytearray((registered.folder / "model.safetensors").read_bytes())
    data[100] ^= 0x01
    snap = prefill_cache(env, registered, bytes(data))
    blob = snap.resolve()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ChecksumError, match="deleted from the cache"):
        lipzoo.create_model(registered.name, pretrained=True)
    assert not blob.exists() and not snap.is_symlink()
    with pytest.raises(WeightsNotFoundError):  # not used again: offline, it is simply gone
        lipzoo.create_model(registered.name, pretrained=True)


def test_offline_without_file_names_cache_path_and_command(registered, env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as e:
        lipzoo.create_model(registered.name, pretrained=True)
    msg = str(e.value)
    assert str(env / f"models--lipzoo--{registered.name}") in msg and f"lipzoo download {registered.name}" in msg
    with pytest.raises(WeightsNotFoundError):
        lipzoo.create_model(registered.name, pretrained=True, local_files_only=True, cache_dir=env / "other")


def test_cli_verify(registered, env):
    runner = CliRunner()
    r = runner.invoke(cli, ["verify", registered.name, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)[0]["status"] == "missing"
    data = (registered.folder / "model.safetensors").read_bytes()
    snap = prefill_cache(env, registered, data)
    r = runner.invoke(cli, ["verify", registered.name])
    assert r.exit_code == 0 and r.output.startswith("OK"), r.output
    snap.resolve().write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    r = runner.invoke(cli, ["verify", "*_test", "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)[0]["status"] == "mismatch"
    r = runner.invoke(cli, ["verify", "convnet_xs_aol.nope"])
    assert r.exit_code != 0 and "unknown model" in r.output


def test_cli_download_offline_error(registered, env):
    r = CliRunner().invoke(cli, ["download", registered.name], env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 1 and "lipzoo download" in r.output and "not available offline" in r.output


def test_cli_push_uploads_folder_and_pins_revision(tiny, tmp_path, monkeypatch, env):
    from huggingface_hub import HfApi

    from lipzoo.zoo.cards import write_card

    folder = copy_folder(tiny.folder, tmp_path / "cards" / tiny.name)
    monkeypatch.setitem(PRETRAINED, tiny.name, PretrainedEntry.from_folder(folder))
    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("create", (repo_id, kw)))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kw["allow_patterns"],
                           json.loads((Path(folder_path) / "config.json").read_text()))
        return types.SimpleNamespace(oid="c" * 40)

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    r = CliRunner().invoke(cli, ["push", tiny.name, "--repo-id", "myorg/" + tiny.name, "--folder", str(folder)])
    assert r.exit_code == 0, r.output
    repo_id, files, allowed, uploaded_cfg = calls["upload"]
    assert repo_id == "myorg/" + tiny.name and {"README.md", "config.json", "model.safetensors"} <= set(files)
    assert set(allowed) == {"README.md", "config.json", "model.safetensors"}
    assert uploaded_cfg["hub"]["repo_id"] == "myorg/" + tiny.name
    entry = PretrainedEntry.from_folder(folder)
    assert entry.revision == "c" * 40 and entry.repo_id == "myorg/" + tiny.name
    assert write_card(entry, folder.parent, check=True).status == "fresh"  # the revision does not stale the card
    (folder / "model.safetensors").write_bytes(b"not the weights")
    r = CliRunner().invoke(cli, ["push", tiny.name, "--folder", str(folder)])
    assert r.exit_code != 0 and "does not match the sha256" in r.output


def test_no_pickle_loading_anywhere():
    sources = [*sorted((ROOT / "lipzoo").rglob("*.py")), ROOT / "hubconf.py"]
    for path in sources:
        text = path.read_text()
        assert not re.search(r"\bpickle\.loads?\(|\bimport pickle\b|\bdill\b", text), path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"


# --- the olah mirror server -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def hub(tiny, tmp_path_factory):
    """olah serving: the tiny model (commit 1 pinned, commit 2 on main) and a repo with a tampered blob."""
    work = tmp_path_factory.mktemp("olah")
    srv = Olah(work)
    repo = srv.repo_dir(f"lipzoo/{tiny.name}")
    pinned = commit_folder(repo, tiny.folder, "weights")
    staged = copy_folder(tiny.folder, work / "staged")
    (staged / "README.md").write_text("---\nlibrary_name: lipzoo\n---\n# a newer card\n")
    head = commit_folder(repo, staged, "card")
    data = bytearray((tiny.folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    tampered = commit_folder(srv.repo_dir(f"lipzoo/{TAMPERED}"), tiny.folder, "tampered", weights=bytes(data))
    try:
        srv.start()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"the olah mirror server could not start: {e}")
    yield types.SimpleNamespace(srv=srv, endpoint=srv.endpoint, pinned=pinned, head=head, tampered=tampered)
    srv.stop()


@pytest.fixture
def served(hub, tiny, env, monkeypatch) -> PretrainedEntry:
    entry = with_name(tiny, tiny.name, revision=hub.pinned)
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    monkeypatch.setenv("LIPZOO_HF_ENDPOINT", hub.endpoint)
    return entry


def test_olah_download_at_pinned_revision(served, hub, env):
    model = lipzoo.create_model(served.name, pretrained=True)
    _reference_output(served, model)
    cached = try_to_load_from_cache(served.repo_id, "model.safetensors", cache_dir=env, revision=hub.pinned)
    assert cached and Path(cached).parent.name == hub.pinned
    assert try_to_load_from_cache(served.repo_id, "model.safetensors", cache_dir=env, revision=hub.head) is None


def test_olah_branch_then_offline_by_branch(served, hub, env, monkeypatch):
    r = CliRunner().invoke(cli, ["download", served.name, "--revision", "main", "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)[0]
    assert row["status"] == "ok" and f"/snapshots/{hub.head}/" in row["path"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _reference_output(served, lipzoo.create_model(served.name, pretrained=True, revision="main"))
    with pytest.raises(WeightsNotFoundError, match="lipzoo download"):  # the pinned commit was not fetched
        lipzoo.create_model(served.name, pretrained=True)


def test_olah_unknown_repo_revision_file(served, hub, monkeypatch):
    monkeypatch.setitem(PRETRAINED, "convnet_xs_aol.mnist", with_name(served, "convnet_xs_aol.mnist"))
    with pytest.raises(DownloadError, match=r"repository lipzoo/convnet_xs_aol.mnist at http://127.0.0.1:\d+ not found"):
        lipzoo.create_model("convnet_xs_aol.mnist", pretrained=True)
    with pytest.raises(DownloadError, match="revision 'nope' not found .*branches and tags: main"):
        lipzoo.create_model(served.name, pretrained=True, revision="nope")
    with pytest.raises(DownloadError, match=f"revision '{'1' * 40}' not found"):
        lipzoo.create_model(served.name, pretrained=True, revision="1" * 40)
    monkeypatch.setitem(PRETRAINED, served.name, with_name(served, served.name, filename="other.safetensors"))
    with pytest.raises(DownloadError, match="has no file 'other.safetensors'.*model.safetensors"):
        lipzoo.create_model(served.name, pretrained=True)


def test_olah_server_stopped_uses_cache(served, hub, env, monkeypatch):
    lipzoo.hub.download(served.name)
    monkeypatch.setenv("LIPZOO_HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    _reference_output(served, lipzoo.create_model(served.name, pretrained=True))
    with pytest.raises(DownloadError, match="cannot reach"):
        lipzoo.create_model(served.name, pretrained=True, cache_dir=env / "empty")


def test_olah_hf_hub_offline(served, hub, env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="not available offline"):
        lipzoo.create_model(served.name, pretrained=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    lipzoo.hub.download(served.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _reference_output(served, lipzoo.create_model(served.name, pretrained=True))


def test_olah_tampered_blob_rejected(hub, tiny, env, monkeypatch, no_load):
    entry = with_name(tiny, TAMPERED, revision=hub.tampered)
    monkeypatch.setitem(PRETRAINED, TAMPERED, entry)
    monkeypatch.setenv("LIPZOO_HF_ENDPOINT", hub.endpoint)
    with pytest.raises(ChecksumError, match="deleted from the cache"):
        lipzoo.create_model(TAMPERED, pretrained=True)
    assert try_to_load_from_cache(entry.repo_id, "model.safetensors", cache_dir=env, revision=hub.tampered) is None
    blobs = env / f"models--lipzoo--{TAMPERED}" / "blobs"
    assert not [p for p in blobs.glob("*") if not p.name.endswith(".incomplete")]


def test_olah_interrupted_download_leaves_nothing_usable(served, hub, env, monkeypatch):
    with CuttingProxy(hub.endpoint) as proxy:
        monkeypatch.setenv("LIPZOO_HF_ENDPOINT", proxy.endpoint)
        with pytest.raises(DownloadError, match="no partial file is used"):
            lipzoo.create_model(served.name, pretrained=True)
        assert proxy.cut == 1
    assert try_to_load_from_cache(served.repo_id, "model.safetensors", cache_dir=env, revision=hub.pinned) is None
    with pytest.raises(WeightsNotFoundError):
        lipzoo.create_model(served.name, pretrained=True, local_files_only=True)
    monkeypatch.setenv("LIPZOO_HF_ENDPOINT", hub.endpoint)  # the server is back: the download completes
    _reference_output(served, lipzoo.create_model(served.name, pretrained=True))


# --- a malformed card never breaks the import ---------------------------------------------------------
BAD_CONFIGS = {
    "convnet_xs_bcop.fashion_mnist": (b"{not json", "is not valid JSON"),
    "convnet_xs_sll.fashion_mnist": (None, "field data.'in_chans' must be int, got '1'"),
    "convnet_xs_lot.fashion_mnist": (None, "field 'metrics' must be dict or null, got 'high'"),
    "convnet_xs_soc.fashion_mnist": (None, "field data.'mean'[0] has the wrong type: 'x'"),
    "convnet_xs_cpl.fashion_mnist": (b"\xff\xfe", "is not UTF-8 text"),
}


def _bad_cards(root: Path, good: PretrainedEntry) -> Path:
    """``root/cards`` with one good card (``good``) and the malformed ones of BAD_CONFIGS."""
    cards = root / "cards"
    copy_folder(good.folder, cards / good.name)
    cfg = json.loads((good.folder / "config.json").read_text())
    broken = {"convnet_xs_sll.fashion_mnist": lambda c: c["data"].update(in_chans="1"),
              "convnet_xs_lot.fashion_mnist": lambda c: c.update(metrics="high"),
              "convnet_xs_soc.fashion_mnist": lambda c: c["data"].update(mean=["x"])}
    for name, (raw, _) in BAD_CONFIGS.items():
        (cards / name).mkdir(parents=True)
        if raw is None:
            c = json.loads(json.dumps(cfg)) | {"name": name, "architecture": name.split(".")[0]}
            broken[name](c)
            raw = json.dumps(c).encode()
        (cards / name / "config.json").write_bytes(raw)
    return cards


def test_malformed_configs_are_skipped_with_one_line_warnings(tiny, tmp_path):
    cards = _bad_cards(tmp_path, tiny)
    with pytest.warns(lipzoo.registry.RegistryWarning) as caught:
        entries = load_pretrained_dir(cards, strict=False)
    assert list(entries) == [tiny.name]
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == len(BAD_CONFIGS) and all("\n" not in m for m in messages)
    for name, (_, what) in BAD_CONFIGS.items():
        assert any(str(cards / name / "config.json") in m and what in m for m in messages), (name, messages)
    with pytest.raises(RegistryError):  # strict (the default, used by `lipzoo card`) still refuses
        load_pretrained_dir(cards)


def test_import_and_cli_help_survive_malformed_cards(tiny, tmp_path):
    """A copy of the package next to a cards/ folder with broken configs: import and --help work."""
    import shutil
    import subprocess
    import sys

    shutil.copytree(ROOT / "lipzoo", tmp_path / "lipzoo", ignore=shutil.ignore_patterns("__pycache__"))
    _bad_cards(tmp_path, tiny)
    code = ("import lipzoo, sys; print('PRETRAINED', lipzoo.list_models(pretrained=True)); "
            "print('FILE', lipzoo.__file__); from lipzoo.cli import main; main(['--help'])")
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"FILE {tmp_path / 'lipzoo'}" in out.stdout and f"PRETRAINED ['{tiny.name}']" in out.stdout
    assert "Usage:" in out.stdout and "download" in out.stdout
    for name, (_, what) in BAD_CONFIGS.items():
        assert f"cards/{name}/config.json" in out.stderr and what in out.stderr, (name, out.stderr[-3000:])


# --- architecture names, data config, heads -----------------------------------------------------------
BUNDLED = "convnet_xs_aol.fashion_mnist"


def test_architecture_name_with_pretrained_loads_its_default_entry(registered, env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the bundled weights come from the checkout's cards/
    model = lipzoo.create_model("convnet_xs_aol", pretrained=True)
    assert model.pretrained_entry.name == BUNDLED  # two entries: the family's default data set wins
    ref = lipzoo.create_model(BUNDLED, pretrained=True)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model(x), ref(x))
    monkeypatch.delitem(PRETRAINED, BUNDLED)
    with pytest.raises(WeightsNotFoundError):  # the only entry left is the test one (not downloadable offline)
        lipzoo.create_model("convnet_xs_aol", pretrained=True)
    monkeypatch.setitem(PRETRAINED, "convnet_xs_aol.mnist", with_name(registered, "convnet_xs_aol.mnist"))
    with pytest.raises(lipzoo.UnknownModelError, match=r"2 pretrained entries .*convnet_xs_aol\.fashion_mnist_test, "
                                                       r"convnet_xs_aol\.mnist"):
        lipzoo.create_model("convnet_xs_aol", pretrained=True)
    with pytest.raises(lipzoo.UnknownModelError, match="no pretrained weights are registered for convnet_s_sll"):
        lipzoo.create_model("convnet_s_sll", pretrained=True)


def test_pretrained_refuses_a_different_head_or_stem(registered, env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # refused before anything is looked up
    for kw, shown in [({"num_classes": 5}, "num_classes=5"), ({"in_chans": 3}, "in_chans=3"),
                      ({"input_mean": (0.5,)}, "input_mean=(0.5,)")]:
        with pytest.raises(ValueError, match=rf"{re.escape(shown)} does not fit the pretrained weights of "
                                             rf"{re.escape(registered.name)}"):
            lipzoo.create_model(registered.name, pretrained=True, **kw)
    with pytest.raises(ValueError, match="num_classes=5"):
        lipzoo.create_model("convnet_xs_aol", pretrained=True, num_classes=5)
    model = lipzoo.create_model(BUNDLED, pretrained=True, num_classes=10, in_chans=1)  # the entry's own values
    assert model.num_classes == 10 and model.in_chans == 1
    assert lipzoo.create_model("convnet_xs_aol").in_chans == 3  # untrained defaults are unchanged


def _write_idx(path: Path, array) -> None:
    import gzip
    import struct

    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_data_config_transform_matches_the_data_loader_on_idx_images(tmp_path):
    import numpy as np
    from PIL import Image

    from lipzoo.data import load_tensors, read_idx

    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 6))
    raw = read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")  # (6, 28, 28) uint8: the files as published
    expected, _ = load_tensors("fashion_mnist", "test", root=tmp_path)  # what models are trained/evaluated on
    cfg = lipzoo.data_config(BUNDLED)
    assert (cfg.in_chans, cfg.input_size, cfg.num_classes) == (1, 32, 10)
    assert lipzoo.data_config("convnet_xs_aol") == cfg  # an architecture name: its default entry
    tf = cfg.transform()
    assert torch.equal(tf(raw), expected)  # a numpy batch
    one = tf(Image.fromarray(raw[2]))  # a PIL image
    assert one.shape == (1, 32, 32) and one.dtype == torch.float32 and torch.equal(one, expected[2])
    assert torch.equal(tf(torch.tensor(raw[3])), expected[3])  # a uint8 tensor (H, W)
    assert torch.equal(tf(torch.tensor(raw).float() / 255), expected)  # floats in [0, 1]
    assert torch.equal(tf(expected), expected)  # already at the model size
    for bad, what in [(raw.astype(np.float32), r"float images must lie in \[0, 1\]"),
                      (np.zeros((3, 28, 28, 3), np.uint8), "1-channel images"),
                      (np.zeros((29, 29), np.uint8), "cannot be zero-padded evenly"),
                      (np.zeros((40, 40), np.uint8), "takes 32x32 images"), ("img.png", "expected a PIL image")]:
        with pytest.raises(ValueError, match=what):
            tf(bad)
    model = lipzoo.create_model(BUNDLED, pretrained=True)
    assert lipzoo.data_config(model) == cfg and model.pretrained_entry.transforms() == tf
    assert torch.equal(model(tf(raw)), model(expected))
    with pytest.raises(ValueError, match="pretrained=True"):
        lipzoo.data_config(lipzoo.create_model("convnet_xs_aol"))


# --- the HF cache: eviction stays inside it -----------------------------------------------------------
def test_eviction_never_follows_a_link_out_of_the_cache(registered, env, monkeypatch, tmp_path, no_load):
    outside = tmp_path / "precious.safetensors"
    outside.write_bytes(b"a file of the user's, not lipzoo's")
    snap = prefill_cache(env, registered, b"placeholder")
    snap.resolve().unlink()
    snap.unlink()
    snap.symlink_to(outside)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ChecksumError):
        lipzoo.create_model(registered.name, pretrained=True)
    assert outside.read_bytes() == b"a file of the user's, not lipzoo's"
    assert not snap.is_symlink()  # the link itself (inside the cache) is gone, so it is not used again
    inside_dir = tmp_path / "linked-cache"  # a cache folder reached through a link is still the cache
    inside_dir.symlink_to(env, target_is_directory=True)
    data = bytearray((registered.folder / "model.safetensors").read_bytes())
    data[7] ^= 1
    snap = prefill_cache(env, registered, bytes(data))
    blob = snap.resolve()
    with pytest.raises(ChecksumError, match="deleted from the cache"):
        lipzoo.create_model(registered.name, pretrained=True, cache_dir=inside_dir)
    assert not blob.exists()


# --- download of weights that are already in the checkout ----------------------------------------------
def test_cli_download_offline_reports_checkout_copy(env):
    r = CliRunner().invoke(cli, ["download", BUNDLED, "--json"], env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)[0]
    assert row["status"] == "ok" and row["source"] == "mirror"
    assert Path(row["path"]) == ROOT / "cards" / BUNDLED / "model.safetensors"
    r = CliRunner().invoke(cli, ["download", BUNDLED], env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 0 and "sha256 verified, mirror" in r.output


# --- a folder re-published while it is read --------------------------------------------------------------
def test_loading_while_republished_gives_old_or_new_never_torn(tmp_path, env, monkeypatch):
    import threading

    from lipzoo._io import atomic_write_bytes

    a, b = make_checkpoint(tmp_path / "a", seed=1), make_checkpoint(tmp_path / "b", seed=2)
    assert a.sha256 != b.sha256
    folder = copy_folder(a.folder, tmp_path / "live" / a.name)
    versions = [((e.folder / "model.safetensors").read_bytes(), (e.folder / "config.json").read_bytes()) for e in (a, b)]
    states = {e.sha256: load_pretrained(e.name, weights=e.folder).state_dict() for e in (a, b)}
    stop, swaps = threading.Event(), []

    def publisher() -> None:  # as save_pretrained does: weights renamed into place, then config.json
        while not stop.is_set():
            weights, config = versions[len(swaps) % 2]
            atomic_write_bytes(folder / "model.safetensors", weights)
            atomic_write_bytes(folder / "config.json", config)
            swaps.append(1)
            stop.wait(0.05)  # a re-publish every few loads, not a file that never settles

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    seen = []
    try:
        monkeypatch.setitem(PRETRAINED, a.name, PretrainedEntry.from_folder(folder))  # like an entry of cards/
        monkeypatch.setenv("LIPZOO_WEIGHTS", str(folder.parent))
        deadline = time.monotonic() + 120  # load until the publisher has swapped often, however fast loads are
        for i in itertools.count():
            if (i >= 30 and len(swaps) > 20 and set(seen) == set(states)) or time.monotonic() > deadline:
                break
            model = lipzoo.create_model(str(folder) if i % 2 else a.name, pretrained=True)
            sha = model.pretrained_entry.sha256
            state = model.state_dict()  # the weights are those of the entry they were checked with:
            assert all(torch.equal(v, state[k]) for k, v in states[sha].items())
            seen.append(sha)
    finally:
        stop.set()
        thread.join()
    assert len(swaps) > 20 and set(seen) == set(states), "the publisher did not run alongside the reader"
