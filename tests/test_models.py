"""The ConvNet family: registry, parameter counts of the paper, whole-model 1-Lipschitzness, errors."""

from __future__ import annotations

import pytest
import torch

import lipzoo
from lipzoo.layers import LAYERS

from lipschitz import push_norm_up

# Trainable parameters of the paper's models, 3x32x32 input, 10 classes (spec section 2.2).
PAPER_COUNTS = {
    "xs": {"standard": 1_572_288, "aol": 1_572_288, "cpl": 1_572_288, "lot": 1_572_288, "soc": 1_572_288,
           "sll": 1_575_296, "cayley": 1_572_315, "bcop": 1_137_088, "sandwich": 3_144_603},
    "s": {"standard": 6_283_136, "aol": 6_283_136, "cpl": 6_283_136, "lot": 6_283_136, "soc": 6_283_136,
          "sll": 6_289_152, "cayley": 6_283_163, "bcop": 4_542_336, "sandwich": 12_566_299},
}
# TinyImageNet models (200 classes, 64x64) for a few layers.
PAPER_COUNTS_TINY = {"standard": 1_575_008, "sll": 1_578_048, "bcop": 1_138_528}
# Layers newer than the paper: lipzoo's own counts, pinned (and derived from the layer formulas below).
# BRO: V is (c, c // 2, k, k) + bias c per layer; AOC: 2k matrices (c, c // 2) + bias c, i.e. k c^2 + c.
NEW_COUNTS = {
    "xs": {"bro": 787_648, "aoc": 919_488},
    "s": {"bro": 3_144_576, "aoc": 3_671_936},
}
NEW_COUNTS_TINY = {"bro": 789_024, "aoc": 920_288}
COUNTS = {size: {**PAPER_COUNTS[size], **NEW_COUNTS[size]} for size in PAPER_COUNTS}
LAYER_PARAMS = {  # trainable parameters of one c -> c layer with a k x k kernel
    "bro": lambda c, k: c * (c // 2) * k * k + c,
    "aoc": lambda c, k: 2 * k * c * (c // 2) + c,
}


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_registry_lists_every_architecture():
    assert len(lipzoo.list_models("convnet_*")) == 4 * len(LAYERS)
    assert len(lipzoo.list_models("tconvnet_*")) == 4 * len(LAYERS)
    assert {"convnet_l_bro", "tconvnet_m_aoc"} <= set(lipzoo.list_models())
    assert set(lipzoo.list_models("convnet_xs_*")) == {f"convnet_xs_{lid}" for lid in LAYERS}
    assert lipzoo.list_models("*_s_sll") == ["convnet_s_sll", "tconvnet_s_sll"]


@pytest.mark.parametrize("size", ["xs", "s"])
@pytest.mark.parametrize("layer_id", list(LAYERS))
def test_parameter_counts_match_the_paper(size, layer_id):
    model = lipzoo.create_model(f"convnet_{size}_{layer_id}")
    assert trainable(model) == COUNTS[size][layer_id]


@pytest.mark.parametrize("family,size,classes", [("convnet", "xs", 10), ("convnet", "s", 10), ("tconvnet", "xs", 200)])
@pytest.mark.parametrize("layer_id", list(LAYER_PARAMS))
def test_new_layer_counts_follow_their_formula(family, size, classes, layer_id):
    """The pinned counts of BRO / AOC equal the sum of the per-layer formula over the architecture."""
    model = lipzoo.create_model(f"{family}_{size}_{layer_id}", num_classes=classes)
    cfg, per_layer = model.config, LAYER_PARAMS[layer_id]
    w, b = cfg.base_width, cfg.num_blocks
    want = per_layer(w, 1)  # FirstConv
    for i in range(b):
        want += cfg.layers_per_block * per_layer(w * 2**i, cfg.kernel_size if i < b - 1 else 1)
    want += per_layer(w * 2**b, 1)  # 1x1 conv head
    assert trainable(model) == want
    pinned = NEW_COUNTS_TINY[layer_id] if family == "tconvnet" else NEW_COUNTS[size][layer_id]
    assert want == pinned


@pytest.mark.parametrize("layer_id", list(PAPER_COUNTS_TINY))
def test_tiny_imagenet_counts(layer_id):
    model = lipzoo.create_model(f"tconvnet_xs_{layer_id}", num_classes=200)
    assert trainable(model) == PAPER_COUNTS_TINY[layer_id]


def test_counts_do_not_depend_on_channels_or_classes():
    a = lipzoo.create_model("convnet_xs_aol", in_chans=1, num_classes=10)
    b = lipzoo.create_model("convnet_xs_aol", in_chans=3, num_classes=100)
    assert trainable(a) == trainable(b)


@pytest.mark.parametrize("name,in_chans,size", [("convnet_xs_aol", 1, 32), ("convnet_xs_aol", 3, 64), ("tconvnet_xs_aol", 3, 64)])
def test_output_shape(name, in_chans, size):
    model = lipzoo.create_model(name, in_chans=in_chans, num_classes=7)
    assert model(torch.rand(2, in_chans, size, size)).shape == (2, 7)


def _lipschitz_ratios(model, in_chans=3, n=8, seed=0):
    """Difference quotients at two scales and gradient norms ||J(x)^T v|| for unit v, from one
    forward and one backward pass (a parametrised layer pays for its weight once per call)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, in_chans, 32, 32, generator=g)
    ys = [x + scale * torch.randn(x.shape, generator=g) for scale in (1e-2, 1.0)]
    v = torch.randn(n, model.num_classes, generator=g)
    v = v / v.norm(dim=1, keepdim=True)
    xg = x.clone().requires_grad_(True)
    out = model(torch.cat([xg, *ys]))
    fx, fys = out[:n], out[n:].detach().split(n)
    ratios = [(fx.detach() - fy).double().norm(dim=1) / (x - y).double().flatten(1).norm(dim=1)
              for y, fy in zip(ys, fys)]
    (fx * v).sum().backward()
    grad = xg.grad.double().flatten(1).norm(dim=1)
    return torch.cat(ratios), grad


@pytest.mark.parametrize("layer_id", [lid for lid in LAYERS if LAYERS[lid].lipschitz])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_whole_model_is_one_lipschitz(layer_id, mode):
    torch.manual_seed(0)
    model = lipzoo.create_model(f"convnet_xs_{layer_id}")
    push_norm_up(model, (3, 32, 32), steps=1, batch=2)  # leave the initialisation
    model.train(mode == "train")
    ratios, grad = _lipschitz_ratios(model)
    assert ratios.max() <= 1 + 1e-4, f"{layer_id}: ||f(x)-f(y)||/||x-y|| = {ratios.max():.6f}"
    assert grad.max() <= 1 + 1e-4, f"{layer_id}: gradient norm {grad.max():.6f}"


def test_standard_model_fails_the_whole_model_check():
    """The unconstrained baseline, after steps that push its norm up, must be caught."""
    torch.manual_seed(0)
    model = lipzoo.create_model("convnet_xs_standard")
    with torch.no_grad():  # a legitimate unconstrained network with larger weights
        for p in model.parameters():
            p.mul_(3.0)
    model.eval()
    ratios, grad = _lipschitz_ratios(model)
    assert max(ratios.max(), grad.max()) > 1 + 1e-4


def test_bad_input_gets_clear_errors():
    model = lipzoo.create_model("convnet_xs_aol", in_chans=1)
    with pytest.raises(lipzoo.InputError, match="expects 1 input channels, got 3"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(lipzoo.InputError, match="multiples of 32"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(lipzoo.InputError, match="multiples of 32"):
        model(torch.rand(2, 1, 40, 40))
    with pytest.raises(lipzoo.InputError, match="floating-point"):
        model(torch.randint(0, 255, (2, 1, 32, 32), dtype=torch.uint8))
    with pytest.raises(lipzoo.InputError, match="unsqueeze"):
        model(torch.rand(1, 32, 32))
    x = torch.rand(2, 1, 32, 32)
    x[0, 0, 3, 3] = float("inf")
    with pytest.raises(lipzoo.InputError, match="NaN or Inf"):
        model(x)


def test_unknown_names_list_close_matches():
    with pytest.raises(lipzoo.UnknownModelError, match="convnet_xs_aol"):
        lipzoo.create_model("convnet_xs_aoll")
    with pytest.raises(lipzoo.UnknownModelError, match="convnet_s_sll"):
        lipzoo.create_model("convnet_s_sl")
    with pytest.raises(KeyError, match="unknown layer"):
        lipzoo.get_layer("soc2")


def test_invalid_configuration_is_rejected():
    with pytest.raises(ValueError, match="in_chans"):
        lipzoo.create_model("convnet_xs_aol", in_chans=17)
    with pytest.raises(ValueError, match="num_classes"):
        lipzoo.create_model("convnet_xs_aol", num_classes=1000)
