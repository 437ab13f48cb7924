"""Lowering passes on hand-built ONNX graphs, checked against the original conv through onnxruntime."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from conv_graphs import conv_kernels, conv_model, conv_weight, random_x, run_ort
from onnx import TensorProto, helper, numpy_helper

from lkca_deploy.lowering.apply import lower_file, lower_model
from lkca_deploy.lowering.registry import STRATEGIES
from lkca_deploy.lowering.sites import cropped_kernel, even_split
from lkca_runtime.errors import UserError
from lkca_runtime.onnx_io import load_onnx, save_onnx_atomic

CASES = {
    "k15_grid8": {},
    "k15_grid6": {"grid": (6, 6)},
    "nonsquare": {"grid": (5, 8), "kernel": (13, 5)},
    "dilation2": {"grid": (6, 6), "kernel": (9, 9), "dilations": (2, 2)},
    "no_bias": {"grid": (6, 6), "bias": False},
    "asymmetric_pads": {"grid": (6, 7), "kernel": (11, 9), "pads": [3, 6, 7, 2]},
    "kernel_over_2grid": {"grid": (6, 6), "kernel": (21, 21)},
    "replknet31_grid16": {"channels": 8, "grid": (16, 16), "kernel": (31, 31)},
    "grouped_2_per_group": {"channels": 8, "grid": (6, 6), "cin_per_group": 2},
    "channel_multiplier": {"grid": (6, 6), "cout_per_group": 2},
    "auto_pad_same_upper_even": {"grid": (4, 4), "kernel": (10, 8), "auto_pad": "SAME_UPPER"},
}
TILE = {"tiled": 4}  # small tiles so every case splits on both axes
NOTHING_TO_CROP = {"k15_grid8", "replknet31_grid16"}  # kernel 2*grid-1: every tap touches the grid
NOT_DEPTHWISE = {"grouped_2_per_group", "channel_multiplier"}  # spectral lowers depthwise convs only
SPECTRAL = ("spectral", "token_spectral")  # token_spectral: these graphs have no token layout, so the conv alone


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", CASES)
def test_every_strategy_is_exact_with_dynamic_batch(case, strategy):
    model = conv_model(**CASES[case])
    lowered, report = lower_model(model, strategy, max_kernel=TILE.get(strategy))

    onnx.checker.check_model(lowered, full_check=True)
    onnx.shape_inference.infer_shapes(lowered, strict_mode=True)
    for batch in (1, 3):  # the same lowered model at two batch sizes
        x = random_x(model, batch)
        np.testing.assert_allclose(run_ort(lowered, x), run_ort(model, x), rtol=0, atol=1e-5)

    (change,) = report.changes
    assert change.node == "mixer"
    expect_lowered = (
        strategy != "conv"
        and not (strategy == "crop" and case in NOTHING_TO_CROP)
        and not (strategy in SPECTRAL and case in NOT_DEPTHWISE)
    )
    assert (change.action == "lowered") == expect_lowered, change
    if strategy == "crop" and not expect_lowered:
        assert "nothing to crop" in change.reason
    if strategy in SPECTRAL and not expect_lowered:
        assert "depthwise" in change.reason
    node_names = [n.name for n in lowered.graph.node]
    assert len(node_names) == len(set(node_names))
    if expect_lowered:
        assert "mixer" not in node_names  # replaced ...
        assert all(n.startswith("mixer/") for n in node_names if n != "act")  # ... by readable parts


def test_crop_shrinks_the_kernel_to_the_grid():
    model = conv_model(grid=(6, 6), kernel=(21, 21))
    lowered, report = lower_model(model, "crop")
    assert conv_kernels(lowered) == [(11, 11)]  # offsets beyond +-5 never touch a 6-wide grid
    assert report.changes[0].new_kernel == (11, 11)
    assert report.extra_weight_bytes < 0
    assert "w" not in {t.name for t in lowered.graph.initializer}  # the old kernel is gone
    assert cropped_kernel((21, 21), (6, 6)) == (11, 11)
    assert cropped_kernel((63, 63), (16, 16)) == (31, 31)
    assert cropped_kernel((9, 9), (6, 6), dilations=(2, 2)) == (5, 5)


def test_even_split_is_as_even_as_possible():
    assert even_split(63, 32) == [(0, 32), (32, 31)]
    assert even_split(31, 16) == [(0, 16), (16, 15)]
    assert even_split(15, 11) == [(0, 8), (8, 7)]
    assert even_split(63, 11) == [(0, 11), (11, 11), (22, 11), (33, 10), (43, 10), (53, 10)]


def test_tiled_max16_on_replknet31_leaves_no_conv_over_16():
    model = conv_model(channels=8, grid=(16, 16), kernel=(31, 31))
    lowered, report = lower_model(model, "tiled", max_kernel=16)
    kernels = conv_kernels(lowered)
    assert sorted(kernels) == sorted([(16, 16), (16, 15), (15, 16), (15, 15)])
    assert max(max(k) for k in kernels) <= 16
    change = report.changes[0]
    assert (change.tiles, change.new_kernel) == (4, (16, 16))
    names = {n.name for n in lowered.graph.node}
    assert {"mixer/pad", "mixer/tile_0_0", "mixer/tile_1_1", "mixer/tile_0_1/slice"} <= names
    assert sum(n.op_type == "Pad" for n in lowered.graph.node) == 1  # pad once
    x = random_x(model, 2)
    np.testing.assert_allclose(run_ort(lowered, x), run_ort(model, x), rtol=0, atol=1e-5)


def test_tiled_works_on_dynamic_spatial_dims():
    model = conv_model(grid=None, kernel=(15, 15), dynamic_grid=True)
    lowered, report = lower_model(model, "tiled", max_kernel=8)
    assert report.changes[0].action == "lowered"
    for grid in [(8, 8), (11, 5)]:
        x = random_x(model, 2, grid)
        np.testing.assert_allclose(run_ort(lowered, x), run_ort(model, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", ["crop", "matmul", "spectral"])
def test_crop_and_matmul_skip_dynamic_spatial_dims(strategy):
    model = conv_model(grid=None, kernel=(15, 15), dynamic_grid=True)
    lowered, report = lower_model(model, strategy)
    (change,) = report.changes
    assert change.action == "skipped" and "dynamic" in change.reason and "static H and W" in change.reason
    assert report.summary().startswith("nothing to lower")
    assert [n.op_type for n in lowered.graph.node] == ["Conv", "Relu"]


@pytest.mark.parametrize("strategy", ["crop", "matmul", "tiled"])
def test_strided_conv_is_skipped_with_the_reason(strategy):
    model = conv_model(grid=(6, 6), strides=(2, 2))
    _, report = lower_model(model, strategy, max_kernel=4)
    assert report.changes[0].action == "skipped"
    assert "stride (2, 2)" in report.changes[0].reason


def test_non_constant_weight_is_skipped_and_constant_node_weight_is_lowered():
    _, report = lower_model(conv_model(grid=(6, 6), weight_as_input=True), "tiled", max_kernel=8)
    assert report.changes[0].action == "skipped" and "not a constant" in report.changes[0].reason

    model = conv_model(grid=(6, 6), weight_in_constant_node=True)
    lowered, report = lower_model(model, "tiled", max_kernel=8)
    assert report.changes[0].action == "lowered"
    assert "Constant" not in {n.op_type for n in lowered.graph.node}  # the old weight went with the conv
    x = random_x(model, 2)
    np.testing.assert_allclose(run_ort(lowered, x), run_ort(model, x), rtol=0, atol=1e-5)


def test_small_kernels_and_plain_models_report_nothing_to_lower():
    _, report = lower_model(conv_model(kernel=(3, 3)), "matmul")
    assert report.nothing_lowered and "already small" in report.changes[0].reason
    assert report.summary().startswith("nothing to lower")
    _, report = lower_model(conv_model(channels=4, cin_per_group=4, kernel=(15, 15)), "matmul")  # group 1
    assert report.changes == [] and "no grouped or depthwise Conv" in report.summary()
    _, report = lower_model(conv_model(), "conv")
    assert report.nothing_lowered and "keeps the Conv" in report.changes[0].reason


def test_matmul_is_refused_over_budget_with_the_bytes():
    model = conv_model(channels=8, grid=(16, 16), kernel=(31, 31))  # 8 * 256 * 256 * 4 B = 2 MiB
    with pytest.raises(UserError, match=r"needs 2\.0 MiB of Toeplitz weights, over the 1\.0 MiB budget"):
        lower_model(model, "matmul", budget_bytes=2**20)
    _, report = lower_model(model, "matmul", budget_bytes=2 * 2**20)
    assert report.lowered[0].weight_bytes == 2 * 2**20


def test_matmul_detects_heads_and_keeps_the_batch_dynamic():
    model = conv_model(channels=8, grid=(6, 6), kernel=(11, 11), heads=2)
    lowered, report = lower_model(model, "matmul")
    inits = {t.name: numpy_helper.to_array(t) for t in lowered.graph.initializer}
    assert inits["mixer/toeplitz"].shape == (2, 36, 36)  # (heads, N, N), not (C, N, N)
    assert report.changes[0].heads == 2
    assert list(inits["mixer/tokens_shape"]) == [-1, 2, 4, 36]  # batch -1, the rest static ints
    assert list(inits["mixer/grid_shape"]) == [-1, 8, 6, 6]
    assert not {"Shape", "Gather", "Conv"} & {n.op_type for n in lowered.graph.node}
    for batch in (1, 3):
        x = random_x(model, batch)
        np.testing.assert_allclose(run_ort(lowered, x), run_ort(model, x), rtol=0, atol=1e-5)


def test_spectral_keeps_one_spectrum_per_head_and_small_constants():
    """32x32 / K63, the ADE20K setting: the Toeplitz would be 2 x 1024 x 1024 floats (8 MiB) here."""
    model = conv_model(channels=8, grid=(32, 32), kernel=(63, 63), heads=2)
    lowered, report = lower_model(model, "spectral")
    inits = {t.name: numpy_helper.to_array(t) for t in lowered.graph.initializer}
    assert inits["mixer/spectrum_re"].shape == (2, 1, 32, 2, 63)  # (heads, 1, bins, re|im, period)
    assert report.changes[0].heads == 2 and report.changes[0].weight_bytes < 2**20
    assert not {"Conv", "DFT", "Shape"} & {n.op_type for n in lowered.graph.node}
    for batch in (1, 2):
        x = random_x(model, batch)
        np.testing.assert_allclose(run_ort(lowered, x), run_ort(model, x), rtol=0, atol=1e-4)


def test_two_layers_and_name_collisions():
    """Two mixers in sequence; a tensor already named like a generated one must not clash."""
    w1, w2 = conv_weight(4, 1, (13, 13), seed=3), conv_weight(4, 1, (13, 13), seed=4)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="blk", group=4, pads=[6] * 4),
        helper.make_node("Relu", ["a"], ["blk/tile_0_0"], name="blk/relu"),  # collides with a tile name
        helper.make_node("Conv", ["blk/tile_0_0", "w2"], ["y"], group=4, pads=[6] * 4),  # unnamed
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, 6, 6])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = random_x(model, 2)
    for strategy in ("tiled", "matmul", "crop"):
        lowered, report = lower_model(model, strategy, max_kernel=4)
        assert [c.node for c in report.lowered] == ["blk", "Conv_2"]
        tensors = [o for n in lowered.graph.node for o in n.output]
        assert len(tensors) == len(set(tensors))
        np.testing.assert_allclose(run_ort(lowered, x), run_ort(model, x), rtol=0, atol=1e-5)


def test_unknown_strategy_and_old_opset_are_user_errors():
    with pytest.raises(UserError, match="unknown lowering strategy 'fft'"):
        lower_model(conv_model(), "fft")
    with pytest.raises(UserError, match="opset >= 11"):
        lower_model(conv_model(opset=10), "tiled")


def test_report_to_dict():
    _, report = lower_model(conv_model(grid=(6, 6)), "tiled", max_kernel=8)
    data = report.to_dict()
    assert data["strategy"] == "tiled" and data["lowered"] == 1 and data["skipped"] == 0
    assert data["changes"][0]["tiles"] == 4 and data["changes"][0]["kernel"] == (15, 15)


# ---------------------------------------------------------------- files: load, validate, write


def test_lower_file_writes_atomically(tmp_path):
    src, dst = tmp_path / "model.onnx", tmp_path / "out" / "lowered.onnx"
    model = conv_model(grid=(6, 6))
    save_onnx_atomic(model, src)
    report = lower_file(src, dst, "tiled", max_kernel=8)
    assert report.lowered and dst.is_file()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["lowered.onnx"]  # no temp file left behind
    x = random_x(model, 1)
    np.testing.assert_allclose(run_ort(load_onnx(dst), x), run_ort(model, x), rtol=0, atol=1e-5)


def test_load_onnx_refuses_missing_non_onnx_and_truncated_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_onnx(tmp_path / "nope.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        load_onnx(text)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="not an ONNX model"):
        load_onnx(empty)
    whole = conv_model().SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=str(truncated.name)):
        load_onnx(truncated)
    with pytest.raises(UserError, match="not a file"):
        load_onnx(tmp_path)


def _model_with_external_weight(location: str) -> onnx.ModelProto:
    model = conv_model(grid=(6, 6))
    weight = next(t for t in model.graph.initializer if t.name == "w")
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    return model


@pytest.mark.parametrize(
    "location", ["../secret.bin", "sub/../../secret.bin", "..\\secret.bin", "/etc/hostname"]
)
def test_load_onnx_refuses_external_data_outside_the_model_folder(tmp_path, location):
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.zeros(4 * 15 * 15, np.float32).tobytes())
    path = folder / "model.onnx"
    path.write_bytes(_model_with_external_weight(location).SerializeToString())
    with pytest.raises(UserError, match="outside the model's folder"):
        load_onnx(path)


def test_load_onnx_refuses_a_symlink_that_leads_out(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4 * 4 * 15 * 15)
    os.symlink(tmp_path / "secret.bin", folder / "w.bin")
    path = folder / "model.onnx"
    path.write_bytes(_model_with_external_weight("w.bin").SerializeToString())
    with pytest.raises(UserError, match="outside the model's folder"):
        load_onnx(path)


def test_load_onnx_reports_missing_external_data(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(_model_with_external_weight("weights.bin").SerializeToString())
    with pytest.raises(UserError, match="cannot read the external data"):
        load_onnx(path)


def test_load_onnx_reads_external_data_beside_the_model(tmp_path):
    model = conv_model(grid=(6, 6))
    path = tmp_path / "model.onnx"
    on_disk = onnx.ModelProto()
    on_disk.CopyFrom(model)  # save_model moves the data out of the proto it is given
    onnx.save_model(on_disk, path, save_as_external_data=True, location="model.bin", size_threshold=0)
    assert (tmp_path / "model.bin").is_file()
    loaded = load_onnx(path)
    x = random_x(model, 1)
    np.testing.assert_allclose(run_ort(loaded, x), run_ort(model, x), rtol=0, atol=0)


# ---------------------------------------------------------------- OpenVINO consumes the lowered graphs


@pytest.mark.parametrize("strategy", ["tiled", "matmul", "spectral"])
def test_openvino_runs_the_lowered_model(tmp_path, strategy):
    import openvino as ov

    model = conv_model(channels=8, grid=(6, 6), kernel=(11, 11), heads=2)
    lowered, _ = lower_model(model, strategy, max_kernel=4)
    path = tmp_path / "lowered.onnx"
    save_onnx_atomic(lowered, path)
    core = ov.Core()
    # f32 explicitly: on AVX512_BF16/AMX CPUs OpenVINO defaults to bf16 (docs/backend-limits.md)
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for batch in (1, 3):
        x = random_x(model, batch)
        got = compiled(x)[compiled.output(0)]
        np.testing.assert_allclose(got, run_ort(model, x), rtol=0, atol=1e-4)
