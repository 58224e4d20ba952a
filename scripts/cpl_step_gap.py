#!/usr/bin/env python
"""How much smaller a sound CPL layer's step is than a sound bound for its input size would allow.

A CPL layer ``y = x - r K^T ReLU(K x + b)`` is 1-Lipschitz when ``r <= 2 / ||K||^2``. lipzoo's sound
default takes ``r = 2 / B^2`` with ``B = gram_bound(K)``, valid for every input size. For the size
the layer actually sees (n x n), the circular norm of ``K`` on the (n + k - 1) grid is also a
guaranteed bound (the zero-padded operator is a compression of it), and the exact dense norm is
computed where the map is small. This script prints, per CPL convolution of a model (a run folder
or a bundled model name), the three and ``2 / (r circular^2)``: how many times larger than the
layer's actual step ``r`` the step could soundly be at that size (``(B / circular)^2`` for the
default step; about 1 for a layer built with ``step_bound="spectral"``, which takes that bound).
Numbers come from the model's weights; nothing is typed in.

    python scripts/cpl_step_gap.py convnet_xs_cpl.fashion_mnist [--json]
    python scripts/cpl_step_gap.py ~/lipzoo-runs/zoo/convnet_xs_cpl
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


def step_gaps(model: torch.nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """One row per CPL convolution of ``model``: its input size and the three norms of its kernel."""
    from lipzoo.layers._linalg import gram_bound
    from lipzoo.layers._norms import DENSE_EXACT_MAX, circular_conv_norm, zero_padded_conv_norm
    from lipzoo.layers.cpl import CPLConv2d

    sizes: dict[str, tuple[int, int]] = {}

    def hook(name: str):
        def record(_mod, inp, _out) -> None:
            sizes.setdefault(name, tuple(inp[0].shape[-2:]))
        return record

    layers = {n: m for n, m in model.named_modules() if isinstance(m, CPLConv2d)}
    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, layer in layers.items():
        k = layer.kernel.detach().double()
        (h, w), (kh, kw) = sizes[name], k.shape[-2:]
        gram = float(gram_bound(k))
        circ = circular_conv_norm(k, h + kh - 1, w + kw - 1)
        small = max(k.shape[:2]) * h * w <= DENSE_EXACT_MAX
        exact = zero_padded_conv_norm(k, h, w) if small else None
        with torch.no_grad():
            step = float(layer._step_size((k.shape[1], h, w)))
        rows.append({"layer": name, "kernel": list(k.shape), "input": [h, w], "step_bound": layer.step_bound,
                     "gram_bound": gram, "circular_bound": circ, "exact": exact, "step": step,
                     "step_gap": 2.0 / (step * circ**2)})
    return rows


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
    rows = step_gaps(net, shape)
    if not rows:
        p.error(f"{args.model} has no CPL convolution; expected a CPL model (e.g. convnet_xs_cpl.fashion_mnist)")
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| layer | kernel | input | step bound | gram bound | circular bound | exact | step could be x |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        exact = f"{r['exact']:.4f}" if r["exact"] is not None else "-"
        print(f"| {r['layer']} | {'x'.join(map(str, r['kernel']))} | {r['input'][0]}x{r['input'][1]} | "
              f"{r['step_bound']} | {r['gram_bound']:.4f} | {r['circular_bound']:.4f} | {exact} | {r['step_gap']:.2f} |")
    def summary(values: list[float]) -> str:
        geo = math.exp(sum(map(math.log, values)) / len(values))
        return f"min {min(values):.2f}, geometric mean {geo:.2f}, max {max(values):.2f}"

    print(f"\nstep gap: {summary([r['step_gap'] for r in rows])}")
    if any(r["step_bound"] != "gram" for r in rows):
        print(f"the default (gram) step on these kernels would be smaller by: "
              f"{summary([(r['gram_bound'] / r['circular_bound']) ** 2 for r in rows])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
