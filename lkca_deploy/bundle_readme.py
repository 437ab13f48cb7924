"""The part of a bundle's README.md that says how a device checks the bundle: with the runtime, and with NVIDIA's
Polygraphy.

Per TensorRT recipe (the ONNX the device builds its engine from, polygraphy_golden.py's files and tolerance) the
exact `polygraphy run ... --trt` line for each TensorRT major the trtexec script knows: the same precision plan
and batch profile as the script (trtexec.precision_plan, trtexec.profile_shapes). A plan a TensorRT cannot build
(implicit INT8 on 11) is said in words instead. The FP32 ONNX also gets an `--onnxrt` line: the same check on any
CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lkca_deploy.polygraphy_golden import (
    INPUTS_REL,
    OUTPUTS_REL,
    polygraphy_command,
    shape_flags,
    tensorrt_flags,
    tolerance_for,
)
from lkca_runtime.backends.base import load_onnx, onnx_precision
from lkca_runtime.backends.trtexec import (
    TensorRTSettings,
    precision_plan,
    profile_shapes,
    script_versions,
)
from lkca_runtime.bundle import recipe_name
from lkca_runtime.errors import UserError
from lkca_runtime.onnx_io import input_spec


def achieved_errors(engines: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """precision -> the max_abs_err each engine of that precision reached on the golden samples at build time."""
    errors: dict[str, list[float]] = {}
    for engine in engines:
        achieved = (engine.get("golden") or {}).get("achieved") or {}
        if achieved.get("max_abs_err") is not None:
            errors.setdefault(engine["precision"], []).append(float(achieved["max_abs_err"]))
    return errors


def tensorrt_lines(bundle_dir: Path, build: Mapping[str, Any], tolerance: Mapping[str, float]) -> list[str]:
    """'# TensorRT N' and its command per TensorRT major the recipe's trtexec script has a line for."""
    model = load_onnx(bundle_dir / build["onnx"])
    spec = input_spec(model)
    settings = TensorRTSettings.from_dict(build["settings"])
    cache = build.get("calib_cache")
    lines = []
    for major, version in sorted(script_versions(build.get("min_tensorrt")).items(), key=lambda mv: int(mv[0])):
        try:
            plan = precision_plan(settings.precision, version, onnx_precision=onnx_precision(model),
                                  calib_cache=bool(cache), dla=settings.dla_core is not None)
        except UserError as why:
            lines.append(f"# TensorRT {major}: not buildable ({why})")
            continue
        runner = ["--trt", *tensorrt_flags(plan, calib_cache=cache),
                  *shape_flags(spec.name, profile_shapes(spec.shape, settings.profile()))]
        if settings.dla_core is not None:
            runner += ["--use-dla", "--allow-gpu-fallback"]
        lines += [f"# TensorRT {major}", polygraphy_command(build["onnx"], runner, tolerance)]
    return lines


def device_check_section(bundle_dir: str | Path, *, engines: Sequence[Mapping[str, Any]],
                         device_builds: Sequence[Mapping[str, Any]], polygraphy: Mapping[str, Any] | None) -> str:
    """Markdown: `lkca-runtime verify`, then (when the bundle has Polygraphy's files) the polygraphy lines."""
    bundle_dir = Path(bundle_dir)
    errors = achieved_errors(engines)
    text = [
        "",
        "## Checking it on the device",
        "",
        "Every engine against the golden samples the bundle carries (torch-free):",
        "",
        "```bash",
        "pip install lkca-deploy-runtime[onnxruntime]   # or [openvino]; TensorRT from JetPack",
        "lkca-runtime verify . --all",
        "```",
    ]
    if polygraphy:
        text += [
            "",
            "## The same check with NVIDIA's Polygraphy",
            "",
            (f"`{INPUTS_REL}` holds {polygraphy['samples']} golden inputs in {polygraphy['iterations']} iterations "
             f"of up to {polygraphy['batch']}, `{OUTPUTS_REL}` PyTorch FP32's outputs for them, in Polygraphy's "
             "JSON format (`pip install polygraphy`). Run from this folder. Tolerances: fp32 at the golden check's "
             "own limit; fp16 and int8 at twice the largest error that precision's engines reached on these "
             "samples where the bundle was built (an element fails when it is off by more than both atol and "
             "rtol times its value)."),
        ]
        fp32_onnx = next((e["artifact"] for e in engines
                          if e["backend"] == "onnxruntime" and e["precision"] == "fp32"), None)
        if fp32_onnx:
            text += ["", "FP32 ONNX on any CPU (ONNX Runtime):", "", "```bash",
                     polygraphy_command(fp32_onnx, ["--onnxrt"], tolerance_for("fp32")), "```"]
        for build in device_builds:
            tolerance = tolerance_for(build["precision"], errors.get(build["precision"], ()))
            name = recipe_name(build)
            text += ["", f"TensorRT {name} (builds the engine from `{build['onnx']}`, as its trtexec script does):",
                     "", "```bash", *tensorrt_lines(bundle_dir, build, tolerance), "```"]
    return "\n".join(text) + "\n"
