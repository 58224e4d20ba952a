#!/usr/bin/env python
"""Train the Fashion-MNIST ConvNet-XS zoo: the same wall-clock budget for every layer.

For each layer (a driver over lipzoo.zoo.training; no logic of its own):

1. time a few training batches of its recipe (``estimate_epochs``, the paper's estimator);
2. a small learning-rate search on the 5,000 held-out validation images (``search_lr``: the
   recipe's lr times 0.5, 1 and 2, each with ``--search-fraction`` of the budget);
3. write the winning lr, the budget's epochs (or, under one epoch, ``train_limit``), the budget
   record and the search into ``recipes/fashion_mnist/convnet_xs_<layer>.yaml``;
4. train that recipe into ``<out>/convnet_xs_<layer>`` (resumable: run the script again).

``--workers N`` runs N layers at once, each pinned to ``--threads`` CPU cores of its own with that many torch
threads, so every layer sees the same device. Without ``--workers``/``--threads`` the thread policy is the
one that won for most layers at the run's batch size in the newest ``results/threads/thread-policy-*.json``
(written by ``scripts/thread_policy.py``; ``2x1``, two 1-thread runs side by side, when there is none);
workers always run with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning).
The test split is never touched here: ``lipzoo evaluate`` and ``lipzoo publish`` come after.

    python scripts/train_zoo.py --budget-seconds 360 --workers 2 --out runs/zoo \
        --layers soc,sandwich,lot,bcop,cayley,aol,cpl,sll,standard --repro aol
    lipzoo evaluate runs/zoo/convnet_xs_aol && lipzoo publish runs/zoo/convnet_xs_aol
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lipzoo.zoo.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VAL_SIZE = 5000
SEARCH_VAL_LIMIT = 1000  # validation images per search trial (the final run validates on all 5,000)
ZOO_CLEAN_FLOOR, ZOO_CERT_FLOOR = 0.85, 0.75  # clean / certified at 36/255 of a 1-Lipschitz zoo model
STANDARD_CLEAN_FLOOR = 0.91  # the unconstrained baseline (no certificate)
BATCH_SIZE = 64  # not the paper's 256: a CPU budget of minutes gives too few optimizer steps at 256
#: converge mode: in results/threads (two 1-thread runs, 2-core AMD EPYC) batch 128 gave more images/s than 64
#: for AOL and LOT and about as many for SLL; 256 gave no more than 128 for AOL and SLL while halving the steps again
CONVERGE_BATCH_SIZE = 128


#: thread policy (scripts/thread_policy.py) -> (workers, threads per worker)
POLICY_SHAPE = {"1x1": (1, 1), "1x2-passive": (1, 2), "1x2-active": (1, 2), "2x1": (2, 1)}
DEFAULT_POLICY = "2x1"


def measured_policy(batch_size: int, folder: Path = ROOT / "results" / "threads") -> tuple[str, str]:
    """The thread policy that won for most layers at ``batch_size`` (any batch size if none was measured
    at it) in the newest thread-policy file, and where that came from."""
    files = sorted(folder.glob("thread-policy-*.json"))
    if not files:
        return DEFAULT_POLICY, f"no {folder.name}/thread-policy-*.json: default {DEFAULT_POLICY}"
    winners = json.loads(files[-1].read_text())["winners"]  # {"<layer>@<batch>": policy}
    at_batch = [pol for key, pol in winners.items() if key.rsplit("@", 1)[1] == str(batch_size)]
    votes = at_batch or list(winners.values())
    best = max(POLICY_SHAPE, key=lambda pol: (votes.count(pol), pol == DEFAULT_POLICY))
    return best, (f"{files[-1].name}: {best} won for {votes.count(best)} of {len(votes)} layer(s)"
                  + (f" at batch {batch_size}" if at_batch else " (no run at this batch size)"))


def measured_precision(layer: str, folder: Path = ROOT / "results" / "precision-xs") -> tuple[str, str]:
    """``bf16`` where the newest ``lipzoo bench --precision fp32,bf16`` file of THIS CPU model measured
    a faster bf16 training step for ``layer`` (or, if the layer was not measured, for standard) AND the
    newest ``scripts/precision_check.py`` file of this CPU model found bf16 training no less accurate
    for ``layer``; else ``fp32``. Also the sentence that says why (it goes into the recipe's notes)."""
    from lipzoo._provenance import cpu_model
    from lipzoo.zoo.bench import read_results

    here = cpu_model()
    for f in sorted(folder.glob("benchmark-*.csv"), reverse=True):
        rows = [r for r in read_results(f) if r.get("hw_cpu_model") == here and r.get("train_images_per_s")]
        for name in (layer, "standard"):
            speed = {r.get("precision"): r["train_images_per_s"] for r in rows if r["layer"] == name}
            if {"fp32", "bf16"} <= set(speed):
                ratio = speed["fp32"] / speed["bf16"]
                why = (f"a bf16 training step of {name} took {ratio:.2f}x as long as fp32 on {here} "
                       f"({folder.name}/{f.name})")
                if ratio >= 1:
                    return "fp32", f"Precision fp32: {why}"
                return accuracy_checked(layer, folder, here, why)
    return "fp32", f"Precision fp32: bf16 was not measured on {here}"


def accuracy_checked(layer: str, folder: Path, here: str, faster: str) -> tuple[str, str]:
    """bf16 (measured faster: ``faster`` says how) only where the newest accuracy check of ``layer`` on
    the CPU model ``here`` passed; the sentence says which file decided."""
    for f in sorted(folder.glob("accuracy-*.json"), reverse=True):
        check = json.loads(f.read_text())
        v = check.get("verdicts", {}).get(layer)
        if v is None or check.get("hardware", {}).get("cpu") != here:
            continue
        scored = (f"in one epoch over {check['protocol']['images']} images bf16 changed validation accuracy by "
                  f"{-v['clean_drop_points']:+g} and certified accuracy by {-v['certified_drop_points']:+g} points "
                  f"against fp32 (tolerance {check['tolerance_points']:g}; {folder.name}/{f.name})")
        return ("bf16", f"Precision bf16: {faster}, and {scored}") if v["bf16_ok"] else \
            ("fp32", f"Precision fp32: although {faster}, {scored}")
    return "fp32", (f"Precision fp32: although {faster}, bf16 training of {layer} was not checked for accuracy "
                    f"on {here} (scripts/precision_check.py)")


def search_base_lr(search: dict) -> float:
    """The lr a search multiplied by its factors (every trial's ``lr / factor``; a search need not
    have tried factor 1, e.g. one run with ``--lr-factors 8,16,32``)."""
    trial = search["trials"][0]
    return float(trial["lr"]) / float(trial["factor"])


def recipe_path(layer: str) -> Path:
    return ROOT / "recipes" / "fashion_mnist" / f"convnet_xs_{layer}.yaml"


def trials_text(search: dict) -> str:
    """The search's trials in one line of the recipe's notes."""
    from lipzoo.zoo.training import SEARCH_RADIUS

    return "; ".join(f"lr {t['lr']:.4g}: val acc {t['val_accuracy']:.3f}, val cert36 "
                     f"{t['val_certified'].get(SEARCH_RADIUS.key, 0):.3f}" for t in search["trials"])


def edge_text(search: dict) -> str:
    """What the recipe's notes add when the search's winner is still an edge of the lrs tried."""
    from lipzoo.zoo.training import edge_winner

    edge = edge_winner(search["trials"])
    return (f" (the {edge} lr tried: the search did not bracket it, a better lr may lie beyond)"
            if edge else "")


def with_epochs(recipe: Recipe, epochs: int) -> Recipe:
    """The same searched recipe run for ``epochs`` epochs: its epochs, its budget record and its notes say so."""
    notes = re.sub(r"--epochs %d\b" % recipe.epochs, f"--epochs {epochs}", recipe.notes or "")
    budget = recipe.budget
    if budget and "epochs" in budget:
        budget = {**budget, "epochs": epochs}
    return replace(recipe, epochs=epochs, budget=budget,
                   notes=re.sub(r"\b%d epochs\b" % recipe.epochs, f"{epochs} epochs", notes))


def with_lr_instead(recipe: Recipe, lr: float, why: str) -> Recipe:
    """The searched recipe at another of its searched lrs, smaller than the search's winner (e.g. when
    the winner diverged in the full run): its lr, its budget record (``chosen_lr``, ``chosen_why``) and
    its notes say which and why. Raises ValueError naming what was wrong and what is expected."""
    search = (recipe.budget or {}).get("lr_search")
    if not search:
        raise ValueError(f"--lr-instead: {recipe.name} has no lr search in its budget record; "
                         "expected a recipe planned by this script")
    if not why.strip():
        raise ValueError("--lr-why is empty; expected the reason the search's winner is not trained")
    best = search["best_lr"]
    below = sorted(t["lr"] for t in search["trials"] if t["lr"] < best)
    chosen = next((t for t in below if abs(t - lr) <= 1e-3 * t), None)
    if chosen is None:
        raise ValueError(f"--lr-instead {lr:g} was not searched below the winner {best:g}; expected one of: "
                         + (", ".join(f"{t:g}" for t in below) or "none (the winner is the smallest lr tried)"))
    if (recipe.budget or {}).get("chosen_lr") == chosen and recipe.lr == chosen:
        return recipe
    said = f"chosen lr {chosen:.4g} instead of the search's winner {best:.4g}: {why.strip().rstrip('.')}"
    old = f"chosen lr {recipe.lr:.4g}"
    notes = recipe.notes or ""
    notes = notes.replace(old, said, 1) if old in notes else f"{notes.rstrip()} {said[0].upper()}{said[1:]}."
    return replace(recipe, lr=chosen, budget={**recipe.budget, "chosen_lr": chosen, "chosen_why": why.strip()},
                   notes=notes)


def run_layer(layer: str, args: argparse.Namespace) -> None:
    import torch

    from lipzoo.zoo.training import Recipe, apply_budget, best_trial, estimate_epochs, load_splits, search_lr, train

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    path = recipe_path(layer)
    base = Recipe.load(path)
    earlier = None
    if (base.budget or {}).get("zoo") and args.replan:  # a second search, e.g. when the first never left chance
        earlier = base.budget.get("lr_search")
        paper_lr = search_base_lr(earlier)
        # converge mode searches around base.lr * --lr-scale: the same trials again (reused), then the extension
        base = replace(base, lr=paper_lr / args.lr_scale if args.epochs else paper_lr, budget=None)
    planned = str((base.budget or {}).get("zoo", ""))
    if planned and (planned.endswith("--epochs") == bool(args.epochs)):  # planned earlier in this mode: (re)train
        final = base
        if args.epochs and args.epochs != base.epochs:  # a longer (or shorter) run of the same searched recipe
            final = with_epochs(base, args.epochs)
        if args.lr_instead:  # e.g. the winner diverged in the full run: another searched lr, said why
            final = with_lr_instead(final, args.lr_instead, args.lr_why)
        if final is not base:
            final.dump(path)
    elif args.epochs:
        final = plan_converge(base, args)
        final.dump(path)
    else:
        base = replace(base, val_size=VAL_SIZE, schedule_step="batch", batch_size=BATCH_SIZE, train_limit=None,
                       val_limit=None)
        data = load_splits(base)
        est = estimate_epochs(base, args.budget_seconds, batches=args.timing_batches, train_size=len(data[0]))
        factors = tuple(float(f) for f in args.lr_factors.split(","))
        search = search_lr(replace(base, val_limit=SEARCH_VAL_LIMIT), args.budget_seconds * args.search_fraction,
                           out / "search" / f"convnet_xs_{layer}", factors=factors, estimate=est, progress=False,
                           data=data)
        if earlier:  # both searches count: the best of all trials wins
            search["trials"] = earlier["trials"] + search["trials"]
            search["best_lr"] = best_trial(search["trials"])["lr"]
        trials = trials_text(search)
        factor_list = ", ".join(f"{t['factor']:g}" for t in search["trials"])
        final = apply_budget(replace(base, lr=search["best_lr"]), est)
        final.budget |= {"zoo": "scripts/train_zoo.py", "workers": args.workers, "threads": args.threads,
                         "lr_search": search}
        final.notes = (
            f"Fashion-MNIST zoo recipe (scripts/train_zoo.py): the same wall-clock budget for every layer, "
            f"{args.budget_seconds:g} s of training on {est['hardware']['cpu']} with {args.threads} thread(s), "
            f"{args.workers} runs at once (one core each). This is a CPU budget, NOT the paper's 2-hour GPU budget. "
            f"One batch took {est['batch_seconds']:.3g} s, so the budget gives {final.epochs} epoch(s)"
            + (f" over {final.train_limit} of the {len(data[0])} training images" if final.train_limit else "")
            + f"; batch size {BATCH_SIZE} (not the paper's 256: more optimizer steps in a short budget); OneCycle is "
            f"stepped per batch. {VAL_SIZE} training images are held out as validation. "
            f"Learning rate: the paper's CIFAR-10 value x ({factor_list}), each trained for "
            f"{args.budget_seconds * args.search_fraction:g} s and scored on {SEARCH_VAL_LIMIT} validation images "
            f"(certified accuracy at 36/255, then accuracy): {trials}; chosen lr {final.lr:.4g}{edge_text(search)}. Weight decay: the "
            f"paper's. Test-split numbers come from `lipzoo evaluate`, never from this search."
        )
        final.dump(path)
    run = out / f"convnet_xs_{layer}"
    if (run / "model.safetensors").exists():
        print(json.dumps({"layer": layer, "complete": True, "note": f"{run} is finished"}), flush=True)
        return
    record = train(final, run, resume=(run / "checkpoint.safetensors").exists(), progress=False,
                   checkpoint_every_s=args.checkpoint_every)
    print(json.dumps({"layer": layer, "complete": record["complete"], "wall_time_s": record["wall_time_s"],
                      "final": record["final"]}), flush=True)


def plan_converge(base, args: argparse.Namespace):
    """A recipe meant to converge: ``--epochs`` epochs over the whole training split, OneCycle per
    batch over the whole run, the lr picked by short trials scored on held-out training images."""
    from dataclasses import replace

    from lipzoo.layers import LAYERS
    from lipzoo.registry import ARCHITECTURES
    from lipzoo.zoo.training import load_splits, search_lr

    lr0 = base.lr * args.lr_scale
    precision, precision_why = measured_precision(ARCHITECTURES[base.architecture].layer)
    base = replace(base, lr=lr0, precision=precision, val_size=VAL_SIZE, schedule_step="batch", batch_size=args.batch_size,
                   train_limit=None, val_limit=None, epochs=args.epochs, budget=None)
    data = load_splits(base)
    factors = tuple(float(f) for f in args.lr_factors.split(","))
    trial = replace(base, epochs=1, train_limit=args.search_images, val_limit=SEARCH_VAL_LIMIT)
    estimate = {"batch_seconds": 1.0}  # unused: a trial is one epoch over --search-images, not a time budget
    search = search_lr(trial, args.search_images, Path(args.out) / "search" / base.architecture,
                       factors=factors, estimate=estimate | {"epochs": 1}, progress=False, data=data,
                       plan=lambda cand: {"epochs": 1, "train_limit": args.search_images}, extend=args.search_extend)
    trials = trials_text(search)
    lipschitz = LAYERS[ARCHITECTURES[base.architecture].layer].lipschitz
    # the zoo's quality line: a model below it is only published marked 'undertrained'
    final = replace(base, lr=search["best_lr"], publish_clean_floor=ZOO_CLEAN_FLOOR if lipschitz else STANDARD_CLEAN_FLOOR,
                    publish_floor=ZOO_CERT_FLOOR if lipschitz else None)
    final.budget = {"zoo": "scripts/train_zoo.py --epochs", "epochs": args.epochs, "threads": args.threads, "workers": args.workers,
                    "lr_search": search}
    final.notes = (
        f"Fashion-MNIST zoo recipe meant to converge (scripts/train_zoo.py --epochs {args.epochs}): "
        f"{args.epochs} epochs over the {len(data[0])} training images left after holding out {VAL_SIZE} as "
        f"validation, batch size {args.batch_size} (training images/s per batch size: results/threads), SGD with OneCycle stepped per batch over the whole run. "
        f"Learning rate: {lr0:.4g} x ({', '.join(f'{f:g}' for f in factors)}"
        + (f"; then {', '.join(f'{f:g}' for f in search['extended'])}, beyond the winning edge" if search["extended"] else "")
        + "), each trained for one epoch over "
        f"{args.search_images} training images and scored on {SEARCH_VAL_LIMIT} held-out validation images "
        f"(certified accuracy at 36/255, then accuracy): {trials}; chosen lr {final.lr:.4g}{edge_text(search)}. Weight decay: the "
        f"paper's. {precision_why}. Test-split numbers come from `lipzoo evaluate`, never from this search."
        + (f" Layer options {dict(base.layer_options)}: see the layer's documentation." if base.layer_options else "")
    )
    return final


def repro_layer(layer: str, args: argparse.Namespace) -> None:
    """Retrain a planned zoo recipe from its file alone into ``<out>/convnet_xs_<layer>-repro``."""
    import torch

    from lipzoo.zoo.training import Recipe, train

    torch.set_num_threads(args.threads)
    run = Path(args.out) / f"convnet_xs_{layer}-repro"
    if (run / "model.safetensors").exists():
        print(json.dumps({"repro": layer, "complete": True, "note": f"{run} is finished"}), flush=True)
        return
    record = train(Recipe.load(recipe_path(layer)), run, resume=(run / "checkpoint.safetensors").exists(),
                   progress=False, checkpoint_every_s=args.checkpoint_every)
    print(json.dumps({"repro": layer, "complete": record["complete"], "final": record["final"]}), flush=True)


def main() -> None:
    from lipzoo.layers import LAYERS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="*", help="layer ids, shell wildcards, comma-separated (default: all nine)")
    p.add_argument("--budget-seconds", type=float, default=300.0, help="training budget per layer (default 300)")
    p.add_argument("--search-fraction", type=float, default=0.2,
                   help="budget of each lr-search trial, as a fraction of --budget-seconds (default 0.2)")
    p.add_argument("--timing-batches", type=int, default=2, help="timed batches of the budget estimate")
    p.add_argument("--workers", type=int, default=None,
                   help="layers trained at once (default: from the measured thread policy, see above)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: from the measured thread policy)")
    p.add_argument("--out", default="runs/zoo", help="folder of the run directories")
    p.add_argument("--lr-factors", default="0.5,1,2", help="lr search: multiples of the recipe's lr (default 0.5,1,2)")
    p.add_argument("--replan", action="store_true",
                   help="search again (with --lr-factors) even if the recipe was planned; earlier trials are kept "
                        "(converge mode: finished trials are reused and --search-extend brackets the winner; "
                        "move the earlier run folder away first)")
    p.add_argument("--repro", default=None,
                   help="after the zoo, retrain this layer's recipe once more (<out>/convnet_xs_<layer>-repro)")
    p.add_argument("--epochs", type=int, default=0,
                   help="converge mode: this many epochs over the whole training split (0: the --budget-seconds mode)")
    p.add_argument("--batch-size", type=int, default=CONVERGE_BATCH_SIZE,
                   help=f"converge mode batch size (default {CONVERGE_BATCH_SIZE}, see results/threads)")
    p.add_argument("--search-images", type=int, default=12800,
                   help="converge mode: training images of each one-epoch lr-search trial (default 12800)")
    p.add_argument("--search-extend", type=int, default=1,
                   help="converge mode: while the best lr is the largest (smallest) tried, one more trial at twice "
                        "(half) it, at most this many (default 1; 0: the factors only)")
    p.add_argument("--lr-scale", type=float, default=1.0,
                   help="converge mode: multiply the recipe's lr before the search (e.g. for the standard net)")
    p.add_argument("--lr-instead", type=float, default=None,
                   help="train a planned recipe at this lr, one of its searched lrs below the search's winner "
                        "(e.g. when the winner diverged in the full run; move that run folder away first); "
                        "recorded in the recipe's budget (chosen_lr, chosen_why) and notes")
    p.add_argument("--lr-why", default="", help="with --lr-instead: why the search's winner is not trained")
    p.add_argument("--checkpoint-every", type=float, default=300.0,
                   help="seconds of training between mid-epoch checkpoints (default 300)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one job in this process
    args = p.parse_args()
    if args.workers is None or args.threads is None:
        policy, why = measured_policy(args.batch_size)
        workers, threads = POLICY_SHAPE[policy]
        args.workers = workers if args.workers is None else args.workers
        args.threads = threads if args.threads is None else args.threads
        if not args.one:
            print(f"thread policy: {args.workers} worker(s) x {args.threads} thread(s) ({why})", flush=True)
    if args.workers < 1 or args.threads < 1:
        p.error(f"--workers and --threads must be >= 1, got {args.workers} and {args.threads}")
    if args.one:
        kind, _, layer = args.one.rpartition(":")
        (repro_layer if kind == "repro" else run_layer)(layer, args)
        return
    pats = [s.strip() for s in args.layers.split(",") if s.strip()]
    layers = list(dict.fromkeys(lid for q in pats for lid in LAYERS if fnmatch.fnmatchcase(lid, q)))  # given order
    if not layers:
        p.error(f"no layer matches {args.layers!r}; known: {', '.join(LAYERS)}")
    if args.lr_instead is not None:  # checked here, before any worker starts
        from lipzoo.zoo.recipe import Recipe

        if len(layers) != 1:
            p.error(f"--lr-instead takes exactly one layer, got {len(layers)}: {', '.join(layers)}")
        if args.replan:
            p.error("--lr-instead picks among the trials of a finished search; it cannot go with --replan "
                    "(search first, then train at a smaller searched lr)")
        try:
            with_lr_instead(Recipe.load(recipe_path(layers[0])), args.lr_instead, args.lr_why)
        except ValueError as err:
            p.error(str(err))
    if args.repro:
        if args.repro not in LAYERS:
            p.error(f"--repro {args.repro!r} is not a layer id; known: {', '.join(LAYERS)}")
        layers.append(f"repro:{args.repro}")
    cores = sorted(os.sched_getaffinity(0))
    queue, running = list(layers), {}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    while queue or running:
        while queue and len(running) < args.workers:
            layer, slot = queue.pop(0), [i for i in range(args.workers) if i not in {v[1] for v in running.values()}][0]
            # each worker gets --threads cores of its own (wrapping round when there are too few)
            core = ",".join(str(cores[(slot * args.threads + k) % len(cores)]) for k in range(args.threads))
            cmd = [sys.executable, __file__, "--one", layer] + [a for a in sys.argv[1:]] + [
                "--workers", str(args.workers), "--threads", str(args.threads)]
            log = open(Path(args.out) / f"{layer.replace(':', '-')}.log", "a")
            env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
            proc = subprocess.Popen(["taskset", "-c", str(core)] + cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[layer] = (proc, slot, log)
            print(f"[{time.time() - t0:7.0f} s] started {layer} on core {core}", flush=True)
        time.sleep(2)
        for layer, (proc, _, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[layer]
                print(f"[{time.time() - t0:7.0f} s] {layer} finished with exit status {proc.returncode}", flush=True)


if __name__ == "__main__":
    main()
