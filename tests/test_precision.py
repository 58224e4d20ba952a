"""Mixed precision: the ``precision`` recipe field, bf16 training, and weights that never run in bf16.

Under a bf16 autocast only the convolutions and matrix products applied to activations may run
in bf16: every layer's weight parametrisation (``effective_weight``) runs with autocast
disabled, so the weight is float32 and bit-equal to the one computed outside the autocast.
"""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lipzoo
from lipzoo.layers import LAYERS, get_layer
from lipzoo.layers.soc import VECTOR_NAMES, SOCConv2d
from lipzoo.zoo.training import Recipe, RecipeError, build_model, recipe_changes, train

from test_training import synthetic
from test_training import tiny_recipe as base_recipe

C, H, W = 4, 8, 8
FEATURES = 12


def tiny_recipe(**kw) -> Recipe:
    """The trainer tests' tiny recipe, validating on 16 images."""
    return base_recipe(**({"val_limit": 16} | kw))


# --- the recipe field ---------------------------------------------------------------------------
def test_precision_field_default_and_validation():
    assert tiny_recipe().precision == "fp32"
    tiny_recipe(precision="bf16").validate()
    with pytest.raises(RecipeError, match=r"precision must be 'fp32' or 'bf16', got 'fp16'"):
        tiny_recipe(precision="fp16").validate()
    with pytest.raises(RecipeError, match=r"precision must be a string"):
        tiny_recipe(precision=16).validate()


def test_recipe_changes_treats_a_missing_field_as_its_default():
    new = tiny_recipe().to_dict()
    old = {k: v for k, v in new.items() if k not in ("precision", "eval_eps", "layer_options")}
    assert recipe_changes(old, new) == []
    assert recipe_changes(old, tiny_recipe(precision="bf16").to_dict()) == ["precision"]
    assert recipe_changes(new | {"precision": "bf16"}, new) == ["precision"]
    assert recipe_changes(new, new | {"lr": 0.1}) == ["lr"]


def test_a_run_started_before_the_precision_field_still_resumes(tmp_path):
    data, r = synthetic(), tiny_recipe(epochs=2)
    run = tmp_path / "run"
    train(r, run, data=data, progress=False, stop_after_epochs=1)
    stored = yaml.safe_load((run / "recipe.yaml").read_text())
    del stored["precision"]  # as written by a lipzoo without the field
    (run / "recipe.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    assert train(r, run, data=data, progress=False, resume=True)["complete"]
    # a changed precision is still refused
    run2 = tmp_path / "run2"
    train(r, run2, data=data, progress=False, stop_after_epochs=1)
    with pytest.raises(RecipeError, match="precision"):
        train(tiny_recipe(epochs=2, precision="bf16"), run2, data=data, progress=False, resume=True)


# --- layer weights under autocast -----------------------------------------------------------------
def _cases():
    for lid, spec in LAYERS.items():
        for form, cls in (("conv", spec.conv), ("linear", spec.linear)):
            if cls is None:
                continue
            yield lid, form, False
            if "paper_compatible" in inspect.signature(cls).parameters:
                yield lid, form, True


CASES = list(_cases())


def _build(layer_id: str, form: str, paper: bool, seed: int = 0):
    torch.manual_seed(seed)
    kw = {"paper_compatible": True} if paper else {}
    if form == "conv":
        return get_layer(layer_id).conv(C, C, 3, input_size=(H, W), **kw), (H, W)
    return get_layer(layer_id).linear(FEATURES, FEATURES, **kw), None


def _tensors(w) -> list[torch.Tensor]:
    return [w] if isinstance(w, torch.Tensor) else [t for t in w if isinstance(t, torch.Tensor)]


def _assert_same(inside, outside, what: str) -> None:
    a, b = _tensors(inside), _tensors(outside)
    assert len(a) == len(b) > 0, what
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and x.dtype in (torch.float32, torch.complex64), f"{what}[{i}]: {x.dtype}"
        assert torch.equal(x, y), f"{what}[{i}]: differs under autocast (max {(x - y).abs().max():.3g})"


@pytest.mark.parametrize("layer_id,form,paper", CASES, ids=[f"{c[0]}-{c[1]}{'-paper' if c[2] else ''}" for c in CASES])
def test_weight_under_bf16_autocast_is_float32_and_equal(layer_id, form, paper):
    module, size = _build(layer_id, form, paper)
    module.train()  # computed on every call, with gradients
    outside = module.effective_weight(size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = module.effective_weight(size)
    _assert_same(inside, outside, f"{layer_id} {form} train")
    module.eval()  # without gradients: computed once, then cached
    with torch.no_grad():
        module.clear_cache()
        outside = module.effective_weight(size)
        module.clear_cache()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = module.effective_weight(size)  # computed under the autocast, and cached
        _assert_same(inside, outside, f"{layer_id} {form} eval")
        _assert_same(module.effective_weight(size), outside, f"{layer_id} {form} eval, cached under autocast")


def test_soc_paper_power_iteration_never_runs_in_bf16():
    torch.manual_seed(0)
    a = SOCConv2d(C, C, 3, paper_compatible=True, update_freq=1).train()
    b = copy.deepcopy(a)
    x = torch.rand(2, C, H, W)
    a(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b(x)
    for name in VECTOR_NAMES:
        va, vb = getattr(a, name), getattr(b, name)
        assert vb.dtype == torch.float32 and torch.equal(va, vb), name


@pytest.mark.parametrize("layer_id", list(LAYERS))
def test_a_bf16_training_step_of_every_convnet(layer_id):
    torch.manual_seed(0)
    model = lipzoo.create_model(f"convnet_xs_{layer_id}").train()
    x = torch.rand(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model(x)
    z.float().sum().backward()
    assert torch.isfinite(z.float()).all()
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        assert p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()), name


# --- a bf16 training run ----------------------------------------------------------------------------
def test_bf16_training_run_is_finite_float32_and_one_lipschitz(tmp_path):
    data = synthetic(n=32, n_val=16)  # one batch per epoch: a bf16 step is slow on CPUs without bf16 units
    rec = train(tiny_recipe(precision="bf16"), tmp_path / "bf16", data=data, progress=False)
    ref = train(tiny_recipe(), tmp_path / "fp32", data=data, progress=False)
    assert rec["complete"] and yaml.safe_load((tmp_path / "bf16" / "recipe.yaml").read_text())["precision"] == "bf16"
    final = rec["final"]
    for k in ("train_loss", "val_loss", "val_accuracy", "train_accuracy"):
        assert torch.isfinite(torch.tensor(final[k])), (k, final[k])
    losses = [json.loads(ln)["train_loss"] for ln in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses[-1] < losses[0], losses  # it trains
    sd = load_file(tmp_path / "bf16" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    fp32 = load_file(tmp_path / "fp32" / "model.safetensors")
    assert any(not torch.equal(sd[k], fp32[k]) for k in sd)  # the bf16 forward was really used
    model = build_model(tiny_recipe(precision="bf16"))
    model.load_state_dict(sd)
    assert lipzoo.audit(model, lower=False).upper <= 1 + 1e-4
    assert rec["lipschitz_upper"] <= 1 + 1e-4 and ref["complete"]
