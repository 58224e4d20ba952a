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

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from .._io import atomic_save_safetensors, atomic_write_text
from .._provenance import git_commit, hardware
from .._version import __version__
from ..audit import audit
from ..certify import DEFAULT_EPS, certified_radius
from ..data import dataset_info, load_tensors, rand_augment
from ..radius import Radius
from ..factory import create_model
from ..registry import get_architecture

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
    "best_trial",
    "SEARCH_RADIUS",
]

PAPER_OFFSET = 2 * math.sqrt(2) * 36 / 255  # 0.3993: the paper's margin offset
#: the radius whose validation certified accuracy scores a learning-rate trial (and the progress line shows)
SEARCH_RADIUS = Radius.of_steps(36)
PAPER_TEMPERATURE = 0.25
#: training precisions of a recipe: "bf16" runs the training forward under bf16 autocast
PRECISIONS = ("fp32", "bf16")


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
    precision: str = "fp32"  # "bf16": training forward under bf16 autocast (evaluation, certification, audit: float32/64)
    publish_floor: float | None = None  # lipzoo publish refuses (without --force) below this certified acc. at 36/255
    publish_clean_floor: float | None = None  # ... and below this clean accuracy
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
        try:
            with open(path) as f:
                d = yaml.safe_load(f)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise RecipeError(f"{path}: not valid YAML{at} ({getattr(e, 'problem', None) or e}); "
                              f"expected a mapping of recipe fields") from None
        return cls.from_dict(d, source=str(path))

    def validate(self, source: str = "recipe") -> None:
        """Raise :class:`RecipeError` naming the first field whose type or value is invalid."""
        for name, kinds, what in _FIELD_TYPES:
            v = getattr(self, name)
            if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
                raise RecipeError(f"{source}: {name} must be {what}, got {v!r} ({type(v).__name__})")
        for name in ("lr", "weight_decay", "momentum", "loss_offset", "loss_temperature"):
            if not math.isfinite(getattr(self, name)):
                raise RecipeError(f"{source}: {name} must be a finite number, got {getattr(self, name)!r}")
        get_architecture(self.architecture)
        dataset_info(self.dataset)
        eps_ok = all(isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e >= 0
                     for e in self.eval_eps)
        ra = self.rand_augment
        checks = [
            (self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.batch_size >= 1, f"batch_size must be an integer >= 1, got {self.batch_size}"),
            (self.schedule in ("onecycle", "constant"), f"schedule must be 'onecycle' or 'constant', got {self.schedule!r}"),
            (self.schedule_step in ("epoch", "batch"), f"schedule_step must be 'epoch' or 'batch', got {self.schedule_step!r}"),
            (self.precision in PRECISIONS, f"precision must be 'fp32' or 'bf16', got {self.precision!r}"),
            (self.loss_temperature > 0, f"loss_temperature must be > 0, got {self.loss_temperature}"),
            (self.loss_offset >= 0, f"loss_offset must be >= 0, got {self.loss_offset}"),
            (self.crop_padding >= 0, f"crop_padding must be an integer >= 0, got {self.crop_padding}"),
            (self.seed >= 0, f"seed must be an integer >= 0, got {self.seed}"),
            (self.val_size >= 0, f"val_size must be an integer >= 0 (0: validate on the test split), got {self.val_size}"),
            (self.train_limit is None or self.train_limit >= 1,
             f"train_limit must be null (all images) or an integer >= 1, got {self.train_limit}"),
            (self.val_limit is None or self.val_limit >= 1,
             f"val_limit must be null (all images) or an integer >= 1, got {self.val_limit}"),
            (eps_ok, f"eval_eps must be a list of finite radii >= 0, got {self.eval_eps!r}"),
            (self.publish_floor is None or 0 <= self.publish_floor <= 1,
             f"publish_floor must be null or a fraction in [0, 1], got {self.publish_floor}"),
            (self.publish_clean_floor is None or 0 <= self.publish_clean_floor <= 1,
             f"publish_clean_floor must be null or a fraction in [0, 1], got {self.publish_clean_floor}"),
            (ra is None or (isinstance(ra, list) and len(ra) == 2 and all(isinstance(i, int) and i >= 0 for i in ra)),
             f"rand_augment must be null or [num_ops, magnitude] (two integers >= 0), got {ra!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise RecipeError(f"{source}: {msg}")

    def to_dict(self) -> dict:
        return asdict(self)

    def dump(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


_INT, _NUM, _OPT_INT = (int,), (int, float), (int, type(None))
#: (field, accepted types, how to say it) for every recipe field; bool is only accepted where listed
_FIELD_TYPES: list[tuple[str, tuple[type, ...], str]] = [
    ("name", (str,), "a string"), ("architecture", (str,), "a string"), ("dataset", (str,), "a string"),
    ("epochs", _INT, "an integer"), ("lr", _NUM, "a number"), ("weight_decay", _NUM, "a number"),
    ("batch_size", _INT, "an integer"), ("momentum", _NUM, "a number"), ("nesterov", (bool,), "true or false"),
    ("schedule", (str,), "a string"), ("schedule_step", (str,), "a string"), ("loss_offset", _NUM, "a number"),
    ("loss_temperature", _NUM, "a number"), ("crop_padding", _INT, "an integer"), ("hflip", (bool,), "true or false"),
    ("rand_augment", (list, type(None)), "null or a list"), ("seed", _INT, "an integer"),
    ("val_size", _INT, "an integer"), ("train_limit", _OPT_INT, "null or an integer"),
    ("val_limit", _OPT_INT, "null or an integer"), ("eval_eps", (list,), "a list of numbers"),
    ("layer_options", (dict,), "a mapping"), ("compile", (bool,), "true or false"), ("precision", (str,), "a string"),
    ("budget", (dict, type(None)), "null or a mapping"), ("notes", (str,), "a string"),
    ("publish_floor", (int, float, type(None)), "null or a fraction"),
    ("publish_clean_floor", (int, float, type(None)), "null or a fraction"),
]


def training_autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The context of a training forward: bf16 autocast on ``device``'s type for ``"bf16"``, else nothing.

    Only the training step uses it; evaluation, certification and the audit never do. The layers
    compute their weights with autocast disabled (see :mod:`lipzoo.layers._base`)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


def save_checkpoint(path: Path, model: nn.Module, opt, sched, epoch: int, *, batch: int = 0,
                    generator: torch.Generator | None = None, partial: dict | None = None) -> None:
    """Write weights, optimizer, scheduler and RNG state atomically.

    ``epoch`` epochs are finished; with ``batch`` > 0 the next epoch is ``batch`` batches in, its
    data generator's state is ``generator`` and its running sums are ``partial`` (mid-epoch).
    """
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
    if batch:
        if generator is None:
            raise ValueError("a mid-epoch checkpoint needs the epoch's data generator")
        tensors["rng.data"] = generator.get_state()
        meta["batch"] = str(batch)
        meta["partial"] = json.dumps(partial or {})
    try:
        atomic_save_safetensors(tensors, path, meta)
    except OSError as e:
        raise CheckpointError(f"cannot write the checkpoint {path} ({e.strerror or e}); the previous checkpoint "
                              f"is kept: free space or fix the folder, then resume") from None


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be read (corrupt, truncated or not a lipzoo checkpoint)."""


@dataclass
class Resumed:
    """Where a checkpoint left off: ``epoch`` finished epochs, then ``batch`` batches of the next one."""

    epoch: int = 0
    batch: int = 0
    data_state: torch.Tensor | None = None
    partial: dict = field(default_factory=dict)


def load_checkpoint(path: Path, model: nn.Module, opt, sched) -> Resumed:
    """Restore model, optimizer, scheduler and RNG; returns where the run left off."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "lipzoo-checkpoint-1":
            raise CheckpointError(f"{path} is not a lipzoo training checkpoint (format {meta.get('format')!r})")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"cannot read the checkpoint {path} ({e}); it is corrupt or truncated: "
                              f"move it away and start the run again") from None
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
    return Resumed(int(meta["epoch"]), int(meta.get("batch", 0)), tensors.get("rng.data"),
                   json.loads(meta.get("partial", "{}")))


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
            "val_certified": Radius.keyed((e, c / max(n, 1)) for e, c in cert.items())}


# --- the trainer ------------------------------------------------------------------------------
def _dist_info() -> tuple[int, int]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"])
    return 0, 1


class RunLockedError(RuntimeError):
    """Another process is training into the same run directory."""


class RunFinishedError(RuntimeError):
    """``--resume`` on a run that already finished all its epochs."""


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out/.lock`` while training into ``out`` (released on exit or death)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise RunLockedError(f"{out} is locked: process {holder} is training into it; wait for it to "
                                 f"finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _recipe_defaults() -> dict:
    """The default value of every recipe field that has one."""
    out = {}
    for f in fields(Recipe):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def recipe_changes(old: dict, new: dict) -> list[str]:
    """Names of the recipe fields that differ between two recipe dicts (``notes`` does not count).

    A field missing from either (a recipe.yaml written before the field existed) counts as its default."""
    defaults = _recipe_defaults()
    old, new = defaults | old, defaults | new
    keys = (set(old) | set(new)) - {"notes"}
    return sorted(k for k in keys if old.get(k) != new.get(k))


def _prepare_run(recipe: Recipe, out: Path, resume: bool) -> None:
    """Check that ``out`` may receive this run (fresh, or an unfinished run of the same recipe)."""
    ckpt, model_file, stored = out / "checkpoint.safetensors", out / "model.safetensors", out / "recipe.yaml"
    if not resume:
        if ckpt.exists() or model_file.exists():
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        return
    if model_file.exists():
        done = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
        raise RunFinishedError(f"{out} is a finished run ({done.get('epochs_done', '?')} of "
                               f"{done.get('epochs', '?')} epochs, model.safetensors written); nothing to resume")
    if not ckpt.exists():
        raise FileNotFoundError(f"nothing to resume in {out}: it has no checkpoint.safetensors; "
                                f"run without --resume to start the run")
    if stored.is_file():
        try:
            old = yaml.safe_load(stored.read_text())
        except yaml.YAMLError as e:
            raise RecipeError(f"{stored} is not valid YAML ({e}); cannot check the resumed recipe") from None
        changed = recipe_changes(old if isinstance(old, dict) else {}, recipe.to_dict())
        if changed:
            raise RecipeError(f"the recipe differs from the one {out} was started with in {', '.join(changed)}; "
                              f"resume with the stored recipe ({stored}) or train into another --out")


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
    with run_lock(out):
        _prepare_run(recipe, out, resume)
        if not resume:
            recipe.dump(out / "recipe.yaml")
        return _train(recipe, out, device, resume, data_root, progress, stop_after_epochs, stop_after_batches,
                      checkpoint_every_s, data, rank, world)


def _train(recipe: Recipe, out: Path, device: str, resume: bool, data_root, progress: bool,
           stop_after_epochs: int | None, stop_after_batches: int | None, checkpoint_every_s: float, data,
           rank: int, world: int) -> dict:
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    is_main = rank == 0
    ckpt_path, metrics_path = out / "checkpoint.safetensors", out / "metrics.jsonl"
    tx, ty, vx, vy = limit_splits(recipe, *data) if data is not None else load_splits(recipe, data_root)
    info = dataset_info(recipe.dataset)
    fill = torch.tensor(info.mean[: tx.shape[1]], dtype=torch.float32)
    model = build_model(recipe).to(device)
    steps_per_epoch = math.ceil(len(tx) / recipe.batch_size)
    opt, sched = _optimizer_and_schedule(model, recipe, steps_per_epoch)
    at = load_checkpoint(ckpt_path, model, opt, sched) if resume and ckpt_path.exists() else Resumed()
    if is_main:  # keep only the metrics of finished (checkpointed) epochs
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["epoch"] < at.epoch]
        atomic_write_text(metrics_path, "".join(ln + "\n" for ln in kept))
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    if recipe.compile:
        net = torch.compile(net)

    wall0 = time.time()
    best_train_acc, last, batches_left = 0.0, {}, stop_after_batches
    cert_eps = recipe.eval_eps[0] if recipe.eval_eps else 36 / 255
    for epoch in range(at.epoch, recipe.epochs):
        if stop_after_epochs is not None and epoch - at.epoch >= stop_after_epochs:
            break
        net.train()
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(tx), generator=g)
        first, st = 0, _EpochState()
        if epoch == at.epoch and at.batch:
            g.set_state(at.data_state)
            first, st = at.batch, _EpochState(**at.partial)
        t0, last_ckpt = time.time() - st.elapsed_s, time.time()
        bar = tqdm(range(first, steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="batch",
                   disable=not (progress and is_main), leave=False, initial=first, total=steps_per_epoch)
        for b in bar:
            if batches_left is not None and batches_left <= 0:  # an interruption right after a checkpoint
                if is_main:
                    st.elapsed_s = time.time() - t0
                    save_checkpoint(ckpt_path, model, opt, sched, epoch, batch=b, generator=g, partial=asdict(st))
                return _finish(recipe, out, None, epoch, {}, wall0, device, world, is_main)
            idx = perm[b * recipe.batch_size : (b + 1) * recipe.batch_size]
            xb = tx[idx]
            if recipe.rand_augment:
                xb = rand_augment(xb, *recipe.rand_augment, generator=g)
            xb = augment(as_float(xb), recipe.crop_padding, recipe.hflip, fill, g)
            yb = ty[idx]
            if world > 1:
                xb, yb = xb[rank::world], yb[rank::world]
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with training_autocast(recipe.precision, device):
                z = net(xb)
            z = z.float()  # the loss (and the batch statistics) in float32
            loss = offset_cross_entropy(z, yb, recipe.loss_offset, recipe.loss_temperature)
            if not torch.isfinite(loss):
                raise DivergenceError(
                    f"loss became {float(loss)} at epoch {epoch + 1}, batch {b + 1}; {_kept(ckpt_path)}. "
                    f"Lower the learning rate ({recipe.lr})."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if recipe.schedule_step == "batch":
                sched.step()
            zd = z.detach()
            st.seen += len(idx)
            st.loss_sum += float(loss.detach()) * len(yb)
            st.correct += int((zd.argmax(1) == yb).sum())
            st.certified += int((certified_radius(zd.double(), yb, 1.0) > cert_eps).sum())
            if batches_left is not None:
                batches_left -= 1
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}",
                            img_s=f"{(st.seen - first * recipe.batch_size) / max(time.time() - last_ckpt, 1e-9):.0f}")
            if is_main and b + 1 < steps_per_epoch and time.time() - last_ckpt >= checkpoint_every_s:
                st.elapsed_s = time.time() - t0
                save_checkpoint(ckpt_path, model, opt, sched, epoch, batch=b + 1, generator=g, partial=asdict(st))
                last_ckpt = time.time()
        if recipe.schedule_step == "epoch":
            sched.step()
        epoch_time = time.time() - t0
        local_n = math.ceil(len(tx) / world) if world > 1 else len(tx)
        train_acc = st.correct / max(local_n, 1)
        metrics = {"epoch": epoch, "train_loss": st.loss_sum / max(local_n, 1), "train_accuracy": train_acc,
                   "train_certified": Radius.keyed({cert_eps: st.certified / max(local_n, 1)}),
                   "lr": opt.param_groups[0]["lr"], "epoch_time_s": epoch_time, "images_per_s": len(tx) / epoch_time}
        if is_main:
            metrics.update(evaluate(model, vx, vy, recipe.eval_eps, recipe, device))
        chance = 1.0 / info.num_classes
        if best_train_acc > 2 * chance and train_acc <= 1.2 * chance:
            raise DivergenceError(
                f"training accuracy collapsed to chance ({train_acc:.3f}) at epoch {epoch + 1} after reaching "
                f"{best_train_acc:.3f}; {_kept(ckpt_path)}"
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
                           f"cert36 {cert.get(SEARCH_RADIUS.key, float('nan')):.3f} "
                           f"{metrics['images_per_s']:.0f} img/s")
        last = metrics
    if not last and is_main and metrics_path.is_file():  # nothing left to train: report the last finished epoch
        done = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
        last = done[-1] if done else {}
    return _finish(recipe, out, model, at.epoch if not last else last["epoch"] + 1, last, wall0, device, world,
                   is_main)


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
    if is_main and model is not None and finished >= recipe.epochs:
        # the per-epoch certified accuracies assume L = 1; the run record carries the proven bound
        record["lipschitz_upper"] = float(audit(model, lower=False).upper)
        sd = _unwrap(model).state_dict()
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
        with training_autocast(recipe.precision, device):
            z = net(x)
        loss = offset_cross_entropy(z.float(), y, recipe.loss_offset, recipe.loss_temperature)
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
    metric: str = SEARCH_RADIUS.key,
    estimate: dict | None = None,
    device: str = "cpu",
    progress: bool = True,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    plan: Callable[[Recipe], dict] | None = None,
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
        trial_plan = (plan(cand) if plan is not None
                      else plan_budget(cand, budget_seconds, estimate["batch_seconds"], len(data[0])))
        cand = apply_budget(cand, trial_plan | {k: estimate[k] for k in ("device", "hardware") if k in estimate})
        run = Path(out_root) / f"lr{f:g}"
        done = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
        if not done.get("complete"):
            done = train(cand, run, device=device, resume=(run / "checkpoint.safetensors").exists(),
                         progress=progress, data=data)
        final = done["final"]
        trials.append({"lr": cand.lr, "factor": f, "val_accuracy": final["val_accuracy"],
                       "val_certified": final["val_certified"], "epochs": cand.epochs,
                       "train_limit": cand.train_limit, "run": str(run)})
    return {"best_lr": best_trial(trials, metric)["lr"], "metric": f"val_certified[{metric}]",
            "budget_seconds": budget_seconds, "trials": trials}


def best_trial(trials: list[dict], metric: str = SEARCH_RADIUS.key) -> dict:
    """THE winner rule of a learning-rate search: the trial with the best validation certified
    accuracy at the radius key ``metric`` (missing: 0), ties broken by the validation accuracy."""
    if not trials:
        raise ValueError("a learning-rate search without trials has no winner")
    return max(trials, key=lambda t: (t["val_certified"].get(metric, 0.0), t["val_accuracy"]))
