"""build_engine: bake the precision into an ONNX, then hand that ONNX to one backend's build.

Precision lives in the ONNX (FP16 casts, INT8 Q/DQ), so every backend builds from a file that already computes what
the engine will compute. The INT8 flavour follows the target: onnxruntime takes the cpu flavour (uint8 activations,
x86 fast path), TensorRT the tensorrt flavour (signed, zero-point 0) plus a calibration cache, OpenVINO quantizes
with NNCF by default or reads the cpu-flavour Q/DQ ONNX ("qdq").

Files beside the artifact `out` (unless the artifact is itself that ONNX, as for onnxruntime):
  <stem>.<precision>.onnx      the baked ONNX the backend built from (TensorRT: always, even fp32, so the folder
                               holds everything needed to rebuild on the device)
  <stem>.calib.cache           TensorRT INT8 only: the calibration cache from the same ranges as the Q/DQ
  <onnx>.trtexec.sh            TensorRT only: the command that builds the engine on the target itself
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lkca_deploy.backends.base import (
    Backend,
    atomic_output,
    check_precision,
    load_onnx,
    onnx_precision,
    sha256_file,
)
from lkca_deploy.backends.registry import get_backend
from lkca_deploy.errors import UserError

# Which quantize_int8 flavour each backend INT8 flavour bakes; None: the backend quantizes itself (NNCF).
QDQ_FLAVOR = {"cpu": "cpu", "tensorrt": "tensorrt", "qdq": "cpu", "nncf": None}
# The calibration cache header names the TensorRT version that reads it. Without TensorRT here, write it for
# JetPack 6's TensorRT 10.3, the TensorRT that runs implicit INT8 on a Jetson's DLA.
DEFAULT_CACHE_TENSORRT = "10.3.0"


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
) -> Path:
    """Build `backend`'s artifact at `out` from the fp32 ONNX `onnx_path` at `precision`; returns `out`.

    calib: preprocessed float32 samples (N, C, H, W), required for int8. flavor: the INT8 flavour, one of the
    backend's `int8_flavors` (default the first). method / keep_fp: passed to quantize_int8 (Q/DQ flavours).
    tensorrt_version: the TensorRT the calibration cache is written for (default: the installed one).
    options: the backend's own build options (see its build()).
    """
    be = get_backend(backend, require_available=False)
    check_precision(precision, be.precisions, backend)
    int8_flavor = resolve_int8_flavor(be, precision, flavor)
    if precision == "int8" and (calib is None or len(calib) == 0):
        raise UserError("int8 needs --calib SOURCE (calibration images)")
    if int8_flavor == "nncf" and (method or keep_fp):
        raise UserError("method and keep_fp shape the Q/DQ flavours; NNCF chooses its own (use flavor qdq)")
    ok, reason = be.available()
    if not ok and backend != "tensorrt":  # TensorRT: still bake and write the script for the device
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
    artifact_is_onnx = be.artifact_suffix == ".onnx"
    if baked is not None or backend == "tensorrt":
        model_path = out if artifact_is_onnx else out.with_name(f"{out.stem}.{precision}.onnx")
        _save_onnx(baked if baked is not None else source, model_path)
        provenance["baked_onnx"] = model_path.name
    else:
        model_path = onnx_path

    if backend == "tensorrt":
        return _build_tensorrt(
            be, model_path, out, precision, source, ranges, device, tensorrt_version, provenance, options
        )
    backend_calib = calib if int8_flavor == "nncf" else None
    return be.build(
        model_path,
        out,
        precision=precision,
        calib=backend_calib,
        device=device,
        provenance=provenance,
        **options,
    )


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
    """(ONNX that computes in `precision` or None when the backend takes the fp32 one, calibrated ranges)."""
    from lkca_deploy.calibration import quantize

    if precision == "fp16":
        provenance["baked"] = "to_fp16"
        return quantize.to_fp16(source), None
    if precision != "int8" or QDQ_FLAVOR[int8_flavor] is None:
        return None, None
    kwargs: dict[str, Any] = {"keep_fp": tuple(keep_fp)}
    if method:
        kwargs["method"] = method
    result = quantize.quantize_int8(source, calib, flavor=QDQ_FLAVOR[int8_flavor], **kwargs)
    provenance["baked"] = f"quantize_int8(flavor={QDQ_FLAVOR[int8_flavor]})"
    provenance["quantize"] = {
        "method": method or quantize.DEFAULT_METHOD,
        "keep_fp": list(keep_fp),
        "excluded_nodes": list(result.excluded_nodes),
        "calibration_samples": len(calib),
    }
    return result.model, result.ranges


def _build_tensorrt(
    be, model_path, out, precision, source, ranges, device, tensorrt_version, provenance, options
):
    """Write the calibration cache and trtexec script(s), then build here when TensorRT is installed.

    DLA on TensorRT 10 takes INT8 only implicitly (fp32 ONNX + calibration cache): that ONNX gets its own script.
    """
    from lkca_deploy.backends import tensorrt as trt_backend
    from lkca_deploy.calibration.quantize import trt_cache_header, write_trt_calibration_cache

    ok, reason = be.available()
    installed = trt_backend.installed_version()
    dla_core = trt_backend.parse_device(device)[1]
    script_options = {
        k: options[k] for k in ("min_batch", "opt_batch", "max_batch", "workspace_mib") if k in options
    }
    if "timing_cache" in options:
        script_options["timing_cache"] = Path(options["timing_cache"])
    calib_cache = None
    if ranges is not None:
        header = trt_cache_header(tensorrt_version or installed or DEFAULT_CACHE_TENSORRT)
        calib_cache = write_trt_calibration_cache(
            ranges, out.with_name(f"{out.stem}.calib.cache"), version_header=header
        )
        provenance["calib_cache"] = calib_cache.name
    scripts = [
        trt_backend.write_trtexec_script(
            model_path, precision, engine_path=out, dla_core=dla_core, **script_options
        )
    ]
    build_from, build_options = model_path, dict(options)
    if calib_cache is not None and dla_core is not None:
        fp32_path = out.with_name(f"{out.stem}.fp32.onnx")
        _save_onnx(source, fp32_path)
        scripts.append(
            trt_backend.write_trtexec_script(
                fp32_path,
                precision,
                engine_path=out,
                dla_core=dla_core,
                calib_cache=calib_cache,
                **script_options,
            )
        )
        if installed and not trt_backend.strongly_typed_only(installed):
            build_from, build_options["calib_cache"] = fp32_path, calib_cache
    if not ok:
        written = ", ".join(p.name for p in scripts)
        raise UserError(
            f"{reason}. Wrote {written} in {out.parent}: run it on the target to build the engine there"
        )
    return be.build(
        build_from, out, precision=precision, device=device, provenance=provenance, **build_options
    )


def _save_onnx(model, path: Path) -> Path:
    import onnx

    with atomic_output(path) as tmp:
        onnx.save_model(model, str(tmp))
    return path
