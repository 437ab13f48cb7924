"""OpenVINO backend: real conversion, compilation and NNCF on a tiny LKCA-shaped ONNX."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from backend_models import onnxruntime_reference, sample_batch, write_tiny_lkca_onnx

from lkca_deploy.backends.openvino import OpenVinoBackend
from lkca_runtime.backends.base import sidecar_path
from lkca_runtime.backends.openvino import (
    check_device,
    cpu_flags,
    cpu_has_bf16,
    inference_precision_hint,
    require_bf16,
)
from lkca_runtime.errors import UserError

ov = pytest.importorskip("openvino")
BACKEND = OpenVinoBackend()
CPU_HAS_BF16 = cpu_has_bf16(cpu_flags(), tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")))


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    return write_tiny_lkca_onnx(tmp_path_factory.mktemp("src") / "tiny.onnx")


@pytest.fixture(scope="module")
def x():
    return sample_batch(8)


@pytest.fixture(scope="module")
def reference(fp32_onnx, x):
    return onnxruntime_reference(fp32_onnx, x)


def relative_error(y: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(y - reference) / np.linalg.norm(reference))


def effective_precision(runner) -> str:
    return runner.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def test_fp32_compiles_with_the_f32_hint_and_matches(fp32_onnx, x, reference, tmp_path):
    artifact = BACKEND.build(fp32_onnx, tmp_path / "model.xml", precision="fp32")
    facts = json.loads(sidecar_path(artifact).read_text())
    assert facts["options"]["inference_precision_hint"] == "f32"
    assert facts["options"]["compress_to_fp16"] is False
    runner = BACKEND.load(artifact, threads=1)
    # Without the hint this CPU plugin would compute in bf16 where the CPU has it (read back as 'bf16').
    assert effective_precision(runner) == "f32"
    assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    np.testing.assert_allclose(runner(x), reference, atol=1e-5)
    np.testing.assert_allclose(runner(x[:1]), reference[:1], atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml", "model.xml.json"]


def test_fp16_onnx_converts_as_is_and_stays_close(fp32_onnx, x, reference, tmp_path):
    from lkca_deploy.calibration.quantize import to_fp16

    fp16_onnx = tmp_path / "fp16.onnx"
    onnx.save(to_fp16(onnx.load(str(fp32_onnx))), str(fp16_onnx))
    artifact = BACKEND.build(fp16_onnx, tmp_path / "model.xml", precision="fp16")
    facts = json.loads(sidecar_path(artifact).read_text())
    assert facts["options"]["compress_to_fp16"] is True
    capabilities = tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    runner = BACKEND.load(artifact)
    assert effective_precision(runner) == inference_precision_hint("fp16", capabilities)
    assert relative_error(runner(x), reference) < 5e-3


def test_int8_with_nncf_quantizes_and_stays_close(fp32_onnx, x, reference, tmp_path):
    artifact = BACKEND.build(
        fp32_onnx, tmp_path / "model.xml", precision="int8", calib=sample_batch(32, seed=5)
    )
    facts = json.loads(sidecar_path(artifact).read_text())
    assert facts["options"]["quantizer"] == "nncf"
    assert facts["options"]["nncf"] == {
        "preset": "mixed",
        "smooth_quant": False,
        "subset_size": 32,
        "model_type": "transformer",
    }
    quantizers = [
        op for op in ov.Core().read_model(str(artifact)).get_ops() if op.get_type_name() == "FakeQuantize"
    ]
    assert quantizers, "NNCF inserted no quantizer"
    runner = BACKEND.load(artifact)
    assert effective_precision(runner) == "f32"  # float parts stay f32, like the Q/DQ reference
    y = runner(x)
    assert relative_error(y, reference) < 0.05
    assert (y.argmax(1) == reference.argmax(1)).mean() >= 0.75


def test_int8_from_the_cpu_flavour_qdq_onnx(fp32_onnx, x, reference, tmp_path):
    from lkca_deploy.calibration.quantize import quantize_int8

    qdq = tmp_path / "int8.onnx"
    onnx.save(
        quantize_int8(onnx.load(str(fp32_onnx)), sample_batch(32, seed=5), flavor="cpu").model, str(qdq)
    )
    artifact = BACKEND.build(qdq, tmp_path / "model.xml", precision="int8")
    assert json.loads(sidecar_path(artifact).read_text())["options"]["quantizer"] == "qdq"
    assert relative_error(BACKEND.load(artifact)(x), reference) < 0.05


def test_int8_via_nncf_needs_calibration(fp32_onnx, tmp_path):
    with pytest.raises(UserError, match="int8 needs --calib"):
        BACKEND.build(fp32_onnx, tmp_path / "model.xml", precision="int8")


@pytest.mark.skipif(not CPU_HAS_BF16, reason="this CPU has neither avx512_bf16 nor amx_bf16")
def test_bf16_builds_where_the_cpu_has_it(fp32_onnx, x, reference, tmp_path):
    artifact = BACKEND.build(fp32_onnx, tmp_path / "model.xml", precision="bf16")
    runner = BACKEND.load(artifact)
    assert effective_precision(runner) == "bf16"
    assert relative_error(runner(x), reference) < 0.02  # bf16 keeps 8 mantissa bits


@pytest.mark.skipif(CPU_HAS_BF16, reason="this CPU has bf16; the refusal is checked with given flags below")
def test_bf16_is_refused_where_the_cpu_lacks_it(fp32_onnx, tmp_path):
    with pytest.raises(UserError, match="avx512_bf16 or amx_bf16"):
        BACKEND.build(fp32_onnx, tmp_path / "model.xml", precision="bf16")


def test_bf16_rules_given_cpu_flags():
    avx2_only = cpu_flags("processor : 0\nflags : fpu sse avx avx2 fma\n")
    assert avx2_only == frozenset({"avx2", "fma"})  # the ISA flags of interest (lkca_runtime.machine.ISA_FLAGS)
    with pytest.raises(UserError, match="bf16 needs a CPU with avx512_bf16 or amx_bf16.*use fp32 or int8"):
        require_bf16("CPU", avx2_only)
    require_bf16("CPU", frozenset({"avx2", "avx512_bf16"}))
    require_bf16("CPU", frozenset({"amx_bf16", "amx_tile"}))
    with pytest.raises(UserError, match="CPU device only"):
        require_bf16("GPU.0", frozenset({"avx512_bf16"}))
    assert cpu_has_bf16(None, ("FP32", "BF16")) and not cpu_has_bf16(None, ("FP32",))


def test_precision_hints():
    assert inference_precision_hint("fp32", ("FP32", "BF16")) == "f32"
    assert inference_precision_hint("int8", ("FP32", "BF16", "INT8")) == "f32"
    assert inference_precision_hint("bf16", ("FP32", "BF16")) == "bf16"
    assert inference_precision_hint("fp16", ("FP32", "FP16")) == "f16"
    # The CPU plugin turns an f16 request into bf16 where it lacks FP16 math: ask for f32 there.
    assert inference_precision_hint("fp16", ("FP32", "BF16")) == "f32"


def test_devices_are_checked():
    assert check_device("cpu", ["CPU", "GPU.0"]) == "CPU"
    assert check_device("gpu", ["CPU", "GPU.0"]) == "GPU"
    with pytest.raises(UserError, match="'npu' is not available here: choose one of CPU"):
        check_device("npu", ["CPU"])


def test_load_refuses_a_changed_weights_file(fp32_onnx, tmp_path):
    artifact = BACKEND.build(fp32_onnx, tmp_path / "model.xml", precision="fp32")
    weights = tmp_path / "model.bin"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(UserError, match="model.bin is missing or does not match"):
        BACKEND.load(artifact)


def test_options_are_checked(fp32_onnx, tmp_path):
    with pytest.raises(UserError, match="unknown performance_hint 'FAST'"):
        BACKEND.build(fp32_onnx, tmp_path / "model.xml", precision="fp32", performance_hint="fast")
    with pytest.raises(UserError, match=r"\.xml file"):
        BACKEND.build(fp32_onnx, tmp_path / "model.ir", precision="fp32")
    with pytest.raises(UserError, match="computes in fp32, not fp16"):
        BACKEND.build(fp32_onnx, tmp_path / "model.xml", precision="fp16")


def test_throughput_hint_is_kept_and_can_be_overridden(fp32_onnx, tmp_path):
    artifact = BACKEND.build(
        fp32_onnx, tmp_path / "model.xml", precision="fp32", performance_hint="throughput"
    )
    assert str(BACKEND.load(artifact).compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    runner = BACKEND.load(artifact, performance_hint="LATENCY")
    assert str(runner.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"


def test_qdq_engine_computes_what_onnxruntime_computes_on_a_trained_lkca(nano_checkpoint, tmp_path):
    """The cpu-flavour Q/DQ ONNX of a trained model (Toeplitz MatMul mixer) gives the same predictions in the
    OpenVINO IR as in ONNX Runtime. Regression: ov.convert_model's offline passes moved this graph's results
    (digits top-1 98.1% -> 82.5%); reading the ONNX with Core.read_model keeps them."""
    import onnxruntime as ort

    from lkca_deploy.calibration.quantize import quantize_int8
    from lkca_deploy.data import load_arrays
    from lkca_deploy.export import export_model
    from lkca_runtime.spec import PreprocessSpec

    fp32 = export_model(nano_checkpoint, tmp_path / "fp32.onnx", lowering="matmul").path
    spec = PreprocessSpec.from_dict(json.loads((nano_checkpoint / "config.json").read_text())["preprocessing"])
    calib, _ = load_arrays("digits", "train", spec, limit=512)
    x, _ = load_arrays("digits", "test", spec, limit=200)
    qdq = tmp_path / "int8.onnx"
    onnx.save(quantize_int8(onnx.load(str(fp32)), calib, flavor="cpu").model, str(qdq))
    expected = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    y = BACKEND.load(BACKEND.build(qdq, tmp_path / "model.xml", precision="int8"))(x)
    assert (y.argmax(1) == expected.argmax(1)).mean() >= 0.97
    assert relative_error(y, expected) < 0.1
