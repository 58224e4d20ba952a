"""Training recipes: everything needed to (re)train one zoo entry, type- and range-checked.

A recipe is a YAML file (``recipes/<dataset>/<architecture>.yaml``) of :class:`Recipe` fields:
architecture, data set, epochs, SGD with momentum and weight decay, the OneCycle schedule, the
paper's offset cross-entropy, augmentation, seed, and optionally the quality line ``lipzoo
publish`` enforces. :meth:`Recipe.load` checks every field; :func:`recipe_changes` names the
fields in which two recipes differ (what ``--resume`` refuses). The loss a recipe names
(:func:`offset_cross_entropy`) and the autocast of its precision (:func:`training_autocast`) are here too.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from .._io import atomic_write_text
from ..certify import DEFAULT_EPS
from ..data import dataset_info
from ..registry import get_architecture

__all__ = ["Recipe", "RecipeError", "recipe_changes", "PAPER_OFFSET", "PAPER_TEMPERATURE", "PRECISIONS",
           "offset_cross_entropy", "training_autocast"]

PAPER_OFFSET = 2 * math.sqrt(2) * 36 / 255  # 0.3993: the paper's margin offset
PAPER_TEMPERATURE = 0.25
#: training precisions of a recipe: "bf16" runs the training forward under bf16 autocast
PRECISIONS = ("fp32", "bf16")


class RecipeError(ValueError):
    """A recipe file that is missing a field or holds an invalid value."""


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


def training_autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The context of a training forward: bf16 autocast on ``device``'s type for ``"bf16"``, else nothing.

    Only the training step uses it; evaluation, certification and the audit never do. The layers
    compute their weights with autocast disabled (see :mod:`lipzoo.layers._base`)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def offset_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, offset: float = PAPER_OFFSET, temperature: float = PAPER_TEMPERATURE
) -> torch.Tensor:
    """The paper's loss: ``tau * CE((z - offset * onehot(y)) / tau, y)`` (mean over the batch)."""
    z = logits - offset * F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return temperature * F.cross_entropy(z / temperature, labels)
