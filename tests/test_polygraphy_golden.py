"""The bundle's golden samples in Polygraphy's format: NVIDIA's own `polygraphy run` reads them and passes the
FP32 ONNX with the command the bundle's README prints; the README has a TensorRT line per recipe."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lkca_deploy.polygraphy_golden import (
    INPUTS_REL,
    OUTPUTS_REL,
    decode_array,
    encode_array,
    read_polygraphy_inputs,
    samples_that_fit,
    tolerance_for,
)


def test_arrays_round_trip_through_the_npy_encoding():
    a = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    encoded = json.loads(json.dumps(encode_array(a)))
    assert encoded["polygraphy_class"] == "ndarray"
    np.testing.assert_array_equal(decode_array(encoded), a)


def test_tolerances_follow_the_precision():
    assert tolerance_for("fp32") == {"atol": 1e-3, "rtol": 1e-3}
    assert tolerance_for("fp16", [0.0042, 0.011]) == {"atol": 0.03, "rtol": 0.0}  # 2 x 0.011, rounded up
    assert tolerance_for("int8", []) == {"atol": 0.01, "rtol": 0.0}  # the floor
    assert samples_that_fit(np.zeros((64, 150, 32, 32)), 16 << 20) == 27  # 614 kB a sample


def _polygraphy() -> str:
    pytest.importorskip("polygraphy")
    exe = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which("polygraphy")
    if exe is None:
        pytest.skip("the polygraphy command is not on PATH")
    return exe


def _readme_commands(bundle: Path) -> list[str]:
    return [line for line in (bundle / "README.md").read_text().splitlines() if line.startswith("polygraphy run")]


def test_polygraphy_passes_the_fp32_onnx_with_the_bundles_golden_files(small_bundle):
    bundle = small_bundle[0]
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = {a["path"]: a["kind"] for a in manifest["artifacts"]}
    assert listed[INPUTS_REL] == listed[OUTPUTS_REL] == "golden" and listed["README.md"] == "readme"
    golden = manifest["golden"]["polygraphy"]
    feeds = read_polygraphy_inputs(bundle / INPUTS_REL)
    assert sum(len(f["input"]) for f in feeds) == golden["samples"] == manifest["golden"]["samples"]

    commands = _readme_commands(bundle)
    onnxrt = [c for c in commands if "--onnxrt" in c]
    assert len(onnxrt) == 1
    args = shlex.split(onnxrt[0])
    run = subprocess.run([_polygraphy(), *args[1:]], cwd=bundle, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"Passed: {golden['iterations']}/{golden['iterations']} iterations" in run.stdout + run.stderr


def test_readme_gives_a_tensorrt_command_per_recipe_and_major(small_bundle):
    bundle = small_bundle[0]
    builds = json.loads((bundle / "manifest.json").read_text())["device_builds"]
    text = (bundle / "README.md").read_text()
    trt = [c for c in _readme_commands(bundle) if " --trt " in c]
    for build in builds:
        lines = [c for c in trt if c.startswith(f"polygraphy run {build['onnx']} ")]
        assert lines, f"no polygraphy line for {build['onnx']}"
        for line in lines:
            assert "--trt-max-shapes 'input:[32," in line and f"--load-outputs {OUTPUTS_REL}" in line
    int8 = [c for c in trt if "int8" in c.split()[2]]
    assert any("--int8" in c for c in int8) and any("--strongly-typed" in c for c in int8)  # TensorRT 10 and 11
    assert "# TensorRT 10" in text and "# TensorRT 11" in text
    assert "# TensorRT 8" in text  # small_bundle's recipes are written for JetPack 5 (TensorRT 8.5), as its script
