"""Reading Tiny ImageNet from a folder: the Hugging Face Hub's parquet files (the layout of
``zh-plus/tiny-imagenet``) or the original ``tiny-imagenet-200/`` folder, decoded to uint8
``(N, 3, 64, 64)`` RGB with class ``i`` the i-th wnid in sorted order. Where to look, and what
to say when nothing is found, is :mod:`lipzoo.data`'s.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

__all__ = ["TINY_HUB_REPO", "TINY_PARQUET_PREFIXES", "hub_snapshot", "load_tiny_from"]

TINY_HUB_REPO = "zh-plus/tiny-imagenet"
TINY_PARQUET_PREFIXES = {"train": ("train",), "test": ("valid", "validation", "val")}
_WNID = re.compile(r"^n\d{8}$")
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def hub_snapshot() -> Path | None:
    """The local Hugging Face cache's copy of zh-plus/tiny-imagenet, if any (no network)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(TINY_HUB_REPO, repo_type="dataset", local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or hub unavailable): simply not a candidate
        return None


def _parquet_files(d: Path, split: str) -> list[Path]:
    for prefix in TINY_PARQUET_PREFIXES[split]:
        for pattern in (f"data/{prefix}-*.parquet", f"{prefix}-*.parquet", f"{prefix}/*.parquet", f"default/{prefix}/*.parquet"):
            files = sorted(d.glob(pattern))
            if files:
                return files
    return []


def _decode(sources: list, desc: str, size: int) -> np.ndarray:
    """Decode images (paths or encoded bytes) to uint8 (N, 3, size, size), RGB."""
    from PIL import Image

    out = np.empty((len(sources), 3, size, size), dtype=np.uint8)
    for i, src in enumerate(tqdm(sources, desc=desc, unit="img", disable=len(sources) < 1000)):
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            arr = np.asarray(im.convert("RGB"))
        if arr.shape != (size, size, 3):
            where = src if not isinstance(src, bytes) else f"image {i}"
            raise ValueError(f"{desc}: {where} is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size}")
        out[i] = arr.transpose(2, 0, 1)
    return out


def _load_parquet(files: list[Path], limit: int | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    import datasets

    ds = datasets.load_dataset("parquet", data_files={"data": [str(f) for f in files]}, split="data")
    missing = {"image", "label"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{files[0].parent}: parquet columns {ds.column_names} lack {sorted(missing)}; expected "
                         f"'image' (encoded bytes) and 'label' as in {TINY_HUB_REPO}")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    if isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    labels = np.asarray(ds["label"], dtype=np.int64)
    feature = ds.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        if len(names) != 200:
            raise ValueError(f"{files[0]}: label has {len(names)} classes, Tiny ImageNet has 200")
        if all(_WNID.match(n) for n in names):  # renumber to sorted-wnid (ImageFolder) order
            order = {w: i for i, w in enumerate(sorted(names))}
            labels = np.array([order[n] for n in names], dtype=np.int64)[labels] if len(labels) else labels
    sources = []
    for i, img in enumerate(ds["image"]):
        if isinstance(img, dict) and img.get("bytes"):
            sources.append(img["bytes"])
        elif isinstance(img, dict) and img.get("path"):
            sources.append(img["path"])
        else:
            raise ValueError(f"{files[0]}: row {i} of column 'image' holds no image bytes ({type(img).__name__})")
    return _decode(sources, f"tiny_imagenet {files[0].name}", size), labels


def _is_tiny_folder(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "val").is_dir()


def _image_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())


def _load_tiny_folder(d: Path, split: str, limit: int | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    wnids = sorted(p.name for p in (d / "train").iterdir() if p.is_dir())
    if len(wnids) != 200:
        raise ValueError(f"{d / 'train'} holds {len(wnids)} class folders, Tiny ImageNet has 200 (incomplete copy?)")
    index = {w: i for i, w in enumerate(wnids)}
    items: list[tuple[Path, int]] = []
    if split == "train":
        for w in wnids:
            items += [(p, index[w]) for p in _image_files(d / "train" / w)]
    elif (d / "val" / "val_annotations.txt").is_file():
        for line in (d / "val" / "val_annotations.txt").read_text().splitlines():
            if line.strip():
                fname, wnid = line.split("\t")[:2]
                if wnid not in index:
                    raise ValueError(f"{d / 'val' / 'val_annotations.txt'}: {fname} has class {wnid!r}, not one of the train folders")
                items.append((d / "val" / "images" / fname, index[wnid]))
    else:  # val reorganised into per-class folders (as the paper's code leaves it)
        for w in sorted(p.name for p in (d / "val").iterdir() if p.is_dir()):
            if w not in index:
                raise ValueError(f"{d / 'val' / w}: class {w!r} is not one of the train folders")
            items += [(p, index[w]) for p in _image_files(d / "val" / w)]
    if not items:
        raise ValueError(f"{d}: no images for the {split} split")
    items = items[:limit]
    images = _decode([str(p) for p, _ in items], f"tiny_imagenet {split}", size)
    return images, np.array([y for _, y in items], dtype=np.int64)


def load_tiny_from(d: Path, split: str, limit: int | None, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    files = _parquet_files(d, split)
    if files:
        return _load_parquet(files, limit, size)
    if _is_tiny_folder(d):
        return _load_tiny_folder(d, split, limit, size)
    return None
