"""The unconstrained baseline's initialisations: PyTorch's default loses the input signal in the deep
ConvNet, the orthogonal one keeps it (the reason the zoo's standard recipe uses it)."""

from __future__ import annotations

import pytest
import torch

import lipzoo
from lipzoo.layers.standard import StandardConv2d, StandardLinear


def _input_spread(init: str) -> float:
    """How much the logits vary across inputs, relative to their size."""
    torch.manual_seed(0)
    model = lipzoo.create_model("convnet_xs_standard", in_chans=1, init=init).eval()
    with torch.no_grad():
        y = model(torch.rand(16, 1, 32, 32))
    return float((y - y.mean(0)).std() / y.std())


def test_default_init_loses_the_input_and_orthogonal_keeps_it():
    assert _input_spread("default") < 1e-4  # the logits are the biases' constant
    assert _input_spread("orthogonal") > 0.05


def test_default_init_is_pytorchs():
    torch.manual_seed(3)
    ours = StandardConv2d(4, 6, 3)
    lin = StandardLinear(5, 7)
    torch.manual_seed(3)
    ref = torch.nn.Conv2d(4, 6, 3)
    ref_lin = torch.nn.Linear(5, 7)
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)
    assert torch.equal(lin.weight, ref_lin.weight) and torch.equal(lin.bias, ref_lin.bias)


def test_orthogonal_and_dirac_inits():
    conv = StandardConv2d(6, 4, 3, init="orthogonal")
    rows = conv.weight.reshape(4, -1)
    torch.testing.assert_close(rows @ rows.T, torch.eye(4), atol=1e-5, rtol=0)
    assert not conv.bias.any()
    square = StandardConv2d(5, 5, 3, init="dirac")
    x = torch.randn(2, 5, 7, 7)
    torch.testing.assert_close(square(x), x)
    lin = StandardLinear(8, 3, init="orthogonal")
    torch.testing.assert_close(lin.weight @ lin.weight.T, torch.eye(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("make, message", [
    (lambda: StandardConv2d(3, 4, 3, init="dirac"), "init='dirac' needs a square convolution"),
    (lambda: StandardLinear(3, 3, init="dirac"), "init='dirac' needs a square convolution"),
    (lambda: StandardConv2d(3, 3, 3, init="xavier"), "init must be one of default, orthogonal, dirac"),
])
def test_bad_init_is_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()
