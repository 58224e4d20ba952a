"""Throughput of every layer x size, side by side with the ``standard`` baseline in the same run.

Training throughput: forward + backward + SGD step (the paper's timing: ``out.sum().backward()``).
Inference throughput: eval mode, ``torch.no_grad()``, with the eval weight caches warm.
Warm-up steps are excluded; each figure is the median over ``repeats`` timed steps; on CUDA the
device is synchronised around every timed step.
"""

from __future__ import annotations

import fnmatch
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .layers import LAYERS
from .registry import create_model

__all__ = ["BenchResult", "bench_model", "bench_layers", "hardware_fingerprint"]


@dataclass
class BenchResult:
    model: str
    layer: str
    size: str
    params: int
    batch_size: int
    train_images_per_s: float
    infer_images_per_s: float
    train_ratio: float | None = None  # relative to standard of the same size (>1: faster)
    infer_ratio: float | None = None
    device: str = "cpu"
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def hardware_fingerprint(device: str = "cpu") -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _timed(fn, device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(
    name: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    in_chans: int = 3,
) -> BenchResult:
    """Training and inference images/s of one architecture on random inputs."""
    model = create_model(name, in_chans=in_chans).to(device)
    arch = name.split("_")
    size = int(getattr(model, "input_size", 32))
    x = torch.rand(batch_size, in_chans, size, size, device=device)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).sum().backward()
        opt.step()

    model.train()
    t_train = _timed(train_step, device, warmup, repeats)
    model.eval()

    def infer_step() -> None:
        with torch.no_grad():
            model(x)

    t_inf = _timed(infer_step, device, warmup, repeats)
    return BenchResult(
        model=name, layer=model.layer, size=arch[1], params=params, batch_size=batch_size,
        train_images_per_s=batch_size / t_train, infer_images_per_s=batch_size / t_inf, device=device,
    )


def bench_layers(
    layer_pattern: str = "*",
    sizes: tuple[str, ...] = ("xs", "s"),
    *,
    family: str = "convnet",
    batch_size: int = 64,
    device: str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    progress: bool = True,
) -> list[BenchResult]:
    """Benchmark every matching layer at every size, always with ``standard`` in the same run."""
    layers = [lid for lid in LAYERS if fnmatch.fnmatchcase(lid, layer_pattern)]
    if "standard" not in layers:
        layers.append("standard")
    jobs = [(s, lid) for s in sizes for lid in layers]
    results: list[BenchResult] = []
    bar = tqdm(jobs, desc="bench", unit="model", disable=not progress)
    for size, lid in bar:
        name = f"{family}_{size}_{lid}"
        bar.set_postfix_str(name)
        try:
            results.append(bench_model(name, batch_size=batch_size, device=device, warmup=warmup, repeats=repeats))
        except torch.cuda.OutOfMemoryError as e:  # large sizes that do not fit
            results.append(BenchResult(name, lid, size, 0, batch_size, float("nan"), float("nan"), device=device, error=f"out of memory: {e}"[:200]))
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    base = {r.size: r for r in results if r.layer == "standard" and r.error is None}
    for r in results:
        b = base.get(r.size)
        if b is not None and r.error is None:
            r.train_ratio = r.train_images_per_s / b.train_images_per_s
            r.infer_ratio = r.infer_images_per_s / b.infer_images_per_s
    return results


def format_table(results: list[BenchResult]) -> str:
    head = f"{'model':<24} {'params':>11} {'train img/s':>12} {'x std':>7} {'infer img/s':>12} {'x std':>7}"
    rows = [head, "-" * len(head)]
    for r in results:
        if r.error:
            rows.append(f"{r.model:<24} {r.params:>11,} {'-':>12} {'-':>7} {'-':>12} {'-':>7}  {r.error}")
            continue
        rows.append(
            f"{r.model:<24} {r.params:>11,} {r.train_images_per_s:>12.1f} {r.train_ratio or 0:>7.2f} "
            f"{r.infer_images_per_s:>12.1f} {r.infer_ratio or 0:>7.2f}"
        )
    return "\n".join(rows)
