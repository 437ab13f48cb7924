"""The validation subset that judges a quantized model: the training split minus the calibration samples.

Never the test split (that one judges the engines in the report), never a calibration sample (ranges fitted to an
image flatter the INT8 model on it). Calibration from a data set name draws `seeded_subset(len(train), samples,
seed)` (calibration/sources.py); the same draw is left out here by index, and any row equal to a calibration row
(a calibration folder or array holding training images) is left out by content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from lkca_deploy.data.datasets import open_source, preprocess_all, seeded_subset
from lkca_deploy.data.segmentation import open_segmentation_source, preprocess_pairs
from lkca_runtime.errors import UserError
from lkca_runtime.spec import PreprocessSpec

DEFAULT_SAMPLES = 1000  # top-1 steps of 0.1 point: fine enough for a 0.5 point bound


@dataclass(frozen=True)
class Holdout:
    """Preprocessed validation samples and their targets, with the training-split indices they came from."""

    x: np.ndarray
    labels: np.ndarray
    indices: np.ndarray  # into the training split
    excluded: np.ndarray  # training-split indices left out as calibration samples
    source: str

    def __len__(self) -> int:
        return len(self.x)


def validation_subset(
    data: str,
    spec: PreprocessSpec,
    *,
    calib: np.ndarray | None = None,
    calib_samples: int = 0,
    calib_seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 1,
    data_root=None,
    download: bool = False,
) -> Holdout:
    """At most `samples` training-split samples of `data`, none of them a calibration sample.

    calib_samples / calib_seed: the draw that load_calibration(data, ...) made (left out by index); calib: the
    calibration array itself (left out by content, whatever its source).
    """
    if samples < 1:
        raise UserError(f"the validation subset needs at least one sample, got {samples}")
    source, read = _training_split(data, spec, data_root, download)
    size = len(source)

    excluded = seeded_subset(size, calib_samples, calib_seed) if calib_samples else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(size), excluded)
    if len(rest) == 0:
        raise UserError(
            f"every sample of {data}'s training split ({size}) is a calibration sample: "
            "calibrate on fewer samples to leave some for validation"
        )
    picked = rest[seeded_subset(len(rest), samples, seed)]
    x, labels = read(picked)
    if calib is not None and len(calib):
        seen = {_row_key(row) for row in np.ascontiguousarray(calib, dtype=np.float32)}
        keep = np.array([_row_key(row) not in seen for row in x], dtype=bool)
        x, labels, picked = x[keep], labels[keep], picked[keep]
    if len(x) == 0:
        raise UserError(f"no sample of {data}'s training split is left for validation after calibration")
    return Holdout(x, labels, picked, excluded, f"{data} (train split, {len(x)} not used for calibration)")


def _training_split(data: str, spec: PreprocessSpec, root, download):
    """(source, read(indices) -> (x, targets)) for a data set's training split."""
    if spec.task == "segmentation":

        source = open_segmentation_source(data, "train", root, download)
        return source, lambda indices: preprocess_pairs(source, spec, indices)

    source = open_source(data, "train", root, download)
    return source, lambda indices: (preprocess_all(source, spec, indices), source.labels[indices])


def _row_key(row: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(row, dtype=np.float32).tobytes()).digest()
