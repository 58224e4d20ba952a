"""Data sets of the zoo, as float tensors in [0, 1].

Fashion-MNIST and MNIST are read from gzipped or plain IDX files, found in ``$LIPZOO_DATA``
(a folder holding the files, or a ``fashion-mnist`` / ``mnist`` subfolder), the Debian location
``/usr/share/datasets/fashion-mnist/`` (package ``dataset-fashion-mnist``), or torchvision's
folder layout under ``$LIPZOO_DATA``. Their 28x28 images are zero-padded to the 32x32 the
ConvNet expects.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DatasetInfo", "DATASETS", "DatasetNotFoundError", "load_tensors", "read_idx", "dataset_info"]


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where lipzoo looked."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_chans: int
    input_size: int
    mean: tuple[float, ...]
    class_names: tuple[str, ...]
    train_size: int
    test_size: int


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo("fashion_mnist", 10, 1, 32, (0.2860,), FASHION_CLASSES, 60000, 10000),
        DatasetInfo("mnist", 10, 1, 32, (0.1307,), tuple(str(i) for i in range(10)), 60000, 10000),
        DatasetInfo("cifar10", 10, 3, 32, (0.49139968, 0.48215841, 0.44653091), CIFAR10_CLASSES, 50000, 10000),
        DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), tuple(f"class_{i}" for i in range(100)), 50000, 10000),
        DatasetInfo("tiny_imagenet", 200, 3, 64, (0.485, 0.456, 0.406), tuple(f"class_{i}" for i in range(200)), 100000, 10000),
    ]
}

DEBIAN_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
SUBDIRS = {"fashion_mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"), "mnist": ("mnist", "MNIST/raw")}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array, validating its header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type 0x{dtype_code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but the file holds {arr.size} values (truncated?)")
    return arr.reshape(shape)


def _candidate_dirs(name: str, root: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    for base in [root, os.environ.get("LIPZOO_DATA")]:
        if base:
            base = Path(base)
            dirs.append(base)
            dirs += [base / s for s in SUBDIRS.get(name, ())]
    if name in DEBIAN_DIRS:
        dirs.append(Path(DEBIAN_DIRS[name]))
    return dirs


def _find_idx(name: str, split: str, root) -> tuple[Path, Path]:
    img_stem, lbl_stem = IDX_FILES[split]
    looked = _candidate_dirs(name, root)
    for d in looked:
        for suffix in (".gz", ""):
            img, lbl = d / (img_stem + suffix), d / (lbl_stem + suffix)
            if img.is_file() and lbl.is_file():
                return img, lbl
    hint = (
        "install the Debian package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) or "
        if name == "fashion_mnist"
        else ""
    )
    raise DatasetNotFoundError(
        f"{name} ({split} split) not found: looked for {img_stem}[.gz] and {lbl_stem}[.gz] in "
        f"{', '.join(str(d) for d in looked) or '(no folder: set $LIPZOO_DATA)'}. To get it, {hint}"
        f"put the IDX files in a folder and set LIPZOO_DATA=/that/folder."
    )


def load_tensors(
    name: str, split: str = "test", root: str | os.PathLike | None = None, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) float32 in [0, 1] at the model's input size, and int64 labels."""
    info = dataset_info(name)
    if split not in IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name not in ("fashion_mnist", "mnist"):
        raise NotImplementedError(f"loading {name} is not implemented yet")
    img_path, lbl_path = _find_idx(name, split, root)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{img_path} / {lbl_path}: expected (N, 28, 28) images and N labels, got {images.shape} and {labels.shape}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    pad = (info.input_size - x.shape[-1]) // 2
    x = F.pad(x, (pad, pad, pad, pad))
    return x, torch.from_numpy(labels.astype(np.int64))
