"""torch.hub: hubconf.py has one entrypoint per registry architecture and loads offline from a mirror."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lipzoo
from lipzoo.registry import PRETRAINED

from hubtools import copy_folder, free_port, make_checkpoint
from scripttools import load_script

ROOT = Path(__file__).resolve().parents[1]


def _hubconf():
    return load_script(ROOT / "hubconf.py", "lipzoo_hubconf_test")


def test_entrypoints_are_the_registry_architectures():
    mod = _hubconf()
    # torch.hub's rule: every public callable of hubconf is an entrypoint
    entrypoints = {n for n in dir(mod) if callable(getattr(mod, n)) and not n.startswith("_")}
    assert entrypoints == set(lipzoo.list_models())
    assert mod.convnet_s_aol.__name__ == "convnet_s_aol" and "AOL" in mod.convnet_s_aol.__doc__
    assert mod._lipzoo is lipzoo


def test_untrained_entrypoint_uses_the_dataset_shape():
    model = torch.hub.load(str(ROOT), "convnet_xs_sll", source="local", dataset="cifar10")
    assert model.in_chans == 3 and model.num_classes == 10 and model.config.input_mean is not None
    assert torch.hub.load(str(ROOT), "convnet_xs_aol", source="local").in_chans == 1  # default fashion_mnist


def test_torch_hub_load_pretrained_offline_from_mirror(tmp_path, monkeypatch):
    entry = make_checkpoint(tmp_path / "src")
    mirror = tmp_path / "mirror"
    copy_folder(entry.folder, mirror / entry.name)
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    monkeypatch.setenv("LIPZOO_WEIGHTS", str(mirror))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LIPZOO_HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    dataset = entry.name.split(".", 1)[1]  # fashion_mnist_test: the test entry's tag
    model = torch.hub.load(str(ROOT), "convnet_xs_aol", source="local", pretrained=True, dataset=dataset)
    ref = lipzoo.create_model(entry.name, pretrained=True, weights=entry.folder)
    x = torch.rand(2, 1, 32, 32)
    assert not model.training and torch.equal(model(x), ref(x))
    with pytest.raises(lipzoo.UnknownModelError):
        torch.hub.load(str(ROOT), "convnet_xs_aol", source="local", pretrained=True, dataset="cifar10")


def test_pretrained_entrypoint_refuses_another_head(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="num_classes=5 does not fit the pretrained weights of convnet_xs_aol.fashion_mnist"):
        torch.hub.load(str(ROOT), "convnet_xs_aol", source="local", pretrained=True, num_classes=5)
    model = torch.hub.load(str(ROOT), "convnet_xs_aol", source="local", pretrained=True)  # the bundled weights
    assert model.pretrained_entry.name == "convnet_xs_aol.fashion_mnist" and model.num_classes == 10
