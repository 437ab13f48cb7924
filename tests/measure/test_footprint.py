"""The memory one image takes while a graph runs: tensors alive at once in graph order, weights apart."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lkca_deploy.measure.footprint import peak_bytes_per_image


def _graph() -> onnx.ModelProto:
    """X (batch, 4) -Relu-> A -MatMul(dequantized int8 W, 4x8)-> B (batch, 8) -Relu-> Y; float32 throughout."""
    weight = numpy_helper.from_array(np.ones((4, 8), np.int8), "w_q")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "w_scale")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]),  # from weights alone: not per image
        helper.make_node("MatMul", ["a", "w"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [weight, scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_the_peak_is_the_most_bytes_alive_at_once():
    # x (16 B) -> a (16): 32, x freed; b (32): 48, a freed; y (32): 64, b freed. The 128-byte float weight never counts.
    assert peak_bytes_per_image(_graph()) == 64
