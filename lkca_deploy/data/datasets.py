"""Classification data sets: digits (embedded, real, offline), CIFAR-10/100, SVHN, Tiny-ImageNet, image folders.

Every data set yields images preprocessed by the model's PreprocessSpec (the same numpy code the runtime uses), so
what the model sees in training is what it sees on a device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from .spec import PreprocessSpec

DIGITS_TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the test split must never move between runs, or calibration could read it

_MEAN_STD = {
    "digits": ((0.5,), (0.5,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "tiny-imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class ImageSource:
    """A split of a data set: how many images, how to read image i (PIL or uint8 array) and its label."""

    name: str
    split: str
    class_names: tuple[str, ...]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: np.ndarray
    read: Callable[[int], object]
    natural: bool = True  # natural photos take crop+flip augmentation; digits would be broken by a flip

    def __len__(self) -> int:
        return len(self.labels)


# --- digits: scikit-learn's 1,797 real 8x8 handwritten digits, shipped with the package, no download ---------------


def digits_split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The fixed, seeded, stratified train/test split of scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return np.sort(train), np.sort(test)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All digits as 8x8 uint8 images (values 0..16 scaled to 0..255) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target.astype(np.int64)


def _digits(split: str) -> ImageSource:
    images, labels = digits_images()
    train, test = digits_split_indices()
    idx = train if split == "train" else test
    mean, std = _MEAN_STD["digits"]
    return ImageSource("digits", split, tuple(str(i) for i in range(10)), 1, mean, std, labels[idx],
                       lambda i: images[idx[i]], natural=False)


# --- torchvision data sets: real files on disk, --download where a network exists -----------------------------------


def _torchvision(name: str, split: str, root: Path, download: bool) -> ImageSource:
    import torchvision.datasets as tvd

    train = split == "train"
    try:
        if name == "cifar10":
            ds = tvd.CIFAR10(root, train=train, download=download)
        elif name == "cifar100":
            ds = tvd.CIFAR100(root, train=train, download=download)
        else:  # svhn
            ds = tvd.SVHN(root / "svhn", split="train" if train else "test", download=download)
    except (RuntimeError, OSError) as e:
        raise _missing(name, root, e) from None
    labels = np.asarray(ds.labels if name == "svhn" else ds.targets, dtype=np.int64)
    classes = tuple(str(i) for i in range(10)) if name == "svhn" else tuple(ds.classes)
    mean, std = _MEAN_STD[name]
    return ImageSource(name, split, classes, 3, mean, std, labels, lambda i: ds[i][0])


def _tiny_imagenet(split: str, root: Path) -> ImageSource:
    """The tiny-imagenet-200 release layout: train/<wnid>/images/*.JPEG; val/images + val/val_annotations.txt."""
    base = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise _missing("tiny-imagenet", base, None)
    wnids = wnids_file.read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        files = [(p, index[w]) for w in wnids for p in sorted((base / "train" / w / "images").glob("*.JPEG"))]
    else:
        lines = (base / "val" / "val_annotations.txt").read_text().splitlines()
        files = [(base / "val" / "images" / ln.split("\t")[0], index[ln.split("\t")[1]]) for ln in lines if ln]
    words = _tiny_imagenet_words(base, wnids)
    mean, std = _MEAN_STD["tiny-imagenet"]
    return ImageSource("tiny-imagenet", split, words, 3, mean, std,
                       np.array([c for _, c in files], dtype=np.int64), lambda i: files[i][0])


def _tiny_imagenet_words(base: Path, wnids: list[str]) -> tuple[str, ...]:
    words_file = base / "words.txt"
    if not words_file.is_file():
        return tuple(wnids)
    names = dict(line.split("\t", 1) for line in words_file.read_text().splitlines() if "\t" in line)
    return tuple(names.get(w, w).split(",")[0].strip() for w in wnids)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _image_folder(path: Path, split: str) -> ImageSource:
    """ImageFolder layout: PATH/<split>/<class>/*.png, or PATH/<class>/*.png split 80/20 with a fixed seed."""
    split_dirs = {"train": ("train",), "test": ("test", "val", "validation"), "val": ("val", "validation", "test")}
    root = next((path / d for d in split_dirs.get(split, (split,)) if (path / d).is_dir()), None)
    classes = sorted(d.name for d in (root or path).iterdir() if d.is_dir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted(((root or path) / name).rglob("*"))
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UserError(f"no images found under {root or path} (expected <class>/<image> folders)")
    if root is None:  # no split folders: a fixed seeded split, so test images never move into training
        order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
        cut = int(len(files) * (1 - DIGITS_TEST_FRACTION))
        files = [files[i] for i in np.sort(order[:cut] if split == "train" else order[cut:])]
    mean, std = IMAGENET_MEAN_STD
    return ImageSource(path.name, split, tuple(classes), 3, mean, std,
                       np.array([c for _, c in files], dtype=np.int64), lambda i: files[i][0])


def _missing(name: str, root: Path, error: Exception | None) -> UserError:
    hint = {"tiny-imagenet": "unzip tiny-imagenet-200.zip there"}.get(name, "pass --download where a network exists")
    return UserError(f"data set {name} not found under {root.resolve()}: {hint}, or point --data-root at it")


CLASSIFICATION_DATASETS = ("digits", "cifar10", "cifar100", "svhn", "tiny-imagenet")


def open_source(name: str, split: str = "train", root: str | Path | None = None, download: bool = False) -> ImageSource:
    """A classification data set split by name, or an image folder by path."""
    root = Path(root or "data")
    if name == "digits":
        return _digits(split)
    if name in ("cifar10", "cifar100", "svhn"):
        return _torchvision(name, split, root, download)
    if name == "tiny-imagenet":
        return _tiny_imagenet(split, root)
    path = Path(name)
    if path.is_dir():
        return _image_folder(path, split)
    raise UserError(f"unknown data set {name!r}; valid: {', '.join(CLASSIFICATION_DATASETS)}, or a folder path")


def spec_for(source: ImageSource, img_size: int) -> PreprocessSpec:
    return PreprocessSpec(input_size=(img_size, img_size), channels=source.channels, mean=source.mean,
                          std=source.std, class_names=source.class_names, task="classification")


def preprocess_all(source: ImageSource, spec: PreprocessSpec, indices: Sequence[int] | None = None,
                   batch: int = 256) -> np.ndarray:
    """Preprocess images of a source (all, or the given indices) into one float32 NCHW array."""
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    chunks = [spec.preprocess([source.read(int(i)) for i in indices[s : s + batch]])
              for s in range(0, len(indices), batch)]
    return np.concatenate(chunks) if chunks else np.zeros((0, *spec.input_shape), np.float32)


def load_arrays(name: str, split: str, spec: PreprocessSpec, root=None, download: bool = False,
                limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A split as (x float32 NCHW preprocessed by spec, y int64); ``limit`` takes a seeded random subset."""
    source = open_source(name, split, root, download)
    indices = np.arange(len(source))
    if limit is not None and limit < len(source):
        indices = np.sort(np.random.default_rng(seed).choice(len(source), limit, replace=False))
    return preprocess_all(source, spec, indices), source.labels[indices]
