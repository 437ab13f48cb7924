"""Small ONNX graphs with one large depthwise conv, and running any ONNX model in ONNX Runtime and OpenVINO (f32):
shared by the lowering, forms, planning, check and calibration tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from onnx import TensorProto, helper, numpy_helper


def conv_weight(channels, cin_per_group, kernel, heads=None, cout_per_group=1, seed=0, dtype=np.float32):
    """Weights scaled so outputs stay O(1); `heads` contiguous channel blocks share one kernel (LKCA)."""
    rng = np.random.default_rng(seed)
    groups = channels // cin_per_group
    shape = (groups * cout_per_group, cin_per_group, *kernel)
    scale = 1.0 / np.sqrt(cin_per_group * kernel[0] * kernel[1])
    if heads is None:
        return (rng.standard_normal(shape) * scale).astype(dtype)
    per_head = rng.standard_normal((heads, 1, *shape[1:])) * scale
    return np.repeat(per_head, shape[0] // heads, axis=1).reshape(shape).astype(dtype)


def conv_model(
    channels=4,
    grid=(8, 8),
    kernel=(15, 15),
    *,
    pads=None,
    dilations=(1, 1),
    strides=(1, 1),
    cin_per_group=1,
    cout_per_group=1,
    heads=None,
    bias=True,
    auto_pad=None,
    batch="batch",
    dynamic_grid=False,
    weight_in_constant_node=False,
    weight_as_input=False,
    opset=17,
    name="mixer",
    seed=0,
) -> onnx.ModelProto:
    """x (B, C, H, W) -> grouped Conv `name` -> Relu -> y; 'same' pads unless given."""
    kh, kw = kernel
    if pads is None and auto_pad is None:
        pads = [
            kh // 2 * dilations[0],
            kw // 2 * dilations[1],
            kh // 2 * dilations[0],
            kw // 2 * dilations[1],
        ]
    weight = conv_weight(channels, cin_per_group, kernel, heads, cout_per_group, seed)
    cout = weight.shape[0]
    nodes, inits = [], []
    x_info = helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [batch, channels, *(["h", "w"] if dynamic_grid else grid)]
    )
    graph_inputs = [x_info]
    if weight_in_constant_node:
        nodes.append(
            helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight, "w_value"))
        )
    elif weight_as_input:
        graph_inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(weight.shape)))
    else:
        inits.append(numpy_helper.from_array(weight, "w"))
    conv_inputs = ["x", "w"]
    if bias:
        b = np.random.default_rng(seed + 1).standard_normal(cout).astype(np.float32)
        inits.append(numpy_helper.from_array(b, "b"))
        conv_inputs.append("b")
    attrs = {"group": channels // cin_per_group, "dilations": list(dilations), "strides": list(strides)}
    attrs.update({"auto_pad": auto_pad} if auto_pad else {"pads": list(pads)})
    nodes.append(helper.make_node("Conv", conv_inputs, ["mixed"], name=name, **attrs))
    nodes.append(helper.make_node("Relu", ["mixed"], ["y"], name="act"))
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cout, None, None])
    graph = helper.make_graph(nodes, "lkca", graph_inputs, [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def ort_outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def openvino_outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    core = ov.Core()
    # f32 on purpose: OpenVINO CPU would otherwise compute in bf16 on CPUs that have it.
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(x)
    return [np.asarray(result[out]) for out in compiled.outputs]


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort_outputs(model, x)[0]


def run_openvino(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return openvino_outputs(model, x)[0]


def random_x(model: onnx.ModelProto, batch: int, grid=None, seed=1) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    channels = dims[1].dim_value
    grid = grid or (dims[2].dim_value, dims[3].dim_value)
    return np.random.default_rng(seed).standard_normal((batch, channels, *grid)).astype(np.float32)


def conv_kernels(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    inits = {t.name: t for t in model.graph.initializer}
    return [tuple(inits[n.input[1]].dims[2:]) for n in model.graph.node if n.op_type == "Conv"]


# ---------------------------------------------------------------- every strategy is exact
