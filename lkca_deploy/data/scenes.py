"""digit-scenes: the embedded real segmentation data set (no download).

Each 64x64 grayscale scene holds 2 to 4 of scikit-learn's real handwritten digits, each scaled to between a fifth
and a third of the side and placed without overlap on a lightly noisy background. The mask labels each digit's ink
(pixels above 0.3 of full intensity) with its class + 1; everything else is background (0). Test scenes draw only on
digits of the classification test split, so no digit image is seen in both training and test.

Counts: 2,000 train scenes (about 6,000 digit placements, each of the 1,437 train digits about 4 times at different
sizes and places) and 500 test scenes (about 1,500 placements, every test digit about 4 times, enough for a stable
mIoU). At that size one epoch of lkca_seg_nano (batch 16) takes about 12 s on 2 idle CPU cores, so the 15-epoch
recipe ends in about 3 minutes; generating both splits takes a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lkca_deploy.data.datasets import DIGITS_MEAN_STD, digits_images, digits_split_indices

SCENE_SIZE = 64
SCENE_COUNTS = {"train": 2000, "test": 500}
DIGITS_PER_SCENE = (2, 4)  # inclusive
SCALE_RANGE = (1 / 5, 1 / 3)  # digit side as a fraction of the scene side
INK_THRESHOLD = 0.3  # of full intensity: the pixels of a digit that its mask labels
NOISE_LEVEL = 0.1  # background noise is uniform in [0, NOISE_LEVEL] of full intensity: light, well below the ink
CLASS_NAMES = ("background", *(str(d) for d in range(10)))
MEAN_STD = DIGITS_MEAN_STD  # digits' own pixels
_PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class Scenes:
    images: np.ndarray  # (N, S, S) uint8
    masks: np.ndarray  # (N, S, S) uint8: 0 background, digit class + 1 on the digit's ink
    digit_indices: np.ndarray  # (N, 4) int64: indices into digits_images() of each scene's digits, -1 for none
    boxes: np.ndarray  # (N, 4, 3) int64: each digit's square (y, x, side) on the canvas, -1 for none

    def __len__(self) -> int:
        return len(self.images)


def make_scenes(split: str = "train", count: int | None = None, seed: int = 0, size: int = SCENE_SIZE) -> Scenes:
    """Scenes of one split, deterministic from ``seed``; train and test draw from disjoint digit images."""
    if split not in SCENE_COUNTS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SCENE_COUNTS)}")
    digits, labels = digits_images()
    pool = digits_split_indices()[0 if split == "train" else 1]
    count = SCENE_COUNTS[split] if count is None else count
    # The split is part of the seed: train and test scenes never share a random stream.
    rng = np.random.default_rng([seed, list(SCENE_COUNTS).index(split)])
    images = np.empty((count, size, size), np.uint8)
    masks = np.zeros((count, size, size), np.uint8)
    chosen = np.full((count, DIGITS_PER_SCENE[1]), -1, np.int64)
    boxes = np.full((count, DIGITS_PER_SCENE[1], 3), -1, np.int64)
    for i in range(count):
        canvas = rng.uniform(0, NOISE_LEVEL * 255, (size, size))
        n = int(rng.integers(DIGITS_PER_SCENE[0], DIGITS_PER_SCENE[1] + 1))
        for j, (y, x, side) in enumerate(_place_boxes(rng, n, size)):
            index = int(rng.choice(pool))
            digit = _scaled_digit(digits[index], side)
            window = (slice(y, y + side), slice(x, x + side))
            canvas[window] = np.maximum(canvas[window], digit)
            masks[i][window][digit > INK_THRESHOLD * 255] = labels[index] + 1
            chosen[i, j], boxes[i, j] = index, (y, x, side)
        images[i] = np.round(canvas).astype(np.uint8)
    return Scenes(images, masks, chosen, boxes)


def _place_boxes(rng: np.random.Generator, n: int, size: int) -> list[tuple[int, int, int]]:
    """Up to ``n`` non-overlapping square boxes (y, x, side) by rejection sampling (4 small boxes always fit)."""
    low, high = round(size * SCALE_RANGE[0]), int(size * SCALE_RANGE[1])
    boxes: list[tuple[int, int, int]] = []
    for _ in range(_PLACEMENT_TRIES):
        if len(boxes) == n:
            break
        side = int(rng.integers(low, high + 1))
        y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
        if not any(_overlap((y, x, side), box) for box in boxes):
            boxes.append((y, x, side))
    return boxes


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    (ay, ax, asz), (by, bx, bsz) = a, b
    return ay < by + bsz and by < ay + asz and ax < bx + bsz and bx < ax + asz


def _scaled_digit(digit: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(digit).resize((side, side), Image.BILINEAR), dtype=np.float64)
