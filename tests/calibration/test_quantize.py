"""FP16 and INT8 precision baked into ONNX, run for real in ONNX Runtime and OpenVINO on tiny models."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conv_graphs import run_openvino, run_ort
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lkca_deploy.calibration.quantize import (
    QUANTIZED_OP_TYPES,
    check_qdq_flavor,
    float_weights_with_qdq,
    quantize_int8,
    read_trt_calibration_cache,
    to_fp16,
    trt_cache_header,
    write_trt_calibration_cache,
)
from lkca_runtime.errors import UserError

GRID, KERNEL, DIM = 8, 15, 32


class _Block(nn.Module):
    """Pre-norm LKCA block: LayerNorm, depthwise K15 conv over the 8x8 token grid, residual, GELU MLP, residual."""

    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.mix = nn.Conv2d(DIM, DIM, KERNEL, padding=KERNEL // 2, groups=DIM)
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x):
        b, n, c = x.shape
        grid = self.norm1(x).transpose(1, 2).reshape(b, c, GRID, GRID)
        x = x + self.mix(grid).reshape(b, c, n).transpose(1, 2)
        return x + self.mlp(self.norm2(x))


class _TinyLkcaVit(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, DIM, 4, stride=4)
        self.blocks = nn.Sequential(_Block(), _Block())
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, 10)

    def forward(self, x):
        x = self.blocks(self.embed(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(x).mean(1))


@pytest.fixture(scope="module")
def vit() -> onnx.ModelProto:
    torch.manual_seed(0)
    module = _TinyLkcaVit().eval()
    with torch.no_grad():
        module.head.weight.mul_(8.0)  # wider logit margins, so top-1 agreement measures quantization, not ties
    program = torch.onnx.export(
        module,
        (torch.randn(2, 3, 32, 32),),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        opset_version=18,
        dynamo=True,
        verbose=False,
    )
    return program.model_proto


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((96, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def quantized(vit, images):
    """Both flavours quantized once (minmax) and shared by the tests that only read them."""
    return {flavor: quantize_int8(vit, images[:64], flavor=flavor) for flavor in ("tensorrt", "cpu")}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def io_types(model: onnx.ModelProto) -> list[int]:
    return [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


# ---------------------------------------------------------------------------------------------------------------- FP16


def test_fp16_runs_in_both_runtimes_with_layernorm_in_fp32(vit, images):
    half = to_fp16(vit)
    assert io_types(half) == [TensorProto.FLOAT, TensorProto.FLOAT]
    weights = {t.name: t.data_type for t in half.graph.initializer}
    assert TensorProto.FLOAT16 in weights.values()
    typed = onnx.shape_inference.infer_shapes(half)
    types = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.input]}
    layer_norms = [n for n in half.graph.node if n.op_type == "LayerNormalization"]
    assert len(layer_norms) == 5
    for node in layer_norms:
        assert types[node.input[0]] == TensorProto.FLOAT, node.name
        assert [weights.get(name) for name in node.input[1:]] == [TensorProto.FLOAT] * 2, node.name  # no FP16 + Cast
    reference = run_ort(vit, images)
    for run in (run_ort, run_openvino):
        out = run(half, images)
        assert out.dtype == np.float32
        assert cosine(out, reference) > 0.999


def test_fp16_keeps_the_scales_of_resize_in_float():
    """Resize reads its scales as float32 only; segmentation heads upsample with it."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
            helper.make_node("Resize", ["y", "", "scales"], ["out"], name="up", mode="linear"),
        ],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 16, 16])],
        [
            numpy_helper.from_array(np.random.default_rng(1).standard_normal((4, 3, 1, 1)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    half = to_fp16(model)
    np.testing.assert_allclose(run_ort(half, x), run_ort(model, x), atol=1e-2)
    np.testing.assert_allclose(run_openvino(half, x), run_ort(model, x), atol=1e-2)


# ---------------------------------------------------------------------------------------------------------------- INT8


def test_tensorrt_flavour_follows_tensorrt_rules_and_runs(vit, images, quantized):
    model = quantized["tensorrt"].model
    assert check_qdq_flavor(model, "tensorrt") == []
    assert io_types(model) == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) >= 8
    made_by = producers(model)
    weights = {t.name: t for t in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES):
        assert made_by[node.input[0]].op_type == "DequantizeLinear", node.name
        assert made_by[node.input[1]].op_type == "DequantizeLinear", node.name
        if len(node.input) > 2:  # biases stay float: TensorRT takes no int32 Q/DQ
            assert weights[node.input[2]].data_type == TensorProto.FLOAT
    _assert_int8_close(vit, model, images[64:])


def test_tensorrt_8_weight_form_holds_float_weights_behind_a_quantize_and_computes_the_same(vit, images, quantized):
    """TensorRT 8 refuses a DequantizeLinear reading an INT8 initializer: the float form must compute what the INT8
    initializers did (ORT, the same calibration), and keep TensorRT's Q/DQ rules."""
    int8_form = quantized["tensorrt"].model
    float_form = float_weights_with_qdq(int8_form)
    assert check_qdq_flavor(float_form, "tensorrt") == []
    int8 = {t.name for t in float_form.graph.initializer if t.data_type == TensorProto.INT8}
    assert not [n.name for n in float_form.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8]
    made_by, weights = producers(float_form), {t.name for t in float_form.graph.initializer}
    dequantized_weights = 0
    for node in (n for n in float_form.graph.node if n.op_type in QUANTIZED_OP_TYPES):
        dequantize = made_by[node.input[1]]
        quantize = made_by[dequantize.input[0]]  # weights: float initializer -> QuantizeLinear -> DequantizeLinear
        assert quantize.op_type == "QuantizeLinear" and quantize.input[0] in weights, node.name
        assert len(quantize.input) == 3 and len(dequantize.input) == 3  # TensorRT 8 wants the zero-point
        dequantized_weights += 1
    assert dequantized_weights >= 6
    x = images[64:]
    assert np.abs(run_ort(float_form, x) - run_ort(int8_form, x)).max() < 1e-5
    via_argument = quantize_int8(vit, images[:64], flavor="tensorrt", weight_form="float").model
    assert np.abs(run_ort(via_argument, x) - run_ort(int8_form, x)).max() < 1e-5


def test_cpu_flavour_has_uint8_activations_and_runs(vit, images, quantized):
    model = quantized["cpu"].model
    assert check_qdq_flavor(model, "cpu") == []
    zero_points = {t.name: t.data_type for t in model.graph.initializer}
    activation_types = {zero_points[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert activation_types == {TensorProto.UINT8}
    assert any("non-zero zero-point" in p or "uint8" in p for p in check_qdq_flavor(model, "tensorrt"))
    _assert_int8_close(vit, model, images[64:])


@pytest.mark.parametrize("flavor", ["tensorrt", "cpu"])
def test_onnxruntime_runs_every_int8_matmul_as_one_integer_kernel(quantized, flavor, tmp_path):
    """No Q/DQ on INT8 outputs: ORT fuses DQ -> MatMul into MatMulIntegerToFloat. An output Q would make it a
    QLinearMatMul with a requantize and a dequantize around it, which left the model no faster than FP32."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(quantized[flavor].model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    matmuls = sum(op == "MatMul" for op in (n.op_type for n in quantized[flavor].model.graph.node))
    assert "QLinearMatMul" not in ops and "MatMul" not in ops
    assert ops.count("MatMulIntegerToFloat") == matmuls


def _assert_int8_close(fp32: onnx.ModelProto, int8: onnx.ModelProto, x: np.ndarray) -> None:
    reference = run_ort(fp32, x)
    for run in (run_ort, run_openvino):
        out = run(int8, x)
        assert cosine(out, reference) > 0.99, run.__name__
        assert np.mean(out.argmax(1) == reference.argmax(1)) >= 0.9, run.__name__


def test_the_same_ranges_set_the_qdq_scales(quantized):
    result = quantized["tensorrt"]
    initializers = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    quantize_input = next(n for n in result.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    lo, hi = result.ranges["input"]
    np.testing.assert_allclose(initializers[quantize_input.input[1]], max(-lo, hi) / 127, rtol=1e-6)
    assert set(result.ranges) > {n.input[0] for n in result.model.graph.node if n.op_type == "QuantizeLinear"}


def test_keep_fp_leaves_a_named_node_and_an_op_type_in_float(vit, images):
    matmul = next(n.name for n in vit.graph.node if n.op_type == "MatMul")
    result = quantize_int8(vit, images[:32], flavor="tensorrt", keep_fp=[matmul, "Gemm"])
    gemms = [n.name for n in vit.graph.node if n.op_type == "Gemm"]
    assert sorted(result.excluded_nodes) == sorted([matmul, *gemms])
    made_by = producers(result.model)
    for node in result.model.graph.node:
        if node.name in result.excluded_nodes:
            assert all(made_by.get(i) is None or made_by[i].op_type != "DequantizeLinear" for i in node.input)
    assert check_qdq_flavor(result.model, "tensorrt") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"flavor": "gpu"}, "flavor"),
        ({"flavor": "cpu", "method": "kl"}, "method"),
        ({"flavor": "cpu", "keep_fp": ["NoSuchNode"]}, "NoSuchNode"),
    ],
)
def test_bad_choices_are_user_errors(vit, images, kwargs, message):
    with pytest.raises(UserError, match=message):
        quantize_int8(vit, images[:4], **kwargs)


@pytest.mark.parametrize("shape", [(4, 32, 32), (4, 3, 16, 16), (0, 3, 32, 32)])
def test_calibration_data_that_does_not_fit_the_input_is_a_user_error(vit, shape):
    with pytest.raises(UserError, match=r"takes \(N, 3, 32, 32\)"):
        quantize_int8(vit, np.zeros(shape, np.float32), flavor="cpu")


# ------------------------------------------------------------------------ lowered graphs: dw conv, Toeplitz, tiles

CHANNELS, HEADS, TOKENS = 16, 4, GRID * GRID


def _model(nodes, weights, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "lowered",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", CHANNELS, GRID, GRID])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_shape])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _kernel(k: int) -> np.ndarray:
    return np.random.default_rng(k).standard_normal((CHANNELS, 1, k, k)).astype(np.float32) / k


def depthwise_conv_model() -> onnx.ModelProto:
    pad = KERNEL // 2
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="dw", group=CHANNELS, pads=[pad] * 4)
    return _model([conv], {"w": _kernel(KERNEL), "b": np.full(CHANNELS, 0.1, np.float32)}, [CHANNELS, GRID, GRID])


def toeplitz_matmul_model() -> onnx.ModelProto:
    """(B, G, d, N) @ (G, N, N): the attention view of the LKCA conv with one kernel per head."""
    d = CHANNELS // HEADS
    toeplitz = np.random.default_rng(3).standard_normal((HEADS, TOKENS, TOKENS)).astype(np.float32) / TOKENS
    nodes = [
        helper.make_node("Reshape", ["x", "heads"], ["xh"], name="split_heads"),
        helper.make_node("MatMul", ["xh", "toeplitz"], ["yh"], name="toeplitz_matmul"),
        helper.make_node("Reshape", ["yh", "grid"], ["y"], name="merge_heads"),
    ]
    weights = {
        "toeplitz": toeplitz,
        "heads": np.array([0, HEADS, d, TOKENS], np.int64),
        "grid": np.array([0, CHANNELS, GRID, GRID], np.int64),
    }
    return _model(nodes, weights, [CHANNELS, GRID, GRID])


def tiled_conv_model() -> onnx.ModelProto:
    """Pad once, then per tile a Slice and a smaller valid depthwise conv, summed (two row tiles)."""
    half = GRID // 2
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad_once")]
    weights = {"pads": np.array([0, 0, half, half, 0, 0, half, half], np.int64), "axes": np.array([2], np.int64)}
    rng = np.random.default_rng(6)
    for row in range(2):
        name = f"tile{row}"
        nodes.append(helper.make_node("Slice", ["xp", f"{name}_start", f"{name}_end", "axes"], [f"{name}_in"],
                                      name=f"{name}_slice"))
        nodes.append(helper.make_node("Conv", [f"{name}_in", f"{name}_w"], [f"{name}_out"], name=f"{name}_conv",
                                      group=CHANNELS))
        weights |= {
            f"{name}_start": np.array([row * half], np.int64),
            f"{name}_end": np.array([row * half + GRID + half], np.int64),
            f"{name}_w": rng.standard_normal((CHANNELS, 1, half + 1, GRID + 1)).astype(np.float32) / GRID,
        }
    nodes.append(helper.make_node("Add", ["tile0_out", "tile1_out"], ["y"], name="sum_tiles"))
    return _model(nodes, weights, [CHANNELS, GRID, GRID])


@pytest.mark.parametrize("build", [depthwise_conv_model, toeplitz_matmul_model, tiled_conv_model])
@pytest.mark.parametrize("flavor", ["tensorrt", "cpu"])
def test_lowered_graphs_quantize_and_run(build, flavor):
    model = build()
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(4).standard_normal((40, CHANNELS, GRID, GRID)).astype(np.float32)
    result = quantize_int8(model, x[:32], flavor=flavor)
    assert check_qdq_flavor(result.model, flavor) == []
    weights = {t.name: t for t in result.model.graph.initializer}
    made_by = producers(result.model)
    # Per output channel, except a batched (G, N, N) Toeplitz: ORT cannot run per-column scales on a weight of
    # rank > 2 without an output Q, so both flavours give that one a single scale.
    scales_expected = 1 if build is toeplitz_matmul_model else CHANNELS
    for node in (n for n in result.model.graph.node if n.op_type in QUANTIZED_OP_TYPES):
        dequantize = made_by[node.input[1]]
        assert weights[dequantize.input[0]].data_type == TensorProto.INT8, node.name
        assert numpy_helper.to_array(weights[dequantize.input[1]]).size == scales_expected, node.name
    reference = run_ort(model, x[32:])
    for run in (run_ort, run_openvino):
        out = run(result.model, x[32:])
        assert np.linalg.norm(out - reference) / np.linalg.norm(reference) < 0.05, run.__name__


# ------------------------------------------------------------------------------------------ calibration methods


def test_every_method_runs_and_percentile_clips_outliers():
    model = depthwise_conv_model()
    x = np.random.default_rng(5).standard_normal((64, CHANNELS, GRID, GRID)).astype(np.float32)
    x[0, 0, 0, 0] = 40.0  # one outlier: minmax keeps it, percentile and entropy clip it
    ranges = {}
    for method in ("minmax", "entropy", "percentile"):
        result = quantize_int8(model, x, flavor="tensorrt", method=method, batch_size=16)
        assert check_qdq_flavor(result.model, "tensorrt") == []
        ranges[method] = result.ranges["x"][1]
    assert ranges["minmax"] == pytest.approx(40.0)
    assert ranges["percentile"] < 10 and ranges["entropy"] < 10


# ------------------------------------------------------------------------------------------------- flavour check


def _qdq_into(op_type: str, zero_point: np.ndarray) -> onnx.ModelProto:
    attributes = {"axis": -1, "epsilon": 1e-5} if op_type == "LayerNormalization" else {}
    inputs = ["xdq", "gamma"] if op_type == "LayerNormalization" else ["xdq"]
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
            helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq"),
            helper.make_node(op_type, inputs, ["y"], name="reader", **attributes),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(zero_point, "zp"),
            numpy_helper.from_array(np.ones(4, np.float32), "gamma"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_check_flags_layernorm_and_softmax_reading_dequantized_tensors():
    for op_type in ("LayerNormalization", "Softmax"):
        problems = check_qdq_flavor(_qdq_into(op_type, np.array(0, np.int8)), "tensorrt")
        assert len(problems) == 1 and op_type in problems[0]
    assert check_qdq_flavor(_qdq_into("Relu", np.array(0, np.int8)), "tensorrt") == []


def test_check_flags_wrong_integer_types_and_zero_points():
    assert len(check_qdq_flavor(_qdq_into("Relu", np.array(3, np.int8)), "tensorrt")) == 2  # Q and DQ
    assert len(check_qdq_flavor(_qdq_into("Relu", np.array(128, np.uint8)), "tensorrt")) == 4
    assert len(check_qdq_flavor(_qdq_into("Relu", np.array(0, np.int8)), "cpu")) == 2
    assert check_qdq_flavor(_qdq_into("Relu", np.array(128, np.uint8)), "cpu") == []


# ------------------------------------------------------------------------------------------ TensorRT calibration cache


def test_trt_cache_round_trip(tmp_path, quantized):
    ranges = quantized["tensorrt"].ranges
    path = write_trt_calibration_cache(ranges, tmp_path / "model.cache")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8600-EntropyCalibration2"
    assert len(lines) == len(ranges) + 1
    scales = read_trt_calibration_cache(path)
    for name, (lo, hi) in ranges.items():
        assert scales[name] == pytest.approx(max(abs(lo), abs(hi)) / 127, rel=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["model.cache"]  # no temporary file left behind


def test_trt_cache_encodes_scales_as_big_endian_float_hex(tmp_path):
    path = write_trt_calibration_cache({"input": (-127.0, 63.5)}, tmp_path / "c.cache",
                                       version_header=trt_cache_header("10.3.0"))
    assert path.read_text() == "TRT-100300-EntropyCalibration2\ninput: 3f800000\n"


def test_trt_cache_header_follows_tensorrt_version_numbers():
    assert trt_cache_header("8.6.1") == "TRT-8601-EntropyCalibration2"
    assert trt_cache_header("10.7", "MinMaxCalibration") == "TRT-100700-MinMaxCalibration"
    with pytest.raises(UserError):
        trt_cache_header("ten")


def test_reading_a_file_that_is_no_cache_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.cache"
    bad.write_text("hello\nx: 12\n")
    with pytest.raises(UserError, match="TRT-"):
        read_trt_calibration_cache(bad)
    bad.write_text("TRT-8600-EntropyCalibration2\nx: zz\n")
    with pytest.raises(UserError, match="bad.cache:2"):
        read_trt_calibration_cache(bad)


def test_check_flags_per_tensor_conv_weights_for_tensorrt_and_uint8_weights_for_cpu():
    def conv_with_weight(weight: np.ndarray, scale: np.ndarray, **axis) -> onnx.ModelProto:
        graph = helper.make_graph(
            [
                helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["wdq"], name="dq_w", **axis),
                helper.make_node("Conv", ["x", "wdq"], ["y"], name="conv"),
            ],
            "weights",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
            [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(scale, "s"),
             numpy_helper.from_array(np.zeros(scale.shape, weight.dtype), "zp")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    int8 = np.ones((4, 3, 1, 1), np.int8)
    per_channel = conv_with_weight(int8, np.full(4, 0.1, np.float32), axis=0)
    assert check_qdq_flavor(per_channel, "tensorrt") == []
    per_tensor = check_qdq_flavor(conv_with_weight(int8, np.array(0.1, np.float32)), "tensorrt")
    assert len(per_tensor) == 1 and "per channel" in per_tensor[0]
    uint8_weight = conv_with_weight(np.ones((4, 3, 1, 1), np.uint8), np.full(4, 0.1, np.float32), axis=0)
    assert len(check_qdq_flavor(uint8_weight, "cpu")) == 1
