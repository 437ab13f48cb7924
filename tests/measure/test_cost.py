"""Load time and peak memory, each engine in a child process: real onnxruntime and OpenVINO engines of tiny models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
from backend_models import sample_batch, tiny_lkca_model

from lkca_deploy.backends.registry import get_backend
from lkca_deploy.measure.cost import EngineCost, measure_cost
from lkca_runtime.errors import UserError

WIDE = 40_000  # columns of the wide model's weight: 192 x 40,000 float32 = 29.3 MiB
WEIGHT_MB = 192 * WIDE * 4 / 2**20


def _wide_model() -> onnx.ModelProto:
    """(N, 3, 8, 8) -> flatten -> MatMul with a 29 MiB weight -> mean: an engine whose memory is mostly weights."""
    weight = np.random.default_rng(0).standard_normal((192, WIDE)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["wide"]),
        helper.make_node("ReduceMean", ["wide"], ["logits"], axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _build(backend: str, model: onnx.ModelProto, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / f"{name}.src.onnx"))
    suffix = get_backend(backend).artifact_suffix
    return get_backend(backend).build(folder / f"{name}.src.onnx", folder / f"{name}{suffix}", precision="fp32")


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cost")
    return {
        "ort_wide": _build("onnxruntime", _wide_model(), root / "ort", "wide"),
        "ort_tiny": _build("onnxruntime", tiny_lkca_model(), root / "ort", "tiny"),
        "ov_static": _build("openvino", tiny_lkca_model(batch=2), root / "ov", "static"),
    }


def test_peak_memory_is_each_engines_own(engines):
    # The tiny engine, the wide one, the tiny one again: a figure carried over from one engine to the next would
    # give the second tiny figure the wide engine's 29 MiB of weights.
    def cost(name):
        return measure_cost("onnxruntime", engines[name], sample=sample_batch(4), batches=(1, 4), runs=2)[0]

    tiny_before, wide, tiny = cost("ort_tiny"), cost("ort_wide"), cost("ort_tiny")
    assert wide.peak_method == tiny.peak_method == "clear_refs"  # Linux resets the high-water mark
    assert wide.peak_mb >= tiny_before.peak_mb + WEIGHT_MB, (wide, tiny_before)  # the weights are resident
    # The tiny engine's own figure (arena, kernels) differs between machines; what may not happen is that it keeps
    # the wide engine's weights, so it is compared with the wide figure, not with a fixed size.
    assert tiny.peak_mb < wide.peak_mb - WEIGHT_MB / 2, (wide, tiny)
    assert abs(tiny.peak_mb - tiny_before.peak_mb) < 4.0, (tiny_before, tiny)
    # The whole process holds python, numpy and onnxruntime besides the engine.
    assert tiny.process_peak_mb > tiny.peak_mb + tiny.library_mb
    assert tiny.library_mb > 1.0  # importing onnxruntime is not free
    assert 0 < wide.load_ms <= wide.first_result_ms
    assert wide.batches == (1, 4) and wide.runs == 2


def test_a_static_batch_engine_runs_its_own_batch_and_random_inputs_stand_in(engines):
    cost, e2e = measure_cost("openvino", engines["ov_static"], batches=(1, 32), runs=1)
    assert cost.batches == (2,) and e2e is None
    assert 0 < cost.load_ms <= cost.first_result_ms
    assert cost.peak_mb > 0
    assert EngineCost.from_dict(cost.to_dict()) == cost


def test_a_user_error_in_the_child_is_one_line_here(engines, tmp_path):
    with pytest.raises(UserError, match="built for backend 'onnxruntime', not 'openvino'"):
        measure_cost("openvino", engines["ort_tiny"])
    with pytest.raises(UserError, match="does not exist"):
        measure_cost("onnxruntime", tmp_path / "missing.onnx")


def test_bad_arguments_are_refused_before_any_child_starts(engines):
    with pytest.raises(ValueError):
        measure_cost("onnxruntime", engines["ort_tiny"], runs=0)
    with pytest.raises(ValueError):
        measure_cost("onnxruntime", engines["ort_tiny"], batches=())
