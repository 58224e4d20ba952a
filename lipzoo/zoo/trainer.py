"""The resumable trainer (single device or torchrun DDP), with the paper's loss and augmentation.

A run directory holds, as the run goes:

- ``recipe.yaml``      the recipe the run was started from (everything needed to retrain it);
- ``metrics.jsonl``    one JSON line per finished epoch (loss, train/val accuracy, certified
                        accuracy at the eps grid, epoch time, images/s);
- ``checkpoint.safetensors``  weights + optimizer tensors + scheduler/epoch state, rewritten
                        atomically after every good epoch (``--resume`` continues from it; see
                        :mod:`lipzoo.zoo.checkpoint`);
- at the end ``model.safetensors`` (weights only) and ``run.json`` (hardware, torch version,
  commit, wall time, final metrics).

Data order and augmentation use a generator seeded from (seed, epoch), so a resumed run sees
exactly the batches an uninterrupted run would have seen: on CPU the final weights are equal.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .._io import atomic_save_safetensors, atomic_write_text
from .._provenance import git_commit, hardware
from .._version import __version__
from ..audit import audit
from ..certify import certified_radius
from ..data import dataset_info, load_tensors, rand_augment
from ..factory import create_model
from ..radius import Radius
from .checkpoint import (CheckpointError, Resumed, discarded_if_unstarted, epochs_time_s, load_checkpoint, prepare_run,
                         run_lock, save_checkpoint, unwrap)
from .recipe import Recipe, offset_cross_entropy, training_autocast

__all__ = ["DivergenceError", "augment", "as_float", "load_splits", "limit_splits", "build_model",
           "optimizer_and_schedule", "evaluate", "train", "PROGRESS_RADIUS"]

#: the validation certified accuracy the progress line of every epoch shows
PROGRESS_RADIUS = Radius.of_steps(36)


class DivergenceError(RuntimeError):
    """Training diverged (NaN/Inf loss or accuracy collapsed to chance); the last good checkpoint is kept."""


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
    info = dataset_info(recipe.dataset)
    torch.manual_seed(recipe.seed)
    return create_model(recipe.architecture, num_classes=info.num_classes, in_chans=info.in_chans,
                        input_mean=info.mean, **recipe.layer_options)


def optimizer_and_schedule(model: nn.Module, recipe: Recipe, steps_per_epoch: int):
    """The recipe's SGD and its schedule (OneCycle stepped per epoch or per batch, or constant)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                          nesterov=recipe.nesterov)
    if recipe.schedule == "onecycle":
        per_epoch = steps_per_epoch if recipe.schedule_step == "batch" else 1
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=per_epoch)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


# --- evaluation -------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float], recipe: Recipe,
             device: str, batch_size: int = 512) -> dict:
    """Validation loss, accuracy and certified accuracy (with L = 1) at each radius of ``eps``."""
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
            "val_certified": Radius.keyed((e, c / max(n, 1)) for e, c in cert.items())}


# --- the trainer ------------------------------------------------------------------------------
def _dist_info() -> tuple[int, int]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"])
    return 0, 1


@dataclass
class _EpochState:
    """Running sums of one training epoch (restored from a mid-epoch checkpoint)."""

    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    certified: int = 0  # training-batch margins (train mode, L = 1) above sqrt(2) * eps_0
    elapsed_s: float = 0.0


def train(
    recipe: Recipe | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    resume: bool = False,
    data_root: str | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    stop_after_batches: int | None = None,
    checkpoint_every_s: float = 300.0,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Train ``recipe`` into ``out_dir``; returns the final run record.

    A checkpoint is written after every epoch and, within an epoch, every ``checkpoint_every_s``
    seconds of training, so a killed run loses at most that much; ``resume=True`` continues from it
    (mid-epoch too) to the weights an uninterrupted run would have on CPU. ``resume`` refuses a
    finished run, a folder without a checkpoint and a recipe that differs from the stored one.
    The run directory is locked while this runs. ``stop_after_epochs`` / ``stop_after_batches``
    end this invocation early (tests of interrupted runs). Under ``torchrun`` (WORLD_SIZE > 1)
    the batches are sharded across processes with DistributedDataParallel (gloo on CPU, nccl on
    CUDA); only rank 0 writes files.
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    recipe.validate(recipe.name)
    out = Path(out_dir)
    rank, world = _dist_info()
    if rank != 0:
        return _train(recipe, out, device, resume, data_root, progress, stop_after_epochs, stop_after_batches,
                      checkpoint_every_s, data, rank, world)
    if resume and not out.is_dir():
        prepare_run(recipe, out, resume)  # refuses (nothing to resume) before the lock would create the folder
    created = not out.exists()
    with run_lock(out), discarded_if_unstarted(out, fresh=not resume, created=created):
        prepare_run(recipe, out, resume)
        if not resume:
            recipe.dump(out / "recipe.yaml")
        return _train(recipe, out, device, resume, data_root, progress, stop_after_epochs, stop_after_batches,
                      checkpoint_every_s, data, rank, world)


@dataclass
class _Run:
    """One invocation of the trainer: the recipe, the data, the model and where it writes."""

    recipe: Recipe
    out: Path
    device: str
    rank: int
    world: int
    progress: bool
    checkpoint_every_s: float
    data: tuple
    model: nn.Module
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: object
    at: Resumed
    batches_left: int | None  # batches until an early stop (tests of interrupted runs); None: no stop
    best_train_acc: float = 0.0
    wall0: float = field(default_factory=time.time)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.safetensors"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data[0]) / self.recipe.batch_size)

    @property
    def cert_eps(self) -> float:
        """The radius of the training batches' certified accuracy: the recipe's first."""
        return self.recipe.eval_eps[0] if self.recipe.eval_eps else PROGRESS_RADIUS.value

    def checkpoint(self, epoch: int, **mid_epoch) -> None:
        save_checkpoint(self.ckpt_path, self.model, self.opt, self.sched, epoch, **mid_epoch)


def _device_of_process(device: str, world: int) -> str:
    """Join the torchrun process group (WORLD_SIZE > 1) and pick this process's CUDA device."""
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    return device


def _start(recipe: Recipe, out: Path, device: str, resume: bool, data_root, progress: bool,
           stop_after_batches: int | None, checkpoint_every_s: float, data, rank: int, world: int) -> _Run:
    """Data, model, optimizer and the checkpoint to resume from; metrics of unfinished epochs dropped."""
    device = _device_of_process(device, world)
    splits = limit_splits(recipe, *data) if data is not None else load_splits(recipe, data_root)
    model = build_model(recipe).to(device)
    opt, sched = optimizer_and_schedule(model, recipe, math.ceil(len(splits[0]) / recipe.batch_size))
    ckpt_path, metrics_path = out / "checkpoint.safetensors", out / "metrics.jsonl"
    at = load_checkpoint(ckpt_path, model, opt, sched) if resume and ckpt_path.exists() else Resumed()
    if rank == 0:  # keep only the metrics of finished (checkpointed) epochs
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["epoch"] < at.epoch]
        atomic_write_text(metrics_path, "".join(ln + "\n" for ln in kept))
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    if recipe.compile:
        net = torch.compile(net)
    return _Run(recipe, out, device, rank, world, progress, checkpoint_every_s, splits, model, net, opt, sched, at,
                stop_after_batches)


def _train(recipe: Recipe, out: Path, device: str, resume: bool, data_root, progress: bool,
           stop_after_epochs: int | None, stop_after_batches: int | None, checkpoint_every_s: float, data,
           rank: int, world: int) -> dict:
    run = _start(recipe, out, device, resume, data_root, progress, stop_after_batches, checkpoint_every_s, data,
                 rank, world)
    last: dict = {}
    for epoch in range(run.at.epoch, recipe.epochs):
        if stop_after_epochs is not None and epoch - run.at.epoch >= stop_after_epochs:
            break
        st = _train_epoch(run, epoch)
        if st is None:  # stopped (stop_after_batches) right after a mid-epoch checkpoint
            return _finish(recipe, out, None, epoch, {}, run.wall0, run.device, world, run.is_main)
        last = _end_epoch(run, epoch, st)
    if not last and run.is_main and run.metrics_path.is_file():  # nothing left to train: the last finished epoch
        done = [json.loads(ln) for ln in run.metrics_path.read_text().splitlines() if ln.strip()]
        last = done[-1] if done else {}
    return _finish(recipe, out, run.model, run.at.epoch if not last else last["epoch"] + 1, last, run.wall0,
                   run.device, world, run.is_main)


def _train_epoch(run: _Run, epoch: int) -> _EpochState | None:
    """Train one epoch (from a mid-epoch checkpoint where one was resumed); ``None`` when the run
    stopped early within it (after writing a mid-epoch checkpoint)."""
    recipe, at, (tx, ty, _, _) = run.recipe, run.at, run.data
    run.net.train()
    g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + epoch)
    perm = torch.randperm(len(tx), generator=g)
    first, st = 0, _EpochState()
    if epoch == at.epoch and at.batch:
        g.set_state(at.data_state)
        first, st = at.batch, _EpochState(**at.partial)
    t0, last_ckpt = time.time() - st.elapsed_s, time.time()
    rate_t0, rate_seen0 = time.time(), st.seen  # throughput of this process: checkpoints do not reset it
    fill = torch.tensor(dataset_info(recipe.dataset).mean[: tx.shape[1]], dtype=torch.float32)
    bar = tqdm(range(first, run.steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="batch",
               disable=not (run.progress and run.is_main), leave=False, initial=first, total=run.steps_per_epoch)
    for b in bar:
        if run.batches_left is not None and run.batches_left <= 0:  # an interruption right after a checkpoint
            if run.is_main:
                st.elapsed_s = time.time() - t0
                run.checkpoint(epoch, batch=b, generator=g, partial=asdict(st))
            return None
        idx = perm[b * recipe.batch_size : (b + 1) * recipe.batch_size]
        xb = tx[idx]
        if recipe.rand_augment:
            xb = rand_augment(xb, *recipe.rand_augment, generator=g)
        loss = _step(run, augment(as_float(xb), recipe.crop_padding, recipe.hflip, fill, g), ty[idx], st, epoch, b)
        st.seen += len(idx)
        if run.batches_left is not None:
            run.batches_left -= 1
        bar.set_postfix(loss=f"{loss:.4f}",
                        img_s=f"{(st.seen - rate_seen0) / max(time.time() - rate_t0, 1e-9):.0f}")
        if run.is_main and b + 1 < run.steps_per_epoch and time.time() - last_ckpt >= run.checkpoint_every_s:
            st.elapsed_s = time.time() - t0
            run.checkpoint(epoch, batch=b + 1, generator=g, partial=asdict(st))
            last_ckpt = time.time()
    if recipe.schedule_step == "epoch":
        run.sched.step()
    st.elapsed_s = time.time() - t0
    return st


def _step(run: _Run, xb: torch.Tensor, yb: torch.Tensor, st: _EpochState, epoch: int, b: int) -> float:
    """One optimizer step on a batch (this process's shard under DDP); adds to the epoch's sums."""
    recipe, device = run.recipe, run.device
    if run.world > 1:
        xb, yb = xb[run.rank::run.world], yb[run.rank::run.world]
    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
    with training_autocast(recipe.precision, device):
        z = run.net(xb)
    z = z.float()  # the loss (and the batch statistics) in float32
    loss = offset_cross_entropy(z, yb, recipe.loss_offset, recipe.loss_temperature)
    if not torch.isfinite(loss):
        raise DivergenceError(
            f"loss became {float(loss)} at epoch {epoch + 1}, batch {b + 1}; {_kept(run.ckpt_path)}. "
            f"Lower the learning rate ({recipe.lr})."
        )
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    if recipe.schedule_step == "batch":
        run.sched.step()
    zd = z.detach()
    st.loss_sum += float(loss.detach()) * len(yb)
    st.correct += int((zd.argmax(1) == yb).sum())
    st.certified += int((certified_radius(zd.double(), yb, 1.0) > run.cert_eps).sum())
    return float(loss.detach())


def _end_epoch(run: _Run, epoch: int, st: _EpochState) -> dict:
    """The epoch's metrics line (with the validation figures), the collapse guard and the checkpoint."""
    recipe, (tx, _, vx, vy) = run.recipe, run.data
    epoch_time = st.elapsed_s
    local_n = math.ceil(len(tx) / run.world) if run.world > 1 else len(tx)
    train_acc = st.correct / max(local_n, 1)
    metrics = {"epoch": epoch, "train_loss": st.loss_sum / max(local_n, 1), "train_accuracy": train_acc,
               "train_certified": Radius.keyed({run.cert_eps: st.certified / max(local_n, 1)}),
               "lr": run.opt.param_groups[0]["lr"], "epoch_time_s": epoch_time, "images_per_s": len(tx) / epoch_time}
    if run.is_main:
        metrics.update(evaluate(run.model, vx, vy, recipe.eval_eps, recipe, run.device))
    chance = 1.0 / dataset_info(recipe.dataset).num_classes
    if run.best_train_acc > 2 * chance and train_acc <= 1.2 * chance:
        raise DivergenceError(
            f"training accuracy collapsed to chance ({train_acc:.3f}) at epoch {epoch + 1} after reaching "
            f"{run.best_train_acc:.3f}; {_kept(run.ckpt_path)}"
        )
    run.best_train_acc = max(run.best_train_acc, train_acc)
    if run.is_main:
        with open(run.metrics_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        run.checkpoint(epoch + 1)
        if run.progress:
            cert = metrics["val_certified"]
            tqdm.write(f"epoch {epoch + 1}/{recipe.epochs} loss {metrics['train_loss']:.4f} "
                       f"train {train_acc:.3f} val {metrics['val_accuracy']:.3f} "
                       f"cert36 {cert.get(PROGRESS_RADIUS.key, float('nan')):.3f} "
                       f"{metrics['images_per_s']:.0f} img/s")
    return metrics


def _kept(ckpt_path: Path) -> str:
    """What a stopped run leaves behind, said truthfully."""
    if ckpt_path.exists():
        return f"the last good checkpoint ({ckpt_path}) is kept"
    return "no checkpoint was written yet (nothing to resume)"


def _finish(recipe: Recipe, out: Path, model: nn.Module | None, finished: int, last: dict, wall0: float,
            device: str, world: int, is_main: bool) -> dict:
    """Write ``run.json`` (and, for a complete run, ``model.safetensors`` with the proven bound)."""
    record = {
        "name": recipe.name, "architecture": recipe.architecture, "dataset": recipe.dataset,
        "epochs_done": finished, "epochs": recipe.epochs, "complete": finished >= recipe.epochs,
        "wall_time_s": time.time() - wall0, "hardware": hardware(device), "world_size": world,
        "torch": str(torch.__version__), "commit": git_commit(), "final": last,
    }
    prev = json.loads((out / "run.json").read_text()) if is_main and (out / "run.json").is_file() else {}
    record["wall_time_s"] += prev.get("wall_time_s_before_resume", 0.0)
    # a process killed between checkpoints never wrote its share above; the epochs' own times (carried
    # across resumes by the checkpoints) are a floor that survives kills
    record["epochs_time_s"] = epochs_time_s(out / "metrics.jsonl") if is_main else 0.0
    record["wall_time_s"] = max(record["wall_time_s"], record["epochs_time_s"])
    if is_main and model is not None and finished >= recipe.epochs:
        # the per-epoch certified accuracies assume L = 1; the run record carries the proven bound
        record["lipschitz_upper"] = float(audit(model, lower=False).upper)
        sd = unwrap(model).state_dict()
        try:
            atomic_save_safetensors(sd, out / "model.safetensors", {
                "architecture": recipe.architecture, "dataset": recipe.dataset, "lipzoo_version": __version__,
                "format": "pt"})
            atomic_write_text(out / "run.json", json.dumps(record, indent=2))
        except OSError as e:
            (out / "model.safetensors").unlink(missing_ok=True)  # a finished run is model + record, or neither
            raise CheckpointError(f"cannot write the finished model into {out} ({e.strerror or e}); the last "
                                  f"checkpoint is kept: free space, then resume to write it") from None
    elif is_main:
        atomic_write_text(out / "run.json", json.dumps(record | {"wall_time_s_before_resume": record["wall_time_s"]},
                                                       indent=2))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return record
