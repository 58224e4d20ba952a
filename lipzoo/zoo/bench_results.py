"""What a benchmark measured: one :class:`BenchResult` per model and precision, its ratios to the
``standard`` baseline, and the result files (``benchmark-<device>-<UTC timestamp>.csv``, the
hardware and software fingerprint in its ``hw_*`` columns). :mod:`lipzoo.zoo.bench` measures them.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .._io import atomic_write_text
from .._provenance import fingerprint
from ..data import DATASETS

__all__ = ["BenchResult", "BenchError", "add_ratios", "format_table", "hardware_fingerprint", "save_results",
           "DEFAULT_OUT", "read_results", "latest_results", "CSV_COLUMNS", "RATIO_FIGURES", "BASELINE", "EPOCH_PREFIX",
           "PRECISIONS"]

BASELINE = "standard"
#: figures that get a ``<figure>_vs_standard`` column
RATIO_FIGURES = (
    "params", "train_images_per_s", "infer_images_per_s", "plain_images_per_s",
    "train_peak_mib", "infer_peak_mib",
)
EPOCH_PREFIX = "epoch_s_"
CSV_COLUMNS = (
    ["model", "family", "layer", "size", "device", "batch_size", "status", "params",
     "train_batch_s", "train_images_per_s", "infer_images_per_s", "plain_images_per_s",
     "train_peak_mib", "infer_peak_mib", "memory_method"]
    + [EPOCH_PREFIX + d for d in DATASETS]
    + [f"{f}_vs_standard" for f in RATIO_FIGURES]
    + ["epoch_s_vs_standard", "warmup", "repeats", "compiled", "compile_s", "note", "error", "precision",
       "interleaved"]
)
#: ``--precision`` choices: "bf16" runs the forward passes under bf16 autocast (weights stay float32)
PRECISIONS = ("fp32", "bf16")


class BenchError(ValueError):
    """Bad benchmark arguments (unknown layer pattern or size, unusable device, ...)."""


@dataclass
class BenchResult:
    """One architecture's figures; ``None`` where a figure was not measured (see ``note``/``error``)."""

    model: str
    family: str
    layer: str
    size: str
    device: str
    batch_size: int
    status: str = "ok"  # ok | oom | too_slow | error
    params: int | None = None
    train_batch_s: float | None = None
    train_images_per_s: float | None = None
    infer_images_per_s: float | None = None
    plain_images_per_s: float | None = None
    train_peak_mib: float | None = None
    infer_peak_mib: float | None = None
    memory_method: str | None = None
    epoch_s: dict[str, float | None] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    warmup: int = 2
    repeats: int = 3
    compiled: bool = False  # forward passes through torch.compile (training and inference)
    compile_s: float | None = None  # seconds of the first (compiling) training step, not in the timings
    note: str = ""
    error: str | None = None
    precision: str = "fp32"  # "bf16": forward passes (training, inference, plain) under bf16 autocast
    interleaved: bool = False  # timed in turns with the other models of its size and precision

    # backwards-compatible names (the ``bench`` table of earlier versions)
    @property
    def train_ratio(self) -> float | None:
        return self.ratios.get("train_images_per_s_vs_standard")

    @property
    def infer_ratio(self) -> float | None:
        return self.ratios.get("infer_images_per_s_vs_standard")

    def as_dict(self) -> dict:
        """A flat dict with exactly the :data:`CSV_COLUMNS` keys."""
        d = asdict(self)
        epoch, ratios = d.pop("epoch_s"), d.pop("ratios")
        d.update({EPOCH_PREFIX + ds: epoch.get(ds) for ds in DATASETS})
        d.update({c: ratios.get(c) for c in CSV_COLUMNS if c.endswith("_vs_standard")})
        return {c: d[c] for c in CSV_COLUMNS}


def hardware_fingerprint(device: str = "cpu") -> dict:
    """Hardware and software the figures were measured on (stored in every results row)."""
    return fingerprint(device)


def add_ratios(results: list[BenchResult]) -> None:
    """Fill ``ratios`` of every result from the standard model of the same family, size, batch and precision."""
    base = {(r.family, r.size, r.batch_size, r.device, r.precision): r
            for r in results if r.layer == BASELINE and r.status == "ok"}
    for r in results:
        b = base.get((r.family, r.size, r.batch_size, r.device, r.precision))
        r.ratios = {}
        for f in RATIO_FIGURES:
            v, bv = getattr(r, f), getattr(b, f) if b else None
            r.ratios[f"{f}_vs_standard"] = v / bv if v is not None and bv else None
        bt = b.train_batch_s if b else None
        r.ratios["epoch_s_vs_standard"] = r.train_batch_s / bt if r.train_batch_s is not None and bt else None


# --- result files -----------------------------------------------------------------------------
#: where results files go unless a folder is given: a folder of the current directory, not the
#: checkout's committed ``results/`` (which only ``--out results/`` updates)
DEFAULT_OUT = "lipzoo-results"


def save_results(results: list[BenchResult], out_dir: str | os.PathLike = DEFAULT_OUT, *,
                 fingerprint: dict | None = None, stamp: str | None = None) -> Path:
    """Write ``<out_dir>/benchmark-<device>-<UTC timestamp>.csv`` atomically; returns its path.

    Every row holds :data:`CSV_COLUMNS` followed by the fingerprint as ``hw_<key>`` columns.
    """
    if not results:
        raise BenchError("no results to save")
    device = results[0].device.split(":")[0]
    fp = fingerprint if fingerprint is not None else hardware_fingerprint(results[0].device)
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(out_dir) / f"benchmark-{device}-{stamp}.csv"
    n = 1
    while path.exists():
        path = Path(out_dir) / f"benchmark-{device}-{stamp}-{n}.csv"
        n += 1
    hw = {f"hw_{k}": v for k, v in fp.items()}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS + list(hw), lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow({k: _csv_value(v) for k, v in (r.as_dict() | hw).items()})
    atomic_write_text(path, buf.getvalue())
    return path


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows of a benchmark CSV with numbers as floats/ints and empty cells as ``None``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist; write one with `lipzoo bench --out DIR`")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("model", "layer", "size", "status") if c not in (reader.fieldnames or [])]
        if missing:
            raise BenchError(f"{path} is not a lipzoo benchmark file (missing columns {missing})")
        rows = list(reader)
    text_cols = {"model", "family", "layer", "size", "device", "status", "memory_method", "note", "error", "precision"}
    out = []
    for row in rows:
        typed: dict = {}
        for k, v in row.items():
            if v == "" or v is None:
                typed[k] = None
            elif v in ("True", "False"):
                typed[k] = v == "True"
            elif k in text_cols or k.startswith("hw_"):
                typed[k] = v
            else:
                try:
                    typed[k] = int(v) if v.lstrip("-").isdigit() else float(v)
                except ValueError:
                    typed[k] = v
        out.append(typed)
    return out


def latest_results(out_dir: str | os.PathLike = DEFAULT_OUT, device: str | None = None) -> Path:
    """The newest ``benchmark-*.csv`` in ``out_dir`` (of ``device`` if given)."""
    pattern = f"benchmark-{device.split(':')[0]}-*.csv" if device else "benchmark-*.csv"
    files = sorted(Path(out_dir).glob(pattern), key=lambda p: (p.stat().st_mtime, p.name))
    if not files:
        raise FileNotFoundError(f"no {pattern} in {out_dir}; run `lipzoo bench --out {out_dir}` first")
    return files[-1]


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: list[BenchResult]) -> str:
    """A fixed-width text table (the human form of ``lipzoo bench``); a ``prec`` column when any row is not fp32."""
    prec = any(r.precision != "fp32" for r in results)
    head = (f"{'model':<24} {'prec ' if prec else ''}{'params':>10} {'train img/s':>11} {'x std':>6} "
            f"{'infer img/s':>11} {'x std':>6} {'plain img/s':>11} {'train MiB':>9} {'x std':>6} {'infer MiB':>9}  status")
    rows = [head, "-" * len(head)]
    for r in results:
        q = r.ratios
        rows.append(
            f"{r.model:<24} {f'{r.precision:<4} ' if prec else ''}{_fmt(r.params, ',d'):>10} "
            f"{_fmt(r.train_images_per_s, '.1f'):>11} "
            f"{_fmt(q.get('train_images_per_s_vs_standard'), '.2f'):>6} {_fmt(r.infer_images_per_s, '.1f'):>11} "
            f"{_fmt(q.get('infer_images_per_s_vs_standard'), '.2f'):>6} {_fmt(r.plain_images_per_s, '.1f'):>11} "
            f"{_fmt(r.train_peak_mib, '.1f'):>9} {_fmt(q.get('train_peak_mib_vs_standard'), '.2f'):>6} "
            f"{_fmt(r.infer_peak_mib, '.1f'):>9}  {r.status}{': ' + r.error if r.error else ''}"
        )
    notes = sorted({r.note for r in results if r.note})
    return "\n".join(rows + [f"note: {n}" for n in notes])
