"""The golden samples in Polygraphy's JSON format, so that NVIDIA's own tool checks an engine against them:

    polygraphy run model.onnx --trt --load-inputs golden/polygraphy/inputs.json \\
        --load-outputs golden/polygraphy/outputs.json --atol A --rtol R

builds a TensorRT engine from the ONNX, runs it on the golden inputs and compares each output element with
PyTorch FP32's (an element fails when it is off by more than A and, relatively, by more than R).

Polygraphy (0.53) reads `--load-inputs` as a JSON list of feed dicts, one per iteration (input name -> array), and
`--load-outputs` as a RunResults, {"lst": [[runner name, [IterationResult, ...]]]}, each IterationResult holding
{output name -> LazyArray}; every array is {"array": base64 of its .npy bytes, "polygraphy_class": "ndarray"}
(polygraphy/json/serde.py and polygraphy/comparator/struct.py). It is written here with numpy and json only, so
building a bundle does not need polygraphy; tests/test_polygraphy_golden.py has polygraphy read it back.

The samples are the golden set's first ones, in iterations of the batch the engines take (TensorRT's profile
allows 1..32), as many as fit MAX_OUTPUT_BYTES of reference outputs (segmentation logits are large).
"""

from __future__ import annotations

import base64
import io
import json
import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lkca_runtime.fsutil import atomic_write_text

POLYGRAPHY_DIR = "golden/polygraphy"
INPUTS_REL = f"{POLYGRAPHY_DIR}/inputs.json"
OUTPUTS_REL = f"{POLYGRAPHY_DIR}/outputs.json"
REFERENCE_RUNNER = "pytorch-fp32"
MAX_OUTPUT_BYTES = 16 << 20
_TYPE_MARKER = "polygraphy_class"
# fp32 compares at the golden check's own fp32 limit; the reduced precisions at twice the largest error their
# engines reached on the golden samples where the bundle was built (at least this floor).
FP32_TOLERANCE = {"atol": 1e-3, "rtol": 1e-3}
REDUCED_MARGIN = 2.0
REDUCED_FLOOR = 1e-2


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """One array as Polygraphy's JSON encoder writes it (the .npy bytes, base64)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode("ascii"), _TYPE_MARKER: "ndarray"}


def decode_array(encoded: Mapping[str, Any]) -> np.ndarray:
    """The inverse of encode_array (numpy only, no pickles)."""
    if encoded.get(_TYPE_MARKER) != "ndarray":
        raise ValueError(f"not a Polygraphy ndarray: {_TYPE_MARKER}={encoded.get(_TYPE_MARKER)!r}")
    return np.load(io.BytesIO(base64.b64decode(encoded["array"], validate=True)), allow_pickle=False)


def samples_that_fit(reference: np.ndarray, max_bytes: int = MAX_OUTPUT_BYTES) -> int:
    """How many of the reference's samples fit `max_bytes` of float32 outputs (at least one)."""
    per_sample = int(np.prod(reference.shape[1:], dtype=np.int64)) * 4
    return max(1, min(len(reference), max_bytes // max(per_sample, 1)))


def write_polygraphy_golden(
    folder: str | Path,
    x: np.ndarray,
    reference: np.ndarray,
    *,
    input_name: str,
    output_name: str,
    batch: int = 32,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
) -> dict[str, Any]:
    """Write inputs.json and outputs.json into `folder` (atomically) from golden inputs `x` and the reference
    outputs; returns {samples, batch, iterations}."""
    samples = samples_that_fit(np.asarray(reference), max_output_bytes)
    x = np.asarray(x, dtype=np.float32)[:samples]
    reference = np.asarray(reference, dtype=np.float32)[:samples]
    starts = range(0, samples, batch)
    feeds = [{input_name: encode_array(x[s:s + batch])} for s in starts]
    iterations = [
        {
            "outputs": {output_name: {"values": encode_array(reference[s:s + batch]), _TYPE_MARKER: "LazyArray"}},
            "runtime": 0.0,
            "runner_name": REFERENCE_RUNNER,
            _TYPE_MARKER: "IterationResult",
        }
        for s in starts
    ]
    results = {"lst": [[REFERENCE_RUNNER, iterations]], _TYPE_MARKER: "RunResults"}
    folder = Path(folder)
    atomic_write_text(folder / Path(INPUTS_REL).name, json.dumps(feeds) + "\n")
    atomic_write_text(folder / Path(OUTPUTS_REL).name, json.dumps(results) + "\n")
    return {"samples": samples, "batch": batch, "iterations": len(feeds)}


def read_polygraphy_inputs(path: str | Path) -> list[dict[str, np.ndarray]]:
    """The feed dicts of an inputs.json (what polygraphy feeds, iteration by iteration)."""
    return [{name: decode_array(a) for name, a in feed.items()} for feed in json.loads(Path(path).read_text())]


# ---------------------------------------------------------------- tolerances and commands


def _round_up(value: float) -> float:
    """Up to one significant digit: 0.0123 -> 0.02."""
    if value <= 0:
        return 0.0
    scale = 10.0 ** math.floor(math.log10(value))
    return math.ceil(value / scale - 1e-9) * scale


def tolerance_for(precision: str, achieved_max_abs_err: Sequence[float] = ()) -> dict[str, float]:
    """atol/rtol for an engine at `precision`: FP32_TOLERANCE, or (reduced precisions) twice the largest
    max_abs_err that precision's engines reached on the golden samples at build time, rounded up, at least
    REDUCED_FLOOR, with rtol 0 (atol alone decides)."""
    if precision == "fp32":
        return dict(FP32_TOLERANCE)
    worst = max([float(e) for e in achieved_max_abs_err if e is not None and math.isfinite(e)], default=0.0)
    atol = max(_round_up(REDUCED_MARGIN * worst), REDUCED_FLOOR)
    return {"atol": float(f"{atol:.1g}"), "rtol": 0.0}


def tensorrt_flags(plan, *, calib_cache: str | None = None) -> list[str]:
    """Polygraphy's TensorRT builder flags for a trtexec.PrecisionPlan (the same plan the trtexec script
    builds with): --strongly-typed, or --fp16/--int8 (+ --calibration-cache for implicit INT8). TF32 stays off,
    as in the script (--noTF32): polygraphy enables it only when asked (--tf32)."""
    if plan.strongly_typed:
        return ["--strongly-typed"]
    flags = [f"--{flag.lower()}" for flag in plan.flags]
    if plan.quantization == "implicit" and calib_cache:
        flags += ["--calibration-cache", calib_cache]
    return flags


def shape_flags(input_name: str, shapes: Mapping[str, Sequence[int]] | None) -> list[str]:
    """--trt-{min,opt,max}-shapes for a dynamic batch profile (trtexec.profile_shapes); none for a static input."""
    if not shapes:
        return []
    return [arg for k in ("min", "opt", "max")
            for arg in (f"--trt-{k}-shapes", f"{input_name}:[{','.join(map(str, shapes[k]))}]")]


def polygraphy_command(onnx_rel: str, runner: Sequence[str], tolerance: Mapping[str, float],
                       inputs_rel: str = INPUTS_REL, outputs_rel: str = OUTPUTS_REL) -> str:
    """The `polygraphy run` line, paths relative to the bundle's root; `runner`: e.g. ["--trt", "--fp16"]."""
    args = ["polygraphy", "run", onnx_rel, *runner, "--load-inputs", inputs_rel, "--load-outputs", outputs_rel,
            "--atol", f"{tolerance['atol']:g}", "--rtol", f"{tolerance['rtol']:g}"]
    return " ".join(shlex.quote(a) for a in args)
