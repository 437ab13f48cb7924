"""ONNX Runtime backend: real sessions on a tiny LKCA-shaped ONNX, fp32 / fp16 / int8 (both Q/DQ flavours)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from backend_models import onnxruntime_reference, sample_batch, tiny_lkca_model, write_tiny_lkca_onnx

from lkca_deploy.backends.onnxruntime import OnnxRuntimeBackend
from lkca_runtime.backends.base import read_sidecar, sidecar_path
from lkca_runtime.backends.onnxruntime import providers_for
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_output, sha256_file

BACKEND = OnnxRuntimeBackend()


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    return write_tiny_lkca_onnx(tmp_path_factory.mktemp("src") / "tiny.onnx")


@pytest.fixture(scope="module")
def baked(fp32_onnx, tmp_path_factory):
    """The fp16 and int8 ONNX files the precision helper bakes, by name."""
    quantize = pytest.importorskip(
        "lkca_deploy.calibration.quantize", reason="precision helper not there yet"
    )
    folder = tmp_path_factory.mktemp("baked")
    model = onnx.load(str(fp32_onnx))
    calib = sample_batch(32, seed=5)
    files = {"fp32": fp32_onnx}
    onnx.save(quantize.to_fp16(model), str(folder / "fp16.onnx"))
    files["fp16"] = folder / "fp16.onnx"
    for flavor in ("cpu", "tensorrt"):
        onnx.save(
            quantize.quantize_int8(model, calib, flavor=flavor).model, str(folder / f"int8_{flavor}.onnx")
        )
        files[f"int8_{flavor}"] = folder / f"int8_{flavor}.onnx"
    return files


# (file, precision, max |error| on logits of magnitude ~2 against fp32 onnxruntime)
CASES = [
    ("fp32", "fp32", 1e-5),
    ("fp16", "fp16", 5e-3),
    ("int8_cpu", "int8", 0.1),
    ("int8_tensorrt", "int8", 0.1),
]


@pytest.mark.parametrize(("file", "precision", "tolerance"), CASES)
def test_build_load_run_matches_reference_at_batch_1_and_4(
    fp32_onnx, baked, tmp_path, file, precision, tolerance
):
    artifact = BACKEND.build(baked[file], tmp_path / "model.onnx", precision=precision)
    runner = BACKEND.load(artifact, threads=1)
    for batch in (1, 4):
        x = sample_batch(batch)
        y = runner(x)
        assert y.dtype == np.float32 and y.shape == (batch, 10)
        np.testing.assert_allclose(y, onnxruntime_reference(fp32_onnx, x), atol=tolerance)
    assert runner.input_shape == (None, 3, 8, 8) and runner.input_name == "input"
    assert runner.info["precision"] == precision


def test_int8_artifact_really_holds_qdq(baked, tmp_path):
    artifact = BACKEND.build(baked["int8_cpu"], tmp_path / "model.onnx", precision="int8")
    ops = {node.op_type for node in onnx.load(str(artifact)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_sidecar_records_what_was_built(fp32_onnx, baked, tmp_path):
    artifact = BACKEND.build(baked["fp16"], tmp_path / "model.onnx", precision="fp16", provenance={"k": "v"})
    facts = json.loads(sidecar_path(artifact).read_text())
    assert facts["backend"] == "onnxruntime" and facts["precision"] == "fp16"
    assert facts["artifact_sha256"] == sha256_file(artifact)
    assert facts["source_onnx_sha256"] == sha256_file(baked["fp16"])
    assert facts["library_version"] == __import__("onnxruntime").__version__
    assert facts["device"] == "cpu" and facts["options"] == {"optimization": "all"}
    assert facts["provenance"] == {"k": "v"}
    assert facts["input"] == {"name": "input", "shape": [None, 3, 8, 8], "dtype": "float32"}


def test_threads_spinning_and_optimization_reach_the_session(baked, tmp_path):
    artifact = BACKEND.build(baked["fp32"], tmp_path / "model.onnx", precision="fp32")
    runner = BACKEND.load(artifact, threads=1, allow_spinning=False, optimization="basic")
    options = runner.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    assert runner.info["threads"] == 1 and runner.info["allow_spinning"] is False
    default = BACKEND.load(artifact).session.get_session_options()
    assert str(default.graph_optimization_level).endswith("ORT_ENABLE_ALL")


def test_build_leaves_no_temp_files(baked, tmp_path):
    BACKEND.build(baked["int8_cpu"], tmp_path / "model.onnx", precision="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]


def test_atomic_output_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_refuses_an_onnx_whose_content_is_not_the_precision(baked, tmp_path):
    with pytest.raises(UserError, match="computes in fp32, not int8"):
        BACKEND.build(baked["fp32"], tmp_path / "model.onnx", precision="int8")
    with pytest.raises(UserError, match="bf16"):
        BACKEND.build(baked["fp32"], tmp_path / "model.onnx", precision="bf16")


def test_refuses_a_file_that_is_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model at all")
    with pytest.raises(UserError, match="not a readable ONNX"):
        BACKEND.build(bad, tmp_path / "model.onnx", precision="fp32")


def test_unknown_options_are_named(baked, tmp_path):
    with pytest.raises(UserError, match="unknown option.*threads_per_core.*optimization"):
        BACKEND.build(baked["fp32"], tmp_path / "m.onnx", precision="fp32", threads_per_core=2)


def test_load_refuses_missing_tampered_or_foreign_artifacts(baked, tmp_path):
    artifact = BACKEND.build(baked["fp32"], tmp_path / "model.onnx", precision="fp32")
    with pytest.raises(UserError, match="built for backend 'onnxruntime', not 'openvino'"):
        read_sidecar(artifact, "openvino")
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    with pytest.raises(UserError, match="does not match its sidecar"):
        BACKEND.load(artifact)
    sidecar_path(artifact).unlink()
    with pytest.raises(UserError, match="has no sidecar"):
        BACKEND.load(artifact)
    with pytest.raises(UserError, match="does not exist"):
        BACKEND.load(tmp_path / "missing.onnx")


def test_runner_refuses_a_wrong_input_shape(baked, tmp_path):
    runner = BACKEND.load(BACKEND.build(baked["fp32"], tmp_path / "model.onnx", precision="fp32"))
    with pytest.raises(UserError, match=r"takes \(N, 3, 8, 8\)"):
        runner(np.zeros((1, 3, 16, 16), np.float32))


def test_static_batch_model_reports_its_shape(tmp_path):
    path = tmp_path / "static.onnx"
    onnx.save(tiny_lkca_model(batch=2), str(path))
    runner = BACKEND.load(BACKEND.build(path, tmp_path / "model.onnx", precision="fp32"))
    assert runner.input_shape == (2, 3, 8, 8)


def test_providers_for_devices():
    assert providers_for("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers_for(
        "tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    ) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(UserError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        providers_for("cuda", ["CPUExecutionProvider"])
    with pytest.raises(UserError, match="choose one of cpu, cuda, tensorrt"):
        providers_for("npu", ["CPUExecutionProvider"])
