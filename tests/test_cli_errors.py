"""Every user-caused failure of the deployment commands: one line on stderr, exit code 2, nothing half-written."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_runner import assert_user_error, run_cli
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(scope="module")
def nano_onnx(nano_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "nano.onnx"
    run_cli("export", nano_checkpoint, "--out", out, "--lowering", "conv")
    return out


def small_conv_model(kernel=5, channels=2, grid=6):
    """A single depthwise conv with nothing else: the smallest model `lower` has work on."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal(
        (channels, 1, kernel, kernel)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=channels, pads=[kernel // 2] * 4, name="conv")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [1, channels, grid, grid])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, grid, grid])],
                              [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_export_writes_a_checked_file_with_metadata(nano_onnx):
    meta = {p.key: p.value for p in onnx.load(nano_onnx).metadata_props}
    assert meta["model_name"] == "lkca_vit_nano" and json.loads(meta["class_names"])[0] == "0"
    assert float(meta["self_check_max_abs_error"]) <= 1e-4


def test_bad_onnx_files(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model")
    assert_user_error(run_cli("lower", text, "--out", tmp_path / "o.onnx", "--strategy", "tiled",
                              check_exit=None), "not")
    data = small_conv_model().SerializeToString()
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    assert_user_error(run_cli("check", truncated, "--target", "tensorrt", check_exit=None))
    assert_user_error(run_cli("lower", tmp_path / "missing.onnx", "--out", tmp_path / "o.onnx", "--strategy",
                              "crop", check_exit=None), "not found")
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_outside_the_model_directory_is_refused(tmp_path):
    model = small_conv_model()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")
    path = tmp_path / "evil.onnx"
    path.write_bytes(model.SerializeToString())
    assert_user_error(run_cli("lower", path, "--out", tmp_path / "o.onnx", "--strategy", "tiled",
                              check_exit=None))
    assert not (tmp_path / "o.onnx").exists()


def test_unknown_names_list_the_valid_ones(nano_onnx, tmp_path):
    assert_user_error(run_cli("lower", nano_onnx, "--out", tmp_path / "o.onnx", "--strategy", "fft",
                              check_exit=None), "unknown strategy 'fft'", "tiled")
    assert_user_error(run_cli("check", nano_onnx, "--target", "coral", check_exit=None), "coral")
    assert_user_error(run_cli("build", nano_onnx, "--backend", "coreml", "--out", tmp_path / "m",
                              check_exit=None), "unknown backend 'coreml'")
    assert_user_error(run_cli("build", nano_onnx, "--backend", "onnxruntime", "--precision", "int4", "--out",
                              tmp_path / "m.onnx", check_exit=None), "int4")


def test_missing_tensorrt_says_how_to_get_it(nano_onnx, tmp_path):
    proc = run_cli("build", nano_onnx, "--backend", "tensorrt", "--precision", "fp16", "--out",
                   tmp_path / "m.engine", check_exit=None)
    assert_user_error(proc, "pip install lkca-deploy[tensorrt]")
    assert not (tmp_path / "m.engine").exists()
    assert list(tmp_path.glob("*.trtexec.sh"))  # the line to build it on the device is still written


def test_lower_and_check_on_a_foreign_model(tmp_path):
    src = tmp_path / "dw.onnx"
    onnx.save(small_conv_model(kernel=31, grid=16), src)
    out = run_cli("lower", src, "--out", tmp_path / "tiled.onnx", "--strategy", "tiled", "--max-kernel", "16")
    assert "conv" in out.stdout
    kernels = [list(a.ints) for n in onnx.load(tmp_path / "tiled.onnx").graph.node if n.op_type == "Conv"
               for a in n.attribute if a.name == "kernel_shape"]
    assert kernels and all(max(k) <= 16 for k in kernels)
    # The 31x31 conv is over DLA's 32 limit only when it is not tiled: the original fails, the tiled passes.
    assert run_cli("check", src, "--target", "openvino-npu", check_exit=None).returncode == 1
    report = json.loads(run_cli("check", tmp_path / "tiled.onnx", "--target", "jetson-dla", "--json",
                                "--allow-gpu-fallback").stdout)
    assert report["ok"] is True


def test_nothing_to_lower_is_said_plainly(tmp_path):
    src = tmp_path / "small.onnx"
    onnx.save(small_conv_model(kernel=3), src)
    out = run_cli("lower", src, "--out", tmp_path / "o.onnx", "--strategy", "matmul", "--min-kernel", "7")
    assert "nothing to lower" in out.stdout


def test_matmul_over_budget_writes_nothing(nano_checkpoint, tmp_path):
    proc = run_cli("export", nano_checkpoint, "--out", tmp_path / "m.onnx", "--lowering", "matmul",
                   "--matmul-budget", "0.01", check_exit=None)
    assert_user_error(proc, "MiB", "budget")
    assert not (tmp_path / "m.onnx").exists()


def test_calibration_folder_with_only_broken_files(nano_onnx, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG broken")
    (folder / "b.txt").write_text("hello")
    proc = run_cli("quantize", nano_onnx, "--calib", folder, "--out", tmp_path / "q.onnx", check_exit=None)
    assert_user_error(proc)
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_from_the_training_split(nano_onnx, tmp_path):
    proc = run_cli("quantize", nano_onnx, "--calib", "digits", "--calib-samples", "64", "--out",
                   tmp_path / "q.onnx", "--flavor", "tensorrt", "--cache", tmp_path / "calib.cache")
    assert "below 300" in proc.stderr  # warned, not failed
    assert (tmp_path / "calib.cache").read_text().startswith("TRT-")
    from lkca_deploy.calibration.quantize import check_qdq_flavor

    assert check_qdq_flavor(onnx.load(tmp_path / "q.onnx"), "tensorrt") == []


def test_sliding_a_classifier_is_one_clear_line(nano_checkpoint):
    proc = run_cli("evaluate", nano_checkpoint, "--slide", check_exit=None)
    assert_user_error(proc, "(--slide) are for segmentation", "classification checkpoint")


def test_pipeline_baseline_limits_need_a_baseline_and_a_valid_number(tmp_path):
    out = tmp_path / "bundle"
    assert_user_error(run_cli("pipeline", "--out", out, "--baseline-max-latency-increase", "5", check_exit=None),
                      "--baseline-max-latency-increase", "add --baseline REPORT")
    assert_user_error(run_cli("pipeline", "--out", out, "--baseline", tmp_path, "--baseline-max-memory-increase", "-1",
                              check_exit=None), "--baseline-max-memory-increase")
    assert not out.exists()  # refused before any training


def test_pipeline_baseline_limits_reach_the_comparison():
    from lkca_deploy.cli.runs import _baseline_limits

    limits = _baseline_limits(Path("base.json"), None, 5.0, None)
    assert (limits.max_accuracy_drop, limits.max_latency_increase, limits.max_memory_increase) == (1.0, 5.0, 20.0)
