"""build_engine: bake the precision into an ONNX, then hand that ONNX to one backend's build.

Precision lives in the ONNX (FP16 casts, INT8 Q/DQ), so every backend builds from a file that already computes what
the engine will compute. The INT8 flavour follows the target: onnxruntime takes the cpu flavour (uint8 activations,
x86 fast path), TensorRT the tensorrt flavour (signed, zero-point 0) plus a calibration cache, OpenVINO quantizes
with NNCF by default or reads the cpu-flavour Q/DQ ONNX ("qdq").

Files beside the artifact `out` (unless the artifact is itself that ONNX, as for onnxruntime):
  <stem>.<precision>.onnx      the baked ONNX the backend built from (a backend built on the device, TensorRT:
                               always, even fp32, so the folder holds everything needed to build there)
  and whatever the backend's prepare_build writes for the device (TensorRT: the calibration cache from the same
  ranges as the Q/DQ, and a trtexec script per route).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lkca_deploy.backends.base import Backend, BuildResult, BuildStep
from lkca_deploy.backends.registry import get_backend
from lkca_deploy.calibration import quantize
from lkca_deploy.check import tensorrt_compatibility
from lkca_deploy.forms.apply import fp32_nodes
from lkca_deploy.forms.upsample import upsample_nodes
from lkca_deploy.onnx_meta import FP16_FP32_NODES, TENSORRT_COMPATIBILITY, read_metadata, set_metadata
from lkca_deploy.precision.accuracy_aware import planned_float_nodes
from lkca_deploy.precision.headroom import planned_fp32_nodes
from lkca_deploy.targets import int8_weight_form
from lkca_runtime.backends.base import check_precision, load_onnx, onnx_precision
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import sha256_file
from lkca_runtime.onnx_io import save_onnx_atomic

# Which quantize_int8 flavour each backend INT8 flavour bakes; None: the backend quantizes itself (NNCF).
QDQ_FLAVOR = {"cpu": "cpu", "tensorrt": "tensorrt", "qdq": "cpu", "nncf": None}


def build_engine(
    onnx_path: Path,
    backend: str,
    precision: str,
    out: Path,
    *,
    calib: np.ndarray | None = None,
    flavor: str | None = None,
    device: str | None = None,
    method: str | None = None,
    keep_fp: Sequence[str] = (),
    tensorrt_version: str | None = None,
    **options: Any,
) -> BuildResult:
    """Build `backend`'s artifact at `out` from the fp32 ONNX `onnx_path` at `precision`.

    calib: preprocessed float32 samples (N, C, H, W), required for int8. flavor: the INT8 flavour, one of the
    backend's `int8_flavors` (default the first). method / keep_fp: passed to quantize_int8 (Q/DQ flavours).
    tensorrt_version: the TensorRT the calibration cache is written for (default: the installed one).
    options: the backend's own build options (see its build()).
    A backend built on the device (TensorRT) that is missing here still gets its baked ONNX and device files
    written: the result then has no artifact and says why (`deferred`).
    """
    be = get_backend(backend, require_available=False)
    check_precision(precision, be.precisions, backend)
    int8_flavor = resolve_int8_flavor(be, precision, flavor)
    if precision == "int8" and (calib is None or len(calib) == 0):
        raise UserError("int8 needs --calib SOURCE (calibration images)")
    if int8_flavor == "nncf" and (method or keep_fp):
        raise UserError("method and keep_fp shape the Q/DQ flavours; NNCF chooses its own (use flavor qdq)")
    ok, reason = be.available()
    if not ok and not be.built_on_device:
        raise UserError(reason)

    onnx_path, out = Path(onnx_path), Path(out)
    source = load_onnx(onnx_path)
    found = onnx_precision(source)
    if found != "fp32":
        raise UserError(
            f"{onnx_path} already computes in {found}: build_engine bakes precision from the fp32 export, so give "
            "it that one"
        )
    provenance: dict[str, Any] = {
        "origin_onnx": onnx_path.name,  # name + hash: an absolute path would name the temp dir of a bundle
        "origin_onnx_sha256": sha256_file(onnx_path),
        "int8_flavor": int8_flavor,
    }
    baked, ranges = _bake(source, precision, int8_flavor, calib, method, keep_fp, provenance)
    if be.built_on_device:  # the device reads which TensorRT parses what it builds from (jetpack.py)
        baked = stamp_tensorrt(baked if baked is not None else _copy(source), provenance)
    ignored = [*provenance.get("int8_float_nodes", ()), *provenance.get("int8_float_upsample", ())]
    if int8_flavor == "nncf" and ignored:
        # the same float parts as the Q/DQ flavours, beside any the caller named
        options["nncf_ignored_nodes"] = [*options.get("nncf_ignored_nodes", ()), *ignored]
    written = []
    if baked is not None or be.built_on_device:
        model_path = out if be.artifact_suffix == ".onnx" else out.with_name(f"{out.stem}.{precision}.onnx")
        save_onnx_atomic(baked if baked is not None else source, model_path)
        provenance["baked_onnx"] = model_path.name
        written = [model_path] if model_path != out else []
    else:
        model_path = onnx_path
    step = be.prepare_build(
        BuildStep(model_path, out, precision, source, ranges, device, dict(options), provenance, tensorrt_version)
    )
    files = tuple(written + step.files)
    if not ok:
        return BuildResult(None, files, deferred=reason)
    artifact = be.build(
        step.model_path,
        out,
        precision=precision,
        calib=calib if int8_flavor == "nncf" else None,
        device=device,
        provenance=provenance,
        **step.options,
    )
    return BuildResult(artifact, files)


def stamp_tensorrt(model: onnx.ModelProto, provenance: dict[str, Any]) -> onnx.ModelProto:
    """Write into `model`'s metadata the oldest TensorRT whose ONNX parser takes it and the JetPacks that ship one
    (check.tensorrt_compatibility), and the nodes a weakly typed build must keep FP32 (FP16_FP32_NODES)."""
    compatibility = tensorrt_compatibility(model)
    values = {TENSORRT_COMPATIBILITY: compatibility}
    if provenance.get("fp16_keep_fp32_nodes"):
        values[FP16_FP32_NODES] = list(provenance["fp16_keep_fp32_nodes"])
    set_metadata(model, values)
    provenance["min_tensorrt"] = compatibility["min_tensorrt"]
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def resolve_int8_flavor(backend: Backend, precision: str, flavor: str | None) -> str | None:
    """The INT8 flavour for `backend`: its default when not given, refused when it does not suit it."""
    if precision != "int8":
        if flavor is not None:
            raise UserError(f"flavor {flavor!r} applies to int8 only, not {precision}: drop it")
        return None
    if flavor is None:
        return backend.int8_flavors[0]
    if flavor not in backend.int8_flavors:
        raise UserError(
            f"int8 flavor {flavor!r} does not suit {backend.name}: choose one of {', '.join(backend.int8_flavors)}"
        )
    return flavor


def _bake(source, precision, int8_flavor, calib, method, keep_fp, provenance):
    """(ONNX that computes in `precision` or None when the backend takes the fp32 one, calibrated ranges).

    What the FP32 export's metadata decided is obeyed here, for every backend alike: the nodes FP16 cannot hold
    stay FP32 (precision/headroom.py), the units the accuracy-aware search returned to float stay float in the
    Q/DQ flavours and in NNCF's ignored scope (precision/accuracy_aware.py).
    """
    if precision == "fp16":
        # headroom's nodes, and a decomposed LayerNorm's (it overflows in FP16: docs/jetson.md, section 2)
        keep = list(dict.fromkeys([*planned_fp32_nodes(source), *fp32_nodes(source)]))
        provenance["baked"] = "to_fp16"
        if keep:
            provenance["fp16_keep_fp32_nodes"] = keep
        return quantize.to_fp16(source, keep_fp32_nodes=keep), None
    if precision != "int8":
        return None, None
    units, float_nodes = planned_float_nodes(source)
    if units:
        provenance["int8_float_units"], provenance["int8_float_nodes"] = units, float_nodes
    upsample = upsample_nodes(source)
    if upsample:
        provenance["int8_float_upsample"] = upsample
    if QDQ_FLAVOR[int8_flavor] is None:
        return None, None
    kwargs: dict[str, Any] = {"keep_fp": (*keep_fp, *float_nodes, *upsample)}
    if method:
        kwargs["method"] = method
    if int8_flavor == "tensorrt":  # the TensorRT the export was made for decides how the weights are held
        kwargs["weight_form"] = int8_weight_form(read_metadata(source).get("target"))
    result = quantize.quantize_int8(source, calib, flavor=QDQ_FLAVOR[int8_flavor], **kwargs)
    provenance["baked"] = f"quantize_int8(flavor={QDQ_FLAVOR[int8_flavor]}" + (
        f", weight_form={kwargs['weight_form']})" if "weight_form" in kwargs else ")")
    provenance["quantize"] = {
        "method": method or quantize.DEFAULT_METHOD,
        "keep_fp": list(keep_fp),
        "excluded_nodes": list(result.excluded_nodes),
        "calibration_samples": len(calib),
    }
    return result.model, result.ranges
