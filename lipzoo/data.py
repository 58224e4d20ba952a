"""Data sets of the zoo, as tensors at the model's input size.

``load_tensors(name, split)`` returns images ``(N, C, H, W)`` (float32 in [0, 1] by default,
``dtype=torch.uint8`` for the raw 0..255 values at a quarter of the memory) and int64 labels.
Splits are ``"train"`` and ``"test"`` (for Tiny ImageNet, ``"test"`` is the labelled 10k
validation set: its official test set has no labels). ``limit=N`` keeps the first N images in
file order and decodes only those.

Where lipzoo looks, in this order: the ``root`` argument, ``$LIPZOO_DATA``, the download folder
``$XDG_CACHE_HOME/lipzoo/data`` (``~/.cache/lipzoo/data``), each of them directly and in the
data set's usual subfolder; then fixed system places (Debian's ``/usr/share/datasets``). Nothing
is ever downloaded unless ``download=True`` is passed, which fetches into ``root``, else
``$LIPZOO_DATA``, else the download folder. A data set that is not found raises
``DatasetNotFoundError`` naming every folder searched and how to get the files.

Formats
-------
- ``fashion_mnist``, ``mnist``: IDX files, gzipped or plain (``train-images-idx3-ubyte[.gz]``
  ...), in a folder, its ``fashion-mnist`` / ``mnist`` subfolder, torchvision's
  ``FashionMNIST/raw`` / ``MNIST/raw`` layout, or Debian's ``/usr/share/datasets/fashion-mnist``
  (package ``dataset-fashion-mnist``). ``download=True`` uses torchvision's FashionMNIST/MNIST
  download. The 28x28 images are zero-padded (black) to the ConvNet's 32x32.
- ``cifar10``, ``cifar100``: the official python batches (``cifar-10-batches-py/``,
  ``cifar-100-python/``), read by torchvision's ``CIFAR10`` / ``CIFAR100`` loaders. Those
  batches are Python pickles: that is the data set's own published format and torchvision's
  documented reader, and torchvision checks the md5 of every file against the official archive
  before unpickling it, so only the genuine batches are ever unpickled (weights, in contrast,
  are never pickled in lipzoo). The class names read from the meta file are checked against
  ``DATASETS[name].class_names``.
- ``tiny_imagenet``: 64x64, 200 classes, either Hugging Face Hub parquet files (the layout of
  ``zh-plus/tiny-imagenet``: ``data/train-*.parquet`` and ``data/valid-*.parquet`` with columns
  ``image`` (encoded bytes) and ``label``), read with ``datasets.load_dataset("parquet", ...)``
  and also found in the Hugging Face cache; or the original ``tiny-imagenet-200/`` folder
  (``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` + ``val/val_annotations.txt``, or a
  ``val/<wnid>/`` reorganised by class). Class ``i`` is the i-th wnid in sorted order, as
  torchvision's ``ImageFolder`` (and the paper) number them; parquet labels whose class names
  are wnids are renumbered to that order. Grayscale JPEGs are converted to RGB.
  ``download=True`` fetches ``zh-plus/tiny-imagenet`` from the Hub. Memory: the whole train
  split is 100k x 3 x 64 x 64 = 1.2 GB as uint8 and 4.9 GB as float32; pass
  ``dtype=torch.uint8`` (or ``limit``) to stay small.

Augmentation (the paper's, read by recipes through ``default_augmentation(name)``)
---------------------------------------------------------------------------------
- CIFAR-10/100: random crop 32 with padding 4, then horizontal flip with probability 1/2.
- Tiny ImageNet: RandAugment(num_ops=2, magnitude=9) and no crop or flip. ``rand_augment`` below
  applies it (torchvision's RandAugment, one draw per image, seeded by a generator);
  ``default_augmentation(name, include_rand_augment=True)`` reports it.
- Fashion-MNIST/MNIST (not in the paper; our choice): random crop with padding 2 (a shift of at
  most 2 px, which keeps the digit/garment inside the 32x32 frame) and no flip (flipping
  changes digits, and is kept off for Fashion-MNIST for the same recipe on both).

Centring: the paper subtracts the per-channel mean (no division by the std). lipzoo does NOT do
that here: images stay in [0, 1] and the mean shift is part of the model
(``lipzoo.create_model(..., input_mean=DATASETS[name].mean)``), a 1-Lipschitz (isometric) shift,
so certified radii are in l2 units of [0, 1] pixels and users feed raw images.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ._tiny_imagenet import TINY_HUB_REPO, TINY_PARQUET_PREFIXES, hub_snapshot, load_tiny_from

__all__ = [
    "DatasetInfo",
    "DATASETS",
    "DatasetNotFoundError",
    "load_tensors",
    "read_idx",
    "dataset_info",
    "default_augmentation",
    "rand_augment",
    "data_dirs",
]


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where lipzoo looked (or failed their integrity check)."""


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
# The fine label names of CIFAR-100's `meta` file (alphabetical, as published).
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm
""".split())

DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo("fashion_mnist", 10, 1, 32, (0.2860,), FASHION_CLASSES, 60000, 10000),
        DatasetInfo("mnist", 10, 1, 32, (0.1307,), tuple(str(i) for i in range(10)), 60000, 10000),
        DatasetInfo("cifar10", 10, 3, 32, (0.49139968, 0.48215841, 0.44653091), CIFAR10_CLASSES, 50000, 10000),
        DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), CIFAR100_CLASSES, 50000, 10000),
        # Class i is the i-th wnid in sorted order (ImageFolder numbering); names are not shipped.
        DatasetInfo("tiny_imagenet", 200, 3, 64, (0.485, 0.456, 0.406), tuple(f"class_{i}" for i in range(200)), 100000, 10000),
    ]
}

SPLITS = ("train", "test")

_AUGMENTATION: dict[str, dict[str, Any]] = {
    "fashion_mnist": {"crop_padding": 2, "hflip": False, "rand_augment": None},
    "mnist": {"crop_padding": 2, "hflip": False, "rand_augment": None},
    "cifar10": {"crop_padding": 4, "hflip": True, "rand_augment": None},
    "cifar100": {"crop_padding": 4, "hflip": True, "rand_augment": None},
    "tiny_imagenet": {"crop_padding": 0, "hflip": False, "rand_augment": (2, 9)},
}

DEBIAN_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
SUBDIRS = {
    "fashion_mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    "mnist": ("mnist", "MNIST/raw"),
    "cifar10": ("cifar10", "cifar-10"),
    "cifar100": ("cifar100", "cifar-100"),
    "tiny_imagenet": ("tiny-imagenet-200", "tiny-imagenet", "tiny_imagenet"),
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}") from None


def default_augmentation(name: str, *, include_rand_augment: bool = False) -> dict[str, Any]:
    """The training augmentation for a data set: ``{"crop_padding": int, "hflip": bool}``.

    With ``include_rand_augment=True`` the dict also holds ``"rand_augment"``: ``(num_ops,
    magnitude)`` for Tiny ImageNet (the paper's RandAugment(2, 9)), else None.
    """
    dataset_info(name)
    aug = dict(_AUGMENTATION[name])
    if not include_rand_augment:
        del aug["rand_augment"]
    return aug


def rand_augment(
    images: torch.Tensor, num_ops: int = 2, magnitude: int = 9, generator: torch.Generator | None = None
) -> torch.Tensor:
    """torchvision's RandAugment applied to each image of a batch with its own random draw.

    ``images`` is uint8 (N, C, H, W) or float in [0, 1] (converted to uint8 and back, exact for
    images that came from uint8). Deterministic given ``generator``; the global RNG is untouched.
    """
    from torchvision.transforms import v2

    if images.ndim != 4:
        raise ValueError(f"rand_augment expects a batch (N, C, H, W), got shape {tuple(images.shape)}")
    is_float = images.is_floating_point()
    if not is_float and images.dtype != torch.uint8:
        raise ValueError(f"rand_augment expects uint8 or float images in [0, 1], got {images.dtype}")
    x = (images * 255).round().clamp(0, 255).to(torch.uint8) if is_float else images
    op = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([op(img) for img in x.cpu()]) if len(x) else x.cpu().clone()
    out = out.to(images.device)
    return out.to(images.dtype).div_(255) if is_float else out


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
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but the file holds {arr.size} values (truncated?)")
    return arr.reshape(shape)


# --- where to look ----------------------------------------------------------------------------
def _cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "lipzoo" / "data"


def _download_dir(root: str | os.PathLike | None) -> Path:
    return Path(root or os.environ.get("LIPZOO_DATA") or _cache_dir())


def data_dirs(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Every folder searched for data set ``name``, in order (see the module docstring)."""
    dataset_info(name)
    dirs: list[Path] = []
    for base in [Path(b) for b in (root, os.environ.get("LIPZOO_DATA")) if b] + [_cache_dir()]:
        for d in [base] + [base / s for s in SUBDIRS.get(name, ())]:
            if d not in dirs:
                dirs.append(d)
    if name in DEBIAN_DIRS:
        dirs.append(Path(DEBIAN_DIRS[name]))
    return dirs


def _not_found(name: str, split: str, what: str, looked: Iterable[Path], how: str, problems: list[str] | None = None) -> DatasetNotFoundError:
    looked = [str(d) for d in looked]
    msg = f"{name} ({split} split) not found: looked for {what} in {', '.join(looked)}."
    if problems:
        msg += " Found but unusable: " + "; ".join(problems) + "."
    return DatasetNotFoundError(
        f"{msg} To get it: {how}; or call lipzoo.data.load_tensors({name!r}, {split!r}, download=True) to "
        f"download it (into root, else $LIPZOO_DATA, else {_download_dir(None)}); or put the files in a folder "
        f"and set LIPZOO_DATA=/that/folder."
    )


# --- Fashion-MNIST / MNIST --------------------------------------------------------------------
def _find_idx(name: str, split: str, root) -> tuple[Path, Path]:
    img_stem, lbl_stem = IDX_FILES[split]
    looked = data_dirs(name, root)
    for d in looked:
        for suffix in (".gz", ""):
            img, lbl = d / (img_stem + suffix), d / (lbl_stem + suffix)
            if img.is_file() and lbl.is_file():
                return img, lbl
    how = "install the Debian package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist)" \
        if name == "fashion_mnist" else "get the four IDX files of http://yann.lecun.com/exdb/mnist/ (gzipped or not)"
    raise _not_found(name, split, f"{img_stem}[.gz] and {lbl_stem}[.gz]", looked, how)


def _load_idx(name: str, split: str, root, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    img_path, lbl_path = _find_idx(name, split, root)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{img_path} / {lbl_path}: expected (N, 28, 28) images and N labels, got {images.shape} and {labels.shape}")
    images, labels = images[:limit], labels[:limit]
    pad = (dataset_info(name).input_size - 28) // 2
    return np.pad(images, ((0, 0), (pad, pad), (pad, pad)))[:, None], labels


def _download_idx(name: str, split: str, root) -> None:
    from torchvision import datasets as tvd

    cls = tvd.FashionMNIST if name == "fashion_mnist" else tvd.MNIST
    cls(str(_download_dir(root)), train=split == "train", download=True)  # writes <dir>/<Cls>/raw/*


# --- CIFAR-10 / CIFAR-100 ---------------------------------------------------------------------
def _cifar_class(name: str):
    from torchvision import datasets as tvd

    return tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100


def _load_cifar(name: str, split: str, root, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    cls = _cifar_class(name)
    looked, problems = data_dirs(name, root), []
    for d in looked:
        if not (d / cls.base_folder).is_dir():
            continue
        try:  # torchvision checks every file's md5 before it unpickles anything
            ds = cls(str(d), train=split == "train", download=False)
        except RuntimeError as e:
            problems.append(f"{d / cls.base_folder} ({e}; torchvision's md5 check failed: incomplete, corrupted "
                            f"or not the official batches)")
            continue
        expected = dataset_info(name).class_names
        if tuple(ds.classes) != expected:
            raise ValueError(f"{d / cls.base_folder}: its meta file names the classes {list(ds.classes)[:5]}..., "
                             f"lipzoo expects {list(expected)[:5]}... (DATASETS[{name!r}].class_names)")
        images = np.ascontiguousarray(ds.data[:limit].transpose(0, 3, 1, 2))  # HWC -> CHW
        return images, np.asarray(ds.targets[:limit])
    url = cls.url
    raise _not_found(name, split, f"a {cls.base_folder}/ folder (torchvision's layout)", looked,
                     f"download {url} and extract it into a folder (it holds {cls.base_folder}/)", problems)


def _download_cifar(name: str, split: str, root) -> None:
    _cifar_class(name)(str(_download_dir(root)), train=split == "train", download=True)


# --- Tiny ImageNet (the formats: lipzoo._tiny_imagenet) ----------------------------------------
def _load_tiny(name: str, split: str, root, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    size = dataset_info(name).input_size
    looked = data_dirs(name, root)
    for d in looked:
        found = load_tiny_from(d, split, limit, size)
        if found is not None:
            return found
    snapshot = hub_snapshot()  # last: needs no network, but is not free
    found = load_tiny_from(snapshot, split, limit, size) if snapshot is not None else None
    if found is not None:
        return found
    prefixes = "/".join(TINY_PARQUET_PREFIXES[split])
    raise _not_found(
        name, split, f"Hub parquet files (data/{{{prefixes}}}-*.parquet) or a tiny-imagenet-200/ folder (train/, val/)",
        looked + [Path(f"<Hugging Face cache>/datasets--{TINY_HUB_REPO.replace('/', '--')}")],
        f"`hf download {TINY_HUB_REPO} --repo-type dataset --local-dir <folder>/tiny-imagenet`, or "
        f"unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip into a folder",
    )


def _download_tiny(name: str, split: str, root) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(TINY_HUB_REPO, repo_type="dataset", local_dir=str(_download_dir(root) / "tiny-imagenet"),
                      allow_patterns=["data/*.parquet", "*.md"])


_LOADERS = {"fashion_mnist": _load_idx, "mnist": _load_idx, "cifar10": _load_cifar, "cifar100": _load_cifar,
            "tiny_imagenet": _load_tiny}
_DOWNLOADERS = {"fashion_mnist": _download_idx, "mnist": _download_idx, "cifar10": _download_cifar,
                "cifar100": _download_cifar, "tiny_imagenet": _download_tiny}


def load_tensors(
    name: str,
    split: str = "test",
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) at the model's input size and int64 labels of one split of a data set.

    Float dtypes give values in [0, 1] (not centred: the model centres); ``torch.uint8`` gives
    the raw 0..255. ``limit`` keeps the first N images (file order) and decodes only those.
    ``download=True`` fetches a missing data set first (see the module docstring); never by default.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    if not (dtype == torch.uint8 or dtype.is_floating_point):
        raise ValueError(f"dtype must be torch.uint8 or a floating dtype, got {dtype}")
    if download:
        try:
            return load_tensors(name, split, root, limit, dtype=dtype)
        except DatasetNotFoundError:
            _DOWNLOADERS[name](name, split, root)
    images, labels = _LOADERS[name](name, split, root, limit)
    expected = (info.in_chans, info.input_size, info.input_size)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
        raise ValueError(f"{name}: loaded images of shape {images.shape} ({images.dtype}), expected (N, *{expected}) uint8")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise ValueError(f"{name}: labels span {labels.min()}..{labels.max()}, expected 0..{info.num_classes - 1}")
    x = torch.from_numpy(np.ascontiguousarray(images))
    if dtype != torch.uint8:
        x = x.to(dtype).div_(255)
    return x, torch.from_numpy(labels)
