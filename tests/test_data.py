"""Data loading: every on-disk format, written small here, read through the user's code path."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lipzoo import data
from lipzoo.data import DATASETS, DatasetNotFoundError, default_augmentation, load_tensors, rand_augment, read_idx

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $LIPZOO_DATA, an empty download cache, no system folders: only what a test writes."""
    monkeypatch.delenv("LIPZOO_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DEBIAN_DIRS", {})
    return tmp_path


# --- IDX (Fashion-MNIST / MNIST) --------------------------------------------------------------
def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(blob)


def write_mnist_like(folder: Path, n: dict, gz: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for split, (img_stem, lbl_stem) in data.IDX_FILES.items():
        imgs = rng.integers(0, 256, (n[split], 28, 28), dtype=np.uint8)
        lbls = rng.integers(0, 10, n[split], dtype=np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(folder / (img_stem + sfx), imgs, gz)
        write_idx(folder / (lbl_stem + sfx), lbls, gz)
        out[split] = (imgs, lbls)
    return out


@pytest.mark.parametrize("name,sub,gz", [("fashion_mnist", "FashionMNIST/raw", False), ("mnist", "mnist", True),
                                          ("mnist", "MNIST/raw", False), ("fashion_mnist", "", True)])
def test_idx_layouts(isolated, name, sub, gz):
    truth = write_mnist_like(isolated / sub, {"train": 7, "test": 5}, gz)
    for split, (imgs, lbls) in truth.items():
        x, y = load_tensors(name, split, root=isolated)
        assert x.shape == (len(imgs), 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x[:, 0, 2:30, 2:30], torch.from_numpy(imgs).float() / 255)
        assert x[:, :, :2].abs().sum() == 0 and x[:, :, :, 30:].abs().sum() == 0  # zero padding
        assert torch.equal(y, torch.from_numpy(lbls).long())
        x8, _ = load_tensors(name, split, root=isolated, dtype=torch.uint8, limit=3)
        assert x8.dtype == torch.uint8 and torch.equal(x8.float() / 255, x[:3])


def test_idx_found_through_env(isolated, monkeypatch):
    truth = write_mnist_like(isolated / "elsewhere" / "mnist", {"train": 2, "test": 4}, gz=True)
    monkeypatch.setenv("LIPZOO_DATA", str(isolated / "elsewhere"))
    x, y = load_tensors("mnist", limit=3)
    assert x.shape == (3, 1, 32, 32) and torch.equal(y, torch.from_numpy(truth["test"][1][:3]).long())


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abcde")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "ok", np.arange(6).reshape(2, 3), gz=False)
    assert read_idx(tmp_path / "ok").tolist() == [[0, 1, 2], [3, 4, 5]]
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


@pytest.mark.skipif(not (FASHION_DEBIAN / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"the real Fashion-MNIST is not at {FASHION_DEBIAN} (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.delenv("LIPZOO_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    x, y = load_tensors("fashion_mnist", "test")
    assert x.shape == (10000, 1, 32, 32) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    assert x[:, :, :2].sum() == 0 and x[:, :, 30:].sum() == 0 and x[..., :2].sum() == 0 and x[..., 30:].sum() == 0
    # the per-channel mean the model subtracts is the mean of the 28x28 images
    assert abs(x[:, :, 2:30, 2:30].mean().item() - DATASETS["fashion_mnist"].mean[0]) < 0.01


# --- CIFAR (torchvision's python batches) -----------------------------------------------------
def _pickle(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real batches are protocol-2 pickles of dicts
    return hashlib.md5(path.read_bytes()).hexdigest()


def _batch(rng, n: int, label_key: str, num_classes: int) -> dict:
    d = {"batch_label": "a batch", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         label_key: rng.integers(0, num_classes, n).tolist(), "filenames": [f"img_{i}.png" for i in range(n)]}
    if label_key == "fine_labels":
        d["coarse_labels"] = [0] * n
    return d


def write_cifar(root: Path, name: str, monkeypatch=None, class_names=None, seed: int = 0) -> dict:
    """A tiny copy of the official batches; with monkeypatch, torchvision's md5 table is pointed at it."""
    import torchvision.datasets as tvd

    rng = np.random.default_rng(seed)
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    folder = root / cls.base_folder
    label_key = "labels" if name == "cifar10" else "fine_labels"
    k = DATASETS[name].num_classes
    batches = {fname: _batch(rng, 3, label_key, k) for fname, _ in cls.train_list + cls.test_list}
    md5 = {fname: _pickle(folder / fname, b) for fname, b in batches.items()}
    names = list(class_names or DATASETS[name].class_names)
    meta = {"label_names": names, "num_cases_per_batch": 3, "num_vis": 3072} if name == "cifar10" else \
        {"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}
    meta_md5 = _pickle(folder / cls.meta["filename"], meta)
    if monkeypatch is not None:
        monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[f, md5[f]] for f, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})
    train = [batches[f] for f, _ in cls.train_list]
    test = [batches[f] for f, _ in cls.test_list]
    cat = lambda bs: (np.concatenate([b["data"] for b in bs]), np.concatenate([b[label_key] for b in bs]))  # noqa: E731
    return {"train": cat(train), "test": cat(test)}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_batches(isolated, monkeypatch, name):
    truth = write_cifar(isolated / "cifar", name, monkeypatch)
    for split, (flat, labels) in truth.items():
        x, y = load_tensors(name, split, root=isolated / "cifar")
        assert x.shape == (len(flat), 3, 32, 32) and x.dtype == torch.float32
        # a row of a batch is the R plane, then G, then B, each row-major
        assert torch.equal(x, torch.from_numpy(flat.reshape(-1, 3, 32, 32)).float() / 255)
        assert torch.equal(y, torch.from_numpy(labels).long())
    x8, y8 = load_tensors(name, "train", root=isolated / "cifar", limit=2, dtype=torch.uint8)
    assert x8.shape == (2, 3, 32, 32) and torch.equal(x8, torch.from_numpy(truth["train"][0][:2].reshape(-1, 3, 32, 32)))
    monkeypatch.setenv("LIPZOO_DATA", str(isolated / "cifar"))  # also found through the environment
    assert load_tensors(name, "test")[1].shape == (3,)


def test_cifar_checksum_and_class_names(isolated, monkeypatch):
    write_cifar(isolated / "a", "cifar10")  # md5 table NOT pointed at the fake files: not the official batches
    with pytest.raises(DatasetNotFoundError, match="md5"):
        load_tensors("cifar10", root=isolated / "a")
    write_cifar(isolated / "b", "cifar100", monkeypatch, class_names=[f"wrong_{i}" for i in range(100)])
    with pytest.raises(ValueError, match="class"):
        load_tensors("cifar100", root=isolated / "b")


def test_class_names_consistent():
    for info in DATASETS.values():
        assert len(info.class_names) == info.num_classes == len(set(info.class_names))
        assert len(info.mean) == info.in_chans
    names = DATASETS["cifar100"].class_names
    assert list(names) == sorted(names) and names[0] == "apple" and names[-1] == "worm"


# --- Tiny ImageNet ----------------------------------------------------------------------------
WNIDS = [f"n{10000000 + 37 * i:08d}" for i in range(200)]


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_parquet(path: Path, images: list[bytes], wnid_labels: list[str], names: list[str]) -> None:
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images],
                                     "label": [names.index(w) for w in wnid_labels]}, features=feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


def test_tiny_imagenet_hub_parquet(isolated):
    rng = np.random.default_rng(0)
    names = list(reversed(WNIDS))  # the file's own class order differs from sorted-wnid order
    rgb = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    gray = np.full((64, 64), 77, dtype=np.uint8)
    train_w = [WNIDS[3], WNIDS[0], WNIDS[199], WNIDS[3], WNIDS[50]]
    folder = isolated / "tiny-imagenet" / "data"
    write_parquet(folder / "train-00000-of-00001-abc.parquet", [_png(a) for a in rgb], train_w, names)
    write_parquet(folder / "valid-00000-of-00001-def.parquet", [_jpeg(gray), _png(rgb[0])], [WNIDS[7], WNIDS[8]], names)

    x, y = load_tensors("tiny_imagenet", "train", root=isolated)
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(np.stack(rgb).transpose(0, 3, 1, 2)).float() / 255)
    assert y.tolist() == [3, 0, 199, 3, 50]  # renumbered to sorted wnids (ImageFolder order)
    x, y = load_tensors("tiny_imagenet", "test", root=isolated, dtype=torch.uint8)
    assert y.tolist() == [7, 8] and x.dtype == torch.uint8
    assert (x[0].int() - 77).abs().max() <= 2 and torch.equal(x[0, 0], x[0, 1])  # grayscale JPEG -> RGB
    x, y = load_tensors("tiny_imagenet", "train", root=isolated, limit=2)
    assert x.shape == (2, 3, 64, 64) and y.tolist() == [3, 0]


def test_tiny_imagenet_from_hugging_face_cache(isolated):
    """A copy that `hf download zh-plus/tiny-imagenet --repo-type dataset` left in the hub cache."""
    import shutil

    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "datasets--zh-plus--tiny-imagenet"
    sha = "0" * 40
    try:
        write_parquet(repo / "snapshots" / sha / "data" / "valid-00000-of-00001.parquet",
                      [_png(np.zeros((64, 64, 3), np.uint8))], [WNIDS[9]], WNIDS)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(sha)
        x, y = load_tensors("tiny_imagenet", "test", root=isolated)
        assert x.shape == (1, 3, 64, 64) and y.tolist() == [9]
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def test_tiny_imagenet_folder(isolated):
    from PIL import Image

    root = isolated / "tiny-imagenet-200"
    shuffled = list(np.random.default_rng(1).permutation(WNIDS))
    for i, w in enumerate(shuffled):  # one image per class, grey level = sorted index
        (root / "train" / w / "images").mkdir(parents=True)
        Image.fromarray(np.full((64, 64, 3), WNIDS.index(w), dtype=np.uint8)).save(root / "train" / w / "images" / f"{w}_0.JPEG")
        (root / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    (root / "wnids.txt").write_text("\n".join(shuffled))
    (root / "val" / "images").mkdir(parents=True)
    val = [WNIDS[120], WNIDS[5], WNIDS[5]]
    lines = []
    for i, w in enumerate(val):
        Image.fromarray(np.full((64, 64), 10 * i, dtype=np.uint8), mode="L").save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    x, y = load_tensors("tiny_imagenet", "train", root=isolated, dtype=torch.uint8)
    assert x.shape == (200, 3, 64, 64) and y.tolist() == list(range(200))
    assert (x.float().mean(dim=(1, 2, 3)) - torch.arange(200)).abs().max() <= 2
    x, y = load_tensors("tiny_imagenet", "test", root=isolated)
    assert x.shape == (3, 3, 64, 64) and y.tolist() == [120, 5, 5]
    assert x.max() <= 1 and x.min() >= 0
    assert load_tensors("tiny_imagenet", "train", root=isolated, limit=7)[1].tolist() == list(range(7))

    # the paper's code reorganises val/ into per-class folders: read that too
    (root / "val" / "val_annotations.txt").unlink()
    for i, w in enumerate(val):
        (root / "val" / w).mkdir(exist_ok=True)
        (root / "val" / "images" / f"val_{i}.JPEG").rename(root / "val" / w / f"val_{i}.JPEG")
    (root / "val" / "images").rmdir()
    assert sorted(load_tensors("tiny_imagenet", "test", root=root)[1].tolist()) == [5, 5, 120]

    (root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_0.JPEG").unlink()
    (root / "train" / WNIDS[0] / f"{WNIDS[0]}_boxes.txt").unlink()
    (root / "train" / WNIDS[0] / "images").rmdir()
    (root / "train" / WNIDS[0]).rmdir()
    with pytest.raises(ValueError, match="199 class folders"):
        load_tensors("tiny_imagenet", "train", root=root)


# --- errors and options -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(DATASETS))
def test_missing_dataset_says_where_and_how(isolated, name):
    (isolated / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError) as e:
        load_tensors(name, "train", root=isolated / "empty")
    msg = str(e.value)
    assert str(isolated / "empty") in msg and str(isolated / "cache" / "lipzoo" / "data") in msg
    assert "download=True" in msg and "LIPZOO_DATA" in msg and name in msg


def test_bad_arguments(isolated):
    with pytest.raises(KeyError, match="known"):
        load_tensors("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_tensors("mnist", "val")
    with pytest.raises(ValueError, match="limit"):
        load_tensors("mnist", limit=-1)
    with pytest.raises(ValueError, match="dtype"):
        load_tensors("mnist", dtype=torch.int32)


def test_download_only_when_asked(isolated, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeMNIST:  # stands in for torchvision's downloader: writes its raw/ layout
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_mnist_like(Path(root) / "MNIST" / "raw", {"train": 2, "test": 3}, gz=False)

    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    with pytest.raises(DatasetNotFoundError):
        load_tensors("mnist")
    assert calls == []
    x, _ = load_tensors("mnist", download=True)  # no root, no $LIPZOO_DATA: the download cache
    assert x.shape == (3, 1, 32, 32) and calls == [(str(isolated / "cache" / "lipzoo" / "data"), False, True)]
    load_tensors("mnist", download=True)
    assert len(calls) == 1  # present now: nothing fetched again


def test_default_augmentation():
    assert default_augmentation("cifar10") == {"crop_padding": 4, "hflip": True}
    assert default_augmentation("cifar100") == {"crop_padding": 4, "hflip": True}
    assert default_augmentation("tiny_imagenet") == {"crop_padding": 0, "hflip": False}
    assert default_augmentation("tiny_imagenet", include_rand_augment=True)["rand_augment"] == (2, 9)
    assert default_augmentation("mnist", include_rand_augment=True) == {"crop_padding": 2, "hflip": False, "rand_augment": None}
    default_augmentation("fashion_mnist")["hflip"] = True  # a copy: the table is not changed
    assert default_augmentation("fashion_mnist")["hflip"] is False
    with pytest.raises(KeyError):
        default_augmentation("svhn")


def test_rand_augment_is_seeded_and_per_image():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    state = torch.get_rng_state()
    a = rand_augment(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    b = rand_augment(x, generator=torch.Generator().manual_seed(0))
    c = rand_augment(x, generator=torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    assert torch.equal(rand_augment(x, num_ops=0), x)
    xf = x.float() / 255
    af = rand_augment(xf, generator=torch.Generator().manual_seed(0))
    assert af.dtype == torch.float32 and torch.equal(af, a.float() / 255)
    with pytest.raises(ValueError, match="batch"):
        rand_augment(x[0])
