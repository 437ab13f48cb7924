"""A tiny LKCA-shaped classifier ONNX for the backend tests, built with onnx.helper (no torch, fast).

Stem conv -> large-kernel depthwise conv over the 8x8 token grid (K15, the LKCA mixer) + residual -> tokens ->
LayerNormalization -> MLP -> mean over tokens -> linear head. Input "input" (batch dynamic), output "logits".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GRID, CHANNELS, DIM, HIDDEN, CLASSES, KERNEL = 8, 3, 16, 32, 10, 15


def tiny_lkca_model(batch: int | str = "batch", seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    initializers = [
        weight("stem_w", DIM, CHANNELS, 1, 1),
        weight("stem_b", DIM),
        weight("mixer_w", DIM, 1, KERNEL, KERNEL, scale=0.05),
        weight("mixer_b", DIM),
        numpy_helper.from_array(np.array([0, DIM, GRID * GRID], np.int64), "tokens_shape"),
        numpy_helper.from_array(np.ones(DIM, np.float32), "ln_scale"),
        numpy_helper.from_array(np.zeros(DIM, np.float32), "ln_bias"),
        weight("fc1_w", DIM, HIDDEN),
        weight("fc1_b", HIDDEN),
        weight("head_w", HIDDEN, CLASSES),
        weight("head_b", CLASSES),
    ]
    pad = KERNEL // 2
    nodes = [
        helper.make_node("Conv", ["input", "stem_w", "stem_b"], ["stem"], name="stem"),
        helper.make_node(
            "Conv",
            ["stem", "mixer_w", "mixer_b"],
            ["mixed"],
            name="lkca_mixer",
            group=DIM,
            kernel_shape=[KERNEL, KERNEL],
            pads=[pad] * 4,
        ),
        helper.make_node("Add", ["stem", "mixed"], ["residual"], name="residual"),
        helper.make_node("Reshape", ["residual", "tokens_shape"], ["grid_tokens"], name="to_tokens"),
        helper.make_node("Transpose", ["grid_tokens"], ["tokens"], name="tokens_last", perm=[0, 2, 1]),
        helper.make_node(
            "LayerNormalization", ["tokens", "ln_scale", "ln_bias"], ["normed"], name="norm", axis=-1
        ),
        helper.make_node("MatMul", ["normed", "fc1_w"], ["fc1"], name="fc1"),
        helper.make_node("Add", ["fc1", "fc1_b"], ["fc1_biased"], name="fc1_bias"),
        helper.make_node("Relu", ["fc1_biased"], ["act"], name="act"),
        helper.make_node("ReduceMean", ["act"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head_w"], ["head"], name="head"),
        helper.make_node("Add", ["head", "head_b"], ["logits"], name="head_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_lkca",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, CHANNELS, GRID, GRID])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lkca-tests")
    model.ir_version = 8  # readable by every onnxruntime / OpenVINO / TensorRT parser we target
    onnx.checker.check_model(model, full_check=True)
    return model


def write_tiny_lkca_onnx(path: Path, batch: int | str = "batch") -> Path:
    onnx.save(tiny_lkca_model(batch), str(path))
    return path


def sample_batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, CHANNELS, GRID, GRID)).astype(np.float32)


def onnxruntime_reference(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    """Plain onnxruntime with graph optimizations off: the numbers every backend is compared against."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]
