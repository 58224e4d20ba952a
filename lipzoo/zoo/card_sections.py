"""The sections of a model card (``cards/<name>/README.md``), each rendered from the entry's
``config.json`` alone; :func:`lipzoo.zoo.cards.render_card` puts them together.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..radius import Radius
from ..registry import ARCHITECTURES, DEFAULT_HUB_ORG, PretrainedEntry, certifies, percent
from .curves import read_epochs

__all__ = ["GITHUB_REPO", "CARD_FILENAME", "HF_DATASETS", "PAPER_BIBTEX", "CURVE_FILENAME", "NO_CERTIFICATE", "by_eps",
           "certified_pairs", "audited_lipschitz", "accuracy_table", "hardware_text", "repo_id", "front_matter",
           "timing_rows", "training_cost", "provenance_lines", "budget_lines", "status_lines", "lipschitz_section",
           "usage_lines", "reproduction_lines", "HEAD_PROBE_FILENAME", "head_probe_lines"]

GITHUB_REPO = "lipzoo/lipzoo"  # torch.hub.load's "owner/repo"
CARD_FILENAME = "README.md"
#: Hugging Face dataset ids of the zoo's data sets (front matter ``datasets:``)
HF_DATASETS = {
    "fashion_mnist": ("zalando-datasets/fashion_mnist", "Fashion-MNIST"),
    "mnist": ("ylecun/mnist", "MNIST"),
    "cifar10": ("uoft-cs/cifar10", "CIFAR-10"),
    "cifar100": ("uoft-cs/cifar100", "CIFAR-100"),
    "tiny_imagenet": ("zh-plus/tiny-imagenet", "Tiny ImageNet"),
}
PAPER_BIBTEX = """@inproceedings{prach2024lipschitz,
  title     = {1-Lipschitz Layers Compared: Memory, Speed, and Certifiable Robustness},
  author    = {Prach, Bernd and Brau, Fabio and Buttazzo, Giorgio and Lampert, Christoph H.},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}"""
CURVE_FILENAME = "learning_curve.png"  # the learning curve lipzoo publish draws into a model folder
#: a head-refit probe of the folder's weights, written by ``scripts/head_probe.py --record``
HEAD_PROBE_FILENAME = "head_probe.json"


def by_eps(metrics: dict) -> list[tuple[Radius, float]]:
    """(radius, certified accuracy) pairs of a metrics dict (``certified_accuracy``: radius key -> fraction),
    by increasing radius."""
    return [(r, float(a)) for r, a in Radius.items(metrics.get("certified_accuracy"))]


def certified_pairs(entry: PretrainedEntry) -> list[tuple[Radius, float]]:
    """(eps, certified accuracy) pairs measured by lipzoo, by increasing eps."""
    return by_eps(entry.metrics)


def audited_lipschitz(entry: PretrainedEntry) -> float | None:
    """The proven upper bound on the entry's l2 Lipschitz constant recorded in its metrics
    (``metrics.audit.lipschitz_upper``, else a run record's ``metrics.lipschitz_upper``); ``None``
    when the weights were not audited."""
    audit = entry.metrics.get("audit")
    value = audit.get("lipschitz_upper") if isinstance(audit, dict) else entry.metrics.get("lipschitz_upper")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


NO_CERTIFICATE = "n/a (no certificate)"


def accuracy_table(clean, pairs: list[tuple[Radius, float]], certified: bool = True) -> list[str]:
    out = ["| l2 radius eps | certified accuracy |", "| --- | --- |", f"| 0 (clean accuracy) | {percent(clean)} |"]
    return out + [f"| {r.label} | {percent(a) if certified else NO_CERTIFICATE} |" for r, a in pairs]


def hardware_text(hw) -> str:
    """A hardware record (``timing.hardware``) in a few words: the GPU or CPU model name, threads and
    device; never the kernel string. Without a model name it says so (and names the processor
    architecture where recorded)."""
    if isinstance(hw, str):
        return hw or "not recorded"
    if not isinstance(hw, dict) or not hw:
        return "not recorded"
    device = str(hw.get("device") or "")
    name = hw.get("gpu") or hw.get("cpu_model")
    if not name:
        kind = "GPU" if device.startswith("cuda") else "CPU"
        arch = hw.get("cpu") or hw.get("processor")
        name = f"{kind} model not recorded" + (f" ({arch})" if arch and not device.startswith("cuda") else "")
    parts = [str(name)]
    threads = hw.get("cpu_threads")
    if isinstance(threads, int) and not hw.get("gpu"):
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    if device:
        parts.append(device)
    return ", ".join(parts)


def repo_id(entry: PretrainedEntry) -> str:
    # not hub_org(): a card must not depend on the environment it is rendered in
    return entry.hf_repo_id or f"{DEFAULT_HUB_ORG}/{entry.name}"


def front_matter(entry: PretrainedEntry) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    arch = ARCHITECTURES[entry.architecture]
    hf_id, ds_name = HF_DATASETS.get(entry.dataset, (entry.dataset, entry.dataset))
    common = {"task_type": "image-classification", "task_name": "Image Classification",
              "dataset_type": hf_id, "dataset_name": ds_name,
              "dataset_split": entry.metrics.get("split", "test")}
    results = []
    if "clean_accuracy" in entry.metrics:
        results.append(EvalResult(metric_type="accuracy", metric_name="Clean accuracy",
                                  metric_value=round(100 * float(entry.metrics["clean_accuracy"]), 2), **common))
    for r, a in certified_pairs(entry) if certifies(entry) else []:  # an unconstrained model certifies nothing
        results.append(EvalResult(metric_type="certified-accuracy",
                                  metric_name=f"Certified accuracy (l2, eps={r.label})",
                                  metric_value=round(100 * a, 2), metric_args={"eps": round(r.value, 6), "norm": "l2"},
                                  **common))
    data = ModelCardData(
        library_name="lipzoo", license=entry.license, datasets=[hf_id], pipeline_tag="image-classification",
        tags=["lipzoo", *(("lipschitz", "certified-robustness") if certifies(entry) else ("baseline",)),
              "image-classification", arch.layer, arch.family],
        model_name=entry.name if results else None, eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def timing_rows(entry: PretrainedEntry) -> list[tuple[str, str]]:
    t = dict(entry.timing)
    rows: list[tuple[str, str]] = []
    labels = {
        "train_time_s": "training time", "epochs": "epochs", "train_images_per_s": "training throughput",
        "inference_images_per_s": "inference throughput", "peak_memory_mb": "peak memory (training)",
        "inference_peak_memory_mb": "peak memory (inference)", "batch_size": "batch size",
        "train_images": "training images seen", "params": "trainable parameters",
        "inference_hardware": "inference measured on", "memory_method": "memory measured as",
    }
    for key, label in labels.items():
        if key not in t:
            continue
        v = t.pop(key)
        if key == "train_time_s":
            v = f"{float(v) / 3600:.2f} h ({float(v):.0f} s)"
        elif key.endswith("images_per_s"):
            v = f"{float(v):,.0f} images/s"
        elif key.endswith("memory_mb"):
            v = f"{float(v):,.0f} MiB"
        elif key in ("train_images", "params"):
            v = f"{int(v):,}"
        rows.append((label, str(v)))
    hw = t.pop("hardware", None)
    rows += [(k.replace("_", " "), str(v)) for k, v in sorted(t.items())]
    rows.append(("hardware", hardware_text(hw)))
    return rows


def duration(seconds: float) -> str:
    s = float(seconds)
    return f"{s / 60:.1f} min ({s:.0f} s)" if s < 7200 else f"{s / 3600:.2f} h ({s:.0f} s)"


def training_cost(entry: PretrainedEntry) -> list[str]:
    """The card's Training cost summary (hardware, threads, wall time, images/s) and learning curve."""
    t = entry.timing
    out: list[str] = []
    if isinstance(t.get("train_time_s"), (int, float)):
        epochs = t.get("epochs")
        ips, seen = t.get("train_images_per_s"), t.get("train_images")
        out += [f"- trained on: {hardware_text(t.get('hardware'))}",
                f"- wall-clock time: {duration(t['train_time_s'])}"
                + (f", {epochs} epoch{'s' if epochs != 1 else ''}" if isinstance(epochs, int) else "")]
        if isinstance(ips, (int, float)):
            out += [f"- training throughput: {float(ips):,.0f} images/s"
                    + (f" ({int(seen):,} training images)" if isinstance(seen, (int, float)) else "")]
        out += [""]
    else:
        out += ["No training cost is recorded for these weights.", ""]
    if entry.folder is not None and (Path(entry.folder) / CURVE_FILENAME).is_file():
        cert = ("; certified accuracy at 36/255 is computed as the trainer does, with L = 1" if certifies(entry)
                else "")
        out += [f"![learning curve]({CURVE_FILENAME})", "",
                f"Learning curve per epoch, drawn from `metrics.jsonl`: training loss, training and validation "
                f"clean accuracy{cert}.", ""]
    if entry.status and entry.folder is not None:
        out += curve_diagnosis(Path(entry.folder) / "metrics.jsonl")
    return out + head_probe_lines(entry)


def head_probe_lines(entry: PretrainedEntry) -> list[str]:
    """What refitting only the head on frozen features did (``head_probe.json`` in the folder), with a
    verdict for a model published below its clean line (the refit's validation gain against the
    test shortfall); empty when the file is absent, unreadable or was measured on other weights
    than the folder's (sha256)."""
    if entry.folder is None:
        return []
    try:
        rec = json.loads((Path(entry.folder) / HEAD_PROBE_FILENAME).read_text())
        row, s = rec["model"], rec["settings"]
        if row["weights_sha256"] != entry.sha256:
            return []
        (t, r), floor = (row[h]["val"] for h in ("trained_head", "refit_head")), row.get("clean_floor")
        pairs = [(o["model"], o["trained_head"]["accuracy"], o["refit_head"]["accuracy"]) for o in rec.get("others", [])]
        line = (f"Head refit probe (`scripts/head_probe.py`, {rec['result_file']}; {hardware_text(rec['hardware'])}): "
                "only the last layer, in its own 1-Lipschitz layer, refit by Adam on frozen "
                f"features ({s['steps']} steps of {s['batch_size']} of the {row['train_images']:,} training images); "
                f"on the {row['val_images']:,} held-out validation images clean accuracy {percent(t['accuracy'])} -> "
                f"{percent(r['accuracy'])}, certified at 36/255 {percent(t['certified'])} -> {percent(r['certified'])}.")
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if pairs:
        line += " Same run, clean: " + "; ".join(f"{m} {percent(a)} -> {percent(b)}" for m, a, b in pairs) + "."
    test = entry.metrics.get("clean_accuracy")
    if entry.status and isinstance(floor, (int, float)) and isinstance(test, (int, float)) and test < floor:
        # why a model below its line is there: the head's gain (validation) against the test shortfall
        gain, short = 100 * (r["accuracy"] - t["accuracy"]), 100 * (floor - test)
        others = [100 * (b - a) for _, a, b in pairs]
        beside = f" (the other models of the run: {min(others):+.2f} to {max(others):+.2f})" if others else ""
        line += (f" Its clean gain, {gain:+.2f} points{beside}, "
                 + (f"is less than its {short:.2f}-point shortfall from the {100 * floor:g}% clean line on the test "
                    "split: the head alone does not explain the shortfall." if gain < short else
                    f"covers its {short:.2f}-point shortfall from the {100 * floor:g}% clean line on the test split: "
                    "the trained head may be what falls short."))
    return [line, ""]


#: validation gain per epoch (accuracy points), averaged over the curve's last third, above which a curve
#: counts as still rising; a window rather than the last epoch alone, because a one-cycle schedule anneals
#: the learning rate to ~0 in its last epoch, which flattens that epoch whatever the trend
RISING = 0.005
#: training accuracy this far above validation accuracy counts as overfitting
OVERFIT_GAP = 0.05


def curve_diagnosis(metrics_file: Path) -> list[str]:
    """What the learning curve in ``metrics_file`` (one JSON line per epoch) says about why a model
    stopped short of its line: still rising and not fitting its training data (underfitting: train
    longer), fitting it far better than held-out data (overfitting), or flat. The trend is the mean
    validation gain per epoch over the last third of the epochs (at least one). Facts first, then the
    rule that classified them; empty when fewer than two epochs are recorded."""
    try:
        rows = read_epochs(metrics_file)
        train, val = [float(r["train_accuracy"]) for r in rows], [float(r["val_accuracy"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if len(rows) < 2:
        return []
    window = max(1, len(rows) // 3)
    gain, gap = (val[-1] - val[-1 - window]) / window, train[-1] - val[-1]
    rise = f"{100 * gain:+.2f} points " + ("over the epoch before" if window == 1
                                            else f"per epoch over its last {window} epochs")
    facts = (f"In its last epoch ({len(rows)}) training accuracy (on augmented images) was {100 * train[-1]:.2f}% "
             f"and validation accuracy {100 * val[-1]:.2f}%, {rise}.")
    if gap > OVERFIT_GAP:
        verdict = (f"Training accuracy is more than {100 * OVERFIT_GAP:g} points above validation: the model "
                   "overfits; more epochs alone will not close the gap.")
    elif gain > RISING:
        verdict = (f"Validation accuracy was still rising (more than {100 * RISING:g} points per epoch over the "
                   "last third of the run) and the model fits its training data no better than held-out data: it "
                   "underfits, and its schedule ended before it converged; a longer schedule is the indicated "
                   "remedy.")
    else:
        verdict = ("Validation accuracy had levelled off over the last third of the run: more epochs of the same "
                   "recipe are unlikely to help much.")
    return [f"Why it is below its line, from this curve: {facts} {verdict}", ""]


_SOURCE_TRUST = {
    "first use": "trusted on first use: recorded at the first import and checked by every later one",
    "verified": "matched the hash recorded earlier",
}


def provenance_lines(prov: dict) -> list[str]:
    """The card's Provenance section: where the weights came from (``source_*``) and what produced the folder."""
    out: list[str] = []
    if prov.get("source") or prov.get("source_url"):
        out += ["## Provenance", ""]
        if prov.get("source"):
            out.append(f"- source: {prov['source']}")
        if prov.get("source_url"):
            file = f" (`{prov['source_file']}`)" if prov.get("source_file") else ""
            out.append(f"- downloaded from: <{prov['source_url']}>{file}")
        if prov.get("source_sha256"):
            trust = str(prov.get("source_trust") or "")
            note = f" ({_SOURCE_TRUST.get(trust, trust)})" if trust else ""
            out.append(f"- sha256 of the downloaded file: `{prov['source_sha256']}`{note}")
        for key, label in (("trained_by", "trained by"), ("source_repository", "authors' repository"),
                           ("run", "run id"), ("license_note", "license")):
            if prov.get(key):
                out.append(f"- {label}: {prov[key]}")
        out.append("")
    items = [(k, prov[k]) for k in ("commit", "lipzoo_version", "torch_version", "date") if prov.get(k)]
    if items:
        out += ["Produced by " + ", ".join(f"{k.replace('_', ' ')} `{v}`" for k, v in items) + ".", ""]
    return out


def budget_lines(budget, timing: dict) -> list[str]:
    """What the training budget was (a CPU budget is said to be one), from the recipe's budget record."""
    if not isinstance(budget, dict) or not isinstance(budget.get("seconds"), (int, float)):
        return []
    hw = budget.get("hardware") if isinstance(budget.get("hardware"), dict) else {}
    device = str(budget.get("device") or hw.get("device") or "")
    where = hw.get("gpu") or hw.get("cpu_model") or hw.get("cpu") or device or "unrecorded hardware"
    threads = f", {budget['threads']} thread(s) per run, {budget['workers']} runs at once" \
        if budget.get("threads") and budget.get("workers") else ""
    line = (f"Training budget: {float(budget['seconds']):g} s of wall-clock training per layer on {where} "
            f"({device or 'device not recorded'}{threads}), turned into epochs by timing a few batches "
            f"(one batch: {float(budget.get('batch_seconds', float('nan'))):.3g} s), as the paper's estimator does.")
    if device.startswith("cpu"):
        line += " This is a CPU budget, far shorter than the paper's 2-hour GPU budget: expect lower accuracies."
    return [line, ""]


def status_lines(entry: PretrainedEntry) -> list[str]:
    """The warning at the top of the card body of an entry with a status (e.g. ``undertrained``)."""
    if not entry.status:
        return []
    reasons = entry.provenance.get("status_reasons")
    why = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) and reasons else "it failed the publish gate"
    return [f"> **Warning: {entry.status}.** Published with `--force` although {why}. "
            "Its numbers are real measurements of these weights, but it is not a reference for this architecture.", ""]


def lipschitz_section(entry: PretrainedEntry, bound: float | None, above_one: bool) -> list[str]:
    m = entry.metrics
    a = m.get("audit") if isinstance(m.get("audit"), dict) else {}
    how = a.get("method", "lipzoo.audit upper bound")
    ver = f", lipzoo {a['lipzoo_version']}" if a.get("lipzoo_version") else ""
    used = m.get("lipschitz_bound")
    if not certifies(entry):
        out = ["These layers are unconstrained, so the model has **no certificate**: nothing bounds how much a "
               "small perturbation can change its logits."]
        if bound is not None:
            out += ["", f"The audited upper bound on its l2 Lipschitz constant is L <= {bound:.6g} ({how}{ver}); "
                    "dividing margins by sqrt(2) * L this large certifies (almost) nothing, so certified accuracies "
                    "are shown as not applicable."]
        return out
    out = ["Certification divides the logit margin by sqrt(2) * L, where L = max(1, the upper bound that "
           "`lipzoo audit` proves for these weights on the machine that certifies); a stored bound is never "
           "trusted below that, since float32 arithmetic differs between CPUs."]
    if bound is not None:
        out += ["", f"Audited upper bound on the l2 Lipschitz constant: L <= {bound:.6g} ({how}{ver})."]
        if above_one:
            out += ["", f"The proven bound is L = {bound:.6g}; its certificates use this L, not 1."]
    else:
        out += ["", f"Not audited yet: `lipzoo audit {entry.name}` proves an upper bound L, and "
                f"`lipzoo certify {entry.name}` certifies with it."]
    if isinstance(used, (int, float)) and not isinstance(used, bool):
        out += ["", f"The certified accuracies measured by lipzoo above were computed with L = {float(used):.6g}."]
    return out


def usage_lines(entry: PretrainedEntry) -> list[str]:
    """Only commands that work: from a checkout (its cards/ folder holds the weights); the Hub only
    once the entry records a repo id (``lipzoo push`` sets it)."""
    d = entry.data
    out = [
        "## Usage", "",
        "From a checkout of the lipzoo repository, installed with `pip install -e .` (the weights are read from "
        "its `cards/` folder and verified (sha256) before loading):", "",
        "```python", "import torch", "import lipzoo", "",
        f'model = lipzoo.create_model("{entry.name}", pretrained=True)  # eval mode, [0, 1] inputs',
        f"images = torch.rand(8, {d.in_chans}, {d.input_size}, {d.input_size})",
        "logits = model(images)",
    ]
    if certifies(entry):
        out += ["# certified accuracy: lipzoo.certify(model, images, labels, eps=(36/255, 72/255, 108/255, 1.0))"]
    out += [
        "```", "", "With torch.hub, from that checkout:", "", "```python", "import torch", "",
        f'model = torch.hub.load("path/to/lipzoo", "{entry.architecture}", source="local", pretrained=True, '
        f'dataset="{entry.dataset}")',
        "```", "",
    ]
    if entry.hf_repo_id:
        out += ["From the Hugging Face Hub (the file is safetensors; lipzoo builds the architecture):", "",
                "```python", "from huggingface_hub import hf_hub_download", "import lipzoo", "",
                f'path = hf_hub_download("{entry.hf_repo_id}", "{entry.filename}")',
                f'model = lipzoo.create_model("{entry.name}", pretrained=True, weights=path)', "```", ""]
    out += ["On the command line:", "", "```bash"]
    if entry.hf_repo_id:
        out += [f"lipzoo download {entry.name}   # into the Hugging Face cache, for offline use"]
    out += [f"lipzoo {'certify' if certifies(entry) else 'info'} {entry.name}"
            + (f" --dataset {entry.dataset}" if certifies(entry) else ""), "```", ""]
    return out


def reproduction_lines(entry: PretrainedEntry) -> list[str]:
    """The card's account of a recorded reproduction (``provenance.reproduction``; none: no lines)."""
    r = entry.provenance.get("reproduction")
    if not isinstance(r, dict) or "difference" not in r:
        return []
    diffs, missed = r["difference"], set(r.get("beyond") or ())  # measures the record found beyond its tolerance
    parts = [f"clean {100 * r['clean_accuracy']:.2f}% ({100 * diffs.get('clean', 0.0):+.2f} points)"]
    beyond = [f"clean ({100 * diffs['clean']:+.2f})"] if "clean" in missed else []
    for radius, acc in by_eps(r):
        if radius.key in diffs:
            parts.append(f"certified at {radius.label} {100 * acc:.2f}% ({100 * diffs[radius.key]:+.2f})")
            if radius.key in missed:
                beyond.append(f"certified at {radius.label} ({100 * diffs[radius.key]:+.2f})")
    threads = f", {r['threads']} thread(s)" if r.get("threads") else ""
    if r.get("published_hardware"):
        was = f", {r['published_threads']} thread(s)" if r.get("published_threads") else ""
        threads += f" (the published weights: {r['published_hardware']}{was})"
    verdict = ("**reproduced**: every difference is within" if r.get("reproduced")
               else f"**not reproduced**: {' and '.join(beyond) or 'a difference'} exceeded, every other difference is "
                    "within")
    bits = ("The retrained weights are bit-identical to the published ones." if r.get("weights_identical")
            else "The retrained weights differ from the published ones in their bits.")
    return ["### Reproduced", "",
            f"Trained again from this recipe alone into a fresh run on {r.get('hardware') or 'an unrecorded CPU'}"
            f"{threads} and evaluated on the same {r['n']} test images: {', '.join(parts)}; {verdict} "
            f"{100 * r['tolerance']:.1f} points of the published numbers. {bits}", ""]
