"""Models reduced precision really hurts, built without new data: a nano trained to ~95% on digits, and copies of it
with one value channel rescaled (models/rescale.py: the FP32 logits do not change, INT8 ranges and FP16 do)."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from lkca_deploy.calibration import CALIB_SAMPLES
from lkca_deploy.calibration.sources import load_calibration
from lkca_deploy.precision.holdout import Holdout, validation_subset

# Block 1 channel 5 of lkca_vit_nano: at 1000x plain INT8 loses ~50 points on digits (its per-tensor range is
# spent on that channel); at 1e5x the channel peaks near 5e5, past FP16's 65504.
OUTLIER_BLOCK, OUTLIER_CHANNEL = 1, 5
INT8_FACTOR, FP16_FACTOR = 1e3, 1e5
CALIB_SEED = 0


@dataclass
class Case:
    """One exported model with what judges it: calibration and validation from the training split, the test split."""

    ckpt: Path
    model: onnx.ModelProto  # the FP32 export
    calib: np.ndarray
    holdout: Holdout
    test_x: np.ndarray
    test_y: np.ndarray


def make_case(ckpt: Path, work: Path, factor: float | None) -> Case:
    """Export `ckpt` (rescaled by `factor` first, unless None) and draw its calibration, validation and test data."""
    from lkca_deploy.checkpoint import read_checkpoint
    from lkca_deploy.data import load_arrays
    from lkca_deploy.export import export_model
    from lkca_deploy.models.rescale import outlier_checkpoint

    if factor is not None:
        ckpt = outlier_checkpoint(ckpt, work / "rescaled", block=OUTLIER_BLOCK, channel=OUTLIER_CHANNEL,
                                  factor=factor)
    path = export_model(ckpt, work / "model.onnx").path
    spec = read_checkpoint(ckpt).spec
    calib = load_calibration("digits", spec, samples=CALIB_SAMPLES, seed=CALIB_SEED).array
    holdout = validation_subset("digits", spec, calib=calib, calib_samples=CALIB_SAMPLES, calib_seed=CALIB_SEED)
    test_x, test_y = load_arrays("digits", "test", spec)
    return Case(ckpt, onnx.load(path), calib, holdout, test_x, test_y)
