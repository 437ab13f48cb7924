"""Accuracy-aware INT8: quantize, measure the task metric against FP32, and return units to float until it holds.

1. Quantize every unit (precision/units.py) in each Q/DQ flavour asked for and measure the task metric (top-1,
   or mIoU) of each against the FP32 ONNX on a validation subset of the training split that holds no calibration
   sample (precision/holdout.py). Both run in ONNX Runtime, which computes what the Q/DQ says.
2. If the worst flavour's drop exceeds `max_drop`, rank the units by their own quantization error: the KL
   divergence of the logits from FP32 when that unit alone is INT8 (one quantization per unit, the ranges
   calibrated once).
3. Return units to float one at a time, most sensitive first. A unit stays float only when the metric confirms
   it (the worst drop falls); otherwise it goes back to INT8. Stop when the drop meets the bound, or fail with
   the table of what was tried once `max_float_units` are float or every unit was tried.

One split for every flavour: the same units are float in the `cpu` and `tensorrt` Q/DQ models, and the same node
names go to NNCF's ignored scope, so every backend's INT8 engine is one model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from lkca_deploy.calibration import quantize as q
from lkca_deploy.onnx_meta import INT8_ACCURACY, read_metadata
from lkca_deploy.precision import DEFAULT_MAX_DROP
from lkca_deploy.precision.units import Unit, find_units, nodes_of
from lkca_runtime.errors import UserError
from lkca_runtime.masks import upsampled_argmax
from lkca_runtime.metrics import confusion_matrix, kl_divergence, miou_from_confusion
from lkca_runtime.spec import METRIC_NAMES

SENSITIVITY_SAMPLES = 256  # enough to rank units by KL; the metric itself uses the whole subset
RUN_BATCH = 64


@dataclass(frozen=True)
class Step:
    """One try: the unit returned to float (None: every unit INT8), the float units after it, the drop in points
    of each flavour with that unit in float, and whether it stayed float."""

    unit: str | None
    float_units: tuple[str, ...]
    drops: dict[str, float]
    kept: bool

    @property
    def worst(self) -> float:
        return max(self.drops.values())

    def to_dict(self) -> dict:
        return {"unit": self.unit, "float_units": list(self.float_units),
                "drop": {f: round(d, 4) for f, d in self.drops.items()}, "kept": self.kept}


@dataclass
class AccuracyAwareResult:
    """The Q/DQ model per flavour with `float_units` in float, and how they were found."""

    results: dict[str, q.QuantizeResult]
    units: list[Unit]
    float_units: tuple[str, ...]
    float_nodes: tuple[str, ...]
    metric: str  # top-1 or mIoU, in percent
    reference: float  # the FP32 ONNX's metric on the validation subset
    max_drop: float
    steps: list[Step]
    sensitivity: list[tuple[str, float]]  # (unit, KL in nats) most sensitive first; empty if none was needed
    validation_size: int
    validation_source: str = ""
    met: bool = True  # the drop is within max_drop (False only with fail=False)

    @property
    def drop(self) -> float:
        """The worst flavour's drop of the result, in points."""
        return _final(self.steps).worst

    def summary(self) -> dict:
        """JSON for the ONNX metadata, the report and the bundle manifest."""
        return {
            "max_drop": self.max_drop,
            "metric": self.metric,
            "reference": round(self.reference, 4),
            "drop": round(self.drop, 4),
            "met": self.met,
            "float_units": list(self.float_units),
            "float_nodes": list(self.float_nodes),
            "units": len(self.units),
            "validation_samples": self.validation_size,
            "validation_source": self.validation_source,
            "steps": [s.to_dict() for s in self.steps],
            "sensitivity": [{"unit": u, "kl": _round(kl)} for u, kl in self.sensitivity],
        }

    def table(self) -> str:
        return steps_table(self.steps)


class AccuracyBoundError(UserError):
    """The bound could not be met within the limit on float units; `steps` and `table` say what was tried."""

    def __init__(self, message: str, steps: list[Step]):
        super().__init__(message)
        self.steps = steps
        self.table = steps_table(steps)


def quantize_accuracy_aware(
    model: onnx.ModelProto,
    calib: np.ndarray,
    val_x: np.ndarray,
    val_labels: np.ndarray,
    *,
    task: str,
    flavors: Sequence[str] = q.FLAVORS,
    max_drop: float = DEFAULT_MAX_DROP,
    max_float_units: int | None = None,
    method: str = q.DEFAULT_METHOD,
    validation_source: str = "",
    fail: bool = True,
) -> AccuracyAwareResult:
    """INT8 Q/DQ of `model` in each of `flavors` whose task metric on (val_x, val_labels) is at most `max_drop`
    points below FP32's, with as few units in float as the greedy search finds.

    val_x / val_labels: preprocessed validation samples and their labels (class ids, or masks for segmentation),
    disjoint from `calib` (calibration/holdout.validation_subset draws them). max_float_units: default a quarter
    of the units, at least one. Raises AccuracyBoundError (a UserError) when the bound cannot be met, or with
    fail=False returns the best split found, `met` False (the pipeline then lets parity judge the engines).
    """
    _check_arguments(task, flavors, max_drop, max_float_units, val_x, val_labels)
    units = find_units(model)
    limit = max_float_units if max_float_units is not None else max(1, math.ceil(len(units) / 4))
    quantizers = {f: _CalibratedQuantizer(model, calib, f, method) for f in flavors}
    reference_logits = run_onnx(model, val_x)
    reference = task_metric(reference_logits, val_labels, task)

    def evaluate(float_units: tuple[str, ...]) -> tuple[dict[str, q.QuantizeResult], dict[str, float]]:
        nodes = nodes_of(units, float_units)
        results = {f: quantizers[f](nodes) for f in flavors}
        drops = {f: reference - task_metric(run_onnx(r.model, val_x), val_labels, task) for f, r in results.items()}
        return results, drops

    results, drops = evaluate(())
    steps = [Step(None, (), drops, True)]
    sensitivity: list[tuple[str, float]] = []
    floats: tuple[str, ...] = ()
    if steps[-1].worst > max_drop:
        sensitivity = rank_units(model, units, quantizers[flavors[0]], val_x[:SENSITIVITY_SAMPLES],
                                 reference_logits[:SENSITIVITY_SAMPLES])
        for unit, _ in sensitivity:
            if len(floats) >= limit or _final(steps).worst <= max_drop:
                break
            trial = (*floats, unit)
            trial_results, trial_drops = evaluate(trial)
            kept = max(trial_drops.values()) < _final(steps).worst
            steps.append(Step(unit, trial if kept else floats, trial_drops, kept))
            if kept:
                floats, results = trial, trial_results
        if _final(steps).worst > max_drop and fail:
            raise AccuracyBoundError(_bound_message(steps, max_drop, limit, len(units), METRIC_NAMES[task]), steps)
    return AccuracyAwareResult(
        results=results,
        units=units,
        float_units=floats,
        float_nodes=tuple(nodes_of(units, floats)),
        metric=METRIC_NAMES[task],
        reference=reference,
        max_drop=max_drop,
        steps=steps,
        sensitivity=sensitivity,
        validation_size=len(val_x),
        validation_source=validation_source,
        met=_final(steps).worst <= max_drop,
    )


def metadata_for(model: onnx.ModelProto, summary: dict) -> dict:
    """The INT8_ACCURACY metadata of `model` for a search's summary, float nodes named as in `model` (units are
    named by structure, so a split found on one lowering of a model names the same units in another)."""
    nodes = nodes_of(find_units(model), summary["float_units"])
    return {INT8_ACCURACY: {**summary, "float_nodes": nodes}}


def planned_float_nodes(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(float units, their nodes in `model`) that its metadata says INT8 builds keep float; empty when none."""
    plan = read_metadata(model).get(INT8_ACCURACY)
    units = list(plan.get("float_units") or []) if isinstance(plan, dict) else []
    return units, (nodes_of(find_units(model), units) if units else [])


def rank_units(model, units: Sequence[Unit], quantizer, x: np.ndarray, reference_logits: np.ndarray
               ) -> list[tuple[str, float]]:
    """(unit, KL of the logits from FP32 with only that unit INT8), most sensitive first."""
    every = [n for u in units for n in u.nodes]
    scores = []
    for unit in units:
        mine = set(unit.nodes)
        logits = run_onnx(quantizer([n for n in every if n not in mine]).model, x)
        scores.append((unit.name, _mean_kl(reference_logits, logits)))
    return sorted(scores, key=lambda s: -s[1] if math.isfinite(s[1]) else -math.inf)


def task_metric(logits: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Top-1 accuracy (classification, logits N x K) or mIoU (segmentation, N x K x h x w against N x H x W masks;
    grid logits are upsampled bilinearly to the masks, as parity does), in percent."""
    if task == "classification":
        return float(np.mean(np.argmax(logits, axis=1) == labels) * 100.0)

    size = tuple(labels.shape[-2:])
    pred = (np.argmax(logits, axis=1) if tuple(logits.shape[-2:]) == size
            else np.stack([upsampled_argmax(one, size) for one in logits]))
    confusion = confusion_matrix(pred, labels, logits.shape[1])
    return miou_from_confusion(confusion) * 100.0


def run_onnx(model: onnx.ModelProto, x: np.ndarray, batch: int = RUN_BATCH) -> np.ndarray:
    """The model's first output over `x` in ONNX Runtime (CPU), in batches; a static batch axis is padded."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # Q/DQ graphs make ORT warn about constant folding of DequantizeLinear
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    static = feed.shape[0] if isinstance(feed.shape[0], int) else None
    step = static or batch
    outs = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        if static and len(chunk) < static:
            chunk = np.concatenate([chunk, np.zeros((static - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        outs.append(session.run(None, {feed.name: np.ascontiguousarray(chunk, np.float32)})[0][: len(x) - start])
    return np.concatenate(outs)


def steps_table(steps: Sequence[Step]) -> str:
    """Markdown: one row per try, the drop of each flavour in points."""
    flavors = list(steps[0].drops) if steps else []
    lines = [
        "| step | returned to float | float units | " + " | ".join(f"drop {f}" for f in flavors) + " | kept |",
        "|---|---|---|" + "---|" * len(flavors) + "---|",
    ]
    for index, step in enumerate(steps):
        drops = " | ".join(f"{step.drops[f]:.2f}" for f in flavors)
        unit = step.unit or "(none: every unit INT8)"
        kept = "-" if step.unit is None else ("yes" if step.kept else "no, back to INT8")
        lines.append(f"| {index} | {unit} | {', '.join(step.float_units) or '-'} | {drops} | {kept} |")
    return "\n".join(lines)


class _CalibratedQuantizer:
    """quantize_int8 for one flavour with the ranges calibrated once: they do not depend on which nodes stay float,
    and calibrating dominates the cost of a quantization."""

    def __init__(self, model: onnx.ModelProto, calib: np.ndarray, flavor: str, method: str):
        self._calibration = q.calibrate(model, calib, flavor=flavor, method=method)
        self._model, self._flavor = model, flavor

    def __call__(self, float_nodes: Sequence[str]) -> q.QuantizeResult:
        return q.quantize_int8(self._model, None, flavor=self._flavor, keep_fp=tuple(float_nodes),
                               calibration=self._calibration)


def _final(steps: Sequence[Step]) -> Step:
    """The last step whose unit stayed in float (or plain INT8): the state the search is in."""
    return next(s for s in reversed(steps) if s.kept)


def _mean_kl(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        kl = kl_divergence(reference_logits, logits, axis=1)
    return float(np.mean(kl)) if np.all(np.isfinite(kl)) else math.inf


def _round(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def _bound_message(steps: Sequence[Step], max_drop: float, limit: int, units: int, metric: str) -> str:
    """One line: what was tried and why it stopped."""
    tried = "; ".join(
        f"{s.unit or 'all INT8'} -> {s.worst:.2f}{'' if s.kept else ' (no gain, back to INT8)'}" for s in steps
    )
    final = _final(steps)
    reason = (f"{len(final.float_units)} units in float, the limit" if len(final.float_units) >= limit
              else f"all {units} units tried")
    return (f"INT8 loses {final.worst:.2f} {metric} points on the validation subset, over the bound of {max_drop} "
            f"({reason}); tried: {tried}. Raise --max-float-units or --max-drop, or calibrate differently")


def _check_arguments(task, flavors, max_drop, max_float_units, val_x, val_labels) -> None:
    if task not in METRIC_NAMES:
        raise UserError(f"unknown task {task!r}; valid: {', '.join(METRIC_NAMES)}")
    if not flavors:
        raise UserError("accuracy-aware INT8 needs at least one flavour")
    for flavor in flavors:
        q._require_choice("flavor", flavor, q.FLAVORS)
    if not max_drop >= 0:
        raise UserError(f"--max-drop is in points and at least 0, got {max_drop}")
    if max_float_units is not None and max_float_units < 0:
        raise UserError(f"the limit on float units is at least 0, got {max_float_units}")
    if len(val_x) == 0 or len(val_x) != len(val_labels):
        raise UserError(f"the validation subset has {len(val_x)} samples and {len(val_labels)} labels")
