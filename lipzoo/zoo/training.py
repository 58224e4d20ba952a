"""The zoo's training API in one import: recipes, the resumable trainer, budgets and the lr search.

The code lives in :mod:`lipzoo.zoo.recipe` (the recipe, its validation, the paper's loss),
:mod:`lipzoo.zoo.checkpoint` (checkpoints, the run lock, what a run directory may receive),
:mod:`lipzoo.zoo.trainer` (the resumable trainer, single device or torchrun DDP) and
:mod:`lipzoo.zoo.lrsearch` (the budget estimator and the learning-rate search).
"""

from __future__ import annotations

from .checkpoint import CheckpointError, Resumed, RunFinishedError, RunLockedError, load_checkpoint, run_lock, \
    save_checkpoint
from .lrsearch import SEARCH_RADIUS, apply_budget, best_trial, edge_winner, estimate_epochs, plan_budget, search_lr
from .recipe import PAPER_OFFSET, PAPER_TEMPERATURE, PRECISIONS, Recipe, RecipeError, offset_cross_entropy, \
    recipe_changes, training_autocast
from .trainer import DivergenceError, as_float, augment, build_model, evaluate, limit_splits, load_splits, train

__all__ = [
    "Recipe", "RecipeError", "DivergenceError", "offset_cross_entropy", "train", "build_model", "estimate_epochs",
    "apply_budget", "plan_budget", "search_lr", "best_trial", "edge_winner", "SEARCH_RADIUS", "recipe_changes",
    "training_autocast", "augment", "as_float", "load_splits", "limit_splits", "evaluate", "CheckpointError", "Resumed",
    "save_checkpoint", "load_checkpoint", "RunLockedError", "RunFinishedError", "run_lock", "PAPER_OFFSET",
    "PAPER_TEMPERATURE", "PRECISIONS",
]
