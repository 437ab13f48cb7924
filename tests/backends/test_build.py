"""build_engine: precision baked into the ONNX, then each backend's build, for every backend x precision on CPU."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from backend_models import onnxruntime_reference, sample_batch, write_tiny_lkca_onnx

from lkca_deploy.backends.base import Backend
from lkca_deploy.backends.build import build_engine
from lkca_deploy.backends.registry import BACKENDS, get_backend
from lkca_runtime.backends.base import PRECISIONS, Runner, onnx_precision, sidecar_path
from lkca_runtime.backends.openvino import cpu_flags, cpu_has_bf16
from lkca_runtime.errors import UserError

pytest.importorskip("lkca_deploy.calibration.quantize", reason="the precision helper is not written yet")

TRT_MISSING = importlib.util.find_spec("tensorrt") is None
CALIB = sample_batch(32, seed=5)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    return write_tiny_lkca_onnx(tmp_path_factory.mktemp("src") / "tiny.onnx")


@pytest.fixture(scope="module")
def check():
    """Load an artifact with its backend and compare batch 1 and 4 with fp32 onnxruntime (relative L2 error)."""
    x = sample_batch(4)

    def compare(backend: str, artifact, fp32_onnx, tolerance: float) -> None:
        runner = get_backend(backend).load(artifact)
        reference = onnxruntime_reference(fp32_onnx, x)
        for batch in (1, 4):
            y = runner(x[:batch])
            assert y.dtype == np.float32 and y.shape == (batch, 10)
            error = np.linalg.norm(y - reference[:batch]) / np.linalg.norm(reference[:batch])
            assert error < tolerance, f"{backend} relative error {error:.4f}"

    return compare


# backend, precision, flavor, files beside the artifact besides it and its sidecar, relative error allowed
CPU_CASES = [
    ("onnxruntime", "fp32", None, [], 1e-6),
    ("onnxruntime", "fp16", None, [], 5e-3),
    ("onnxruntime", "int8", None, [], 0.05),
    ("onnxruntime", "int8", "tensorrt", [], 0.05),
    ("openvino", "fp32", None, ["model.bin"], 1e-6),
    ("openvino", "fp16", None, ["model.bin", "model.fp16.onnx"], 5e-3),
    ("openvino", "int8", None, ["model.bin"], 0.05),
    ("openvino", "int8", "qdq", ["model.bin", "model.int8.onnx"], 0.05),
]


@pytest.mark.parametrize(("backend", "precision", "flavor", "extra_files", "tolerance"), CPU_CASES)
def test_build_engine_on_cpu(fp32_onnx, check, tmp_path, backend, precision, flavor, extra_files, tolerance):
    suffix = get_backend(backend).artifact_suffix
    out = tmp_path / f"model{suffix}"
    calib = CALIB if precision == "int8" else None
    result = build_engine(fp32_onnx, backend, precision, out, calib=calib, flavor=flavor)
    assert result.artifact == out and result.deferred is None
    assert sorted(p.name for p in result.files) == sorted(f for f in extra_files if f.endswith(".onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, f"{out.name}.json", *extra_files])
    facts = json.loads(sidecar_path(out).read_text())
    assert facts["precision"] == precision and facts["backend"] == backend
    assert facts["provenance"]["origin_onnx"] == fp32_onnx.name
    default_flavor = get_backend(backend).int8_flavors[0]
    assert facts["provenance"]["int8_flavor"] == (flavor or default_flavor if precision == "int8" else None)
    if backend == "onnxruntime":
        assert onnx_precision(onnx.load(str(out))) == precision  # the artifact is the baked ONNX itself
    check(backend, out, fp32_onnx, tolerance)


def test_openvino_bf16_follows_the_cpu(fp32_onnx, check, tmp_path):
    import openvino as ov

    capabilities = tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if cpu_has_bf16(cpu_flags(), capabilities):
        build_engine(fp32_onnx, "openvino", "bf16", tmp_path / "model.xml")
        check("openvino", tmp_path / "model.xml", fp32_onnx, 0.02)
    else:
        with pytest.raises(UserError, match="avx512_bf16 or amx_bf16"):
            build_engine(fp32_onnx, "openvino", "bf16", tmp_path / "model.xml")


def test_int8_records_how_it_was_quantized(fp32_onnx, tmp_path):
    out = build_engine(fp32_onnx, "onnxruntime", "int8", tmp_path / "m.onnx", calib=CALIB, keep_fp=["head"]).artifact
    quantize = json.loads(sidecar_path(out).read_text())["provenance"]["quantize"]
    assert quantize["keep_fp"] == ["head"] and quantize["excluded_nodes"] == ["head"]
    assert quantize["calibration_samples"] == 32 and quantize["method"] == "minmax"
    graph = onnx.load(str(out)).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    readers_of_dq = {
        n.name for n in graph.node if any(producers.get(i) == "DequantizeLinear" for i in n.input)
    }
    assert "head" not in readers_of_dq and "fc1" in readers_of_dq


@pytest.mark.skipif(not TRT_MISSING, reason="TensorRT is installed here: the engine gets built")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_without_tensorrt_bakes_and_writes_the_device_script(fp32_onnx, tmp_path, precision):
    calib = CALIB if precision == "int8" else None
    result = build_engine(fp32_onnx, "tensorrt", precision, tmp_path / "model.engine", calib=calib, max_batch=8)
    assert result.artifact is None and "pip install lkca-deploy[tensorrt]" in result.deferred
    baked = tmp_path / f"model.{precision}.onnx"
    assert onnx_precision(onnx.load(str(baked))) == precision
    script = (tmp_path / f"model.{precision}.onnx.trtexec.sh").read_text()
    assert "--saveEngine=model.engine" in script and "--maxShapes=input:8x3x8x8" in script
    expected = {f"model.{precision}.onnx", f"model.{precision}.onnx.trtexec.sh"}
    if precision == "int8":
        expected.add("model.calib.cache")
        cache = (tmp_path / "model.calib.cache").read_text().splitlines()
        assert cache[0] == "TRT-100300-EntropyCalibration2" and len(cache) > 5
    assert {p.name for p in tmp_path.iterdir()} == expected  # no engine, no sidecar, no temp files
    assert {p.name for p in result.files} == expected


@pytest.mark.skipif(not TRT_MISSING, reason="TensorRT is installed here: the engine gets built")
def test_tensorrt_int8_for_dla_also_keeps_the_implicit_route(fp32_onnx, tmp_path):
    result = build_engine(fp32_onnx, "tensorrt", "int8", tmp_path / "model.engine", calib=CALIB, device="dla:0")
    assert result.artifact is None and "TensorRT is not installed" in result.deferred
    explicit = (tmp_path / "model.int8.onnx.trtexec.sh").read_text()
    implicit = (tmp_path / "model.fp32.onnx.trtexec.sh").read_text()
    assert "--useDLACore=0 --allowGPUFallback" in explicit and "--stronglyTyped" in explicit
    assert "DLA on TensorRT 10 takes INT8 from a calibration cache" in explicit
    assert "--int8 --fp16 --calib=model.calib.cache --useDLACore=0" in implicit
    assert "no implicit INT8 calibration" in implicit


def test_user_errors(fp32_onnx, tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(UserError, match="int8 needs --calib SOURCE"):
        build_engine(fp32_onnx, "onnxruntime", "int8", out)
    with pytest.raises(
        UserError, match="precision 'int4' is not offered by onnxruntime: choose one of fp32, fp16, int8"
    ):
        build_engine(fp32_onnx, "onnxruntime", "int4", out)
    with pytest.raises(UserError, match="'bf16' is not offered by onnxruntime"):
        build_engine(fp32_onnx, "onnxruntime", "bf16", out)
    with pytest.raises(
        UserError, match="int8 flavor 'nncf' does not suit onnxruntime: choose one of cpu, tensorrt"
    ):
        build_engine(fp32_onnx, "onnxruntime", "int8", out, calib=CALIB, flavor="nncf")
    with pytest.raises(UserError, match="applies to int8 only"):
        build_engine(fp32_onnx, "onnxruntime", "fp32", out, flavor="cpu")
    with pytest.raises(UserError, match="NNCF chooses its own"):
        build_engine(fp32_onnx, "openvino", "int8", tmp_path / "m.xml", calib=CALIB, method="entropy")
    with pytest.raises(UserError, match="unknown backend 'coreml'"):
        build_engine(fp32_onnx, "coreml", "fp32", out)
    with pytest.raises(UserError, match="not found"):
        build_engine(tmp_path / "missing.onnx", "onnxruntime", "fp32", out)
    assert not out.exists()


def test_an_already_baked_onnx_is_refused(fp32_onnx, tmp_path):
    fp16 = build_engine(fp32_onnx, "onnxruntime", "fp16", tmp_path / "fp16.onnx").artifact
    with pytest.raises(
        UserError, match="already computes in fp16: build_engine bakes precision from the fp32"
    ):
        build_engine(fp16, "openvino", "fp16", tmp_path / "model.xml")


def test_every_backend_speaks_the_one_interface(fp32_onnx, tmp_path):
    for name in BACKENDS:
        backend = get_backend(name, require_available=False)
        assert isinstance(backend, Backend) and backend.name == name
        assert set(backend.precisions) <= set(PRECISIONS) and backend.int8_flavors
    for name in ("onnxruntime", "openvino"):
        out = tmp_path / name / f"model{get_backend(name).artifact_suffix}"
        with get_backend(name).load(build_engine(fp32_onnx, name, "fp32", out).artifact, threads=1) as runner:
            assert isinstance(runner, Runner) and runner.max_batch is None
            assert list(runner.run_all(np.zeros((1, 3, 8, 8), np.float32))) == ["logits"]
