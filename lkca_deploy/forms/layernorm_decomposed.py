"""`layernorm_decomposed`: LayerNormalization as ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add.

TensorRT 8.5 has no LayerNormalization importer (the operators table of onnx/onnx-tensorrt at release/8.5-GA says
"N"; 8.6-GA has one, computing in FP32). The decomposed form can overflow in FP16 (its squares pass 65504;
NVIDIA/TensorRT#2875), so its nodes are named `<layernorm>/layernorm_decomposed/<step>` and
lowering.apply.fp32_nodes lists them for the build recipe to keep in FP32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lkca_deploy.forms.form import FormGraph, FormRule
from lkca_deploy.forms.registry import LAYERNORM_DECOMPOSED
from lkca_deploy.onnx_graph import int64_tensor

AXES_INPUT_OPSET = 18  # ReduceMean reads its axes from an input from this opset on


class LayerNormDecomposed(FormRule):
    name = LAYERNORM_DECOMPOSED
    help = "LayerNormalization as ReduceMean/Sub/Mul/Sqrt/Div (its nodes kept FP32)"
    op_types = ("LayerNormalization",)
    keep_fp32 = True

    def why_not(self, node: onnx.NodeProto, graph: FormGraph) -> str | None:
        if any(node.output[1:]):
            return "its Mean or InvStdDev output is read"
        if _axis(node) >= 0 and node.input[0] not in graph.ranks:
            return "a positive axis on an input of unknown rank"
        return None

    def rewrite(self, node: onnx.NodeProto, graph: FormGraph) -> list[onnx.NodeProto]:
        x, scale, y = node.input[0], node.input[1], node.output[0]
        bias = node.input[2] if len(node.input) > 2 else ""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = int(attrs.get("axis", -1))
        axes = list(range(axis, 0)) if axis < 0 else list(range(axis - graph.ranks[x], 0))
        dtype = helper.tensor_dtype_to_np_dtype(graph.elem_types.get(x, onnx.TensorProto.FLOAT))
        eps_name = graph.names.fresh(f"{node.name or y}/{self.name}/epsilon")
        epsilon = graph.add_constant(numpy_helper.from_array(np.array(attrs.get("epsilon", 1e-5), dtype), eps_name))
        nodes: list[onnx.NodeProto] = []

        def op(kind: str, inputs: list[str], tag: str, output: str | None = None, **kwargs) -> str:
            name = self.node_name(node, graph, tag)
            output = output or name
            nodes.append(helper.make_node(kind, inputs, [output], name=name, **kwargs))
            return output

        def mean(t: str, tag: str) -> str:
            if graph.opset >= AXES_INPUT_OPSET:
                axes_name = graph.names.fresh(f"{node.name or y}/{self.name}/axes")
                graph.add_constant(int64_tensor(axes_name, axes))
                return op("ReduceMean", [t, axes_name], tag, keepdims=1)
            return op("ReduceMean", [t], tag, keepdims=1, axes=axes)

        centred = op("Sub", [x, mean(x, "mean")], "centred")
        variance = mean(op("Mul", [centred, centred], "square"), "variance")
        std = op("Sqrt", [op("Add", [variance, epsilon], "plus_epsilon")], "std")
        normalised = op("Div", [centred, std], "normalised")
        scaled = op("Mul", [normalised, scale], "scaled", None if bias else y)
        if bias:
            op("Add", [scaled, bias], "shifted", y)
        return nodes


def _axis(node: onnx.NodeProto) -> int:
    return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "axis"), -1)
