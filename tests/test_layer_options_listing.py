"""``LayerSpec.options`` and ``lipzoo layers --options``: the layer options a whole model takes."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import lipzoo
from lipzoo.cli import main as cli
from lipzoo.layers import LAYERS


@pytest.mark.parametrize("layer", list(LAYERS))
def test_every_listed_option_is_taken_by_a_whole_model(layer):
    """The options, passed explicitly with their defaults, build the same model as none."""
    opts = LAYERS[layer].options()
    torch.manual_seed(0)
    plain = lipzoo.create_model(f"convnet_xs_{layer}", num_classes=10, in_chans=1)
    torch.manual_seed(0)
    explicit = lipzoo.create_model(f"convnet_xs_{layer}", num_classes=10, in_chans=1, **opts)
    assert repr(explicit) == repr(plain)
    assert list(explicit.state_dict()) == list(plain.state_dict())


def test_the_bound_options_are_listed_with_their_defaults():
    assert LAYERS["soc"].options()["skew_bound"] == "gram"
    assert LAYERS["cpl"].options()["step_bound"] == "gram"
    for spec in LAYERS.values():  # set per layer by the architectures, never model-wide
        assert not {"input_size", "stride", "bias"} & set(spec.options())


def test_cli_lists_the_options():
    runner = CliRunner()
    res = runner.invoke(cli, ["layers", "--json"])
    assert res.exit_code == 0
    rows = {r["id"]: r for r in json.loads(res.output)}
    assert rows["soc"]["options"] == LAYERS["soc"].options()
    text = runner.invoke(cli, ["layers", "--options"]).output.splitlines()
    soc = next(i for i, line in enumerate(text) if line.startswith("soc "))
    assert "skew_bound='gram'" in text[soc + 1] and text[soc + 1].lstrip().startswith("options:")
    assert "options:" not in runner.invoke(cli, ["layers"]).output


def test_info_names_the_options_a_pretrained_model_is_built_with():
    runner = CliRunner()
    lines = runner.invoke(cli, ["info", "convnet_xs_cpl.fashion_mnist"]).output.splitlines()
    assert "options    step_bound='spectral'" in lines
    aol = runner.invoke(cli, ["info", "convnet_xs_aol.fashion_mnist"]).output.splitlines()
    assert not any(line.startswith("options") for line in aol)
