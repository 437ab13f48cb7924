"""TensorRT backend, host side: what the device needs to build the engine itself (calibration cache, trtexec
scripts). Building and running engines happen on the device and live in lkca_runtime.backends.tensorrt.
"""

from __future__ import annotations

from dataclasses import replace

from lkca_deploy.backends.base import BackendBase, BuildStep
from lkca_deploy.calibration.quantize import trt_cache_header, write_trt_calibration_cache
from lkca_deploy.onnx_meta import read_metadata
from lkca_deploy.targets import TARGETS, min_tensorrt
from lkca_runtime.backends.tensorrt import TensorRTLoader, installed_version
from lkca_runtime.backends.trtexec import TensorRTSettings, strongly_typed_only, write_trtexec_script
from lkca_runtime.onnx_io import save_onnx_atomic


class TensorRTBackend(TensorRTLoader, BackendBase):
    int8_flavors = ("tensorrt",)
    def prepare_build(self, step: BuildStep) -> BuildStep:
        """Write what the device needs to build the engine itself: the calibration cache (INT8) and a trtexec
        script per route. DLA on TensorRT 10 takes INT8 only implicitly (fp32 ONNX + calibration cache): that
        route gets its own script, and this machine's TensorRT 10 builds from it too."""
        out, options = step.out, dict(step.options)
        settings = TensorRTSettings.from_options(step.precision, step.device, **options)
        if step.ranges is not None:
            header = trt_cache_header(step.cache_version or installed_version() or cache_tensorrt(step.source))
            cache = write_trt_calibration_cache(
                step.ranges, out.with_name(f"{out.stem}.calib.cache"), version_header=header
            )
            step.provenance["calib_cache"] = cache.name
            step.files.append(cache)
        step.files.append(write_trtexec_script(step.model_path, settings, engine_path=out))
        if step.ranges is not None and settings.dla_core is not None:
            fp32_path = save_onnx_atomic(step.source, out.with_name(f"{out.stem}.fp32.onnx"))
            implicit = replace(settings, calib_cache=f"{out.stem}.calib.cache")
            step.files += [fp32_path, write_trtexec_script(fp32_path, implicit, engine_path=out)]
            installed = installed_version()
            if installed and not strongly_typed_only(installed):
                step.model_path, options["calib_cache"] = fp32_path, out.with_name(implicit.calib_cache)
        return replace(step, options=options)


def cache_tensorrt(model) -> str:
    """The TensorRT a calibration cache is written for when none is installed: the oldest the export's target
    means (the header must name the device's TensorRT, or TensorRT recalibrates), else JetPack 6.1/6.2's 10.3."""
    target = read_metadata(model).get("target")
    return (min_tensorrt(target) if target in TARGETS else None) or "10.3.0"
