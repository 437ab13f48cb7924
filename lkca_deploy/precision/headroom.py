"""FP16 headroom: the tensors whose calibrated range does not fit FP16 with a margin, and the ops kept FP32 for them.

FP16 tops out at 65504. A tensor past it becomes inf, and after a MatMul or a normalisation NaN, or plainly wrong
logits with no NaN in sight (reports in docs/reduced-precision.md). The calibration ranges (minmax covers every
float tensor, calibration/quantize.py) say which tensors come near: a tensor whose observed max |x| times
`margin` passes 65504 (margin: images outside the calibration set go further than those in it) is a risk; its
producer and every reader stay FP32, so it is computed and read in FP32 (the rest of the model stays FP16).
A normalisation squares its input to get the variance, so a tensor read by one is also a risk when its square
would not fit; there the normalisation itself stays FP32 (the value fits, only its square does not). Weights past
65504 are risks too, their readers kept FP32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from lkca_deploy.calibration.quantize import calibrate, to_fp16, with_node_names
from lkca_deploy.onnx_meta import FP16_HEADROOM, read_metadata

FP16_MAX = 65504.0
DEFAULT_MARGIN = 4.0  # two bits of headroom over what the calibration samples reached
# Ops that square their input inside (variance, sum of squares, L2 norm).
SQUARING_OP_TYPES = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "RMSNormalization",
    "SimplifiedLayerNormalization",
    "ReduceSumSquare",
    "LpNormalization",
)


@dataclass(frozen=True)
class Risk:
    """A tensor that does not fit FP16 with the margin, and the nodes kept FP32 because of it."""

    tensor: str
    observed_max: float  # max |x| over the calibration samples (a weight: over its values)
    reason: str  # range, square or weight
    producer: str | None
    keep_fp32: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "observed_max": _finite(self.observed_max), "reason": self.reason,
                "producer": self.producer, "keep_fp32": list(self.keep_fp32)}

    @classmethod
    def from_dict(cls, d: dict) -> Risk:
        peak = d.get("observed_max")
        return cls(d["tensor"], math.inf if peak is None else float(peak), d["reason"], d.get("producer"),
                   tuple(d.get("keep_fp32") or ()))


def find_risks(
    model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]], margin: float = DEFAULT_MARGIN
) -> list[Risk]:
    """Every tensor of `model` (by its calibrated (lo, hi) in `ranges`) or weight that FP16 cannot hold with
    `margin`, in graph order. Nodes must be named (exported models are; quantize.with_node_names names others)."""
    if not margin >= 1:
        raise ValueError(f"the FP16 margin is a factor of at least 1, got {margin}")
    graph = model.graph
    limit = FP16_MAX / margin
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    risks = []
    for name in _tensors_in_order(graph):
        if name not in ranges:
            continue
        peak = max(abs(float(ranges[name][0])), abs(float(ranges[name][1])))
        producer = producers.get(name)
        if not peak <= limit:  # `not <=`: a NaN range is a risk too
            keep = ([producer.name] if producer is not None else []) + [r.name for r in readers.get(name, [])]
            risks.append(Risk(name, peak, "range", producer.name if producer else None, tuple(_unique(keep))))
            continue
        squarers = [r.name for r in readers.get(name, []) if r.op_type in SQUARING_OP_TYPES]
        if squarers and not peak * peak <= limit:
            risks.append(Risk(name, peak, "square", producer.name if producer else None, tuple(_unique(squarers))))
    for weight in graph.initializer:
        if weight.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE) or weight.name not in readers:
            continue
        values = numpy_helper.to_array(weight)
        peak = float(np.max(np.abs(values))) if values.size else 0.0
        if not peak <= FP16_MAX:  # a weight's values are known exactly: no margin
            risks.append(Risk(weight.name, peak, "weight", None, tuple(_unique([r.name for r in readers[weight.name]]))))
    return risks


def keep_fp32_nodes(risks: Sequence[Risk]) -> list[str]:
    """The nodes the risks keep FP32, each once, in the order met."""
    return _unique([node for risk in risks for node in risk.keep_fp32])


def measure_risks(model: onnx.ModelProto, calib: np.ndarray, margin: float = DEFAULT_MARGIN) -> list[Risk]:
    """find_risks on the ranges of `calib`, nodes named as quantize_int8 and to_fp16_with_headroom name them."""
    named = with_node_names(model)
    return find_risks(named, tensor_ranges(named, calib), margin)


def tensor_ranges(model: onnx.ModelProto, calib: np.ndarray) -> dict[str, tuple[float, float]]:
    """(lo, hi) of every float tensor over `calib`: the minmax calibration INT8 uses, run on its own."""
    return calibrate(model, calib, flavor="tensorrt", method="minmax").ranges


def to_fp16_with_headroom(
    model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]], margin: float = DEFAULT_MARGIN
) -> tuple[onnx.ModelProto, list[Risk]]:
    """quantize.to_fp16 with the risks' nodes kept FP32; returns the model and the risks."""
    named = with_node_names(model)
    risks = find_risks(named, ranges, margin)
    return to_fp16(named, keep_fp32_nodes=keep_fp32_nodes(risks)), risks


def headroom_metadata(risks: Sequence[Risk], margin: float = DEFAULT_MARGIN, samples: int | None = None) -> dict:
    """The FP16_HEADROOM metadata: the risks with their observed maxima and the nodes FP16 builds keep FP32."""
    return {FP16_HEADROOM: {"limit": FP16_MAX, "margin": margin, "calibration_samples": samples,
                            "risks": [r.to_dict() for r in risks], "keep_fp32": keep_fp32_nodes(risks)}}


def planned_fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes `model`'s metadata says FP16 builds keep FP32 (those that still exist in it)."""
    plan = read_metadata(model).get(FP16_HEADROOM)
    if not isinstance(plan, dict):
        return []
    names = {n.name for n in model.graph.node}
    return [n for n in plan.get("keep_fp32") or [] if n in names]


def risks_table(risks: Sequence[Risk], margin: float = DEFAULT_MARGIN) -> str:
    """Markdown: each risk's tensor, observed max, why, and the nodes kept FP32."""
    if not risks:
        return f"Every tensor fits FP16 with a margin of {margin:g}x (max |x| <= {FP16_MAX / margin:.0f})."
    lines = [
        f"FP16 headroom (limit {FP16_MAX:.0f}, margin {margin:g}x):",
        "",
        "| tensor | observed max |x| | why | kept FP32 |",
        "|---|---:|---|---|",
    ]
    why = {"range": "value past the limit", "square": "its square, in a normalisation",
           "weight": "weight past 65504"}
    for risk in risks:
        lines.append(f"| {risk.tensor} | {risk.observed_max:.4g} | {why[risk.reason]} | "
                     f"{', '.join(risk.keep_fp32)} |")
    return "\n".join(lines)


def _tensors_in_order(graph: onnx.GraphProto) -> list[str]:
    names = [i.name for i in graph.input]
    names += [out for node in graph.node for out in node.output if out]
    return _unique(names)


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
