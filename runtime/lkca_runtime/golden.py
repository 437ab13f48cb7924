"""Golden samples: a small proof set that travels in the bundle, so a device can re-prove an engine without the
data set and without PyTorch.

The set holds N real evaluation samples, preprocessed exactly as the runtime preprocesses, their labels (class ids,
or masks at the model's input size), and what PyTorch FP32 computed on them (at the logits' size: an export that
ends at the grid logits is scored after the one upsample to the masks, as parity scores it). `compare` measures an engine's
outputs against it with the parity metrics of lkca_runtime/metrics.py and judges them against a tolerance per
precision (`tolerance_for`). The file is a plain .npz read with allow_pickle=False, after its sha256 is checked
against the manifest. Torch-free: numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_output, sha256_file
from lkca_runtime.masks import upsampled_argmax
from lkca_runtime.metrics import (
    IGNORE_INDEX,
    ClassificationParityMeter,
    SegmentationMeter,
    Thresholds,
    judge,
    miou_from_confusion,
)
from lkca_runtime.spec import TASKS

GOLDEN_FORMAT = 1
DEFAULT_SAMPLES = 64
GOLDEN_REL = "golden/golden.npz"
# Arrays each task's file holds (beside format, task, x and labels).
_REFERENCE_KEYS = {
    "classification": ("ref_logits",),
    "segmentation": ("ref_argmax", "ref_top1", "ref_margin"),
}
# Where segmentation logits are smaller than the masks (an export ending at the grid logits): the reference's class
# per mask pixel after the one bilinear upsample (masks.upsampled_argmax), which the mIoU needs.
_UPSAMPLED_KEY = "ref_argmax_upsampled"


@dataclass(frozen=True)
class GoldenSet:
    """task; x (N, C, H, W) float32 preprocessed; labels (N,) class ids or (N, H, W) masks (255 = ignore);
    reference: classification {"ref_logits": (N, K) float32}; segmentation {"ref_argmax": (N, H, W) class ids,
    "ref_top1": (N, H, W) float32 logit of that class, "ref_margin": (N, H, W) float16 top-1 minus top-2 logit}."""

    task: str
    x: np.ndarray
    labels: np.ndarray
    reference: Mapping[str, np.ndarray]

    @property
    def samples(self) -> int:
        return len(self.x)

    @property
    def nbytes(self) -> int:
        return int(self.x.nbytes + self.labels.nbytes + sum(a.nbytes for a in self.reference.values()))


# ---------------------------------------------------------------- making and storing


def pick_samples(total: int, samples: int, seed: int = 0) -> np.ndarray:
    """`samples` indices of `total`, drawn without replacement by a seeded generator, in ascending order."""
    if samples < 1:
        raise UserError(f"--golden takes a positive number of samples, got {samples}")
    if samples >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=samples, replace=False))


def compact_segmentation_reference(logits: np.ndarray, mask_size: tuple[int, int] | None = None
                                   ) -> dict[str, np.ndarray]:
    """What the segmentation check needs of (N, K, H, W) reference logits, instead of the logits themselves.

    The logits are too big to carry: 64 ADE20K samples at 150 x 512 x 512 float32 are 10 GB. The check needs, per
    pixel, the class the reference picks (agreement, mIoU), that class's logit (the engine's error is measured
    there) and its lead over the runner-up (a disagreement where the lead is ~0 is rounding; one where it is large
    is a broken engine): 7 bytes a pixel instead of 4 K.
    """
    logits = np.asarray(logits, dtype=np.float32)
    classes = logits.shape[1]
    argmax = logits.argmax(axis=1)
    top1 = np.take_along_axis(logits, argmax[:, None], axis=1)[:, 0]
    second = np.partition(logits, classes - 2, axis=1)[:, classes - 2] if classes > 1 else top1
    ids = np.uint8 if classes <= 256 else np.uint16
    compact = {
        "ref_argmax": argmax.astype(ids),
        "ref_top1": top1.astype(np.float32),
        "ref_margin": (top1 - second).astype(np.float16),
    }
    if mask_size is not None and tuple(mask_size) != logits.shape[2:]:

        compact[_UPSAMPLED_KEY] = np.stack([upsampled_argmax(sample, mask_size) for sample in logits]).astype(ids)
    return compact


def make_golden(
    x: np.ndarray,
    labels: np.ndarray,
    reference_logits: np.ndarray,
    task: str,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> GoldenSet:
    """The golden set from an evaluation split: `samples` of (x, labels, PyTorch FP32 logits), seeded."""
    _check_task(task)
    if not len(x) == len(labels) == len(reference_logits):
        raise ValueError(f"{len(x)} inputs, {len(labels)} labels and {len(reference_logits)} reference outputs")
    idx = pick_samples(len(x), samples, seed)
    ref = np.asarray(reference_logits)[idx]
    reference = (
        {"ref_logits": ref.astype(np.float32)}
        if task == "classification"
        else compact_segmentation_reference(ref, np.shape(labels)[1:])
    )
    labels = np.asarray(labels)[idx]
    labels = labels.astype(np.int64) if task == "classification" else labels.astype(_mask_dtype(labels))
    return GoldenSet(task, np.ascontiguousarray(np.asarray(x, dtype=np.float32)[idx]), labels, reference)


def _mask_dtype(masks: np.ndarray) -> type:
    return np.uint8 if masks.size == 0 or int(masks.max()) <= 255 else np.uint16


def write_golden(golden: GoldenSet, path: str | Path) -> str:
    """Write the set as an .npz (atomically); returns its sha256."""
    arrays = {
        "format": np.asarray(GOLDEN_FORMAT),
        "task": np.asarray(golden.task),
        "x": golden.x,
        "labels": golden.labels,
        **golden.reference,
    }
    # a file object: np.savez would append .npz to the temp name
    with atomic_output(Path(path)) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return sha256_file(path)


def read_golden(path: str | Path, sha256: str | None) -> GoldenSet:
    """Read a golden set after checking its sha256 (None: the caller checked it); UserError when it is missing,
    altered or not a golden file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"golden file {path} is missing: rebuild the bundle (lkca-deploy pipeline --golden N)")
    if sha256 is not None and sha256_file(path) != sha256:
        raise UserError(f"golden file {path} was altered (sha256 mismatch): rebuild the bundle")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"golden file {path} is not a readable .npz ({e}): rebuild the bundle") from None
    return _from_arrays(arrays, path)


def _from_arrays(arrays: dict[str, np.ndarray], path: Path) -> GoldenSet:
    def bad(why: str) -> UserError:
        return UserError(f"golden file {path} is not a golden set ({why}): rebuild the bundle")

    if "format" not in arrays or int(arrays["format"]) != GOLDEN_FORMAT:
        raise bad(f"format {arrays.get('format')!s}, this toolkit reads {GOLDEN_FORMAT}")
    task = str(arrays.get("task", ""))
    if task not in TASKS:
        raise bad(f"task {task!r}")
    missing = [k for k in ("x", "labels", *_REFERENCE_KEYS[task]) if k not in arrays]
    if missing:
        raise bad(f"no {', '.join(missing)}")
    x, labels = arrays["x"], arrays["labels"]
    reference = {k: arrays[k] for k in (*_REFERENCE_KEYS[task], _UPSAMPLED_KEY) if k in arrays}
    if x.dtype != np.float32 or x.ndim != 4 or any(len(a) != len(x) for a in (labels, *reference.values())):
        raise bad(f"inputs {x.dtype} {x.shape} do not match labels {labels.shape} and the reference")
    return GoldenSet(task, x, labels, reference)


# ---------------------------------------------------------------- comparing


def golden_metrics(golden: GoldenSet, outputs: np.ndarray) -> dict[str, Any]:
    """The parity metrics of an engine's outputs on the golden inputs, in lkca_runtime/metrics.py's vocabulary.

    Classification: top1, top1_reference, top1_drop (points), agreement, max_abs_err, mean_abs_err, cosine, kl.
    Segmentation: pixel_agreement, miou, miou_reference, miou_drop (points), pixel_acc, max_abs_err and
    mean_abs_err of the logit of the reference's class, and disagreeing_margin_max (the largest reference lead
    where the engine picks another class: ~0 is rounding).
    """
    outputs = np.asarray(outputs, dtype=np.float32)
    if golden.task == "classification":
        meter = ClassificationParityMeter()
        try:
            meter.update(outputs, golden.reference["ref_logits"], golden.labels)
        except ValueError as e:
            raise UserError(f"the engine's outputs do not fit the golden set: {e}") from None
        return meter.result()
    return _segmentation_metrics(golden, outputs)


def _segmentation_metrics(golden: GoldenSet, outputs: np.ndarray) -> dict[str, Any]:
    ref = golden.reference["ref_argmax"].astype(np.int64)
    if outputs.ndim != 4 or outputs.shape[0] != ref.shape[0] or outputs.shape[2:] != ref.shape[1:]:
        raise UserError(
            f"the engine's outputs {outputs.shape} do not fit the golden set's masks {ref.shape}: "
            "an engine of another model or input size"
        )
    classes = outputs.shape[1]
    pred = outputs.argmax(axis=1)
    at_ref = np.take_along_axis(outputs, np.minimum(ref, classes - 1)[:, None], axis=1)[:, 0]
    error = np.abs(at_ref.astype(np.float64) - golden.reference["ref_top1"])
    disagree = pred != ref
    margins = golden.reference["ref_margin"].astype(np.float32)[disagree]
    engine, reference = SegmentationMeter(classes), SegmentationMeter(classes)
    labels = golden.labels
    valid = (labels == IGNORE_INDEX) | (labels < classes)
    if not valid.all():
        raise UserError(f"the golden masks name classes beyond the engine's {classes}: an engine of another model")
    scored, scored_ref = pred, ref
    if labels.shape[1:] != ref.shape[1:]:  # grid logits: scored after the one upsample to the masks, as parity does

        if _UPSAMPLED_KEY not in golden.reference:
            raise UserError("the golden set has no upsampled reference for these grid logits: rebuild the bundle")
        scored = np.stack([upsampled_argmax(sample, labels.shape[1:]) for sample in outputs])
        scored_ref = golden.reference[_UPSAMPLED_KEY].astype(np.int64)
    engine.update(scored, labels)
    reference.update(np.minimum(scored_ref, classes - 1), labels)
    miou, miou_ref = miou_from_confusion(engine.confusion), miou_from_confusion(reference.confusion)
    return {
        "miou": miou,
        "miou_reference": miou_ref,
        "miou_drop": (miou_ref - miou) * 100.0,
        "pixel_agreement": float(1.0 - disagree.mean()),
        "pixel_acc": engine.result()["pixel_acc"],
        "max_abs_err": float(np.max(error)) if error.size else 0.0,
        "mean_abs_err": float(np.mean(error)) if error.size else 0.0,
        "disagreeing_margin_max": float(margins.max()) if margins.size else 0.0,
        "pixels": int(pred.size),
    }


def tolerance_for(task: str, precision: str, thresholds: Thresholds | None, samples: int) -> dict[str, float]:
    """The limits an engine must meet on `samples` golden samples: the thresholds the pipeline judged it by.

    A limit counted in samples is relaxed to one sample where it is finer than one sample of the set (0.995
    agreement on 64 samples would allow no miss, on the 360-sample split it allows one): agreement at most
    1 - 1/N unless it demands exact agreement, top1_drop at least one sample's worth of points. Pixel counts are
    fine enough already.
    """
    _check_task(task)
    limits = (thresholds or Thresholds()).for_precision(task, precision)
    one = 1.0 / max(samples, 1)
    if "agreement" in limits and limits["agreement"] < 1.0:
        limits["agreement"] = min(limits["agreement"], 1.0 - one)
    if "top1_drop" in limits and limits["top1_drop"] > 0.0:
        limits["top1_drop"] = max(limits["top1_drop"], 100.0 * one)
    return limits


def judge_outputs(golden: GoldenSet, outputs: np.ndarray, precision: str, tolerance: Mapping[str, float]) -> dict:
    """golden_metrics plus `passed` and `failures` (one line each, naming the metric, its value and the limit)."""
    metrics = golden_metrics(golden, outputs)
    passed, failures = judge(metrics, precision, golden.task, Thresholds({golden.task: {precision: dict(tolerance)}}))
    return {**metrics, "passed": passed, "failures": failures}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
