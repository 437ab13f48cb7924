"""Static target checks: each rule fires on a graph built to break it and stays quiet on one that does not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conv_graphs import conv_model
from onnx import TensorProto, helper, numpy_helper

from lkca_deploy.check import check_model, count_dla_subgraphs
from lkca_deploy.lowering.apply import lower_model
from lkca_runtime.errors import UserError


def graph_model(nodes, in_shape, out_shape, inits=(), opset=17, domains=()) -> onnx.ModelProto:
    """x -> nodes -> y with the given shapes (None dims are dynamic)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        list(inits),
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def ops_with(report, severity: str) -> list[str]:
    return [f.op for f in report.findings if f.severity == severity]


def static_lkca(grid=32, kernel=63, **kwargs) -> onnx.ModelProto:
    return conv_model(channels=4, grid=(grid, grid), kernel=(kernel, kernel), batch=1, **kwargs)


# ---------------------------------------------------------------- TensorRT


def _dft_model(opset: int) -> onnx.ModelProto:
    return graph_model(
        [helper.make_node("DFT", ["x"], ["y"], name="fft", axis=1)], [1, 16, 1], [1, 16, 2], opset=opset
    )


def test_tensorrt_flags_ops_its_parser_lacks_and_passes_a_plain_conv():
    report = check_model(_dft_model(17), "tensorrt")
    assert not report.ok and ops_with(report, "error") == ["DFT"]
    assert "conv view" in report.errors[0].fix

    clean = check_model(conv_model(), "tensorrt")
    assert clean.ok and clean.findings == []


def test_tensorrt_flags_custom_domain_ops():
    node = helper.make_node("FusedConv", ["x"], ["y"], name="fused", domain="com.microsoft")
    report = check_model(
        graph_model([node], [1, 4, 8, 8], [1, 4, 8, 8], domains=["com.microsoft"]), "tensorrt"
    )
    assert not report.ok and "plugin" in report.errors[0].problem


def _qdq_model(zero_point: np.ndarray) -> onnx.ModelProto:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant"),
    ]
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(zero_point, "zp")]
    return graph_model(nodes, [1, 4, 8, 8], [1, 4, 8, 8], inits)


@pytest.mark.parametrize("target", ["tensorrt", "jetson-dla"])
def test_qdq_zero_points_must_be_signed_zero(target):
    report = check_model(_qdq_model(np.int8(3)), target)
    assert [f.node for f in report.errors if "zero-point" in f.problem] == ["quant", "dequant"]
    assert "tensorrt INT8 flavour" in report.errors[0].fix
    report = check_model(_qdq_model(np.uint8(0)), target)
    assert any("uint8 zero-point" in f.problem for f in report.errors)
    report = check_model(_qdq_model(np.int8(0)), target)
    assert not any("zero-point" in f.problem for f in report.findings)


# ---------------------------------------------------------------- Jetson DLA


def test_dla_rejects_a_63_kernel_and_suggests_tiles_or_crop():
    report = check_model(static_lkca(grid=32), "jetson-dla")
    (finding,) = report.errors
    assert finding.op == "Conv" and "63x63 outside the DLA's [1, 32]" in finding.problem
    assert finding.fix == "lower --strategy tiled --max-kernel 32"
    report = check_model(static_lkca(grid=16), "jetson-dla")
    assert report.errors[0].fix == "lower --strategy crop"  # cropped to the 16x16 grid it is 31x31


@pytest.mark.parametrize(("strategy", "grid"), [("tiled", 32), ("crop", 16)])
def test_dla_accepts_the_lowered_conv_as_one_subgraph(strategy, grid):
    model = static_lkca(grid=grid)
    lowered, _ = lower_model(model, strategy, max_kernel=32)
    report = check_model(lowered, "jetson-dla")
    assert report.ok, report.format_text()
    assert report.stats["dla_subgraphs"] == 1 and report.stats["gpu_fallback_nodes"] == 0


def test_gpu_fallback_is_an_error_unless_allowed():
    report = check_model(static_lkca(grid=32), "jetson-dla", allow_gpu_fallback=True)
    assert report.ok and ops_with(report, "info") == ["Conv"]
    assert report.stats["gpu_fallback_nodes"] == 1


def test_dla_needs_static_shapes():
    report = check_model(conv_model(kernel=(15, 15)), "jetson-dla")  # dynamic batch
    assert not report.ok
    (finding,) = report.errors
    assert finding.node == "x" and "batch" in finding.problem
    assert check_model(conv_model(kernel=(15, 15), batch=1), "jetson-dla").ok


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"kernel": (3, 3), "pads": [3, 1, 1, 1]}, "padding"),  # a pad not smaller than the kernel
        ({"kernel": (3, 3), "strides": (16, 16), "grid": (32, 32)}, "stride"),
        ({"kernel": (3, 3), "dilations": (33, 33), "pads": [0] * 4, "grid": (70, 70)}, "dilation"),
    ],
)
def test_dla_conv_limits(kwargs, problem):
    report = check_model(conv_model(batch=1, **kwargs), "jetson-dla")
    assert [f.op for f in report.errors] == ["Conv"] and problem in report.errors[0].problem


def test_dla_group_limit():
    model = conv_model(channels=8200, grid=(2, 2), kernel=(1, 1), pads=[0] * 4, batch=1)
    report = check_model(model, "jetson-dla")
    assert "8200 groups" in report.errors[0].problem
    assert check_model(
        conv_model(channels=64, grid=(2, 2), kernel=(1, 1), pads=[0] * 4, batch=1), "jetson-dla"
    ).ok


def test_dla_lacks_transformer_layers():
    scale = numpy_helper.from_array(np.ones(8, np.float32), "gamma")
    weight = numpy_helper.from_array(np.ones((8, 8), np.float32), "proj")
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma"], ["n"], name="norm", axis=-1),
        helper.make_node("MatMul", ["n", "proj"], ["m"], name="proj"),
        helper.make_node("Gelu", ["m"], ["g"], name="gelu"),
        helper.make_node("Softmax", ["g"], ["y"], name="attn", axis=-1),
    ]
    model = graph_model(nodes, [1, 16, 8], [1, 16, 8], [scale, weight], opset=20)
    report = check_model(model, "jetson-dla")
    assert ops_with(report, "error") == ["LayerNormalization", "MatMul", "Gelu", "Softmax"]
    assert report.stats["dla_nodes"] == 0
    assert check_model(model, "tensorrt").ok  # TensorRT's GPU runs them all


def _relu_transpose_chain(n_relus: int) -> onnx.ModelProto:
    """Relu (DLA) and Transpose (GPU) alternating: each Relu becomes its own DLA subgraph."""
    nodes, last = [], "x"
    for i in range(n_relus):
        nodes.append(helper.make_node("Relu", [last], [f"r{i}"], name=f"relu{i}"))
        out = "y" if i == n_relus - 1 else f"t{i}"
        if i < n_relus - 1:
            nodes.append(helper.make_node("Transpose", [f"r{i}"], [out], name=f"swap{i}", perm=[0, 1, 3, 2]))
        else:
            nodes[-1].output[0] = "y"
        last = out
    return graph_model(nodes, [1, 4, 8, 8], [1, 4, 8, 8])


def test_dla_subgraph_cap():
    ok = check_model(_relu_transpose_chain(16), "jetson-dla", allow_gpu_fallback=True)
    assert ok.ok and ok.stats["dla_subgraphs"] == 16 and ok.stats["gpu_fallback_nodes"] == 15
    over = check_model(_relu_transpose_chain(17), "jetson-dla", allow_gpu_fallback=True)
    assert not over.ok and "17 DLA subgraphs, over the 16" in over.errors[0].problem


def test_count_dla_subgraphs_joins_branches():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Sigmoid", ["x"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Transpose", ["c"], ["d"], perm=[0, 1, 3, 2]),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    assert count_dla_subgraphs(nodes, [0, 1, 2, 4]) == 2  # {Relu, Sigmoid, Add} and the last Relu
    assert count_dla_subgraphs(nodes, []) == 0


# ---------------------------------------------------------------- OpenVINO and ONNX Runtime


def test_npu_kernel_limit_and_its_fix():
    report = check_model(conv_model(grid=(8, 8), kernel=(15, 15)), "openvino-npu")
    (finding,) = report.errors
    assert "over openvino-npu's hardware conv limit of 11" in finding.problem
    assert finding.fix == "lower --strategy tiled --max-kernel 11"
    lowered, _ = lower_model(conv_model(grid=(8, 8), kernel=(15, 15)), "tiled", max_kernel=11)
    assert check_model(lowered, "openvino-npu").ok
    assert check_model(conv_model(kernel=(11, 11)), "openvino-npu").ok


def test_openvino_gpu_warns_on_filters_over_1024_taps():
    report = check_model(static_lkca(grid=32, kernel=63), "openvino-gpu")
    assert report.ok and ops_with(report, "warning") == ["Conv"]
    assert check_model(static_lkca(grid=16, kernel=31), "openvino-gpu").findings == []


def test_dft_is_slow_on_cpus_and_misread_by_openvino_at_opset_20():
    for target in ("onnxruntime-cpu", "openvino-cpu"):
        report = check_model(_dft_model(17), target)
        assert report.ok and ops_with(report, "warning") == ["DFT"]
    assert not check_model(_dft_model(20), "openvino-cpu").ok


def test_onnxruntime_cpu_flags_einsum_and_unknown_custom_ops():
    einsum = helper.make_node("Einsum", ["x", "x"], ["y"], equation="bij,bjk->bik")
    report = check_model(graph_model([einsum], [1, 4, 4], [1, 4, 4]), "onnxruntime-cpu")
    assert report.ok and "MatMul" in report.warnings[0].problem
    custom = helper.make_node("Mystery", ["x"], ["y"], domain="my.ops")
    report = check_model(graph_model([custom], [1, 4], [1, 4], domains=["my.ops"]), "onnxruntime-cpu")
    assert not report.ok and "custom-op library" in report.errors[0].fix
    assert check_model(conv_model(), "onnxruntime-cpu").findings == []


@pytest.mark.parametrize("target", ["tensorrt", "openvino-cpu", "onnxruntime-cpu"])
def test_non_standard_ops_fail_everywhere(target):
    model = graph_model([helper.make_node("Frobnicate", ["x"], ["y"])], [1, 4], [1, 4])
    assert "not a standard ONNX operator" in check_model(model, target).errors[0].problem


# ---------------------------------------------------------------- INT8 grouped convs and DLA releases (docs/tensorrt.md)


def _int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the tensorrt flavour's Q/DQ, calibrated on random samples (the real quantizer)."""
    from lkca_deploy.calibration.quantize import quantize_int8

    channels = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    calib = np.random.default_rng(0).standard_normal((8, channels, 8, 8)).astype(np.float32)
    quantized = quantize_int8(model, calib, flavor="tensorrt").model
    dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    assert all(n.input[0] in dequantized for n in quantized.graph.node if n.op_type in ("Conv", "MatMul"))
    return quantized


def _int8_conv_warnings(report) -> list:
    return [f for f in report.warnings if f.op == "Conv" and f.problem.startswith("INT8")]


def test_an_int8_depthwise_conv_is_flagged_once_with_the_matmul_fix():
    quantized = _int8(conv_model(channels=8, kernel=(15, 15)))
    report = check_model(quantized, "tensorrt")
    (finding,) = _int8_conv_warnings(report)
    assert report.ok and finding.node == "mixer"
    assert "1/1 input/output channel(s) per group" in finding.problem and "multiples of 4" in finding.problem
    assert "--precision int8" in finding.fix and "lower --strategy matmul" in finding.fix
    (dla,) = _int8_conv_warnings(check_model(quantized, "jetson-dla"))
    assert "fp16 on the DLA" in dla.fix
    assert _int8_conv_warnings(check_model(quantized, "onnxruntime-cpu")) == []


def test_no_int8_conv_warning_for_float_models_wide_groups_or_the_matmul_lowering():
    depthwise = conv_model(channels=8, kernel=(15, 15))
    assert _int8_conv_warnings(check_model(depthwise, "tensorrt")) == []  # float: no INT8 asked for
    four_per_group = conv_model(channels=8, kernel=(15, 15), cin_per_group=4, cout_per_group=4)
    assert _int8_conv_warnings(check_model(_int8(four_per_group), "tensorrt")) == []
    lowered, _ = lower_model(depthwise, "matmul")
    assert _int8_conv_warnings(check_model(_int8(lowered), "tensorrt")) == []


def test_dla_report_says_which_tensorrt_can_place_it():
    report = check_model(conv_model(kernel=(15, 15), batch=1), "jetson-dla")
    needs = report.stats["dla_needs"]
    # JetPack 5.1 (8.5.2) and 6.0 (8.6.2) have a DLA too; JetPack 7.0-7.2's TensorRT 10.13-10.16 has none
    assert all(v in needs for v in ("8.5.2", "8.6.2", "10.3.0", "11.4.1")) and "10.13" not in needs
    assert "dla needs: TensorRT 8.5.2 (JetPack 5.1: Xavier, Orin)" in report.format_text()


# ---------------------------------------------------------------- the report


def test_report_text_folds_repeats_and_dict_is_plain():
    nodes = [
        helper.make_node("Gelu", [f"g{i}" if i else "x"], [f"g{i + 1}"], name=f"gelu{i}") for i in range(9)
    ]
    nodes[-1].output[0] = "y"
    report = check_model(graph_model(nodes, [1, 4, 8, 8], [1, 4, 8, 8], opset=20), "jetson-dla")
    text = report.format_text()
    assert text.startswith("jetson-dla: FAILED (9 error(s)")
    assert "gelu0, gelu1, gelu2, ... (9 nodes)" in text and text.count("\n") == 1
    data = report.to_dict()
    assert data["ok"] is False and len(data["findings"]) == 9 and data["stats"]["dla_subgraphs"] == 0
    assert set(data["findings"][0]) == {"severity", "node", "op", "problem", "fix"}


def test_unknown_target_is_a_user_error():
    with pytest.raises(UserError, match="unknown target"):
        check_model(conv_model(), "coral-tpu")
