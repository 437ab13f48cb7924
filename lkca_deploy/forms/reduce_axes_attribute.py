"""`reduce_axes_attribute`: Reduce ops with their `axes` as an attribute, the form of opset 17 and before.

Opset 18 moved `axes` of ReduceMean, ReduceMax & co to an input; TensorRT 8.5 and 8.6 read only the attribute and
reduce over every axis when it is missing (onnx/onnx-tensorrt onnx2trt_utils.cpp reduceTensor at release/8.5-GA and
8.6-GA: only ReduceSum passes its axes input; NVIDIA/TensorRT#3467). The graph this writes is valid at opset 17 and
below only, so apply_forms converts the file to such an opset afterwards (and applies this form to every conversion
from 18 or later to 17 or earlier). ReduceSum took `axes` as an input from opset 13 on, which TensorRT 8.x reads: it
is left as it is.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from lkca_deploy.forms.form import FormGraph, FormRule
from lkca_deploy.forms.registry import REDUCE_AXES_ATTRIBUTE


class ReduceAxesAttribute(FormRule):
    name = REDUCE_AXES_ATTRIBUTE
    help = "Reduce ops with axes as an attribute (opset <= 17)"
    op_types = (
        "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    )
    max_opset = 17  # the last opset with `axes` as an attribute of these ops

    def matches(self, node: onnx.NodeProto) -> bool:
        return super().matches(node) and len(node.input) > 1 and bool(node.input[1])

    def why_not(self, node: onnx.NodeProto, graph: FormGraph) -> str | None:
        if node.input[1] not in graph.constants:
            return "axes is computed in the graph, not a constant"
        if not numpy_helper.to_array(graph.constants[node.input[1]]).size:
            return "empty axes: no attribute form says what noop_with_empty_axes does"
        return None

    def rewrite(self, node: onnx.NodeProto, graph: FormGraph) -> list[onnx.NodeProto]:
        axes = numpy_helper.to_array(graph.constants[node.input[1]]).astype(int).tolist()
        # noop_with_empty_axes came with the input form; with non-empty axes it changes nothing
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "noop_with_empty_axes"}
        # The node keeps its name: the nodes another form wrote (layernorm_decomposed's means) stay findable.
        return [helper.make_node(node.op_type, [node.input[0]], list(node.output), name=node.name, axes=axes,
                                 **attrs)]
