"""`gelu_erf`: ONNX Gelu (opset 20) as the ops every older parser has.

approximate="none": 0.5 * x * (1 + erf(x / sqrt(2))), the definition; approximate="tanh":
0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))). TensorRT's ONNX parser has no Gelu importer before 10.0
(onnx/onnx-tensorrt builtin_op_importers.cpp at release/8.5-GA and 8.6-GA: no Gelu; both parse opsets up to 17).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lkca_deploy.forms.form import FormGraph, FormRule
from lkca_deploy.forms.registry import GELU_ERF


class GeluErf(FormRule):
    name = GELU_ERF
    help = "Gelu as its Erf (or Tanh) form"
    op_types = ("Gelu",)

    def why_not(self, node: onnx.NodeProto, graph: FormGraph) -> str | None:
        if _approximate(node) not in ("none", "tanh"):
            return f"unknown approximate={_approximate(node)!r}"
        return None

    def rewrite(self, node: onnx.NodeProto, graph: FormGraph) -> list[onnx.NodeProto]:
        x, y = node.input[0], node.output[0]
        dtype = helper.tensor_dtype_to_np_dtype(graph.elem_types.get(x, onnx.TensorProto.FLOAT))
        nodes: list[onnx.NodeProto] = []

        def const(tag: str, value: float) -> str:
            name = graph.names.fresh(f"{node.name or y}/{self.name}/{tag}")
            return graph.add_constant(numpy_helper.from_array(np.array(value, dtype=dtype), name))

        def op(kind: str, inputs: list[str], tag: str, output: str | None = None) -> str:
            name = self.node_name(node, graph, tag)
            output = output or name
            nodes.append(helper.make_node(kind, inputs, [output], name=name))
            return output

        if _approximate(node) == "tanh":
            cube = op("Mul", [x, op("Mul", [x, x], "square")], "cube")
            inner = op("Add", [x, op("Mul", [cube, const("c", 0.044715)], "scaled_cube")], "inner")
            scaled = op("Mul", [inner, const("sqrt_2_over_pi", math.sqrt(2 / math.pi))], "scaled")
            core = op("Tanh", [scaled], "tanh")
        else:
            core = op("Erf", [op("Div", [x, const("sqrt2", math.sqrt(2))], "scaled")], "erf")
        gate = op("Mul", [x, op("Add", [core, const("one", 1.0)], "one_plus")], "times_x")
        op("Mul", [gate, const("half", 0.5)], "half", y)
        return nodes


def _approximate(node: onnx.NodeProto) -> str:
    for attr in node.attribute:
        if attr.name == "approximate":
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return "none"
