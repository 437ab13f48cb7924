"""From segmentation logits to masks, torch-free: bilinear resizing, and sliding-window inference.

Two ways to segment an image of any size with a model of a fixed input size:
- whole image (the default): the image is resized to the input, the logits back to the image's size;
- sliding window (ADE20K's usual protocol, mmsegmentation's "slide"): the image is resized, aspect kept, until one
  window just fits (short side = input side for a square input; or by a factor of one's choosing, see Slide),
  input-sized windows slide over it with a stride (2/3 of the window by default: mmsegmentation's 341 of 512), every
  pixel's logits are the mean over the windows that cover it, and that mean is resized to the image's own size
  before the argmax. Nothing is squeezed, at the cost of one model run per window.
The Predictor (numpy + one backend) and `evaluate` (PyTorch) share this code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable  # collections.abc.Callable[...] needs 3.9 at run time (RunLogits)

import numpy as np

from lkca_runtime.errors import UserError
from lkca_runtime.limits import check_fits
from lkca_runtime.spec import PreprocessSpec

DEFAULT_STRIDE_FRACTION = 2 / 3
_UPSAMPLE_BYTES = 64 << 20  # scores upsampled per row block when only the mask is wanted

RunLogits = Callable[[np.ndarray], np.ndarray]  # float32 NCHW batch -> (N, K, h, w) logits


# ---------------------------------------------------------------- bilinear resizing


def bilinear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, frac): 1-D bilinear resizing with half-pixel centres (torch's align_corners=False, ONNX Resize's
    half_pixel): output i = input[lo[i]] + frac[i] * (input[hi[i]] - input[lo[i]]). Two taps per output, so
    resizing costs two reads per value, where a dense (out, in) matrix costs `in` multiply-adds."""
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0.0, in_size - 1)
    lo = np.floor(src).astype(np.intp)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) weights of the same resizing as one matrix."""
    lo, hi, frac = bilinear_taps(out_size, in_size)
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def _resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    lo, hi, frac = bilinear_taps(size, x.shape[axis])
    low = np.take(x, lo, axis=axis)
    step = np.take(x, hi, axis=axis) - low
    step *= frac.reshape([-1 if a == axis % x.ndim else 1 for a in range(x.ndim)])
    low += step
    return low


def resize_bilinear(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) -> (K, H, W) for size (H, W): separable bilinear, half-pixel centres, two taps per axis."""
    height, width = size
    if scores.shape[1:] == (height, width):
        return scores
    return _resize_axis(_resize_axis(np.asarray(scores, np.float32), width, 2), height, 1)


def upsampled_argmax(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The (H, W) int32 argmax over classes of the (K, h, w) logits resized bilinearly to `size`, without ever
    holding the (K, H, W) scores (150 x 512 x 683 float32 is 210 MB for one ADE20K image).

    The classes go last so each argmax reads contiguous memory. Output rows come in runs that fall between the same
    two source rows: each source row is resized along W once, their difference taken once per run, and every output
    row of the run is one multiply-add of it (rows of a run in blocks of at most _UPSAMPLE_BYTES)."""
    classes, h, _ = logits.shape
    height, width = size
    by_pixel = np.ascontiguousarray(np.moveaxis(np.asarray(logits, np.float32), 0, -1))  # (h, w, K)
    lo, hi, frac = bilinear_taps(height, h)
    block = max(1, _UPSAMPLE_BYTES // (4 * classes * width))
    wide: dict[int, np.ndarray] = {}  # source row -> that row resized along W, (W, K); the last two kept

    def row(r: int) -> np.ndarray:
        if r not in wide:
            wide[r] = _resize_axis(by_pixel[r], width, 0)
        return wide[r]

    mask = np.empty((height, width), np.int32)
    starts = [0, *(np.flatnonzero(np.diff(lo)) + 1), height]
    for start, end in zip(starts, starts[1:]):  # itertools.pairwise is 3.10+
        top = row(lo[start])
        step = row(hi[start]) - top
        for wide_key in [k for k in wide if k < lo[start]]:
            del wide[wide_key]
        for first in range(start, end, block):
            last = min(end, first + block)
            scores = frac[first:last, None, None] * step
            scores += top
            mask[first:last] = scores.argmax(axis=-1)
    return mask


# ---------------------------------------------------------------- sliding windows


def window_origins(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of `window` pixels every `stride` pixels, the last one flush with the far edge."""
    if stride < 1:
        raise ValueError(f"stride must be at least 1 pixel, got {stride}")
    if length <= window:
        return [0]
    return [*range(0, length - window, stride), length - window]


@dataclass(frozen=True)
class Slide:
    """How to slide: `stride` in pixels (None: 2/3 of the window), `scale` the resize factor applied to the image
    first (None: ADE20K's recipe, the short side becomes the window side; 1: tile at the image's own resolution, for
    models trained at their photos' scale). An image smaller than one window is always enlarged to fit it."""

    stride: int | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and not self.scale > 0:
            raise UserError(f"--scale must be a positive factor, got {self.scale}")

    def strides(self, window: tuple[int, int]) -> tuple[int, int]:
        if self.stride is None:
            return tuple(max(1, round(side * DEFAULT_STRIDE_FRACTION)) for side in window)
        if not 1 <= self.stride <= min(window):
            raise UserError(
                f"--stride must be 1..{min(window)} pixels (the window is {window[0]}x{window[1]}), got {self.stride}"
            )
        return self.stride, self.stride

    def image_size(self, size: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
        """(H, W) the image is resized to before sliding, aspect kept."""
        fit = max(window[0] / size[0], window[1] / size[1])  # the factor at which one window just fits
        scale = fit if self.scale is None else max(self.scale, fit)
        return max(window[0], round(size[0] * scale)), max(window[1], round(size[1] * scale))


def slide_logits(
    x: np.ndarray, run: RunLogits, window: tuple[int, int], stride: tuple[int, int], batch: int = 8
) -> np.ndarray:
    """(C, H, W) preprocessed image, H >= window[0] and W >= window[1] -> (K, H, W) logits averaged over windows."""
    (height, width), (wh, ww) = x.shape[1:], window
    if height < wh or width < ww:
        raise ValueError(f"image {height}x{width} is smaller than the {wh}x{ww} window: resize it first")
    origins = [(y, x0) for y in window_origins(height, wh, stride[0]) for x0 in window_origins(width, ww, stride[1])]
    total: np.ndarray | None = None
    count = np.zeros((height, width), np.float32)
    for start in range(0, len(origins), batch):
        chunk = origins[start : start + batch]
        logits = run(np.stack([x[:, y : y + wh, x0 : x0 + ww] for y, x0 in chunk]))
        if total is None:
            total = np.zeros((logits.shape[1], height, width), np.float32)
        for (y, x0), window_logits in zip(chunk, logits):
            total[:, y : y + wh, x0 : x0 + ww] += resize_bilinear(window_logits, window)
            count[y : y + wh, x0 : x0 + ww] += 1
    return total / count


def slide_image_logits(image, spec: PreprocessSpec, run: RunLogits, slide: Slide, batch: int = 8) -> np.ndarray:
    """A PIL image -> (K, H', W') window-averaged logits at the size `slide` resizes it to."""
    window = tuple(spec.input_size)
    size = slide.image_size((image.height, image.width), window)
    # The resized image, its float copy, the summed logits and their counts: all at the slid size.
    planes = spec.channels * 2 + max(len(spec.class_names), 1) + 1
    check_fits(4.0 * size[0] * size[1] * planes, f"sliding over a {image.width}x{image.height} image resized to "
               f"{size[1]}x{size[0]}", "give a smaller --scale")
    x = replace(spec, input_size=size).preprocess([image])[0]
    return slide_logits(x, run, window, slide.strides(window), batch)


def slide_options(slide: bool | Slide, task: str, subject: str) -> Slide | None:
    """Predictor's and evaluate's `slide` argument (True: the defaults) as a Slide, or None for whole-image.

    `subject` ("lkca-bundle is a classification bundle") names what would be slid, for the error line.
    """
    if not slide:
        return None
    if task != "segmentation":
        raise UserError(f"sliding windows (--slide) are for segmentation; {subject}")
    return slide if isinstance(slide, Slide) else Slide()


def cli_slide(slide: bool, stride: int | None, scale: float | None) -> Slide | bool:
    """The CLI's --slide/--stride/--scale as one argument; a window option without --slide is a mistake."""
    if not slide:
        if stride is not None or scale is not None:
            raise UserError("--stride and --scale set up sliding windows: add --slide")
        return False
    return Slide(stride, scale)
