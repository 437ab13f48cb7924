"""Parity of an engine's outputs against the reference outputs (PyTorch FP32), one metric set per task.

Every metric streams: a meter takes batches one at a time and gives the same numbers as computing on all the data
at once, so parity runs over a whole validation set without holding every output in memory.

Units: accuracies, agreements and mIoU are fractions in [0, 1]; drops (`top1_drop`, `miou_drop`) are percentage
points, reference minus engine (positive = the engine is worse). `cosine` is the mean over samples of the cosine
between an engine sample's flattened logits and the reference sample's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lkca_runtime.errors import UserError
from lkca_runtime.masks import upsampled_argmax
from lkca_runtime.spec import IGNORE_INDEX, TASKS

# Direction of each metric a threshold may name: a limit is a minimum for the first set, a maximum for the second.
HIGHER_IS_BETTER = frozenset({"top1", "miou", "agreement", "pixel_agreement", "pixel_acc", "cosine"})
LOWER_IS_BETTER = frozenset({"top1_drop", "miou_drop", "max_abs_err", "mean_abs_err", "kl"})

# Per-sample sums are taken over chunks converted to float64: exact enough for cosines near 1, without a float64
# copy of a whole segmentation batch (8 x 150 x 512 x 512 logits would be 2.5 GB).
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# Elementwise error: max / mean absolute error and mean per-sample cosine, streaming.


def _per_sample_sums(engine: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample (axis 0): dot(e, r), |e|^2, |r|^2, sum |e - r|, max |e - r|, all in float64."""
    e = engine.reshape(engine.shape[0], -1)
    r = reference.reshape(reference.shape[0], -1)
    n = e.shape[0]
    sums = {key: np.zeros(n) for key in ("dot", "ee", "rr", "abs_sum")}
    sums["abs_max"] = np.zeros(n)
    for start in range(0, e.shape[1], _CHUNK):
        ec = e[:, start : start + _CHUNK].astype(np.float64)
        rc = r[:, start : start + _CHUNK].astype(np.float64)
        diff = np.abs(ec - rc)
        sums["dot"] += np.einsum("ij,ij->i", ec, rc)
        sums["ee"] += np.einsum("ij,ij->i", ec, ec)
        sums["rr"] += np.einsum("ij,ij->i", rc, rc)
        sums["abs_sum"] += diff.sum(axis=1)
        # np.maximum keeps NaN (an engine that overflowed must not look exact).
        sums["abs_max"] = np.maximum(sums["abs_max"], diff.max(axis=1, initial=0.0))
    return sums


def _cosines(dot: np.ndarray, ee: np.ndarray, rr: np.ndarray) -> np.ndarray:
    """Cosine per sample; two all-zero samples agree (1.0), one all-zero sample against a non-zero one is 0.0."""
    norms = np.sqrt(ee) * np.sqrt(rr)
    both_zero = (ee == 0) & (rr == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos)


def _check_same_shape(engine: np.ndarray, reference: np.ndarray) -> None:
    if engine.shape != reference.shape:
        raise ValueError(f"engine output shape {engine.shape} differs from reference shape {reference.shape}")
    if engine.ndim == 0:
        raise ValueError("outputs need a batch axis")


class ErrorMeter:
    """Streaming max_abs_err, mean_abs_err and mean per-sample cosine between two output arrays."""

    def __init__(self) -> None:
        self.max_abs_err = 0.0
        self._abs_sum = 0.0
        self._elements = 0
        self._cos_sum = 0.0
        self._samples = 0

    def update(self, engine: np.ndarray, reference: np.ndarray) -> None:
        engine, reference = np.asarray(engine), np.asarray(reference)
        _check_same_shape(engine, reference)
        sums = _per_sample_sums(engine, reference)
        self.max_abs_err = float(np.max(np.append(sums["abs_max"], self.max_abs_err)))
        self._abs_sum += float(sums["abs_sum"].sum())
        self._elements += engine.size
        self._cos_sum += float(_cosines(sums["dot"], sums["ee"], sums["rr"]).sum())
        self._samples += engine.shape[0]

    def result(self) -> dict[str, float]:
        if self._samples == 0:
            raise ValueError("no outputs were compared")
        return {
            "max_abs_err": self.max_abs_err,
            "mean_abs_err": self._abs_sum / max(self._elements, 1),
            "cosine": self._cos_sum / self._samples,
        }


# ----------------------------------------------------------------------------------------------------------------
# Classification.


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(x, axis))


def kl_divergence(reference_logits: np.ndarray, engine_logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """KL(softmax(reference) || softmax(engine)) per sample, in nats."""
    log_p = log_softmax(reference_logits, axis)
    log_q = log_softmax(engine_logits, axis)
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=axis)


def _drop_points(reference: float | None, engine: float | None) -> float | None:
    return None if reference is None or engine is None else (reference - engine) * 100.0


class ClassificationParityMeter:
    """Streaming classification parity. `labels` may be None (unlabelled data): top-1 metrics are then None."""

    def __init__(self) -> None:
        self._error = ErrorMeter()
        self._samples = 0
        self._agree = 0
        self._kl_sum = 0.0
        self._labelled = 0
        self._correct = 0
        self._correct_ref = 0

    def update(self, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> None:
        logits, reference = np.asarray(logits), np.asarray(reference)
        if logits.ndim != 2:
            raise ValueError(f"classification logits must be (batch, classes), got shape {logits.shape}")
        self._error.update(logits, reference)
        pred, pred_ref = logits.argmax(axis=1), reference.argmax(axis=1)
        self._samples += len(pred)
        self._agree += int(np.sum(pred == pred_ref))
        self._kl_sum += float(np.sum(kl_divergence(reference, logits, axis=1)))
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if labels.shape[0] != len(pred):
                raise ValueError(f"{labels.shape[0]} labels for {len(pred)} samples")
            self._labelled += len(labels)
            self._correct += int(np.sum(pred == labels))
            self._correct_ref += int(np.sum(pred_ref == labels))

    def result(self) -> dict[str, float | None]:
        error = self._error.result()  # raises when nothing was compared
        top1 = self._correct / self._labelled if self._labelled else None
        top1_ref = self._correct_ref / self._labelled if self._labelled else None
        return {
            "top1": top1,
            "top1_reference": top1_ref,
            "top1_drop": _drop_points(top1_ref, top1),
            "agreement": self._agree / self._samples,
            **error,
            "kl": self._kl_sum / self._samples,
            "samples": self._samples,
        }


def classification_parity(
    logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None
) -> dict[str, float | None]:
    """top1, top1_reference, top1_drop (points), agreement, max_abs_err, mean_abs_err, cosine, kl (nats), samples."""
    meter = ClassificationParityMeter()
    meter.update(logits, reference, labels)
    return meter.result()


# ----------------------------------------------------------------------------------------------------------------
# Segmentation.


def confusion_matrix(
    pred_ids: np.ndarray, labels: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = label, columns = prediction; `ignore_index` pixels skipped."""
    pred, lab = np.asarray(pred_ids).reshape(-1), np.asarray(labels).reshape(-1)
    if pred.shape != lab.shape:
        raise ValueError(f"{pred.size} predicted pixels for {lab.size} labelled pixels")
    keep = lab != ignore_index
    pred, lab = pred[keep].astype(np.int64), lab[keep].astype(np.int64)
    for name, ids in (("label", lab), ("prediction", pred)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"{name} ids outside [0, {num_classes}) (ignore index is {ignore_index})")
    counts = np.bincount(lab * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for classes absent from both labels and predictions."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def miou_from_confusion(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in labels or predictions (NaN if there are none)."""
    ious = iou_per_class(confusion)
    return float(np.nanmean(ious)) if np.any(~np.isnan(ious)) else math.nan


def pixel_acc_from_confusion(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else math.nan


class SegmentationMeter:
    """Accumulates a confusion matrix over batches of predicted class ids (the trainer's evaluate reuses it)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred_ids: np.ndarray, labels: np.ndarray) -> None:
        self.confusion += confusion_matrix(pred_ids, labels, self.num_classes, self.ignore_index)

    def result(self, class_names: Sequence[str] | None = None) -> dict:
        """{miou, pixel_acc, per_class_iou: {name: iou or None when the class is absent}}."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        ious = iou_per_class(self.confusion)
        return {
            "miou": miou_from_confusion(self.confusion),
            "pixel_acc": pixel_acc_from_confusion(self.confusion),
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, ious)},
        }


class SegmentationParityMeter:
    """Streaming segmentation parity on logits (B, K, h, w) against labels (B, H, W); labels may be None.

    The errors compare engine and reference where the engines are exact, at the graph's output. Logits smaller than
    the labels (an export that ends at the grid logits) are upsampled to the labels' size before the argmax, engine
    and reference the same way (masks.upsampled_argmax, what the Predictor does): agreement and mIoU are per pixel
    of the labels."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        self._error = ErrorMeter()
        self._engine: SegmentationMeter | None = None
        self._reference: SegmentationMeter | None = None
        self._pixels = 0
        self._agree = 0

    def update(self, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> None:
        logits, reference = np.asarray(logits), np.asarray(reference)
        if logits.ndim != 4:
            raise ValueError(f"segmentation logits must be (batch, classes, H, W), got shape {logits.shape}")
        self._error.update(logits, reference)
        if labels is not None and np.shape(labels)[1:] != logits.shape[2:]:

            size = np.shape(labels)[1:]
            pred = np.stack([upsampled_argmax(sample, size) for sample in logits])
            pred_ref = np.stack([upsampled_argmax(sample, size) for sample in reference])
        else:
            pred, pred_ref = logits.argmax(axis=1), reference.argmax(axis=1)
        self._pixels += pred.size
        self._agree += int(np.sum(pred == pred_ref))
        if labels is None:
            return
        labels = np.asarray(labels)
        if labels.shape != pred.shape:
            raise ValueError(f"labels shape {labels.shape} does not match predictions {pred.shape}")
        if self._engine is None:
            self._engine = SegmentationMeter(logits.shape[1], self.ignore_index)
            self._reference = SegmentationMeter(logits.shape[1], self.ignore_index)
        self._engine.update(pred, labels)
        self._reference.update(pred_ref, labels)

    def result(self) -> dict[str, float | None]:
        error = self._error.result()  # raises when nothing was compared
        labelled = self._engine is not None
        miou = miou_from_confusion(self._engine.confusion) if labelled else None
        miou_ref = miou_from_confusion(self._reference.confusion) if labelled else None
        return {
            "miou": miou,
            "miou_reference": miou_ref,
            "miou_drop": _drop_points(miou_ref, miou),
            "pixel_agreement": self._agree / self._pixels,
            "pixel_acc": pixel_acc_from_confusion(self._engine.confusion) if labelled else None,
            "pixel_acc_reference": pixel_acc_from_confusion(self._reference.confusion) if labelled else None,
            **error,
            "pixels": self._pixels,
        }


def segmentation_parity(
    logits: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, float | None]:
    """miou, miou_reference, miou_drop (points), pixel_agreement, pixel_acc, max_abs_err, mean_abs_err, cosine."""
    meter = SegmentationParityMeter(ignore_index)
    meter.update(logits, reference, labels)
    return meter.result()


def parity_meter(task: str) -> ClassificationParityMeter | SegmentationParityMeter:
    """The streaming parity meter of a task: callers stay task-agnostic (update(logits, reference, labels))."""
    _check_task(task)
    return ClassificationParityMeter() if task == "classification" else SegmentationParityMeter()


# ----------------------------------------------------------------------------------------------------------------
# Thresholds and verdict.


# INT8 also needs agreement with the reference: a drop alone passes an engine that agrees on 20% of samples
# when its own mistakes happen to score as many right. The INT8 engines of the README's runs agree on >= 99%
# (top-1 and pixels); 0.9 leaves room for harder data sets and still catches an engine that answers otherwise.
INT8_AGREEMENT = 0.9


def _default_limits() -> dict[str, dict[str, dict[str, float]]]:
    return {
        "classification": {
            "fp32": {"agreement": 1.0, "max_abs_err": 1e-3},
            "fp16": {"agreement": 0.995},
            "bf16": {"agreement": 0.99},
            "int8": {"top1_drop": 1.0, "agreement": INT8_AGREEMENT},
        },
        "segmentation": {
            "fp32": {"pixel_agreement": 0.999},
            "fp16": {"pixel_agreement": 0.995},
            "bf16": {"pixel_agreement": 0.99},
            "int8": {"miou_drop": 1.0, "pixel_agreement": INT8_AGREEMENT},
        },
    }


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def _check_metric(metric: str) -> None:
    if metric not in HIGHER_IS_BETTER | LOWER_IS_BETTER:
        known = ", ".join(sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER))
        raise UserError(f"no threshold can be set on {metric!r}; known metrics: {known}")


@dataclass(frozen=True)
class Thresholds:
    """Limits per task and precision: {task: {precision: {metric: limit}}}.

    A limit is a minimum for metrics in HIGHER_IS_BETTER (agreement, cosine, ...) and a maximum for metrics in
    LOWER_IS_BETTER (drops, errors, kl). Start from the defaults and change one with `with_limit`.
    """

    limits: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=_default_limits)

    def __post_init__(self) -> None:
        for task, per_precision in self.limits.items():
            _check_task(task)
            for metrics in per_precision.values():
                for metric in metrics:
                    _check_metric(metric)

    def for_precision(self, task: str, precision: str) -> dict[str, float]:
        _check_task(task)
        per_precision = self.limits.get(task, {})
        if precision not in per_precision:
            known = ", ".join(per_precision) or "none"
            raise UserError(f"no parity thresholds for {task} {precision!r}; thresholds exist for: {known}")
        return dict(per_precision[precision])

    def with_limit(self, task: str, precision: str, metric: str, value: float) -> Thresholds:
        """A copy with one limit set (added if the precision had no limit on that metric)."""
        _check_task(task)
        _check_metric(metric)
        limits = self.to_dict()
        limits.setdefault(task, {}).setdefault(precision, {})[metric] = float(value)
        return Thresholds(limits)

    def to_dict(self) -> dict:
        return {t: {p: dict(m) for p, m in pp.items()} for t, pp in self.limits.items()}


def _failure(metric: str, value: float | None, limit: float, where: str) -> str | None:
    """A one-line failure, or None when `value` meets `limit` (NaN and missing values fail)."""
    minimum = metric in HIGHER_IS_BETTER
    bound = f"needs {'>=' if minimum else '<='} {limit:g} ({where})"
    if value is None:
        return f"{metric} not measured (no labels?), {bound}"
    if minimum and value >= limit or not minimum and value <= limit:
        return None
    if math.isnan(value):
        return f"{metric} is NaN, {bound}"
    gap = limit - value if minimum else value - limit
    return f"{metric} = {value:.6g}, {bound}: {'short' if minimum else 'over'} by {gap:.3g}"


def judge(
    metrics: Mapping[str, float | None],
    precision: str,
    task: str,
    thresholds: Thresholds | None = None,
) -> tuple[bool, list[str]]:
    """(passed, failures): each failure names the metric, its value, the threshold and the margin it missed by."""
    limits = (thresholds or Thresholds()).for_precision(task, precision)
    where = f"{task} {precision} threshold"
    failures = [f for m, lim in limits.items() if (f := _failure(m, metrics.get(m), lim, where)) is not None]
    return not failures, failures


def with_verdict(
    metrics: Mapping[str, float | None], precision: str, task: str, thresholds: Thresholds | None = None
) -> dict:
    """The metrics plus `passed` and `failures`: the parity dict a report engine carries."""
    passed, failures = judge(metrics, precision, task, thresholds)
    return {**metrics, "passed": passed, "failures": failures}


# ----------------------------------------------------------------------------------------------------------------
# Block-boundary localisation.


def _natural_key(name: str) -> tuple:
    """'block10' after 'block9': digit runs compare as numbers (split() puts them at odd positions)."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


class BlockParityMeter:
    """Streaming per-block error between an engine's block outputs and the reference's, keyed by block name."""

    def __init__(self) -> None:
        self._meters: dict[str, ErrorMeter] = {}

    def update(self, engine: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> None:
        if set(engine) != set(reference):
            only_engine, only_ref = sorted(set(engine) - set(reference)), sorted(set(reference) - set(engine))
            raise ValueError(
                f"block names differ: only in engine {only_engine}, only in reference {only_ref}"
            )
        for name in reference:
            self._meters.setdefault(name, ErrorMeter()).update(engine[name], reference[name])

    def result(self, cosine_min: float = 0.99) -> tuple[list[dict], str | None]:
        per_block = [
            {"block": name, **self._meters[name].result()} for name in sorted(self._meters, key=_natural_key)
        ]
        # `not >=` so that a NaN cosine (an overflowed block) counts as divergent.
        first = next((b["block"] for b in per_block if not b["cosine"] >= cosine_min), None)
        return per_block, first


def first_divergent_block(
    block_outputs_engine: Mapping[str, np.ndarray],
    block_outputs_ref: Mapping[str, np.ndarray],
    cosine_min: float = 0.99,
) -> tuple[list[dict], str | None]:
    """Per block in block order: {block, cosine, max_abs_err, mean_abs_err}; and the first block whose mean
    per-sample cosine falls below `cosine_min` (None when none does)."""
    meter = BlockParityMeter()
    meter.update(block_outputs_engine, block_outputs_ref)
    return meter.result(cosine_min)
