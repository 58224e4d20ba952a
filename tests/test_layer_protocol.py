"""The protocol every row of the layer table implements, on its conv and dense class (small shapes).

- ``norm_bound(shape)`` (what the audit multiplies up) is at least the exact sigma_max of the layer
  on that shape: from its impulse responses (affine layers) or its Jacobians at random points
  (the non-linear residual layers);
- ``plain(shape, circular)`` (what ``to_plain`` puts in its place) computes the layer's function,
  in every circular form, with plain torch modules and no gradient;
- a state_dict round trip into a fresh instance gives the same output and the same bound;
- ``torch.func.jacrev`` of the layer matches ``torch.autograd.functional.jacobian`` (eval and train).
"""

from __future__ import annotations

import pytest
import torch

from lipzoo.export import CIRCULAR_FORMS
from lipzoo.layers import LAYERS, LipschitzModule

from lipschitz import singular_values

C, N = 4, 6  # conv: 4 channels at 6x6
FEATURES = 6  # dense
CASES = [(lid, form) for lid, spec in LAYERS.items() for form in ("conv", "linear")
         if form == "conv" or spec.linear is not None]


def build(layer_id: str, form: str, seed: int = 0) -> tuple[LipschitzModule, tuple[int, ...]]:
    torch.manual_seed(seed)
    spec = LAYERS[layer_id]
    if form == "conv":
        return spec.conv(C, C, 3, input_size=(N, N)).eval(), (C, N, N)
    return spec.linear(FEATURES, FEATURES).eval(), (FEATURES,)


def inputs(shape: tuple[int, ...], batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("layer_id,form", CASES)
def test_norm_bound_dominates_the_exact_norm(layer_id, form):
    layer, shape = build(layer_id, form)
    with torch.no_grad():
        upper, method, gram, detail = layer.norm_bound(shape)
    assert isinstance(upper, float) and isinstance(method, str) and method and isinstance(detail, dict)
    assert gram is None or isinstance(gram, float)
    exact = float(singular_values(layer, shape, LAYERS[layer_id].residual, points=2).max())
    assert upper >= exact * (1 - 1e-5), (upper, exact, method)  # float32 round-off of the responses


@pytest.mark.parametrize("layer_id,form", CASES)
def test_plain_form_computes_the_layer(layer_id, form):
    layer, shape = build(layer_id, form)
    x = inputs(shape)
    with torch.no_grad():
        ref = layer(x)
        for circular in CIRCULAR_FORMS:
            plain = layer.plain(shape, circular)
            assert not any(isinstance(m, LipschitzModule) for m in plain.modules())
            assert not any(p.requires_grad for p in plain.parameters())
            torch.testing.assert_close(plain(x), ref, rtol=1e-5, atol=1e-5, msg=circular)
        if not layer.size_dependent:  # to_plain passes no shape when no layer of the model needs one
            torch.testing.assert_close(layer.plain(None, "auto")(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer_id,form", CASES)
def test_state_dict_round_trip(layer_id, form):
    layer, shape = build(layer_id, form, seed=0)
    fresh, _ = build(layer_id, form, seed=1)
    fresh.load_state_dict(layer.state_dict())  # strict
    x = inputs(shape)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))
        assert fresh.norm_bound(shape)[0] == layer.norm_bound(shape)[0]


@pytest.mark.parametrize("layer_id,form", CASES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_jacrev_matches_autograd(layer_id, form, mode):
    layer, shape = build(layer_id, form)
    layer.train(mode == "train")
    x = inputs(shape, batch=1)[0]

    def single(xi: torch.Tensor) -> torch.Tensor:
        return layer(xi[None])[0]

    ref = torch.autograd.functional.jacobian(single, x)
    torch.testing.assert_close(torch.func.jacrev(single)(x), ref, rtol=1e-4, atol=1e-6)
