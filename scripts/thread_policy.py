#!/usr/bin/env python
"""How to spend a small CPU on training: threads per process and batch size, measured.

For every layer and batch size, one training step of ConvNet-<size> (``lipzoo bench``'s timed
step: forward, ``sum().backward()``, SGD with momentum) is timed under each thread policy:

- ``1x1``          one process, 1 torch thread (the other cores idle);
- ``1x2-passive``  one process, 2 threads, ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep);
- ``1x2-active``   one process, 2 threads, OpenMP's default waiting (idle threads spin);
- ``2x1``          two 1-thread processes at once, each pinned to a core of its own: the
                   throughput is the sum of both (two zoo runs side by side).

Each measurement is a fresh ``lipzoo bench`` process (the thread settings only take effect at
start-up), so the numbers are comparable to the benchmark files. The winner per layer is the
policy with the most training images/s in total; ``scripts/train_zoo.py`` uses the policy that
wins for most layers. Run it on an otherwise idle machine:

    python scripts/thread_policy.py --layer standard,aol,sll,cpl --batch-size 64,128,256 --out results/threads

Writes ``thread-policy-<UTC time>.csv`` / ``.json`` (hardware included) and a PNG (images/s per
layer, policy and batch size) into ``--out`` (default ``./lipzoo-results``), each via a temporary
name then renamed, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

POLICIES = ("1x1", "1x2-passive", "1x2-active", "2x1")


def _env(threads: int, wait: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    if wait:
        env["OMP_WAIT_POLICY"] = wait
    return env


def _bench_cmd(layer: str, size: str, batch: int, warmup: int, repeats: int) -> list[str]:
    return [sys.executable, "-m", "lipzoo.cli", "bench", "--layer", layer, "--size", size, "--batch-size", str(batch),
            "--warmup", str(warmup), "--repeats", str(repeats), "--no-memory", "--no-plain", "--no-save", "--json",
            "--max-seconds", "0"]


def _run(cmds: list[tuple[list[str], dict]], timeout: float) -> list[dict]:
    """Run the commands at once; each prints lipzoo bench's JSON. Raises with the command's stderr."""
    procs = [subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c, e in cmds]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        if p.returncode:
            raise RuntimeError(f"lipzoo bench failed ({p.returncode}): {err.strip().splitlines()[-1:]}")
        outs.append(json.loads(out))
    return outs


def measure(policy: str, layer: str, size: str, batch: int, *, warmup: int = 2, repeats: int = 3,
            timeout: float = 1800.0) -> dict:
    """Training images/s of ``convnet_<size>_<layer>`` (and of standard) under one thread policy."""
    cmd = _bench_cmd(layer, size, batch, warmup, repeats)
    cores = sorted(os.sched_getaffinity(0))
    if policy == "2x1":
        if len(cores) < 2:
            raise ValueError("policy 2x1 needs 2 CPU cores")
        jobs = [(["taskset", "-c", str(c), *cmd], _env(1, "PASSIVE")) for c in cores[:2]]
    elif policy == "1x1":
        jobs = [(cmd, _env(1, None))]
    elif policy in ("1x2-passive", "1x2-active"):
        jobs = [(cmd, _env(2, "PASSIVE" if policy.endswith("passive") else None))]
    else:
        raise ValueError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
    outs = _run(jobs, timeout)
    row = {"policy": policy, "layer": layer, "size": size, "batch_size": batch, "processes": len(outs)}
    for name in (layer, "standard"):
        rates = [next(r for r in o["results"] if r["layer"] == name)["train_images_per_s"] for o in outs]
        key = "train_images_per_s" if name == layer else "standard_train_images_per_s"
        row[key] = sum(rates)
    row["hardware"] = outs[0]["hardware"]
    return row


def winners(rows: list[dict]) -> dict[tuple[str, int], str]:
    """The policy with the most training images/s for each (layer, batch size)."""
    best: dict[tuple[str, int], dict] = {}
    for r in rows:
        k = (r["layer"], r["batch_size"])
        if k not in best or r["train_images_per_s"] > best[k]["train_images_per_s"]:
            best[k] = r
    return {k: v["policy"] for k, v in best.items()}


def markdown(rows: list[dict]) -> str:
    policies = [p for p in POLICIES if any(r["policy"] == p for r in rows)]
    lines = ["| layer | batch | " + " | ".join(f"{p} img/s" for p in policies) + " | best |",
             "|---|---|" + "---|" * (len(policies) + 1)]
    win = winners(rows)
    for layer, batch in dict.fromkeys((r["layer"], r["batch_size"]) for r in rows):
        cells = []
        for p in policies:
            r = next((r for r in rows if (r["layer"], r["batch_size"], r["policy"]) == (layer, batch, p)), None)
            cells.append(f"{r['train_images_per_s']:.1f}" if r else "")
        lines.append(f"| {layer} | {batch} | " + " | ".join(cells) + f" | {win[(layer, batch)]} |")
    return "\n".join(lines)


def _write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save(rows: list[dict], out: Path) -> Path:
    import csv

    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = out / f"thread-policy-{stamp}"
    hardware = rows[0]["hardware"] if rows else {}
    flat = [{k: v for k, v in r.items() if k != "hardware"} for r in rows]
    fields = list(flat[0]) + ["hw_cpu_model", "hw_cpu_count", "hw_torch", "hw_commit"]

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in flat:
                w.writerow({**r, **{f"hw_{k}": hardware.get(k) for k in ("cpu_model", "cpu_count", "torch", "commit")}})

    _write(base.with_suffix(".csv"), write_csv)
    _write(base.with_suffix(".json"), lambda p: p.write_text(json.dumps(
        {"hardware": hardware, "rows": flat, "winners": {f"{k[0]}@{k[1]}": v for k, v in winners(rows).items()}},
        indent=2)))
    _write(base.with_suffix(".png"), lambda p: _plot(flat, hardware, p))
    return base


def _plot(rows: list[dict], hardware: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["layer"], r["batch_size"]) for r in rows))
    policies = [p for p in POLICIES if any(r["policy"] == p for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, len(groups) * 0.9), 4))
    width = 0.8 / max(1, len(policies))
    for i, p in enumerate(policies):
        ys = [next((r["train_images_per_s"] for r in rows if (r["layer"], r["batch_size"], r["policy"]) == (*g, p)), 0)
              for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], ys, width, label=p)
    ax.set_xticks([j + width * (len(policies) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels([f"{g[0]}\nbatch {g[1]}" for g in groups], fontsize=8)
    ax.set_ylabel("training images/s (all processes)")
    ax.set_title(f"Thread policy, ConvNet training steps on {hardware.get('cpu_model', '?')} "
                 f"({hardware.get('cpu_count', '?')} cores)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", default="standard,aol,sll,cpl", help="comma-separated layer ids")
    p.add_argument("--size", default="xs", help="ConvNet size (default xs)")
    p.add_argument("--batch-size", default="64,128,256", help="comma-separated batch sizes")
    p.add_argument("--policy", default=",".join(POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="lipzoo-results", help="folder of the result files")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = p.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch_size.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-size must be comma-separated integers, got {args.batch_size!r}")
    if not batches or min(batches) < 1:
        p.error(f"--batch-size must be positive integers, got {args.batch_size!r}")
    policies = [s.strip() for s in args.policy.split(",") if s.strip()]
    bad = [s for s in policies if s not in POLICIES]
    if bad or not policies:
        p.error(f"unknown --policy {', '.join(bad) or repr(args.policy)}; expected some of {', '.join(POLICIES)}")
    layers = [s.strip() for s in args.layer.split(",") if s.strip()]
    jobs = [(layer, b, pol) for layer in layers for b in batches for pol in policies]
    from tqdm import tqdm

    rows = []
    bar = tqdm(jobs, unit="run", disable=args.json)
    for layer, b, pol in bar:
        bar.set_postfix_str(f"{layer} batch {b} {pol}")
        rows.append(measure(pol, layer, args.size, b, warmup=args.warmup, repeats=args.repeats))
        if not args.json:
            bar.write(f"{layer:>10} batch {b:>4} {pol:>12}: {rows[-1]['train_images_per_s']:.1f} img/s", file=sys.stderr)
    base = save(rows, Path(args.out))
    if args.json:
        print(json.dumps({"file": str(base) + ".csv", "rows": [{k: v for k, v in r.items() if k != "hardware"}
                                                            for r in rows]}, indent=2))
    else:
        print(markdown(rows))
        print(f"written: {base}.csv/.json/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
