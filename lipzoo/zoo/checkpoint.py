"""The state of a run directory: checkpoints, the lock held while training, and the check that a
folder may receive a run (fresh, or an unfinished run of the same recipe).

``checkpoint.safetensors`` holds the weights, the optimizer's tensors (its scalars and the
scheduler as JSON metadata), the RNG state and, mid-epoch, the epoch's data generator and running
sums; it is rewritten atomically, so a killed run loses at most the time since the last one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from .._io import atomic_save_safetensors
from .recipe import Recipe, RecipeError, recipe_changes

__all__ = ["CheckpointError", "Resumed", "save_checkpoint", "load_checkpoint", "RunLockedError", "RunFinishedError",
           "run_lock", "prepare_run", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or compiled) wrapper; the model itself otherwise."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: Path, model: nn.Module, opt, sched, epoch: int, *, batch: int = 0,
                    generator: torch.Generator | None = None, partial: dict | None = None) -> None:
    """Write weights, optimizer, scheduler and RNG state atomically.

    ``epoch`` epochs are finished; with ``batch`` > 0 the next epoch is ``batch`` batches in, its
    data generator's state is ``generator`` and its running sums are ``partial`` (mid-epoch).
    """
    tensors = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
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
    unwrap(model).load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
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


def prepare_run(recipe: Recipe, out: Path, resume: bool) -> None:
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


def epochs_time_s(metrics: Path) -> float:
    """The summed ``epoch_time_s`` of the finished epochs in ``metrics``."""
    if not metrics.is_file():
        return 0.0
    return float(sum(json.loads(ln).get("epoch_time_s", 0.0) for ln in metrics.read_text().splitlines() if ln.strip()))


@contextmanager
def discarded_if_unstarted(out: Path, fresh: bool, created: bool) -> Iterator[None]:
    """A fresh run into ``out`` (entered holding its lock) that stops by an error before its first
    checkpoint leaves nothing behind: nothing in it could be resumed. ``created``: the folder did not
    exist before the run (then the empty folder goes too). A resumed run is untouched."""
    try:
        yield
    except BaseException:
        if fresh and not (out / "checkpoint.safetensors").exists() and not (out / "model.safetensors").exists():
            for name in ("recipe.yaml", "metrics.jsonl", "run.json", ".lock"):
                (out / name).unlink(missing_ok=True)
            if created:
                try:
                    out.rmdir()  # only when empty: anything else in it is not ours to delete
                except OSError:
                    pass
        raise
