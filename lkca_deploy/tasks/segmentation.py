"""Semantic segmentation: cross-entropy with the ignore index, joint image+mask augmentation, mIoU.

Augmentation moves image and mask through one sampling grid (random scale, random crop or placement, and a
horizontal flip for photos), so they cannot drift apart: the image is sampled bilinearly, the mask with nearest
neighbour, and mask pixels that fall outside the source become the ignore index.

digit-scenes recipe (lkca_seg_nano, measured on 2 CPU cores): batch 16, lr 2e-3, 15 epochs, scales 0.8..1.25 ->
test mIoU 0.79 in about 185 s on an idle machine. Batch 16 learns far faster per epoch than 32 or 64 at the same
cost (20 epochs: 0.83 vs 0.77 at batch 32); the mild scale jitter beat none (10 epochs: 0.71 vs 0.69).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lkca_runtime.masks import slide_image_logits, upsampled_argmax
from lkca_runtime.metrics import SegmentationMeter
from lkca_runtime.spec import IGNORE_INDEX

NATURAL_SCALES = (0.5, 2.0)  # photos (ADE20K): the usual range of the paper's segmentation recipes
DIGIT_SCALES = (0.8, 1.25)  # digit-scenes: digits stay near the sizes test scenes hold (a fifth to a third)


class SegmentationTask:
    name = "segmentation"
    headline = "miou"  # the metric a progress bar and a summary show

    def __init__(self, natural_scales: tuple[float, float] = NATURAL_SCALES,
                 digit_scales: tuple[float, float] = DIGIT_SCALES, ignore_index: int = IGNORE_INDEX):
        self.natural_scales, self.digit_scales, self.ignore_index = natural_scales, digit_scales, ignore_index

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index)

    def augment(self, x: torch.Tensor, y: torch.Tensor, natural: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Random scale and crop of image and mask together; a horizontal flip for photos only (it breaks digits)."""
        scales = self.natural_scales if natural else self.digit_scales
        return joint_scale_crop(x, y, scales, flip=natural, ignore_index=self.ignore_index)

    def meter(self, class_names=()) -> MIoUMeter:
        return MIoUMeter(class_names, self.ignore_index)


def joint_scale_crop(x: torch.Tensor, y: torch.Tensor, scales: tuple[float, float], flip: bool = False,
                     ignore_index: int = IGNORE_INDEX, image_mode: str = "bilinear"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: scale by a log-uniform factor in ``scales``, then a random crop (zoomed in) or placement (zoomed
    out) at the original size, optionally a horizontal flip of half the batch. x (B, C, H, W), y (B, H, W) ids.
    """
    b = x.shape[0]
    grid = _random_grid(b, x.shape, scales, flip, x.device)
    x = F.grid_sample(x, grid, mode=image_mode, padding_mode="zeros", align_corners=False)
    # Ids shifted by one so that zero padding marks "outside the source"; exact in float32 (ids <= 256).
    shifted = F.grid_sample((y + 1).unsqueeze(1).to(x.dtype), grid, mode="nearest", padding_mode="zeros",
                            align_corners=False).squeeze(1).round().long() - 1
    return x, torch.where(shifted < 0, torch.full_like(shifted, ignore_index), shifted)


def _random_grid(b: int, shape: torch.Size, scales: tuple[float, float], flip: bool,
                 device: torch.device) -> torch.Tensor:
    """Sampling grid per sample: output coords -> source coords = inv_scale * out + shift (normalised [-1, 1])."""
    lo, hi = math.log(scales[0]), math.log(scales[1])
    inv = torch.exp(-(torch.rand(b) * (hi - lo) + lo))
    reach = (inv - 1).abs()  # shifts that keep the crop inside the source, or the source inside the output
    shift = (torch.rand(2, b) * 2 - 1) * reach
    sign = torch.where(torch.rand(b) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = inv * sign, shift[0]
    theta[:, 1, 1], theta[:, 1, 2] = inv, shift[1]
    return F.affine_grid(theta, list(shape), align_corners=False).to(device)


class MIoUMeter:
    """Streams predicted ids into lkca_runtime.metrics.SegmentationMeter; result: miou, pixel_acc, per_class_iou, samples."""

    def __init__(self, class_names=(), ignore_index: int = IGNORE_INDEX):
        self.class_names = tuple(class_names)
        self.ignore_index = ignore_index
        self.samples = 0
        self._meter: SegmentationMeter | None = None  # built on the first batch, when the class count is known

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if self._meter is None:
            self._meter = SegmentationMeter(logits.shape[1], self.ignore_index)
        self._meter.update(logits.argmax(dim=1).cpu().numpy(), target.cpu().numpy())
        self.samples += len(target)

    def result(self) -> dict:
        if self._meter is None:
            return {"miou": math.nan, "pixel_acc": math.nan, "per_class_iou": {}, "samples": 0}
        return {**self._meter.result(self.class_names or None), "samples": self.samples}


def evaluate_sliding(net, source, spec, device, slide) -> dict:
    """mIoU at every image's own size with sliding-window inference (a masks.Slide): ADE20K's usual protocol.

    `source` is a data.segmentation.SegmentationSource (raw images and label maps), `spec` the model's
    PreprocessSpec; one image at a time, since images differ in size.
    """
    strides = slide.strides(tuple(spec.input_size))  # checked before the first image

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    net.eval()
    meter = SegmentationMeter(len(spec.class_names), IGNORE_INDEX)
    for i in range(len(source)):
        image, mask = source.read(i)
        logits = slide_image_logits(spec.to_pil(image), spec, run, slide)
        mask = np.asarray(mask, np.int64)
        meter.update(upsampled_argmax(logits, mask.shape)[None], mask[None])
    return {**meter.result(spec.class_names), "samples": len(source), "inference": "slide",
            "stride": list(strides), "scale": slide.scale if slide.scale is not None else "short side = input"}
