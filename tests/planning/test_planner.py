"""Choosing a lowering per target (auto), on hand-built graphs run by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conv_graphs import conv_model, conv_weight, random_x, run_ort
from onnx import TensorProto, helper, numpy_helper

from lkca_deploy.planning.planner import apply_plan, choose_lowering, lower_auto, plan_model
from lkca_deploy.targets import TARGETS
from lkca_runtime.errors import UserError

# ---------------------------------------------------------------- auto: one conv


@pytest.mark.parametrize(
    ("target", "grid", "kernel", "strategy", "max_kernel"),
    [
        ("onnxruntime-cpu", (8, 8), (15, 15), "matmul", None),  # measured 2x faster at 8x8
        ("onnxruntime-cpu", (14, 14), (27, 27), "matmul", None),
        ("openvino-cpu", (8, 8), (15, 15), "matmul", None),
        ("onnxruntime-cpu", (32, 32), (63, 63), "token_spectral", None),  # ADE20K grid: DFT matmuls, no Transpose
        ("openvino-cpu", (32, 32), (63, 63), "token_spectral", None),
        ("openvino-cpu", None, (63, 63), "conv", None),  # dynamic grid: nothing static to lower with
        ("openvino-gpu", (32, 32), (63, 63), "conv", None),
        ("tensorrt", (8, 8), (15, 15), "conv", None),
        ("jetson-dla", (8, 8), (15, 15), "conv", None),
        ("jetson-dla", (32, 32), (63, 63), "tiled", 32),
        ("jetson-dla", (16, 16), (63, 63), "crop", None),  # cropped to 31x31, within the DLA's 32
        ("jetson-dla", None, (63, 63), "tiled", 32),  # dynamic grid: cannot crop
        ("openvino-npu", (8, 8), (15, 15), "tiled", 11),
        ("openvino-npu", (6, 6), (15, 15), "crop", None),  # cropped to 11x11
        ("openvino-npu", (14, 14), (27, 27), "tiled", 11),
    ],
)
def test_auto_choice_per_target(target, grid, kernel, strategy, max_kernel):
    plan = choose_lowering(target, grid, kernel, channels=192, heads=12, batch_static=True)
    assert (plan.strategy, plan.max_kernel) == (strategy, max_kernel), plan.reason
    assert plan.reason


def test_spectral_is_only_planned_for_depthwise_convs():
    plan = choose_lowering("onnxruntime-cpu", (32, 32), (63, 63), channels=192, depthwise=False)
    assert plan.strategy == "conv" and "depthwise" in plan.reason


def test_small_kernels_stay_convs_everywhere():
    for target in TARGETS:
        assert choose_lowering(target, (8, 8), (3, 3), channels=64).strategy == "conv"


def test_auto_never_picks_matmul_over_the_budget_and_says_so():
    # 192 channels, no shared heads: 192 * 64 * 64 * 4 B = 3.0 MiB of Toeplitz
    plan = choose_lowering("onnxruntime-cpu", (8, 8), (15, 15), channels=192, budget_bytes=2**20)
    assert plan.strategy == "conv"
    assert "3.0 MiB" in plan.reason and "over the 1.0 MiB budget" in plan.reason
    assert choose_lowering("onnxruntime-cpu", (8, 8), (15, 15), channels=192).strategy == "matmul"


def test_dla_plan_mentions_static_shapes_and_unknown_target_is_a_user_error():
    plan = choose_lowering("jetson-dla", (8, 8), (15, 15), channels=64, batch_static=False)
    assert "static" in plan.reason
    with pytest.raises(UserError, match="unknown target 'tpu'"):
        choose_lowering("tpu", (8, 8), (15, 15), channels=64)


# ---------------------------------------------------------------- auto: whole models


def _two_grid_model() -> onnx.ModelProto:
    """Two LKCA-style mixers on different grids (32x32 K63 named, 16x16 K63 unnamed), one output each."""
    nodes, inits, inputs, outputs = [], [], [], []
    for i, (grid, name) in enumerate([(32, "big"), (16, "")]):
        weight = conv_weight(4, 1, (63, 63), heads=2, seed=i)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(
            helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"y{i}"], name=name, group=4, pads=[31] * 4)
        )
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, 4, grid, grid]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 4, grid, grid]))
    graph = helper.make_graph(nodes, "two_grids", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_all(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_plan_and_apply_mixed_strategies_for_the_dla():
    model = _two_grid_model()
    plans = plan_model(model, "jetson-dla")
    assert [(p.node, p.strategy, p.max_kernel) for p in plans] == [
        ("big", "tiled", 32),
        ("Conv_1", "crop", None),
    ]

    lowered, report = apply_plan(model, plans)
    assert [(c.node, c.strategy, c.action) for c in report.changes] == [
        ("big", "tiled", "lowered"),
        ("Conv_1", "crop", "lowered"),
    ]
    inits = {t.name: t for t in lowered.graph.initializer}
    kernels = [tuple(inits[n.input[1]].dims[2:]) for n in lowered.graph.node if n.op_type == "Conv"]
    assert max(max(k) for k in kernels) <= 32
    rng = np.random.default_rng(0)
    feeds = {
        "x0": rng.standard_normal((1, 4, 32, 32)).astype(np.float32),
        "x1": rng.standard_normal((1, 4, 16, 16)).astype(np.float32),
    }
    for got, want in zip(_run_all(lowered, feeds), _run_all(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_plan_model_spends_one_matmul_budget_in_graph_order():
    one = conv_model(channels=8, grid=(8, 8), kernel=(15, 15))  # 8 * 64 * 64 * 4 B = 128 KiB each
    second = helper.make_node("Conv", ["y", "w"], ["z"], name="mixer2", group=8, pads=[7] * 4)
    one.graph.node.append(second)
    one.graph.output[0].name = "z"
    plans = plan_model(one, "onnxruntime-cpu", budget_bytes=200 * 2**10)
    assert [p.strategy for p in plans] == ["matmul", "conv"]
    assert "over the" in plans[1].reason

    lowered, report, _ = lower_auto(one, "onnxruntime-cpu", budget_bytes=200 * 2**10)
    assert [c.action for c in report.changes] == ["lowered", "skipped"]
    x = random_x(one, 2)
    np.testing.assert_allclose(run_ort(lowered, x), run_ort(one, x), rtol=0, atol=1e-5)


def test_lower_auto_with_nothing_to_do_returns_an_equal_copy():
    model = conv_model(kernel=(3, 3))
    lowered, report, plans = lower_auto(model, "openvino-npu")
    assert report.nothing_lowered and plans[0].strategy == "conv"
    assert lowered is not model and lowered.graph == model.graph


# ---------------------------------------------------------------- auto at INT8 (docs/tensorrt.md, section 1)


def test_tensorrt_at_int8_prefers_a_matmul_mixer_and_the_default_is_unchanged():
    args = {"target": "tensorrt", "grid": (8, 8), "kernel": (15, 15), "channels": 192, "heads": 12}
    assert choose_lowering(**args).strategy == "conv"  # no precision given: as before
    assert choose_lowering(**args, precision="fp16").strategy == "conv"
    plan = choose_lowering(**args, precision="int8")
    assert plan.strategy == "matmul"
    assert "INT8 on tensorrt" in plan.reason and "multiples of 4" in plan.reason and "MiB" in plan.reason


def test_int8_matmul_preference_respects_budget_grid_and_depthwise():
    over = choose_lowering("tensorrt", (32, 32), (63, 63), channels=192, precision="int8", budget_bytes=2**20)
    assert over.strategy == "spectral" and "over the 1.0 MiB budget" in over.reason
    dynamic = choose_lowering("tensorrt", None, (63, 63), channels=192, precision="int8")
    assert dynamic.strategy == "conv" and "dynamic" in dynamic.reason
    grouped = choose_lowering("tensorrt", (8, 8), (15, 15), channels=192, precision="int8", depthwise=False)
    assert grouped.strategy == "conv"


@pytest.mark.parametrize("target", ["jetson-dla", "onnxruntime-cpu", "openvino-cpu", "openvino-gpu"])
@pytest.mark.parametrize("grid", [(8, 8), (32, 32)])
def test_int8_changes_nothing_where_the_target_has_no_group_rule_or_runs_no_matmul(target, grid):
    args = {"target": target, "grid": grid, "kernel": (63, 63), "channels": 192, "heads": 12}
    assert choose_lowering(**args, precision="int8") == choose_lowering(**args)


def test_lower_auto_at_int8_for_tensorrt_gives_an_exact_matmul_mixer():
    model = conv_model(channels=8, grid=(8, 8), kernel=(15, 15))
    lowered, _, plans = lower_auto(model, "tensorrt", precision="int8")
    assert [p.strategy for p in plans] == ["matmul"]
    ops = {n.op_type for n in lowered.graph.node}
    assert "MatMul" in ops and "Conv" not in ops
    x = random_x(model, 2)
    np.testing.assert_allclose(run_ort(lowered, x), run_ort(model, x), rtol=0, atol=1e-5)
    assert [p.strategy for p in plan_model(model, "tensorrt")] == ["conv"]
