"""Recipes, the paper's loss and schedule, and a resumable trainer (single device or torchrun DDP).

A run directory holds, as the run goes:

- ``recipe.yaml``      the recipe the run was started from (everything needed to retrain it);
- ``metrics.jsonl``    one JSON line per finished epoch (loss, train/val accuracy, certified
                        accuracy at the eps grid, epoch time, images/s);
- ``checkpoint.safetensors``  weights + optimizer tensors + scheduler/epoch state, rewritten
                        atomically after every good epoch (``--resume`` continues from it);
- at the end ``model.safetensors`` (weights only) and ``run.json`` (hardware, torch version,
  commit, wall time, final metrics).

Data order and augmentation use a generator seeded from (seed, epoch), so a resumed run sees
exactly the batches an uninterrupted run would have seen: on CPU the final weights are equal.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from ._io import atomic_save_safetensors, atomic_write_text
from .certify import DEFAULT_EPS, certified_radius
from .data import dataset_info, load_tensors, rand_augment

__all__ = [
    "Recipe",
    "RecipeError",
    "DivergenceError",
    "offset_cross_entropy",
    "train",
    "build_model",
    "estimate_epochs",
    "apply_budget",
    "plan_budget",
    "search_lr",
]

PAPER_OFFSET = 2 * math.sqrt(2) * 36 / 255  # 0.3993: the paper's margin offset
PAPER_TEMPERATURE = 0.25


class RecipeError(ValueError):
    """A recipe file that is missing a field or holds an invalid value."""


class DivergenceError(RuntimeError):
    """Training diverged (NaN/Inf loss or accuracy collapsed to chance); the last good checkpoint is kept."""


@dataclass
class Recipe:
    """Everything needed to (re)train one zoo entry."""

    name: str
    architecture: str
    dataset: str
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int = 256
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "onecycle"  # "onecycle" (torch OneCycleLR defaults) or "constant"
    schedule_step: str = "epoch"  # the paper steps its OneCycle once per epoch; "batch" steps per batch
    loss_offset: float = PAPER_OFFSET
    loss_temperature: float = PAPER_TEMPERATURE
    crop_padding: int = 4
    hflip: bool = True
    rand_augment: list[int] | None = None  # [num_ops, magnitude]: RandAugment per image (the paper's TinyImageNet)
    seed: int = 0
    val_size: int = 0  # > 0: hold out that many training images (fixed seed) as validation; 0: validate on test
    train_limit: int | None = None  # use only the first N training images (smoke runs)
    val_limit: int | None = None
    eval_eps: list[float] = field(default_factory=lambda: list(DEFAULT_EPS))
    layer_options: dict[str, Any] = field(default_factory=dict)
    compile: bool = False  # run the training forward through torch.compile (same function; see lipzoo bench --compile)
    budget: dict[str, Any] | None = None  # how the epochs were derived from a wall-clock budget
    notes: str = ""

    @classmethod
    def from_dict(cls, d: dict, source: str = "recipe") -> "Recipe":
        if not isinstance(d, dict):
            raise RecipeError(f"{source}: expected a mapping of recipe fields, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RecipeError(f"{source}: unknown field(s) {sorted(unknown)}; known fields: {sorted(known)}")
        missing = [n for n in ("name", "architecture", "dataset", "epochs", "lr", "weight_decay") if n not in d]
        if missing:
            raise RecipeError(f"{source}: missing required field(s) {missing}")
        r = cls(**d)
        r.validate(source)
        return r

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f), source=str(path))

    def validate(self, source: str = "recipe") -> None:
        from .registry import get_architecture

        get_architecture(self.architecture)
        dataset_info(self.dataset)
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.schedule in ("onecycle", "constant"), "schedule must be 'onecycle' or 'constant'"),
            (self.schedule_step in ("epoch", "batch"), "schedule_step must be 'epoch' or 'batch'"),
            (self.loss_temperature > 0, "loss_temperature must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise RecipeError(f"{source}: {msg}")

    def to_dict(self) -> dict:
        return asdict(self)

    def dump(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


# --- small utilities ---------------------------------------------------------------------------
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware(device: str) -> dict:
    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": str(torch.__version__), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# --- loss -------------------------------------------------------------------------------------
def offset_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, offset: float = PAPER_OFFSET, temperature: float = PAPER_TEMPERATURE
) -> torch.Tensor:
    """The paper's loss: ``tau * CE((z - offset * onehot(y)) / tau, y)`` (mean over the batch)."""
    z = logits - offset * F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return temperature * F.cross_entropy(z / temperature, labels)


# --- data -------------------------------------------------------------------------------------
def augment(x: torch.Tensor, padding: int, hflip: bool, fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (padding filled with the channel mean, as the paper's centred zero padding) and flip."""
    n, c, h, w = x.shape
    if padding:
        xp = fill.view(1, c, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
        xp[:, :, padding : padding + h, padding : padding + w] = x
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
        cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
        x = xp[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) to float32 in [0, 1]; float images pass through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def load_splits(recipe: Recipe, data_root: str | None = None):
    """(train_x, train_y, val_x, val_y) as the recipe asks (held-out validation or the test split)."""
    # uint8 in memory (TinyImageNet is 1.2 GB so, 4.9 GB as float); batches become float on the fly
    tx, ty = load_tensors(recipe.dataset, "train", root=data_root, dtype=torch.uint8)
    if recipe.val_size > 0:
        g = torch.Generator().manual_seed(12345)  # fixed: the split never depends on the run's seed
        perm = torch.randperm(len(tx), generator=g)
        val_idx, train_idx = perm[: recipe.val_size], perm[recipe.val_size :]
        vx, vy = tx[val_idx], ty[val_idx]
        tx, ty = tx[train_idx], ty[train_idx]
    else:
        vx, vy = load_tensors(recipe.dataset, "test", root=data_root)
    return limit_splits(recipe, tx, ty, vx, vy)


def limit_splits(recipe: Recipe, tx, ty, vx, vy):
    """The first ``train_limit`` training and ``val_limit`` validation images (all when ``None``)."""
    if recipe.train_limit:
        tx, ty = tx[: recipe.train_limit], ty[: recipe.train_limit]
    if recipe.val_limit:
        vx, vy = vx[: recipe.val_limit], vy[: recipe.val_limit]
    return tx, ty, vx, vy


# --- model / optimizer ------------------------------------------------------------------------
def build_model(recipe: Recipe) -> nn.Module:
    from .registry import create_model

    info = dataset_info(recipe.dataset)
    torch.manual_seed(recipe.seed)
    return create_model(recipe.architecture, num_classes=info.num_classes, in_chans=info.in_chans,
                        input_mean=info.mean, **recipe.layer_options)


def _optimizer_and_schedule(model: nn.Module, recipe: Recipe, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                          nesterov=recipe.nesterov)
    if recipe.schedule == "onecycle":
        per_epoch = steps_per_epoch if recipe.schedule_step == "batch" else 1
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=per_epoch)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


# --- checkpoints ------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: Path, model: nn.Module, opt, sched, epoch: int) -> None:
    tensors = {f"model.{k}": v for k, v in _unwrap(model).state_dict().items()}
    opt_sd = opt.state_dict()
    for idx, st in opt_sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "format": "lipzoo-checkpoint-1",
        "epoch": str(epoch),
        "param_groups": json.dumps(opt_sd["param_groups"]),
        "optim_scalars": json.dumps({str(i): {k: v for k, v in st.items() if not isinstance(v, torch.Tensor)}
                                     for i, st in opt_sd["state"].items()}),
        "scheduler": json.dumps(sched.state_dict()),
    }
    atomic_save_safetensors(tensors, path, meta)


def load_checkpoint(path: Path, model: nn.Module, opt, sched) -> int:
    """Restore model, optimizer, scheduler and RNG; returns the number of finished epochs."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "lipzoo-checkpoint-1":
        raise ValueError(f"{path} is not a lipzoo training checkpoint")
    tensors = load_file(str(path))
    _unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, scalars in json.loads(meta["optim_scalars"]).items():
        state.setdefault(int(idx), {}).update(scalars)
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    sched.load_state_dict(json.loads(meta["scheduler"]))
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["epoch"])


# --- evaluation -------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float], recipe: Recipe,
             device: str, batch_size: int = 512) -> dict:
    model.eval()
    n, correct, loss_sum = len(x), 0, 0.0
    cert = {e: 0 for e in eps}
    for s in range(0, n, batch_size):
        xb, yb = as_float(x[s : s + batch_size]).to(device), y[s : s + batch_size].to(device)
        z = model(xb)
        loss_sum += float(offset_cross_entropy(z, yb, recipe.loss_offset, recipe.loss_temperature)) * len(xb)
        correct += int((z.argmax(1) == yb).sum())
        r = certified_radius(z, yb, 1.0)
        for e in eps:
            cert[e] += int((r > e).sum())
    return {"val_loss": loss_sum / max(n, 1), "val_accuracy": correct / max(n, 1),
            "val_certified": {f"{e:.6g}": c / max(n, 1) for e, c in cert.items()}}


# --- the trainer ------------------------------------------------------------------------------
def _dist_info() -> tuple[int, int]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"])
    return 0, 1


def train(
    recipe: Recipe | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    resume: bool = False,
    data_root: str | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Train ``recipe`` into ``out_dir``; returns the final run record.

    ``stop_after_epochs`` ends the process after that many epochs of this invocation (to
    simulate an interrupted run in tests). Under ``torchrun`` (WORLD_SIZE > 1) the batches are
    sharded across processes with DistributedDataParallel (gloo on CPU, nccl on CUDA); only
    rank 0 writes files.
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    out = Path(out_dir)
    rank, world = _dist_info()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    is_main = rank == 0
    ckpt_path, metrics_path = out / "checkpoint.safetensors", out / "metrics.jsonl"
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and (ckpt_path.exists() or (out / "model.safetensors").exists()):
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        recipe.dump(out / "recipe.yaml")

    tx, ty, vx, vy = limit_splits(recipe, *data) if data is not None else load_splits(recipe, data_root)
    info = dataset_info(recipe.dataset)
    fill = torch.tensor(info.mean[: tx.shape[1]], dtype=torch.float32)
    model = build_model(recipe).to(device)
    steps_per_epoch = math.ceil(len(tx) / recipe.batch_size)
    opt, sched = _optimizer_and_schedule(model, recipe, steps_per_epoch)
    start_epoch = 0
    if resume and ckpt_path.exists():
        start_epoch = load_checkpoint(ckpt_path, model, opt, sched)
    if is_main:  # keep only the metrics of finished (checkpointed) epochs
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["epoch"] < start_epoch]
        atomic_write_text(metrics_path, "".join(ln + "\n" for ln in kept))
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    if recipe.compile:
        net = torch.compile(net)

    wall0 = time.time()
    best_train_acc = 0.0
    last: dict = {}
    for epoch in range(start_epoch, recipe.epochs):
        if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
            break
        net.train()
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(tx), generator=g)
        t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="batch",
                   disable=not (progress and is_main), leave=False)
        for b in bar:
            idx = perm[b * recipe.batch_size : (b + 1) * recipe.batch_size]
            xb = tx[idx]
            if recipe.rand_augment:
                xb = rand_augment(xb, *recipe.rand_augment, generator=g)
            xb = augment(as_float(xb), recipe.crop_padding, recipe.hflip, fill, g)
            yb = ty[idx]
            if world > 1:
                xb, yb = xb[rank::world], yb[rank::world]
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            z = net(xb)
            loss = offset_cross_entropy(z, yb, recipe.loss_offset, recipe.loss_temperature)
            if not torch.isfinite(loss):
                raise DivergenceError(
                    f"loss became {float(loss)} at epoch {epoch + 1}, batch {b + 1}; the last good checkpoint "
                    f"({ckpt_path}, {epoch} epochs) is kept. Lower the learning rate ({recipe.lr}) and resume."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if recipe.schedule_step == "batch":
                sched.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((z.argmax(1) == yb).sum())
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", img_s=f"{seen / max(time.time() - t0, 1e-9):.0f}")
        if recipe.schedule_step == "epoch":
            sched.step()
        epoch_time = time.time() - t0
        local_n = math.ceil(len(tx) / world) if world > 1 else len(tx)
        train_acc = correct / max(local_n, 1)
        metrics = {"epoch": epoch, "train_loss": loss_sum / max(local_n, 1), "train_accuracy": train_acc,
                   "lr": opt.param_groups[0]["lr"], "epoch_time_s": epoch_time, "images_per_s": len(tx) / epoch_time}
        if is_main:
            metrics.update(evaluate(model, vx, vy, recipe.eval_eps, recipe, device))
        chance = 1.0 / info.num_classes
        if best_train_acc > 2 * chance and train_acc <= 1.2 * chance:
            raise DivergenceError(
                f"training accuracy collapsed to chance ({train_acc:.3f}) at epoch {epoch + 1} after reaching "
                f"{best_train_acc:.3f}; the last good checkpoint ({ckpt_path}) is kept"
            )
        best_train_acc = max(best_train_acc, train_acc)
        if is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            save_checkpoint(ckpt_path, model, opt, sched, epoch + 1)
            if progress:
                cert = metrics["val_certified"]
                tqdm.write(f"epoch {epoch + 1}/{recipe.epochs} loss {metrics['train_loss']:.4f} "
                           f"train {train_acc:.3f} val {metrics['val_accuracy']:.3f} "
                           f"cert36 {cert.get(f'{36 / 255:.6g}', float('nan')):.3f} "
                           f"{metrics['images_per_s']:.0f} img/s")
        last = metrics
    finished = start_epoch if not last else last["epoch"] + 1
    record = {
        "name": recipe.name, "architecture": recipe.architecture, "dataset": recipe.dataset,
        "epochs_done": finished, "epochs": recipe.epochs, "complete": finished >= recipe.epochs,
        "wall_time_s": time.time() - wall0, "hardware": hardware(device), "world_size": world,
        "torch": str(torch.__version__), "commit": git_commit(), "final": last,
    }
    if is_main and finished >= recipe.epochs:
        from . import __version__
        from .audit import audit

        # the per-epoch certified accuracies assume L = 1; the run record carries the proven bound
        record["lipschitz_upper"] = float(audit(model, lower=False).upper)

        sd = _unwrap(model).state_dict()
        atomic_save_safetensors(sd, out / "model.safetensors", {
            "architecture": recipe.architecture, "dataset": recipe.dataset, "lipzoo_version": __version__,
            "format": "pt"})
        prev = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
        record["wall_time_s"] += prev.get("wall_time_s_before_resume", 0.0)
        atomic_write_text(out / "run.json", json.dumps(record, indent=2))
    elif is_main:
        atomic_write_text(out / "run.json", json.dumps(record | {"wall_time_s_before_resume": record["wall_time_s"]}, indent=2))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return record


def estimate_epochs(
    recipe: Recipe, budget_seconds: float, *, device: str = "cpu", batches: int = 5, train_size: int | None = None
) -> dict:
    """The paper's budget estimator: time a few training batches, extrapolate to epochs.

    Returns ``{"seconds", "device", "batch_seconds", "epoch_seconds", "epochs", "hardware"}``;
    the caller writes ``epochs`` (and this record as ``budget``) into the recipe.
    """
    info = dataset_info(recipe.dataset)
    model = build_model(recipe).to(device)
    opt, _ = _optimizer_and_schedule(model, recipe, 1)
    x = torch.rand(recipe.batch_size, info.in_chans, info.input_size, info.input_size, device=device)
    y = torch.randint(0, info.num_classes, (recipe.batch_size,), device=device)
    model.train()
    net = torch.compile(model) if recipe.compile else model  # the compiling first batch is the warm-up
    times = []
    for i in range(batches + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = offset_cross_entropy(net(x), y, recipe.loss_offset, recipe.loss_temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first batch is warm-up
            times.append(time.perf_counter() - t0)
    n = train_size if train_size is not None else info.train_size - recipe.val_size
    batch_s = sorted(times)[len(times) // 2]
    return plan_budget(recipe, budget_seconds, batch_s, n) | {"device": device, "hardware": hardware(device)}


def plan_budget(recipe: Recipe, budget_seconds: float, batch_seconds: float, train_size: int) -> dict:
    """Epochs of ``recipe`` that fit ``budget_seconds`` at ``batch_seconds`` per training batch.

    A budget shorter than one epoch gives one epoch over ``train_limit`` images: as many whole
    batches as fit (the first images of the seeded, shuffled training split when ``val_size`` > 0).
    """
    epoch_s = batch_seconds * math.ceil(train_size / recipe.batch_size)
    out = {"seconds": budget_seconds, "batch_seconds": batch_seconds, "epoch_seconds": epoch_s,
           "epochs": max(1, int(budget_seconds // epoch_s)), "train_limit": None}
    if budget_seconds < epoch_s:
        out["train_limit"] = max(1, int(budget_seconds // batch_seconds)) * recipe.batch_size
    return out


def apply_budget(recipe: Recipe, estimate: dict) -> Recipe:
    """A copy of ``recipe`` with the epochs (and, for a budget under one epoch, ``train_limit``) of an
    :func:`estimate_epochs` result, which is kept in ``recipe.budget``."""
    from dataclasses import replace

    return replace(recipe, epochs=estimate["epochs"], train_limit=estimate.get("train_limit"),
                   budget={k: v for k, v in estimate.items() if k not in ("epochs", "train_limit")})


def search_lr(
    recipe: Recipe,
    budget_seconds: float,
    out_root: str | os.PathLike,
    *,
    factors: tuple[float, ...] = (0.5, 1.0, 2.0),
    metric: str = f"{36 / 255:.6g}",
    estimate: dict | None = None,
    device: str = "cpu",
    progress: bool = True,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """A small learning-rate search on the held-out validation split (``recipe.val_size`` > 0).

    Each candidate ``recipe.lr * f`` is trained with the budget ``budget_seconds`` (turned into
    epochs by :func:`plan_budget` from the batch time of ``estimate``, an :func:`estimate_epochs`
    result, measured here if not given) into ``out_root/lr<f>`` (a finished trial is reused); the winner has the best validation
    certified accuracy at ``metric`` (an eps key of ``val_certified``; ties: the clean accuracy).
    Returns ``{"best_lr", "trials": [{"lr", "val_accuracy", "val_certified", "run"}], "budget_seconds"}``.
    The test split is never used.
    """
    from dataclasses import replace

    if recipe.val_size <= 0:
        raise RecipeError(f"{recipe.name}: a learning-rate search needs a held-out validation split (val_size > 0)")
    if data is None:
        data = load_splits(replace(recipe, train_limit=None))
    if estimate is None:
        estimate = estimate_epochs(recipe, budget_seconds, device=device, batches=2, train_size=len(data[0]))
    trials = []
    for f in factors:
        cand = replace(recipe, lr=recipe.lr * f, name=f"{recipe.name}-lr{f:g}")
        plan = plan_budget(cand, budget_seconds, estimate["batch_seconds"], len(data[0]))
        cand = apply_budget(cand, plan | {k: estimate[k] for k in ("device", "hardware") if k in estimate})
        run = Path(out_root) / f"lr{f:g}"
        done = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
        if not done.get("complete"):
            done = train(cand, run, device=device, resume=run.exists(), progress=progress, data=data)
        final = done["final"]
        trials.append({"lr": cand.lr, "factor": f, "val_accuracy": final["val_accuracy"],
                       "val_certified": final["val_certified"], "epochs": cand.epochs,
                       "train_limit": cand.train_limit, "run": str(run)})
    best = max(trials, key=lambda t: (t["val_certified"].get(metric, 0.0), t["val_accuracy"]))
    return {"best_lr": best["lr"], "metric": f"val_certified[{metric}]", "budget_seconds": budget_seconds,
            "trials": trials}
