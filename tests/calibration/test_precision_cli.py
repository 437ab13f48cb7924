"""The CLI faces of reduced precision: `quantize --max-drop` and `check --precision fp16`, as a user runs them."""

import subprocess
import sys

from precision_cases import OUTLIER_BLOCK

from lkca_deploy.onnx_meta import INT8_ACCURACY, read_metadata
from lkca_runtime.onnx_io import load_onnx, save_onnx_atomic


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lkca_deploy.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, check=False)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_quantize_max_drop_writes_the_split_and_its_steps_into_the_model(int8_outlier_case, tmp_path):
    save_onnx_atomic(int8_outlier_case.model, tmp_path / "model.onnx")
    proc = cli("quantize", tmp_path / "model.onnx", "--calib", "digits", "--out", tmp_path / "int8.onnx",
               "--flavor", "tensorrt", "--max-drop", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert f"blocks.{OUTLIER_BLOCK}.mixer" in proc.stderr  # the table of tries
    plan = read_metadata(load_onnx(tmp_path / "int8.onnx"))[INT8_ACCURACY]
    assert plan["float_units"] == [f"blocks.{OUTLIER_BLOCK}.mixer"] and plan["drop"] <= 0.5
    assert plan["validation_samples"] > 900 and len(plan["steps"]) == 2


def test_quantize_max_drop_that_cannot_hold_fails_in_one_line(int8_outlier_case, tmp_path):
    save_onnx_atomic(int8_outlier_case.model, tmp_path / "model.onnx")
    proc = cli("quantize", tmp_path / "model.onnx", "--calib", "digits", "--out", tmp_path / "int8.onnx",
               "--max-drop", "0.5", "--max-float-units", "0")
    assert "over the bound of 0.5" in one_error_line(proc)
    assert not (tmp_path / "int8.onnx").exists()


def test_check_precision_fp16_prints_the_headroom_table(fp16_outlier_case, tmp_path):
    save_onnx_atomic(fp16_outlier_case.model, tmp_path / "model.onnx")
    proc = cli("check", tmp_path / "model.onnx", "--target", "onnxruntime-cpu", "--precision", "fp16",
               "--calib", "digits", "--calib-samples", "256")
    assert proc.returncode == 0, proc.stderr
    assert "FP16 headroom" in proc.stdout and "value past the limit" in proc.stdout
    without = cli("check", tmp_path / "model.onnx", "--target", "onnxruntime-cpu", "--precision", "fp16")
    assert "--calib" in one_error_line(without)
