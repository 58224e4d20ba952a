"""torch.func transforms (jacrev, vmap, jvp) work on every model of the layer table."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.func import jacrev, jvp, vmap

from lipzoo.layers import LAYERS, MaxMin
from lipzoo.models.convnet import ConvNet, ConvNetConfig


@pytest.mark.parametrize("layer_id", list(LAYERS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_jacrev_vmap_and_jvp_agree_with_autograd(layer_id, mode):
    torch.manual_seed(0)
    # the ConvNet of every layer at a quarter of the XS width: the same modules, a cheaper weight
    cfg = ConvNetConfig.from_name("convnet", "xs", layer_id, num_classes=4, in_chans=1)
    model = ConvNet(replace(cfg, base_width=cfg.base_width // 4)).train(mode == "train")
    x = torch.rand(2, 1, 32, 32)
    single = lambda xi: model(xi[None])[0]  # noqa: E731
    ref = torch.autograd.functional.jacobian(single, x[1])  # (4, 1, 32, 32)
    torch.testing.assert_close(jacrev(single)(x[1]), ref, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(vmap(single)(x), model(x), rtol=1e-5, atol=1e-6)
    v = torch.randn_like(x[1])
    _, tangent = jvp(single, (x[1],), (v,))
    torch.testing.assert_close(tangent, (ref * v).sum(dim=(1, 2, 3)), rtol=1e-4, atol=1e-5)


def test_maxmin_jvp_and_vmap_follow_the_permutation():
    a = torch.tensor([[3.0, 1.0, -2.0, 5.0]])
    t = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    out, tangent = jvp(MaxMin(), (a,), (t,))
    assert out.tolist() == [[3.0, 1.0, 5.0, -2.0]]
    assert tangent.tolist() == [[10.0, 20.0, 40.0, 30.0]]  # the tangent is permuted like the values
    j = vmap(jacrev(lambda r: MaxMin()(r[None])[0]))(a)
    assert torch.equal(j[0], torch.eye(4)[[0, 1, 3, 2]])
