"""Segmentation data sets: digit-scenes (embedded), ADE20K (SceneParse150 release layout), image+mask folders.

Every source yields (image, label map) pairs; label maps hold class ids 0..K-1 and the ignore index 255. Images reach
the model through the PreprocessSpec (whole-image resize to the model input, the same numpy code the runtime uses);
masks are resized with nearest neighbour to the same size. That is also how evaluation reads images of other sizes
(ADE20K) by default: whole-image resize, mIoU at the model's input resolution; `evaluate --slide` reads the raw pairs
instead and scores sliding-window masks at each image's own size (masks.py). Training adds random scale, crop and
flips in the task (tasks/segmentation.py).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lkca_deploy.data.datasets import (
    DIGITS_TEST_FRACTION,
    IMAGE_SUFFIXES,
    IMAGENET_MEAN_STD,
    SPLIT_SEED,
    SourceInfo,
    seeded_subset,
)
from lkca_deploy.data.scenes import CLASS_NAMES, MEAN_STD, make_scenes
from lkca_runtime.errors import UserError
from lkca_runtime.spec import IGNORE_INDEX, PreprocessSpec, Split

PRELOAD_BYTES = 512 * 2**20  # splits whose preprocessed tensors fit are read once up front; larger ones per item


@dataclass
class SegmentationSource(SourceInfo):
    """A split of a segmentation data set: how many pairs, and how to read pair i (image, HxW uint8 label map)."""

    size: int
    read: Callable[[int], tuple[object, np.ndarray]]
    natural: bool = True  # photos take flips; digits would be broken by one
    skipped: int = 0  # images without a mask

    def __len__(self) -> int:
        return self.size


# --- digit-scenes ---------------------------------------------------------------------------------------------------


def _digit_scenes(split: str) -> SegmentationSource:
    scenes = make_scenes("train" if split == "train" else "test")
    mean, std = MEAN_STD
    return SegmentationSource("digit-scenes", split, CLASS_NAMES, 1, mean, std, len(scenes),
                              lambda i: (scenes.images[i], scenes.masks[i]), natural=False)


# --- files on disk: ADE20K and image+mask folders -------------------------------------------------------------------


def _label_lut(valid: Sequence[int], classes: Sequence[int]) -> np.ndarray:
    """A 256-entry map from raw mask values to class ids (or 255); -1 marks raw values that are not allowed."""
    lut = np.full(256, -1, np.int16)
    lut[np.asarray(valid, np.int64)] = np.asarray(classes, np.int16)
    return lut


def _open_image(path: Path, what: str):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for truncated or non-image files
        raise UserError(f"cannot read {what} {path}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None


def _read_label_map(mask_path: Path, image_path: Path, lut: np.ndarray, num_classes: int) -> tuple[object, np.ndarray]:
    from PIL import ImageOps

    image = ImageOps.exif_transpose(_open_image(image_path, "image"))  # as seen: the mask is drawn on that
    mask = _open_image(mask_path, "mask")
    if mask.size != image.size:
        raise UserError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image {image_path.name} is "
                        f"{image.size[0]}x{image.size[1]}: a mask must have its image's size")
    if mask.mode not in ("L", "P", "I", "I;16"):
        raise UserError(f"mask {mask_path} is a {mask.mode} image; masks are single-channel PNG label maps")
    raw = np.asarray(mask).astype(np.int64)
    labels = lut[np.clip(raw, 0, 255)]
    bad = (labels < 0) | (raw > 255)
    if bad.any():
        raise UserError(f"mask {mask_path} has label {int(raw[bad][0])}, beyond the {num_classes} classes of this "
                        f"data set (labels 0..{num_classes - 1}, {IGNORE_INDEX} = ignore)")
    return image, labels.astype(np.uint8)


def _pair_files(image_dir: Path, mask_dir: Path) -> tuple[list[tuple[Path, Path]], int]:
    """(image, mask) pairs matched by file stem, and how many images had no mask (they are skipped)."""
    masks = {p.stem: p for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else {}
    images = sorted(p for p in image_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if image_dir.is_dir() else []
    pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
    return pairs, len(images) - len(pairs)


def _file_source(name: str, split: str, pairs: list[tuple[Path, Path]], skipped: int, class_names: tuple[str, ...],
                 lut: np.ndarray, where: Path) -> SegmentationSource:
    if skipped:
        print(f"{name} {split}: skipped {skipped} image(s) with no mask under {where}", file=sys.stderr)
    if not pairs:
        raise UserError(f"no image with a matching mask under {where} ({skipped} image(s) without one); masks are "
                        "PNG label maps with the image's file stem")
    mean, std = IMAGENET_MEAN_STD
    k = len(class_names)
    return SegmentationSource(name, split, class_names, 3, mean, std, len(pairs),
                              lambda i: _read_label_map(pairs[i][1], pairs[i][0], lut, k), skipped=skipped)


# ADE20K (SceneParse150): raw label 0 is "other" (ignored), 1..150 are the classes 0..149.
ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
ADE20K_DIR = "ADEChallengeData2016"
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)
_ADE20K_SPLITS = {"train": "training", "training": "training", "test": "validation", "val": "validation",
                  "validation": "validation"}


def _ade20k_base(root: Path) -> Path | None:
    """The release folder: ROOT/ADEChallengeData2016, or ROOT itself when it is one."""
    return next((d for d in (root / ADE20K_DIR, root) if (d / "images").is_dir() and (d / "annotations").is_dir()),
                None)


def _ade20k(split: str, root: Path, download: bool) -> SegmentationSource:
    if split not in _ADE20K_SPLITS:
        raise UserError(f"unknown ADE20K split {split!r}; valid: {', '.join(_ADE20K_SPLITS)}")
    base = _ade20k_base(root)
    if base is None and download:
        base = download_ade20k(root)
    if base is None:
        raise UserError(f"ADE20K not found: looked for {(root / ADE20K_DIR).resolve()}/images and "
                        f"{root.resolve()}/images; pass --download where a network exists, or get {ADE20K_URL}, "
                        "unzip it there and point --data-root at it")
    folder = _ADE20K_SPLITS[split]
    pairs, skipped = _pair_files(base / "images" / folder, base / "annotations" / folder)
    lut = _label_lut(range(len(ADE20K_CLASSES) + 1), [IGNORE_INDEX, *range(len(ADE20K_CLASSES))])
    return _file_source("ade20k", split, pairs, skipped, ADE20K_CLASSES, lut, base / "images" / folder)


def download_ade20k(root: Path, url: str | None = None) -> Path:
    """Download and unpack the ADE20K release into ROOT/ADEChallengeData2016 (built beside it, renamed into place)."""
    url = url or ADE20K_URL
    root.mkdir(parents=True, exist_ok=True)
    print(f"downloading ADE20K from {url} (about 920 MB) into {root}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=".ade20k.", dir=root) as tmp:
        archive = Path(tmp) / "ADEChallengeData2016.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        except (OSError, zipfile.BadZipFile) as e:  # URLError and timeouts are OSErrors
            raise UserError(f"ADE20K download from {url} failed ({getattr(e, 'reason', e)}); get the zip where a "
                            f"network exists and unzip it into {root.resolve()}") from None
        unpacked = _ade20k_base(Path(tmp))
        if unpacked is None:
            raise UserError(f"{url} does not hold the {ADE20K_DIR} release layout (images/, annotations/)")
        target = root / ADE20K_DIR
        unpacked.replace(target)
    return target


# Folder: PATH/images/*.jpg|png + PATH/masks/<stem>.png, optional PATH/classes.txt (one name per line). Split by
# PATH/images/<split>/ + PATH/masks/<split>/ where those exist, else a fixed seeded 80/20 split.
_FOLDER_SPLITS = {"train": ("train",), "test": ("test", "val", "validation"), "val": ("val", "validation", "test")}


def _mask_folder(path: Path, split: str) -> SegmentationSource:
    image_root, mask_root = path / "images", path / "masks"
    sub = next((d for d in _FOLDER_SPLITS.get(split, (split,)) if (image_root / d).is_dir()), None)
    if sub is not None:
        pairs, skipped = _pair_files(image_root / sub, mask_root / sub)
    else:
        pairs, skipped = _pair_files(image_root, mask_root)
        if 0 < len(pairs) < 2:
            raise UserError(f"{path} holds {len(pairs)} image+mask pair: too few to split into train and test; add "
                            "more, or give images/train and images/test (with the same under masks/)")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(pairs))
        cut = min(len(pairs) - 1, round(len(pairs) * (1 - DIGITS_TEST_FRACTION)))
        pairs = [pairs[i] for i in np.sort(order[:cut] if split == "train" else order[cut:])]
    class_names = _folder_classes(path)
    lut = _label_lut([*range(len(class_names)), IGNORE_INDEX], [*range(len(class_names)), IGNORE_INDEX])
    return _file_source(path.name, split, pairs, skipped, class_names, lut, image_root / (sub or ""))


def _folder_classes(path: Path) -> tuple[str, ...]:
    """classes.txt, one name per line; without one, "0".."K-1" with K = the largest label in any mask + 1."""
    listing = path / "classes.txt"
    if listing.is_file():
        names = tuple(line.strip() for line in listing.read_text().splitlines() if line.strip())
        if not 0 < len(names) < IGNORE_INDEX:
            raise UserError(f"{listing} lists {len(names)} classes; it needs 1 to {IGNORE_INDEX - 1}")
        return names
    # Every mask of every split is scanned, so train and test agree on the class count.
    largest = 0
    for mask_path in sorted((path / "masks").rglob("*.png")):
        raw = np.asarray(_open_image(mask_path, "mask"))
        labels = raw[raw != IGNORE_INDEX]
        largest = max(largest, int(labels.max(initial=0)))
    if largest >= IGNORE_INDEX:
        raise UserError(f"masks under {path / 'masks'} hold labels up to {largest}; labels are 0..254, 255 = ignore")
    return tuple(str(i) for i in range(largest + 1))


# --- public API -----------------------------------------------------------------------------------------------------


def open_segmentation_source(name: str, split: str = "train", root: str | Path | None = None,
                             download: bool = False) -> SegmentationSource:
    """A segmentation data set split by name (digit-scenes, ade20k), or a folder with images/ and masks/ by path."""
    if name == "digit-scenes":
        return _digit_scenes(split)
    if name == "ade20k":
        return _ade20k(split, Path(root or "data"), download)
    path = Path(name)
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return _mask_folder(path, split)
    raise UserError(f"unknown segmentation data set {name!r}; valid: digit-scenes, ade20k, or a folder with "
                    "images/ and masks/")


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map resized to (H, W) with nearest neighbour, so no label is ever blended into another."""
    if mask.shape == tuple(size):
        return mask
    from PIL import Image

    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))


def preprocess_pairs(source: SegmentationSource, spec: PreprocessSpec, indices: Sequence[int],
                     batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of a source as model inputs: (x float32 NCHW by ``spec``, masks int64 N,H,W at the input size)."""
    xs, masks = [], []
    for start in range(0, len(indices), batch):
        pairs = [source.read(int(i)) for i in indices[start : start + batch]]
        xs.append(spec.preprocess([image for image, _ in pairs]))
        masks.append(np.stack([resize_mask(np.asarray(m, np.uint8), spec.input_size) for _, m in pairs]))
    if not xs:
        return np.zeros((0, *spec.input_shape), np.float32), np.zeros((0, *spec.input_size), np.int64)
    return np.concatenate(xs), np.concatenate(masks).astype(np.int64)


def open_segmentation_split(name: str, split: str, img_size: int, root=None, download: bool = False,
                            spec: PreprocessSpec | None = None) -> Split:
    """The trainer's view of a split: a torch Dataset of (x float32 CHW, mask int64 HxW) and the spec behind it
    (the data set's, or `spec`, a model's own, with the data set's class names)."""
    source = open_segmentation_source(name, split, root, download)
    if spec is None:
        spec = source.spec(img_size, "segmentation")
    else:
        spec = replace(spec, class_names=source.class_names, task="segmentation")
    return Split(name, split, spec, _torch_dataset(source, spec), source.natural)


def load_segmentation_arrays(name: str, split: str, spec: PreprocessSpec, root=None, download: bool = False,
                             limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A split as numpy (x float32 NCHW preprocessed by ``spec``, masks int64 N,H,W); ``limit``: a seeded subset."""
    source = open_segmentation_source(name, split, root, download)
    return preprocess_pairs(source, spec, seeded_subset(len(source), limit, seed))


def _torch_dataset(source: SegmentationSource, spec: PreprocessSpec):
    import torch
    from torch.utils.data import Dataset, TensorDataset

    item_bytes = 4 * int(np.prod(spec.input_shape)) + 8 * spec.input_size[0] * spec.input_size[1]
    if len(source) * item_bytes <= PRELOAD_BYTES:
        x, masks = preprocess_pairs(source, spec, np.arange(len(source)))
        dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(masks))
    else:
        class LazyPairs(Dataset):
            def __len__(self) -> int:
                return len(source)

            def __getitem__(self, i: int):
                x, mask = preprocess_pairs(source, spec, [i])
                return torch.from_numpy(x[0]), torch.from_numpy(mask[0])

        dataset = LazyPairs()
    dataset.skipped = source.skipped  # images without a mask, for whoever reports on the split
    return dataset
