"""TensorRT backend: everything around TensorRT is tested here on CPU; building and running need TensorRT + a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from functools import partial

import numpy as np
import onnx
import pytest
from backend_models import onnxruntime_reference, sample_batch, tiny_lkca_model, write_tiny_lkca_onnx

from lkca_deploy.backends.registry import BACKENDS, available_backends, get_backend
from lkca_deploy.backends.tensorrt import TensorRTBackend
from lkca_runtime.backends.tensorrt import current_gpu_facts
from lkca_runtime.backends.trtexec import (
    DLA_RELEASES,
    BatchProfile,
    TensorRTSettings,
    batch_profile,
    check_engine_compatible,
    dla_supported,
    engine_mismatches,
    parse_device,
    parse_version,
    precision_plan,
    profile_shapes,
    strongly_typed_only,
    trtexec_command,
    write_trtexec_script,
)
from lkca_runtime.errors import UserError

TRT_MISSING = importlib.util.find_spec("tensorrt") is None
TRT_REASON = "TensorRT is not installed in this workplace (vendor index unreachable)"


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """fp32 (dynamic batch), fp32 static batch 4, fp16 and tensorrt-flavour int8 ONNX files."""
    folder = tmp_path_factory.mktemp("onnx")
    files = {"fp32": write_tiny_lkca_onnx(folder / "model.fp32.onnx")}
    onnx.save(tiny_lkca_model(batch=4), str(folder / "static.onnx"))
    files["static"] = folder / "static.onnx"
    quantize = pytest.importorskip(
        "lkca_deploy.calibration.quantize", reason="precision helper not there yet"
    )
    model = onnx.load(str(files["fp32"]))
    onnx.save(quantize.to_fp16(model), str(folder / "model.fp16.onnx"))
    files["fp16"] = folder / "model.fp16.onnx"
    result = quantize.quantize_int8(model, sample_batch(16, seed=5), flavor="tensorrt")
    onnx.save(result.model, str(folder / "model.int8.onnx"))
    files["int8"] = folder / "model.int8.onnx"
    files["cache"] = quantize.write_trt_calibration_cache(result.ranges, folder / "model.calib.cache")
    return files


def flags(command: str) -> set[str]:
    return {part.split("=")[0] for part in command.split()[1:]}


# ---------------------------------------------------------------- versions and plans


def test_version_dispatch():
    assert parse_version("10.3.0.30") == (10, 3, 0, 30) and parse_version("11.0.0rc1") == (11, 0)
    assert (
        not strongly_typed_only("10.16.1") and strongly_typed_only("11.0") and strongly_typed_only("12.1.0")
    )
    assert dla_supported("10.3.0") and dla_supported("10.7.0")
    assert not dla_supported("11.0.0") and not dla_supported("11.3.1") and not dla_supported("11.4.0")
    assert dla_supported("11.4.1")
    with pytest.raises(ValueError):
        parse_version("unknown")


def test_precision_plans_for_10_and_11():
    plan = precision_plan("fp16", "10.3.0", onnx_precision="fp16")
    assert plan.flags == ("FP16",) and not plan.strongly_typed
    assert precision_plan("int8", "10.3.0", onnx_precision="int8").flags == ("INT8",)
    implicit = precision_plan("int8", "10.3.0", onnx_precision="fp32", calib_cache=True, dla=True)
    assert implicit.flags == ("INT8", "FP16") and implicit.quantization == "implicit"
    for precision, found in [("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8")]:
        plan = precision_plan(precision, "11.1.0", onnx_precision=found)
        assert plan.strongly_typed and plan.flags == ()
    with pytest.raises(UserError, match="no implicit INT8 calibration: give it the Q/DQ ONNX"):
        precision_plan("int8", "11.1.0", onnx_precision="fp32", calib_cache=True)
    with pytest.raises(UserError, match="needs a TensorRT calibration cache"):
        precision_plan("int8", "10.3.0", onnx_precision="fp32")
    with pytest.raises(UserError, match="DLA on TensorRT 10 takes INT8 from a calibration cache"):
        precision_plan("int8", "10.3.0", onnx_precision="int8", dla=True)
    with pytest.raises(UserError, match="DLA runs fp16 or int8 only"):
        precision_plan("fp32", "10.3.0", onnx_precision="fp32", dla=True)
    for no_dla in ("10.8.0", "11.2.0", "11.4.0"):  # the refusal names the releases that have a DLA
        with pytest.raises(UserError, match=r"cannot place layers on a Jetson.s DLA: .* 10\.3\.0 .* 11\.4\.1"):
            precision_plan("fp16", no_dla, onnx_precision="fp16", dla=True)


def test_devices():
    assert (
        parse_device(None) == (0, None)
        and parse_device("cuda:1") == (1, None)
        and parse_device("gpu") == (0, None)
    )
    assert parse_device("dla:1") == (0, 1)
    for bad in ("dla", "cpu", "cuda:x"):
        with pytest.raises(UserError, match="use cuda, cuda:N or dla:N"):
            parse_device(bad)


# ---------------------------------------------------------------- profile shapes


def test_settings_travel_as_a_dict_and_refuse_unknown_options():
    settings = TensorRTSettings.from_options("int8", "dla:0", max_batch=8, timing_cache="t.cache")
    assert settings.dla_core == 0 and settings.profile() == BatchProfile(1, 1, 1)  # DLA: static at opt
    assert TensorRTSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(UserError, match="unknown option"):
        TensorRTSettings.from_options("fp16", None, tf32=True)
    with pytest.raises(UserError, match="1 <= min <= opt <= max"):
        TensorRTSettings("fp16", opt_batch=4, max_batch=2)


def test_profile_shapes():
    shapes = profile_shapes((None, 3, 32, 32), BatchProfile(1, 4, 16))
    assert shapes == {"min": (1, 3, 32, 32), "opt": (4, 3, 32, 32), "max": (16, 3, 32, 32)}
    assert profile_shapes((4, 3, 32, 32), BatchProfile()) is None
    assert batch_profile(1, 4, 16, dla=True) == BatchProfile(4, 4, 4)  # DLA: static shapes only
    with pytest.raises(UserError, match="fixed image size"):
        profile_shapes((None, 3, None, None), BatchProfile())
    with pytest.raises(UserError, match="1 <= min <= opt <= max"):
        BatchProfile(4, 2, 8)


# ---------------------------------------------------------------- trtexec line and script


def test_trtexec_fp16_on_10_and_11(onnx_files, tmp_path):
    engine = tmp_path / "model.engine"
    on_10 = trtexec_command(onnx_files["fp16"], TensorRTSettings("fp16"), engine_path=engine, tensorrt_version="10.3")
    assert on_10.startswith(f"trtexec --onnx={onnx_files['fp16']} --saveEngine={engine}")
    assert "--fp16" in flags(on_10) and "--stronglyTyped" not in flags(on_10)
    assert "--minShapes=input:1x3x8x8 --optShapes=input:1x3x8x8 --maxShapes=input:32x3x8x8" in on_10
    on_11 = trtexec_command(onnx_files["fp16"], TensorRTSettings("fp16"), engine_path=engine, tensorrt_version="11.2")
    assert "--stronglyTyped" in flags(on_11) and not {"--fp16", "--int8", "--calib"} & flags(on_11)


def test_trtexec_int8_explicit_implicit_and_dla(onnx_files, tmp_path):
    engine = tmp_path / "model.engine"
    explicit = trtexec_command(onnx_files["int8"], TensorRTSettings("int8"), engine_path=engine, tensorrt_version="10.3")
    assert "--int8" in flags(explicit) and not {"--fp16", "--calib"} & flags(explicit)
    settings = TensorRTSettings(
        "int8", calib_cache=str(onnx_files["cache"]), dla_core=0, min_batch=1, opt_batch=2, max_batch=8
    )
    implicit = trtexec_command(onnx_files["fp32"], settings, engine_path=engine, tensorrt_version="10.3")
    assert {"--int8", "--fp16", "--useDLACore", "--allowGPUFallback"} <= flags(implicit)
    assert f"--calib={onnx_files['cache']}" in implicit and "--useDLACore=0" in implicit
    assert "--minShapes=input:2x3x8x8 --optShapes=input:2x3x8x8 --maxShapes=input:2x3x8x8" in implicit
    on_11 = trtexec_command(
        onnx_files["int8"], TensorRTSettings("int8", dla_core=0), engine_path=engine, tensorrt_version="11.4.1"
    )
    assert {"--stronglyTyped", "--useDLACore", "--allowGPUFallback"} <= flags(on_11)
    assert not {"--int8", "--calib"} & flags(on_11)


def test_trtexec_extras_and_static_batch(onnx_files, tmp_path):
    settings = TensorRTSettings("fp32", timing_cache=str(tmp_path / "t.cache"), workspace_mib=1024)
    command = trtexec_command(onnx_files["static"], settings, engine_path=tmp_path / "e.engine", tensorrt_version="10")
    assert (
        f"--timingCacheFile={tmp_path / 't.cache'}" in command and "--memPoolSize=workspace:1024" in command
    )
    assert not {"--minShapes", "--optShapes", "--maxShapes", "--fp16", "--int8"} & flags(command)


def test_trtexec_keeps_fp32_fp32_unless_tf32_is_allowed(onnx_files, tmp_path):
    # trtexec computes fp32 matmuls and convs in TF32 unless told not to; the Python build clears that flag too.
    line = partial(trtexec_command, onnx_files["fp32"], engine_path=tmp_path / "e.engine")
    fp32 = TensorRTSettings("fp32")
    assert "--noTF32" in flags(line(fp32)) and "--noTF32" in flags(line(fp32, tensorrt_version="11.2"))
    assert "--noTF32" not in flags(line(TensorRTSettings("fp32", allow_tf32=True)))


def test_trtexec_script_runs_the_line_for_the_tensorrt_it_finds(onnx_files, tmp_path):
    script = write_trtexec_script(
        onnx_files["int8"], TensorRTSettings("int8"), engine_path=onnx_files["int8"].with_name("m.engine")
    )
    assert script.name == "model.int8.onnx.trtexec.sh" and os.access(script, os.X_OK)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "trtexec").write_text('#!/bin/sh\necho "trtexec $*"\n')
    (fake_bin / "trtexec").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    for major, expected, absent in (("10", "--int8", "--stronglyTyped"), ("11", "--stronglyTyped", "--int8")):
        done = subprocess.run(
            ["sh", str(script)], env={**env, "TRT_MAJOR": major}, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout and absent not in done.stdout
        assert "--onnx=model.int8.onnx --saveEngine=m.engine" in done.stdout  # relative: the folder can move


def test_trtexec_script_explains_a_line_that_cannot_exist(onnx_files, tmp_path):
    script = write_trtexec_script(
        onnx_files["fp32"], TensorRTSettings("int8", calib_cache=str(onnx_files["cache"]), dla_core=0)
    )
    done = subprocess.run(
        ["sh", str(script)],
        env={**os.environ, "TRT_MAJOR": "11"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "no implicit INT8 calibration" in done.stderr
    assert f"# DLA core 0: needs {DLA_RELEASES}." in script.read_text()
    gpu_only = write_trtexec_script(onnx_files["int8"], TensorRTSettings("int8"))
    assert "DLA" not in gpu_only.read_text()


# ---------------------------------------------------------------- engine compatibility


ORIN = {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt_version": "10.3.0"}


def test_mismatches_name_what_differs():
    assert engine_mismatches(ORIN, dict(ORIN)) == []
    h100 = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt_version": "10.3.0"}
    assert engine_mismatches(ORIN, h100) == [
        "GPU Orin (built) vs NVIDIA H100 80GB HBM3 (here)",
        "compute capability 8.7 (built) vs 9.0 (here)",
    ]


def test_an_engine_from_another_gpu_is_refused_with_the_rebuild_line(onnx_files, tmp_path):
    onnx_path = tmp_path / "model.int8.onnx"
    shutil.copy(onnx_files["int8"], onnx_path)
    engine = tmp_path / "model.engine"
    facts = {
        "precision": "int8",
        "source_onnx": "model.int8.onnx",
        "target": ORIN,
        "settings": TensorRTSettings("int8", opt_batch=4, max_batch=16).to_dict(),
    }
    here = {"gpu_name": "NVIDIA H100", "compute_capability": "9.0", "tensorrt_version": "10.9.0"}
    with pytest.raises(UserError) as refused:
        check_engine_compatible(facts, here, engine)
    message = str(refused.value)
    assert "GPU Orin (built) vs NVIDIA H100 (here)" in message
    assert "TensorRT 10.3.0 (built) vs 10.9.0 (here)" in message
    assert (
        "build on this device" in message and "--int8" in message and "--maxShapes=input:16x3x8x8" in message
    )
    write_trtexec_script(onnx_path, TensorRTSettings("int8"), engine_path=engine)
    with pytest.raises(UserError, match=r"sh .*model\.int8\.onnx\.trtexec\.sh"):
        check_engine_compatible(facts, here, engine)


def test_only_tensorrt_version_differs(tmp_path):
    facts = {"precision": "fp16", "source_onnx": "gone.onnx", "target": ORIN, "options": {}}
    with pytest.raises(
        UserError, match=r"TensorRT 10\.3\.0 \(built\) vs 11\.4\.1 \(here\).*lkca-deploy build"
    ):
        check_engine_compatible(facts, {**ORIN, "tensorrt_version": "11.4.1"}, tmp_path / "model.engine")
    check_engine_compatible(facts, dict(ORIN), tmp_path / "model.engine")  # same device: no complaint


# ---------------------------------------------------------------- availability and registry


@pytest.mark.skipif(not TRT_MISSING, reason="TensorRT is installed here")
def test_unavailable_tensorrt_says_how_to_install(onnx_files, tmp_path):
    ok, reason = TensorRTBackend().available()
    assert not ok and "pip install lkca-deploy[tensorrt]" in reason and "JetPack" in reason
    assert available_backends()["tensorrt"] == (False, reason)
    with pytest.raises(UserError, match=r"pip install lkca-deploy\[tensorrt\]"):
        get_backend("tensorrt")
    with pytest.raises(UserError, match="TensorRT is not installed"):
        TensorRTBackend().build(onnx_files["fp32"], tmp_path / "m.engine", precision="fp32")


def test_registry():
    assert BACKENDS == ("onnxruntime", "openvino", "tensorrt")
    assert set(available_backends()) == set(BACKENDS)
    assert available_backends()["onnxruntime"][0]
    assert get_backend("openvino").name == "openvino"
    with pytest.raises(
        UserError, match="unknown backend 'tflite': choose one of onnxruntime, openvino, tensorrt"
    ):
        get_backend("tflite")


def test_gpu_facts_without_a_gpu_is_a_clear_error():
    if importlib.util.find_spec("cuda") is None and importlib.util.find_spec("torch") is None:
        pytest.skip("neither cuda-python nor torch here")
    try:
        facts = current_gpu_facts()
    except UserError as why:
        assert "NVIDIA GPU" in str(why)
    else:
        assert facts["gpu_name"] and facts["compute_capability"]  # a machine with a GPU


# ---------------------------------------------------------------- on a machine with TensorRT and a GPU


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_load_run_on_the_gpu(onnx_files, tmp_path, precision):
    pytest.importorskip("tensorrt", reason=TRT_REASON)
    backend = TensorRTBackend()
    engine = backend.build(
        onnx_files[precision],
        tmp_path / "model.engine",
        precision=precision,
        timing_cache=tmp_path / "t.cache",
        max_batch=8,
    )
    facts = json.loads(engine.with_name("model.engine.json").read_text())
    assert facts["target"] == current_gpu_facts() and (tmp_path / "t.cache").is_file()
    runner = backend.load(engine)
    x = sample_batch(4)
    tolerance = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}[precision]
    np.testing.assert_allclose(runner(x), onnxruntime_reference(onnx_files["fp32"], x), atol=tolerance)
    with pytest.raises(UserError, match="exceeds this engine's largest batch 8"):
        runner(sample_batch(9))
