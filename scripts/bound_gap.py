#!/usr/bin/env python
"""How much further a sound CPL or SOC layer could go than its norm bound lets it.

Both layers divide by a guaranteed bound ``B`` on the norm of a kernel ``K``. CPL,
``y = x - r K^T ReLU(K x + b)``, is 1-Lipschitz when ``r <= 2 / ||K||^2`` and takes ``r = 2 / B^2``;
SOC applies ``exp(L_n)`` with ``L_n = L / B`` (``L`` its skew filter) and needs ``||L_n|| <= 1``.
The sound default takes ``B = gram_bound(K)``, valid for every input size. For the size the layer
actually sees (n x n, after SOC's stride fold), the circular norm of ``K`` on the (n + k - 1) grid is
also a guaranteed bound (the zero-padded operator is a compression of it), and the exact dense norm
is computed where the map is small. This script prints, per CPL or SOC convolution of a model (a run
folder or a bundled model name), the three norms and the gap: how many times larger than the
layer's actual step ``r`` the step could soundly be at that size (CPL: ``2 / (r circular^2)``,
``(B / circular)^2`` for the default step), or how many times larger ``L_n`` could soundly be (SOC:
``1 / ||L_n||`` on that grid, ``B / circular`` for the default); about 1 for a layer built with
``step_bound="spectral"`` (CPL) or ``skew_bound="spectral"`` (SOC), which take that bound.
Numbers come from the model's weights; nothing is typed in.

    python scripts/bound_gap.py convnet_xs_cpl.fashion_mnist [--json]
    python scripts/bound_gap.py convnet_xs_soc.fashion_mnist
    python scripts/bound_gap.py ~/lipzoo-runs/zoo/convnet_xs_cpl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _input_sizes(model: torch.nn.Module, layers: dict[str, torch.nn.Module],
                 input_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """The spatial size of each layer's input in one eval forward of ``model``."""
    sizes: dict[str, tuple[int, int]] = {}

    def hook(name: str):
        def record(_mod, inp, _out) -> None:
            sizes.setdefault(name, tuple(inp[0].shape[-2:]))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return sizes


def _gap_row(name: str, layer: torch.nn.Module, size: tuple[int, int]) -> dict:
    """One layer's kernel ``K`` (CPL) or skew filter ``L`` (SOC) on its map, its three norms and its gap."""
    from lipzoo.layers._linalg import gram_bound
    from lipzoo.layers._norms import DENSE_EXACT_MAX, circular_conv_norm, zero_padded_conv_norm
    from lipzoo.layers.cpl import CPLConv2d
    from lipzoo.layers.soc import skew_filter

    h, w = size
    with torch.no_grad():
        if isinstance(layer, CPLConv2d):
            k = layer.kernel.detach().double()
            family, option = "cpl", layer.step_bound
        else:
            k = skew_filter(layer.random_conv_filter.detach()).double()
            family, option = "soc", layer.skew_bound
            h, w = h // layer.stride, w // layer.stride
        kh, kw = k.shape[-2:]
        circ = circular_conv_norm(k, h + kh - 1, w + kw - 1)
        small = max(k.shape[:2]) * h * w <= DENSE_EXACT_MAX
        row = {"layer": name, "family": family, "kernel": list(k.shape), "input": [h, w], "bound": option,
               "gram_bound": float(gram_bound(k)), "circular_bound": circ,
               "exact": zero_padded_conv_norm(k, h, w) if small else None}
        if family == "cpl":
            row["step"] = step = float(layer._step_size((k.shape[1], h, w)))
            row["gap"] = 2.0 / (step * circ**2)
            row["default_gap"] = (row["gram_bound"] / circ) ** 2
        else:
            l_n = layer.effective_weight((h, w) if layer.size_dependent else None).detach().double()
            row["gap"] = 1.0 / circular_conv_norm(l_n, h + kh - 1, w + kw - 1)
            row["default_gap"] = row["gram_bound"] / circ
    return row


def bound_gaps(model: torch.nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """One row per CPL or SOC convolution of ``model``: its input size, the three norms of its kernel, its gap."""
    from lipzoo.layers.cpl import CPLConv2d
    from lipzoo.layers.soc import SOCConv2d

    layers = {n: m for n, m in model.named_modules() if isinstance(m, CPLConv2d)
              or (isinstance(m, SOCConv2d) and not m.paper_compatible)}
    sizes = _input_sizes(model, layers, input_shape)
    return [_gap_row(name, layer, sizes[name]) for name, layer in layers.items()]


def load(model: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """A run folder (its trained weights) or a bundled model name, and its input shape (C, H, W)."""
    import lipzoo
    from lipzoo.data import DATASETS
    from lipzoo.registry import PRETRAINED

    if Path(model).is_dir():
        from lipzoo.zoo.evaluation import load_run_model

        net, recipe = load_run_model(model)
        dataset = recipe.dataset
    else:
        net, dataset = lipzoo.create_model(model, pretrained=True), PRETRAINED[model].dataset
    info = DATASETS[dataset]
    return net, (info.in_chans, info.input_size, info.input_size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a run folder (recipe.yaml + model.safetensors) or a bundled model name")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    net, shape = load(args.model)
    rows = bound_gaps(net, shape)
    if not rows:
        p.error(f"{args.model} has no CPL or SOC convolution; expected a CPL or SOC model "
                "(e.g. convnet_xs_cpl.fashion_mnist)")
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| layer | family | kernel | input | bound | gram bound | circular bound | exact | could be x |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        exact = f"{r['exact']:.4f}" if r["exact"] is not None else "-"
        print(f"| {r['layer']} | {r['family']} | {'x'.join(map(str, r['kernel']))} | {r['input'][0]}x{r['input'][1]} | "
              f"{r['bound']} | {r['gram_bound']:.4f} | {r['circular_bound']:.4f} | {exact} | {r['gap']:.2f} |")
    def summary(values: list[float]) -> str:
        geo = math.exp(sum(map(math.log, values)) / len(values))
        return f"min {min(values):.2f}, geometric mean {geo:.2f}, max {max(values):.2f}"

    print(f"\ngap (CPL: step, SOC: ||L_n||): {summary([r['gap'] for r in rows])}")
    if any(r["bound"] != "gram" for r in rows):
        print(f"the default (gram) bound on these kernels would leave a gap of: "
              f"{summary([r['default_gap'] for r in rows])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
