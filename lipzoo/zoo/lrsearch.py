"""Budgets and the learning-rate search: the paper's estimator (time a few batches, extrapolate
to epochs) and a small search scored on held-out training images, never on the test split.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from .._provenance import hardware
from ..data import dataset_info
from ..radius import Radius
from .recipe import Recipe, RecipeError, offset_cross_entropy, training_autocast
from .trainer import build_model, load_splits, optimizer_and_schedule, train

__all__ = ["estimate_epochs", "plan_budget", "apply_budget", "search_lr", "best_trial", "edge_winner", "SEARCH_RADIUS"]

#: the radius whose validation certified accuracy scores a learning-rate trial
SEARCH_RADIUS = Radius.of_steps(36)


def estimate_epochs(
    recipe: Recipe, budget_seconds: float, *, device: str = "cpu", batches: int = 5, train_size: int | None = None
) -> dict:
    """The paper's budget estimator: time a few training batches, extrapolate to epochs.

    Returns ``{"seconds", "device", "batch_seconds", "epoch_seconds", "epochs", "hardware"}``;
    the caller writes ``epochs`` (and this record as ``budget``) into the recipe.
    """
    info = dataset_info(recipe.dataset)
    model = build_model(recipe).to(device)
    opt, _ = optimizer_and_schedule(model, recipe, 1)
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
    extend: int = 0,
) -> dict:
    """A small learning-rate search on the held-out validation split (``recipe.val_size`` > 0).

    Each candidate ``recipe.lr * f`` is trained with the budget ``budget_seconds`` (turned into
    epochs by :func:`plan_budget` from the batch time of ``estimate``, an :func:`estimate_epochs`
    result, measured here if not given) into ``out_root/lr<f>`` (a finished trial is reused); the winner has the best validation
    certified accuracy at ``metric`` (an eps key of ``val_certified``; ties: the clean accuracy).
    ``extend`` > 0 brackets the optimum: while the winner is the largest (smallest) factor tried,
    one more trial at twice (half) that factor, at most ``extend`` of them (listed in ``extended``);
    ``edge`` says whether the final winner is still the ``"largest"`` or ``"smallest"`` factor tried
    (``None``: bracketed, both neighbours scored lower), so a recipe can say its optimum was not found.
    Returns ``{"best_lr", "trials": [{"lr", "val_accuracy", "val_certified", "run"}], "budget_seconds",
    "extended", "edge"}``. The test split is never used.
    """
    if recipe.val_size <= 0:
        raise RecipeError(f"{recipe.name}: a learning-rate search needs a held-out validation split (val_size > 0)")
    if data is None:
        data = load_splits(replace(recipe, train_limit=None))
    if estimate is None:
        estimate = estimate_epochs(recipe, budget_seconds, device=device, batches=2, train_size=len(data[0]))

    def trial(f: float) -> dict:
        cand = replace(recipe, lr=recipe.lr * f, name=f"{recipe.name}-lr{f:g}")
        trial_plan = (plan(cand) if plan is not None
                      else plan_budget(cand, budget_seconds, estimate["batch_seconds"], len(data[0])))
        cand = apply_budget(cand, trial_plan | {k: estimate[k] for k in ("device", "hardware") if k in estimate})
        run = Path(out_root) / f"lr{f:g}"
        done = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
        if done.get("complete"):
            _check_same_trial(run, cand)
        if not done.get("complete"):
            done = train(cand, run, device=device, resume=(run / "checkpoint.safetensors").exists(),
                         progress=progress, data=data)
        final = done["final"]
        return {"lr": cand.lr, "factor": f, "val_accuracy": final["val_accuracy"],
                "val_certified": final["val_certified"], "epochs": cand.epochs,
                "train_limit": cand.train_limit, "run": str(run)}

    trials = [trial(f) for f in factors]
    extended = _bracket(trials, trial, extend, metric)
    return {"best_lr": best_trial(trials, metric)["lr"], "metric": f"val_certified[{metric}]",
            "budget_seconds": budget_seconds, "trials": trials, "extended": extended,
            "edge": edge_winner(trials, metric)}


def edge_winner(trials: list[dict], metric: str = SEARCH_RADIUS.key) -> str | None:
    """``"largest"`` / ``"smallest"`` when the winner is the largest / smallest factor tried (the
    optimum may lie beyond it), ``None`` when tried factors on both sides scored lower."""
    best, tried = best_trial(trials, metric)["factor"], [t["factor"] for t in trials]
    if best == max(tried):
        return "largest"
    if best == min(tried):
        return "smallest"
    return None


def _bracket(trials: list[dict], trial: Callable[[float], dict], extend: int, metric: str) -> list[float]:
    """Append up to ``extend`` trials beyond an edge winner (twice the largest or half the smallest
    factor) until a smaller and a larger factor both score below the winner; the added factors."""
    extended: list[float] = []
    while len(extended) < extend:
        edge, best = edge_winner(trials, metric), best_trial(trials, metric)["factor"]
        if edge is None:
            break
        f = 2.0 * best if edge == "largest" else 0.5 * best
        trials.append(trial(f))
        extended.append(f)
    return extended


#: the recipe fields a reused trial must share with the candidate besides its lr (not its epochs and
#: train_limit: a budget search re-times its batches when it is run again)
TRIAL_FIELDS = ("architecture", "dataset", "layer_options", "precision", "batch_size", "weight_decay", "val_limit",
                "seed")


def _check_same_trial(run: Path, cand: Recipe) -> None:
    """A finished trial is reused only when it is the candidate's: the same lr (its folder is named
    by the factor) and the same :data:`TRIAL_FIELDS` (e.g. layer options changed between searches)."""
    done = Recipe.load(run / "recipe.yaml")
    if not math.isclose(done.lr, cand.lr, rel_tol=1e-9):
        raise RecipeError(f"{run} holds a finished trial at lr {done.lr:g}, not {cand.lr:g}: search into another folder, "
                          "or move that one away")
    for field in TRIAL_FIELDS:
        if getattr(done, field) != getattr(cand, field):
            raise RecipeError(f"{run} holds a finished trial with {field} {getattr(done, field)!r}, not "
                              f"{getattr(cand, field)!r}: search into another folder, or move that one away")


def best_trial(trials: list[dict], metric: str = SEARCH_RADIUS.key) -> dict:
    """THE winner rule of a learning-rate search: the trial with the best validation certified
    accuracy at the radius key ``metric`` (missing: 0), ties broken by the validation accuracy."""
    if not trials:
        raise ValueError("a learning-rate search without trials has no winner")
    return max(trials, key=lambda t: (t["val_certified"].get(metric, 0.0), t["val_accuracy"]))

