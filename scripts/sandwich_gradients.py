#!/usr/bin/env python
"""Why the Sandwich ConvNet-XS did not train: signal and gradient norms through depth at init.

For each configuration (AOL, Sandwich with the paper's initialisation = ``paper_compatible=True``,
Sandwich with lipzoo's default initialisation), the model is built exactly as the trainer builds
it for Fashion-MNIST (``lipzoo.zoo.training.build_model``: seed, classes, channels, centring) and one
batch of real training images goes through it. Per Lipschitz layer (in depth order) it records:

- ``act_norm``: mean per-image l2 norm of the layer's output (the forward signal);
- ``signal_grad_norm``: mean per-image l2 norm of d loss / d output (the backward signal);
- ``local_gain``: ||J v|| / ||v|| of the layer at its actual input for a random direction v
  (a float64 finite difference; 1 = norm preserving, << 1 = contractive);
- ``param_grad_norm``: l2 norm of d loss / d (all parameters of the layer);

for the paper's loss (``lipzoo.zoo.training.offset_cross_entropy``, default offset/temperature).
Then a short real training smoke per Sandwich initialisation: ``--steps`` SGD steps (batch
``--batch-size``, momentum 0.9) on the first ``--train-images`` training images, accuracy on
``--eval-images`` test images before and after.

    nice -n 10 python scripts/sandwich_gradients.py [--out results/] [--steps 40]

Writes ``results/sandwich-gradients-<cpu model>.json``; nothing is printed that is not in it.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

import lipzoo
from lipzoo._provenance import cpu_model
from lipzoo.data import dataset_info, load_tensors
from lipzoo.layers import LipschitzModule
from lipzoo.zoo.training import offset_cross_entropy

CONFIGS = {
    "aol": ("convnet_xs_aol", {}),
    "sandwich_paper_init": ("convnet_xs_sandwich", {"paper_compatible": True}),
    "sandwich_default": ("convnet_xs_sandwich", {}),
}


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def build(arch: str, kwargs: dict, seed: int) -> torch.nn.Module:
    """As lipzoo.zoo.training.build_model does for fashion_mnist."""
    info = dataset_info("fashion_mnist")
    torch.manual_seed(seed)
    return lipzoo.create_model(arch, num_classes=info.num_classes, in_chans=info.in_chans,
                               input_mean=info.mean, **kwargs)


def per_image_norm(t: torch.Tensor) -> float:
    return float(t.detach().flatten(1).norm(dim=1).mean())


def depth_profile(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    model.train()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LipschitzModule)]
    rec: dict[str, dict] = {n: {} for n, _ in layers}
    handles = []
    gen = torch.Generator().manual_seed(1)

    def hook(name):
        def fwd(mod, inp, out):
            rec[name]["act_norm"] = per_image_norm(out)
            rec[name]["in_norm"] = per_image_norm(inp[0])
            out.register_hook(lambda g: rec[name].__setitem__("signal_grad_norm", per_image_norm(g)))
            # finite difference in float64 on a copy (the custom autograd Functions have no jvp)
            with torch.no_grad():
                m64 = copy.deepcopy(mod).double()
                xin = inp[0].detach().double()
                v = torch.randn(xin.shape, generator=gen, dtype=torch.float64)
                v = v * (1e-6 * xin.flatten(1).norm(dim=1).clamp_min(1e-3) / v.flatten(1).norm(dim=1)).view(-1, *[1] * (v.ndim - 1))
                jv = m64.forward(xin + v) - m64.forward(xin)
            rec[name]["local_gain"] = float((jv.flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1)).mean())
        return fwd

    for n, m in layers:
        handles.append(m.register_forward_hook(hook(n)))
    model.zero_grad()
    logits = model(x)
    loss = offset_cross_entropy(logits, y)
    loss.backward()
    for h in handles:
        h.remove()
    for n, m in layers:
        grads = [p.grad.flatten() for p in m.parameters(recurse=False) if p.grad is not None]
        rec[n]["param_grad_norm"] = float(torch.cat(grads).norm()) if grads else 0.0
        rec[n]["weight_grad_norm"] = float(m.weight.grad.norm()) if getattr(m, "weight", None) is not None and m.weight.grad is not None else None
    names = [n for n, _ in layers]
    first, last = rec[names[0]], rec[names[-1]]
    return {
        "loss": float(loss.detach()),
        "input_norm": per_image_norm(x),
        "logit_norm": per_image_norm(logits),
        "first_layer": names[0],
        "last_layer": names[-1],
        "first_over_last_param_grad": first["param_grad_norm"] / last["param_grad_norm"],
        "layers": [{"name": n, **rec[n]} for n in names],
    }


def accuracy(model, x, y, batch=256) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def smoke(arch, kwargs, seed, xtr, ytr, xte, yte, steps, batch, lr) -> dict:
    model = build(arch, kwargs, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    before = accuracy(model, xte, yte)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (batch,), generator=gen)
        model.train()
        loss = offset_cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {"lr": lr, "steps": steps, "batch_size": batch, "test_accuracy_before": before,
            "test_accuracy_after": accuracy(model, xte, yte), "first_losses": losses[:5],
            "last_losses": losses[-5:], "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile-batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--train-images", type=int, default=1536)
    ap.add_argument("--eval-images", type=int, default=500)
    ap.add_argument("--smoke", default="sandwich_paper_init,sandwich_default", help="configs to train ('' for none)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    xtr, ytr = load_tensors("fashion_mnist", "train", limit=args.train_images)
    xte, yte = load_tensors("fashion_mnist", "test", limit=args.eval_images)
    xb, yb = xtr[: args.profile_batch], ytr[: args.profile_batch]
    result: dict = {
        "script": "scripts/sandwich_gradients.py",
        "args": vars(args),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "profile": {},
        "smoke": {},
    }
    out = Path(args.out) / f"sandwich-gradients-{slug(result['cpu'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every stage, so a stopped run keeps what it measured
        out.write_text(json.dumps(result, indent=1) + "\n")

    for name in args.configs.split(","):
        arch, kw = CONFIGS[name]
        result["profile"][name] = depth_profile(build(arch, kw, args.seed), xb, yb)
        save()
    for name in filter(None, args.smoke.split(",")):
        arch, kw = CONFIGS[name]
        result["smoke"][name] = smoke(arch, kw, args.seed, xtr, ytr, xte, yte, args.steps, args.batch_size, args.lr)
        save()
    print(out)


if __name__ == "__main__":
    main()
