"""Classification data sets: digits (embedded, real, offline), CIFAR-10/100, SVHN, Tiny-ImageNet, image folders.

Every data set yields images preprocessed by the model's PreprocessSpec (the same numpy code the runtime uses), so
what the model sees in training is what it sees on a device.

Published data sets are read from their official releases with plain numpy / scipy / PIL readers: CIFAR from the
binary release (fixed-size records), SVHN from its MATLAB files, Tiny-ImageNet from its JPEG tree. No reader
deserialises Python objects; downloads are checked against the publishers' md5.
"""

from __future__ import annotations

import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lkca_runtime.errors import UserError
from lkca_runtime.spec import BACKGROUNDS, PreprocessSpec, as_8bit

DIGITS_TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the test split must never move between runs, or calibration could read it

DIGITS_MEAN_STD = ((0.5,), (0.5,))
_MEAN_STD = {
    "digits": DIGITS_MEAN_STD,
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "tiny-imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class SourceInfo:
    """What a split of any data set says of itself: names, classes, and the pixel statistics to normalise by."""

    name: str
    split: str
    class_names: tuple[str, ...]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def spec(self, img_size: int, task: str) -> PreprocessSpec:
        return PreprocessSpec(input_size=(img_size, img_size), channels=self.channels, mean=self.mean,
                              std=self.std, class_names=self.class_names, task=task,
                              background=BACKGROUNDS.get(self.name))


@dataclass
class ImageSource(SourceInfo):
    """A split of a data set: how many images, how to read image i (PIL or uint8 array) and its label."""

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


# --- official releases: where the files live under the data root, and --download ------------------------------------


@dataclass(frozen=True)
class Release:
    """Where a published data set's files come from, and the folder under the data root that holds them."""

    url: str
    md5: str | None  # of the downloaded file; checked on download only, reading never needs it
    folder: str  # ROOT/<folder>: what the archive unpacks to, or where a single-file download is put
    unpack: bool = True  # the URL is an archive whose top folder is `folder`

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


RELEASES = {
    "cifar10": Release("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                       "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin"),
    "cifar100": Release("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                        "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary"),
    "tiny-imagenet": Release("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                             "90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200"),
    "svhn-train": Release("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                          "e26dedcc434d2e4c54c9b2d4a06d8373", "svhn", unpack=False),
    "svhn-test": Release("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                         "eb5a983be6a315427106f1b164d9cef3", "svhn", unpack=False),
}


def _locate(name: str, root: Path, release: Release, required: Sequence[str], download: bool) -> Path:
    """The folder holding all ``required`` files: ROOT/<folder> or ROOT itself; downloaded first if asked to."""
    candidates = (root / release.folder, root)
    found = next((d for d in candidates if all((d / f).is_file() for f in required)), None)
    if found is None and download:
        _download(name, release, root)
        found = candidates[0] if all((candidates[0] / f).is_file() for f in required) else None
        if found is None:
            raise UserError(f"the {name} download from {release.url} lacks {', '.join(required)}; "
                            f"check the URL, or {_by_hand(release, root)}")
    if found is None:
        raise UserError(f"{name} not found: looked for {', '.join(required)} in {candidates[0].resolve()} and "
                        f"{root.resolve()}; pass --download where a network exists, or {_by_hand(release, root)} "
                        "(--data-root picks another root)")
    return found


def _by_hand(release: Release, root: Path) -> str:
    where = f"unpack it into {root.resolve()}" if release.unpack else f"put it in {(root / release.folder).resolve()}"
    return f"fetch {release.url} by hand and {where}"


def _download(name: str, release: Release, root: Path) -> None:
    """Fetch a release into ROOT/<folder>, built in a temporary folder beside it so nothing half-written remains."""
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    target = root / release.folder if release.unpack else root / release.folder / release.file_name
    if target.exists():
        raise UserError(f"{target.resolve()} exists but lacks the {name} files; move it away and rerun --download")
    try:
        root.mkdir(parents=True, exist_ok=True)
        # No "downloading..." line of our own: offline, the error below must be the only line on stderr.
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=root) as tmp:
            if release.unpack:
                download_and_extract_archive(release.url, tmp, md5=release.md5)
            else:
                download_url(release.url, tmp, release.file_name, md5=release.md5)
            fetched = Path(tmp) / target.name
            if not fetched.exists():
                raise UserError(f"{release.url} did not unpack to a {target.name} folder; check the URL")
            target.parent.mkdir(exist_ok=True)
            fetched.replace(target)
    # URLError and timeouts are OSErrors; torchvision raises RuntimeError on an md5 mismatch.
    except (OSError, RuntimeError, tarfile.TarError, zipfile.BadZipFile) as e:
        reason = " ".join(str(getattr(e, "reason", e)).split()) or type(e).__name__
        raise UserError(f"{name} download from {release.url} failed ({reason}); where a network exists, "
                        f"{_by_hand(release, root)}") from None


_RELEASE_SPLITS = {"train": "train", "test": "test", "val": "test", "validation": "test"}


def _release_split(name: str, split: str) -> str:
    """train or test: these releases have no separate validation split, so val means their held-out test split."""
    if split not in _RELEASE_SPLITS:
        raise UserError(f"unknown split {split!r} for {name}; valid: {', '.join(_RELEASE_SPLITS)}")
    return _RELEASE_SPLITS[split]


# --- CIFAR-10/100: the binary release, fixed-size records of label byte(s) then 3x32x32 pixels (CHW, RGB planes) ---


@dataclass(frozen=True)
class CifarLayout:
    files: dict[str, tuple[str, ...]]  # split -> record files
    label_bytes: int  # bytes before each image; we use the last one (CIFAR-100: coarse, then fine)
    names_file: str  # class names, one a line, in label order


CIFAR_PIXELS = 3 * 32 * 32
CIFAR_LAYOUTS = {
    "cifar10": CifarLayout({"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
                           1, "batches.meta.txt"),
    "cifar100": CifarLayout({"train": ("train.bin",), "test": ("test.bin",)}, 2, "fine_label_names.txt"),
}


def _cifar(name: str, split: str, root: Path, download: bool) -> ImageSource:
    layout = CIFAR_LAYOUTS[name]
    files = layout.files[split]
    base = _locate(name, root, RELEASES[name], (*files, layout.names_file), download)
    records = read_records([base / f for f in files], layout.label_bytes + CIFAR_PIXELS)
    labels = records[:, layout.label_bytes - 1].astype(np.int64)
    images = records[:, layout.label_bytes:].reshape(-1, 3, 32, 32)
    class_names = _read_names(base / layout.names_file)
    _check_labels(labels, len(class_names), base)
    mean, std = _MEAN_STD[name]
    return ImageSource(name, split, class_names, 3, mean, std, labels,
                       lambda i: np.ascontiguousarray(images[i].transpose(1, 2, 0)))


def read_records(files: Sequence[Path], record_size: int) -> np.ndarray:
    """Fixed-size records of several files as one (N, record_size) uint8 array, read straight into place."""
    sizes = [f.stat().st_size for f in files]
    for f, size in zip(files, sizes):
        if size == 0 or size % record_size:
            raise UserError(f"{f} is truncated or not a binary release file ({size} bytes is not a whole number of "
                            f"{record_size}-byte records); fetch the release again")
    records = np.empty((sum(sizes) // record_size, record_size), dtype=np.uint8)
    flat, offset = records.reshape(-1), 0
    for f, size in zip(files, sizes):
        with f.open("rb") as fh:
            fh.readinto(flat[offset:offset + size])
        offset += size
    return records


def _read_names(path: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def _check_labels(labels: np.ndarray, num_classes: int, where: Path) -> None:
    if len(labels) and labels.max() >= num_classes:
        raise UserError(f"{where} holds label {int(labels.max())}, but names only {num_classes} classes; "
                        "the files are corrupt or mixed from different releases")


# --- SVHN: the cropped-digits MATLAB files, X (32, 32, 3, N) uint8 and y (N, 1) with 10 meaning the digit 0 ----------


def _svhn(split: str, root: Path, download: bool) -> ImageSource:
    release = RELEASES[f"svhn-{split}"]
    base = _locate("svhn", root, release, (release.file_name,), download)
    images, labels = read_svhn_mat(base / release.file_name)
    mean, std = _MEAN_STD["svhn"]
    return ImageSource("svhn", split, tuple(str(i) for i in range(10)), 3, mean, std, labels,
                       lambda i: np.ascontiguousarray(images[..., i]))


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(X (32, 32, 3, N) uint8, labels (N,) int64 with SVHN's 10 mapped to 0) from an official SVHN .mat file."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    # What scipy raises on damaged files varies with where the damage is (v7.3 files: NotImplementedError).
    except (MatReadError, ValueError, TypeError, IndexError, NotImplementedError, OSError, zlib.error) as e:
        raise UserError(f"{path} is not a readable SVHN .mat file ({' '.join(str(e).split())}); "
                        "fetch it again") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise UserError(f"{path} lacks SVHN's X (32, 32, 3, N) and y (N, 1) arrays; fetch it again")
    labels = y.reshape(-1).astype(np.int64)
    if len(labels) and (labels.min() < 1 or labels.max() > 10):
        raise UserError(f"{path} holds labels outside SVHN's 1..10; fetch it again")
    return x.astype(np.uint8, copy=False), labels % 10


# --- image files: Tiny-ImageNet's release tree and any ImageFolder-style directory ----------------------------------


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _image_source(name: str, split: str, class_names: Sequence[str], files: Sequence[tuple[Path, int]],
                  mean_std: tuple[tuple[float, ...], tuple[float, ...]], where: Path) -> ImageSource:
    if not files:
        raise UserError(f"no images found for {name} {split} under {where.resolve()}")
    paths = [p for p, _ in files]
    return ImageSource(name, split, tuple(class_names), 3, *mean_std, np.array([c for _, c in files], np.int64),
                       lambda i: read_image(paths[i]))


def read_image(path: Path):
    """An image file as RGB PIL, RGBA when it has transparency (16-bit files scaled, not clipped: spec.as_8bit),
    upright (its EXIF orientation applied); the model's spec then composites the transparency as the Predictor does
    (spec.as_seen) and converts it to its channels (gray -> RGB -> L is exact). An unreadable file is the user's to
    fix, so it says which one."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            image = as_8bit(ImageOps.exif_transpose(im))
            translucent = image.mode in ("LA", "RGBA", "PA", "La", "RGBa") or "transparency" in image.info
            return image.convert("RGBA" if translucent else "RGB")
    except (OSError, ValueError) as e:  # UnidentifiedImageError is an OSError; ValueError: pixels as_8bit refuses
        raise UserError(f"cannot read image {path}: {e}") from None


def _tiny_imagenet(split: str, root: Path, download: bool) -> ImageSource:
    """tiny-imagenet-200: wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images + val/val_annotations.txt.

    Its test/ folder has no labels, so the labelled val/ folder serves as test (and val).
    """
    base = _locate("tiny-imagenet", root, RELEASES["tiny-imagenet"], ("wnids.txt", "val/val_annotations.txt"),
                   download)
    wnids = (base / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        files = [(p, index[w]) for w in wnids for p in sorted((base / "train" / w / "images").glob("*.JPEG"))]
    else:
        files = _tiny_imagenet_val(base, index)
    return _image_source("tiny-imagenet", split, _tiny_imagenet_words(base, wnids), files,
                         _MEAN_STD["tiny-imagenet"], base / ("train" if split == "train" else "val"))


def _tiny_imagenet_val(base: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    annotations = base / "val" / "val_annotations.txt"
    files = []
    for n, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise UserError(f"{annotations}:{n}: expected '<file>\\t<wnid from wnids.txt>...', got {line[:80]!r}")
        files.append((base / "val" / "images" / fields[0], index[fields[1]]))
    return files


def _tiny_imagenet_words(base: Path, wnids: list[str]) -> tuple[str, ...]:
    words_file = base / "words.txt"
    if not words_file.is_file():
        return tuple(wnids)
    names = dict(line.split("\t", 1) for line in words_file.read_text().splitlines() if "\t" in line)
    return tuple(names.get(w, w).split(",")[0].strip() for w in wnids)


# An ImageFolder is PATH/<split>/<class>/<image> (split folders below) or PATH/<class>/<image>, split per class
# 80/20 with a fixed seed.
_FOLDER_SPLITS = {"train": ("train",), "test": ("test", "val", "validation"), "val": ("val", "validation", "test"),
                  "validation": ("validation", "val", "test")}
_SPLIT_FOLDER_NAMES = ("train", "test", "val", "validation")


def _image_folder(path: Path, split: str) -> ImageSource:
    split_folders = [path / d for d in _SPLIT_FOLDER_NAMES if (path / d).is_dir()]
    if split_folders:
        wanted = _FOLDER_SPLITS.get(split, (split,))
        split_root = next((path / d for d in wanted if (path / d).is_dir()), None)
        if split_root is None:
            raise UserError(f"no {split} split in {path.resolve()}: looked for {', '.join(wanted)}/, found "
                            f"{', '.join(d.name for d in split_folders)}/")
        # Classes from every split folder, so a class missing from one split cannot shift the others' labels.
        classes = sorted({c.name for d in {*split_folders, split_root} for c in d.iterdir() if c.is_dir()})
        files, where = _class_files(split_root, classes), split_root
    else:
        if split not in _FOLDER_SPLITS:
            raise UserError(f"unknown split {split!r} for {path}; valid: {', '.join(_FOLDER_SPLITS)}")
        classes = sorted(c.name for c in path.iterdir() if c.is_dir())
        files = _class_files(path, classes)
        labels = np.array([c for _, c in files], dtype=np.int64)
        files, where = [files[i] for i in seeded_split(labels, split)], path
    return _image_source(path.resolve().name, split, classes, files, IMAGENET_MEAN_STD, where)


def _class_files(root: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    return [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).rglob("*"))
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]


def seeded_split(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of ``split`` in a fixed, seeded 80/20 split made per class, so each class is in both splits
    where it has images enough. Test images never move into training between runs."""
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        cut = round(len(members) * (1 - DIGITS_TEST_FRACTION))
        chosen.append(members[:cut] if split == "train" else members[cut:])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


# --- by name ----------------------------------------------------------------------------------------------------------


CLASSIFICATION_DATASETS = ("digits", "cifar10", "cifar100", "svhn", "tiny-imagenet")


def open_source(name: str, split: str = "train", root: str | Path | None = None, download: bool = False) -> ImageSource:
    """A classification data set split by name, or an image folder by path."""
    root = Path(root or "data")
    if name in CLASSIFICATION_DATASETS:
        split = _release_split(name, split)
    if name == "digits":
        return _digits(split)
    if name in CIFAR_LAYOUTS:
        return _cifar(name, split, root, download)
    if name == "svhn":
        return _svhn(split, root, download)
    if name == "tiny-imagenet":
        return _tiny_imagenet(split, root, download)
    path = Path(name)
    if path.is_dir():
        return _image_folder(path, split)
    raise UserError(f"unknown data set {name!r} (and no folder {path.resolve()}); valid: "
                    f"{', '.join(CLASSIFICATION_DATASETS)}, or a folder of <class>/<image> files")


def spec_for(source: ImageSource, img_size: int) -> PreprocessSpec:
    return source.spec(img_size, "classification")


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
    indices = seeded_subset(len(source), limit, seed)
    return preprocess_all(source, spec, indices), source.labels[indices]


def seeded_subset(size: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of `limit` items out of `size` drawn with `seed` (all of them without a smaller limit)."""
    if limit is None or limit >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, limit, replace=False))
