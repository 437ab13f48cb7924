"""The pipeline's reduced-precision plan, decided once on the FP32 exports and written into their metadata.

INT8: the accuracy-aware search (accuracy_aware.py) runs once, on one export, against a validation subset of the
training split that holds no calibration sample; the float units it names are written into every export (units are
named by structure, so they name the same parts of every lowering). FP16: each export's own calibration ranges
name the tensors FP16 cannot hold (headroom.py). build_engine reads both from the metadata, so every backend's
engine of a precision is built from the same decision, and so is any later `lkca-deploy build` of that file.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lkca_deploy.calibration import DEFAULT_METHOD
from lkca_deploy.onnx_meta import FP16_HEADROOM, INT8_ACCURACY, read_metadata, set_metadata
from lkca_deploy.precision import headroom
from lkca_deploy.precision.accuracy_aware import AccuracyAwareResult, metadata_for, quantize_accuracy_aware
from lkca_deploy.precision.holdout import validation_subset
from lkca_runtime.onnx_io import load_onnx, save_onnx_atomic


@dataclass
class PrecisionPlan:
    """What the plan decided: the search's summary (None when INT8 was not asked for or not searched), and per
    export file the FP16 risks (dicts of headroom.Risk)."""

    int8: dict | None = None
    fp16: dict[str, list[dict]] = field(default_factory=dict)

    def float_note(self, export: Path, precision: str) -> dict | None:
        """What an engine built from `export` at `precision` runs in float and why (float: [] when nothing)."""
        if precision == "int8" and self.int8:
            plan, steps = self.int8, self.int8["steps"]
            judged = f"{plan['metric']} on {plan['validation_samples']} validation images, bound {plan['max_drop']}"
            missed = "" if plan.get("met", True) else "; the bound was NOT met within the limit on float units"
            if not plan["float_units"]:
                return {"float": [], "why": f"every unit INT8: drop {plan['drop']:.2f} points ({judged}){missed}"}
            return {"float": list(plan["float_units"]),
                    "why": f"accuracy-aware INT8: every unit INT8 lost {max(steps[0]['drop'].values()):.2f} points, "
                           f"with these float {plan['drop']:.2f} ({judged}){missed}"}
        risks = self.fp16.get(Path(export).name) if precision == "fp16" else None
        if risks is None:
            return None
        if not risks:
            return {"float": [], "why": f"every tensor fits FP16 with a {headroom.DEFAULT_MARGIN:g}x margin"}
        kept = list(dict.fromkeys(n for r in risks for n in r["keep_fp32"]))
        peak = max((r["observed_max"] or float("inf")) for r in risks)
        return {"float": kept, "why": f"FP16 headroom: {len(risks)} tensor(s) past {headroom.FP16_MAX:.0f} / "
                                      f"{headroom.DEFAULT_MARGIN:g}, observed max {peak:.4g}"}

    def to_dict(self) -> dict:
        return {"int8_accuracy": self.int8, "fp16_headroom": self.fp16}


def search_int8(
    model,
    calib: np.ndarray,
    data: str,
    *,
    spec,
    task: str,
    max_drop: float,
    max_float_units: int | None = None,
    method: str = DEFAULT_METHOD,
    calib_samples: int = 0,
    calib_seed: int = 0,
    data_root=None,
    download: bool = False,
    fail: bool = True,
) -> AccuracyAwareResult:
    """The accuracy-aware INT8 search of `model` (`pipeline` and `quantize --max-drop` both run this one): judged on
    a validation subset of `data`'s training split that holds none of the calibration draw (calib_samples /
    calib_seed: the draw `calib` came from; 0 when it came from elsewhere)."""
    holdout = validation_subset(data, spec, calib=calib, calib_samples=calib_samples, calib_seed=calib_seed,
                                data_root=data_root, download=download)
    return quantize_accuracy_aware(model, calib, holdout.x, holdout.labels, task=task, max_drop=max_drop,
                                   max_float_units=max_float_units, validation_source=holdout.source, fail=fail,
                                   method=method)


def plan_precision(
    exports: Mapping[str, Path],
    *,
    search_on: str,
    calib: np.ndarray,
    data: str,
    spec,
    task: str,
    int8: bool,
    fp16: bool,
    max_drop: float | None,
    max_float_units: int | None = None,
    calib_samples: int = 0,
    calib_seed: int = 0,
    data_root=None,
    download: bool = False,
) -> PrecisionPlan:
    """Decide, write into each export's metadata (atomically, in place) and return the plan.

    exports: label -> FP32 ONNX path (a path may appear under several labels); search_on: the label whose export
    the INT8 search runs on. max_drop None: plain INT8 (no search). calib_samples / calib_seed: the draw `calib`
    came from (load_calibration(data, ...)), left out of the validation subset.
    """
    plan = PrecisionPlan()
    if int8 and max_drop is not None:
        result = search_int8(load_onnx(exports[search_on]), calib, data, spec=spec, task=task, max_drop=max_drop,
                             max_float_units=max_float_units, calib_samples=calib_samples, calib_seed=calib_seed,
                             data_root=data_root, download=download, fail=False)
        plan.int8 = result.summary()
        if not result.met:  # parity then judges the engines; the report shows the search
            warnings.warn(f"accuracy-aware INT8 did not meet the bound of {max_drop} points: {result.drop:.2f} with "
                          f"{', '.join(result.float_units) or 'no unit'} in float", stacklevel=2)
    for path in dict.fromkeys(Path(p) for p in exports.values()):
        model = load_onnx(path)
        values = metadata_for(model, plan.int8) if plan.int8 else {}
        if fp16:
            risks = headroom.measure_risks(model, calib)
            values.update(headroom.headroom_metadata(risks, samples=len(calib)))
            plan.fp16[path.name] = [r.to_dict() for r in risks]
        if values:
            set_metadata(model, values)
            save_onnx_atomic(model, path)
    return plan


def carry_plan(source: Path, target: Path) -> None:
    """Write the plan in `source`'s metadata into `target`, another export of the same model (with block outputs,
    say), so an engine built from `target` keeps the same parts in float. INT8 units are named by structure and
    found again in `target`; the FP16 nodes keep their names (builds skip names a graph lacks)."""
    plan = read_metadata(load_onnx(source))
    model = load_onnx(target)
    values = metadata_for(model, plan[INT8_ACCURACY]) if isinstance(plan.get(INT8_ACCURACY), dict) else {}
    if isinstance(plan.get(FP16_HEADROOM), dict):
        values[FP16_HEADROOM] = plan[FP16_HEADROOM]
    if values:
        set_metadata(model, values)
        save_onnx_atomic(model, target)
