"""The preprocessing spec (how raw images become model inputs) and the task names.

It is saved with every checkpoint and copied into every bundle, so the torch-free runtime reproduces training-time
preprocessing with numpy and PIL alone. Keep this module free of torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lkca_runtime.errors import UserError

TASKS = ("classification", "segmentation")  # the one list: bundles, reports and golden sets check names against it
METRIC_NAMES = {"classification": "top-1", "segmentation": "mIoU"}  # each task's accuracy, as reports name it

IGNORE_INDEX = 255
RESIZE_MODES = ("bilinear", "nearest", "bicubic")
# The gray level (0..1) the training images of a data set show where nothing is drawn: translucent pixels are
# composited on it (as_seen). Photos have no such background: their translucent images are refused.
BACKGROUNDS = {"digits": 0.0, "digit-scenes": 0.0}


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: tuple[int, int]  # (H, W) the model takes
    channels: int  # 1 (grayscale) or 3 (RGB)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default_factory=tuple)
    resize: str = "bilinear"  # how an image of another size reaches input_size
    task: str = "classification"  # or "segmentation"
    background: float | None = None  # BACKGROUNDS: what translucent pixels are shown on; None: refused

    def __post_init__(self) -> None:
        """Every value is checked when a spec is made (a bundle opened, a checkpoint read): a std of 0 would serve
        NaN scores, an unknown resize name fail at the first image. ValueError naming the field."""
        size = self.input_size
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
            raise ValueError(f"input_size {size!r} is not two positive integers")
        if not _is_int(self.channels) or self.channels < 1:  # images fill 1 or 3; .npy tensors any number
            raise ValueError(f"channels {self.channels!r} is not a positive integer")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.channels or not all(_is_real(v) and math.isfinite(v) for v in values):
                raise ValueError(f"{name} {list(values)!r} is not {self.channels} finite number(s), one per channel")
        if not all(v > 0 for v in self.std):
            raise ValueError(f"std {list(self.std)!r} must be positive: the pixels are divided by it")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if not all(isinstance(c, str) for c in self.class_names):
            raise ValueError("class_names are not all strings")
        if self.background is not None and not (_is_real(self.background) and 0 <= self.background <= 1):
            raise ValueError(f"background {self.background!r} is not a gray level from 0 to 1 (or null)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        return cls(
            input_size=tuple(d["input_size"]),
            channels=int(d["channels"]),
            mean=tuple(float(m) for m in d["mean"]),
            std=tuple(float(s) for s in d["std"]),
            class_names=tuple(d.get("class_names", ())),
            resize=d.get("resize", "bilinear"),
            task=d.get("task", "classification"),
            background=d.get("background"),
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.input_size)

    def to_pil(self, image) -> PIL.Image.Image:  # noqa: F821
        """A path, PIL image or HxW[xC] array as a PIL image in this spec's mode (L or RGB).

        Pixel values are scaled to 8 bits, never clipped (see to_uint8): 16-bit images and arrays are scaled;
        values with no 8-bit meaning are a ValueError."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                im.load()
                image = im.copy()
        image = Image.fromarray(to_uint8(image)) if isinstance(image, np.ndarray) else as_8bit(image)
        image = as_seen(image, self.background)
        mode = "L" if self.channels == 1 else "RGB"
        return image if image.mode == mode else image.convert(mode)

    def preprocess(self, images: Sequence) -> np.ndarray:
        """Images (paths, PIL images or uint8 arrays) -> float32 NCHW, resized and normalised per this spec."""
        from PIL import Image

        resample = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}[self.resize]
        h, w = self.input_size
        batch = np.empty((len(images), self.channels, h, w), dtype=np.float32)
        for i, image in enumerate(images):
            try:
                pil = self.to_pil(image)
            except ValueError as e:  # pixels with no 8-bit meaning, transparency with no background
                name = image if isinstance(image, (str, Path)) else f"image #{i}"
                raise UserError(f"{name}: {e}") from None
            if pil.size != (w, h):
                pil = pil.resize((w, h), resample)
            arr = np.asarray(pil, dtype=np.float32) / 255.0
            batch[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return self.normalize(batch)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """Pixels in [0, 1], NCHW -> the model's input range."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((batch - mean) / std).astype(np.float32)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def as_seen(image, background: float | None):
    """A PIL image as a person sees it, the one rule for training, evaluation, calibration and the Predictor:
    the EXIF orientation applied (a phone stores a portrait sideways and says so in EXIF), and transparency
    composited on `background` (a 0..1 gray level: the training data's, BACKGROUNDS) instead of dropped (PIL's
    convert to L or RGB discards alpha, so an image whose content is in its alpha channel read as a blank page).
    ValueError when the image is translucent somewhere and there is no background to show it on."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    translucent = image.mode in ("LA", "RGBA", "PA", "La", "RGBa") or "transparency" in image.info
    if not translucent:
        return image
    rgba = image.convert("RGBA")
    if np.asarray(rgba)[..., 3].min() == 255:  # an alpha channel that hides nothing
        return rgba.convert("RGB" if image.mode not in ("LA", "La") else "L")
    if background is None:
        raise ValueError(f"the image is transparent in places ({image.mode}) and the model's training data has "
                         "no background to show it on: flatten it onto the background you mean first")
    gray = round(float(background) * 255)
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (gray, gray, gray, 255)), rgba)
    return flat.convert("L" if image.mode in ("LA", "La") else "RGB")


def as_8bit(image):
    """A PIL image with 8-bit pixels: 16-bit (I;16, and I as PIL reads 16-bit PNGs) and float (F) images scaled by
    to_uint8. PIL's own convert("L") or convert("RGB") would clip every value above 255."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        return Image.fromarray(to_uint8(np.asarray(image).astype(np.uint16)))
    if image.mode in ("I", "F"):
        return Image.fromarray(to_uint8(np.asarray(image)))
    return image


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixel values as uint8, scaled and never clipped: uint8 as is; uint16 (and integers above 255, as PIL reads
    16-bit PNGs) scaled from 0..65535; floats in 0..1 or 0..255. ValueError for anything else (complex, bool,
    NaN or infinite, negative, beyond 16 bits): clipping would give a confident answer for another image."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "uif":
        raise ValueError(f"{array.dtype} values are not pixels: give uint8, uint16 or float values")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{bad} of {array.size} pixel values are NaN or infinite")
    low, high = array.min(initial=0), array.max(initial=0)
    if low < 0:
        raise ValueError(f"pixel values go down to {low:g}: give 0..255 (0..1 floats, 0..65535 for 16 bits)")
    if array.dtype == np.uint16 or (array.dtype.kind in "ui" and high > 255):
        if high > 65535:
            raise ValueError(f"pixel values reach {high}, beyond 16 bits: give 0..255 or 0..65535")
        return np.round(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if array.dtype.kind == "f" and high <= 1.0:
        return (array * 255.0).astype(np.uint8)
    if high > 255:
        raise ValueError(f"pixel values reach {high:g}: give 0..255 (0..1 floats, 0..65535 for 16 bits)")
    return array.astype(np.uint8)


@dataclass
class Split:
    """One split of a data set, opened: what the trainer and evaluation iterate."""

    name: str
    split: str
    spec: PreprocessSpec
    dataset: object  # torch.utils.data.Dataset yielding (float32 CHW tensor, target tensor)
    natural: bool  # photos: crop/flip augmentation is safe
