"""Value validation: every numeric option refuses zero, negative, non-finite and out-of-range values
with its valid range (zero is not "absent"); calibration data must be finite; `check` knows each target's opset
range; the INT8 parity gate also needs agreement with the reference."""

from __future__ import annotations

import numpy as np
import pytest
from hostile_common import assert_one_line, cli, mean_classifier

from lkca_runtime.errors import UserError

B = "no-such-bundle"  # options are checked before any file is read


@pytest.mark.parametrize("args, option", [
    (["train", "lkca_vit_nano", "--epochs", "0"], "--epochs"),
    (["train", "lkca_vit_nano", "--batch-size", "0"], "--batch-size"),
    (["train", "lkca_vit_nano", "--batch-size", "-4"], "--batch-size"),
    (["train", "lkca_vit_nano", "--lr", "-1"], "--lr"),
    (["train", "lkca_vit_nano", "--lr", "nan"], "--lr"),
    (["train", "lkca_vit_nano", "--lr", "inf"], "--lr"),
    (["train", "lkca_vit_nano", "--workers", "-1"], "--workers"),
    (["train", "lkca_vit_nano", "--epochs", "abc"], "--epochs"),
    (["evaluate", B, "--slide", "--stride", "0"], "--stride"),
    (["evaluate", B, "--slide", "--scale", "-2"], "--scale"),
    (["export", "lkca_vit_nano", "--out", "x.onnx", "--matmul-budget", "-1"], "--matmul-budget"),
    (["export", "lkca_vit_nano", "--out", "x.onnx", "--max-kernel", "0"], "--max-kernel"),
    (["export", "lkca_vit_nano", "--out", "x.onnx", "--opset", "3"], "--opset"),
    (["lower", "x.onnx", "--out", "y.onnx", "--strategy", "tiled", "--max-kernel", "0"], "--max-kernel"),
    (["lower", "x.onnx", "--out", "y.onnx", "--strategy", "tiled", "--min-kernel", "-3"], "--min-kernel"),
    (["quantize", "x.onnx", "--calib", "c.npy", "--out", "y.onnx", "--percentile", "150"], "--percentile"),
    (["quantize", "x.onnx", "--calib", "c.npy", "--out", "y.onnx", "--percentile", "0"], "--percentile"),
    (["quantize", "x.onnx", "--calib", "c.npy", "--out", "y.onnx", "--calib-samples", "0"], "--calib-samples"),
    (["build", "x.onnx", "--backend", "onnxruntime", "--out", "y.onnx", "--calib-samples", "-5"],
     "--calib-samples"),
    (["pipeline", "--batches", "0"], "--batches"),
    (["pipeline", "--batches", "abc"], "--batches"),
    (["pipeline", "--batches", "1,,-2"], "--batches"),
    (["pipeline", "--epochs", "0"], "--epochs"),
    (["pipeline", "--calib-samples", "0"], "--calib-samples"),
    (["pipeline", "--threads", "0"], "--threads"),
    (["parity", B, "--fp16-agreement", "1.5"], "--fp16-agreement"),
    (["parity", B, "--int8-drop", "-1"], "--int8-drop"),
    (["parity", B, "--int8-agreement", "2"], "--int8-agreement"),
    (["parity", B, "--fp32-max-err", "nan"], "--fp32-max-err"),
    (["bench", B, "--budget", "0"], "--budget"),
    (["bench", B, "--batches", "0"], "--batches"),
    (["predict", B, "x.png", "--top-k", "0"], "--top-k"),
])
def test_out_of_range_options_are_one_line_with_the_range(args, option):
    assert_one_line(cli(*args), option)


def test_zero_is_not_absent_in_the_python_api():
    from lkca_deploy.pipeline import PipelineOptions
    from lkca_deploy.train import TrainOptions

    with pytest.raises(UserError, match="epochs"):
        TrainOptions(epochs=0)
    with pytest.raises(UserError, match="batch_size"):
        TrainOptions(batch_size=0)
    with pytest.raises(UserError, match="epochs"):
        PipelineOptions(epochs=0)
    with pytest.raises(UserError, match="batches"):
        PipelineOptions(batches=(0,))


# ---------------------------------------------------------------- calibration data


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_calibration_samples_are_refused_with_count_and_place(tmp_path, bad):
    from lkca_deploy.calibration.sources import load_calibration
    from lkca_runtime.spec import PreprocessSpec

    x = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
    x[7, 0, 3, 3] = bad
    x[31, 0, 0, 0] = bad
    path = tmp_path / "bad.npy"
    np.save(path, x)
    spec = PreprocessSpec((8, 8), 1, (0.5,), (0.5,))
    with pytest.raises(UserError, match=r"2 of 40 .*7, 31"):
        load_calibration(path, spec, samples=40)
    outcome = cli("quantize", mean_classifier(tmp_path / "m.onnx"), "--calib", path, "--out", tmp_path / "q.onnx")
    assert_one_line(outcome, "2 of 40", str(path))
    assert not (tmp_path / "q.onnx").exists()


# ---------------------------------------------------------------- opset ranges per target


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "openvino-cpu", "tensorrt"])
def test_check_knows_each_targets_opset_range(tmp_path, target):
    path = mean_classifier(tmp_path / "future.onnx", opset=99)
    outcome = cli("check", path, "--target", target)
    assert outcome.code == 1, outcome.out + outcome.err
    assert "opset 99" in outcome.out and "OK" not in outcome.out.split("\n")[0]
    ok = cli("check", mean_classifier(tmp_path / "today.onnx", opset=17), "--target", target)
    assert "opset" not in ok.out, ok.out


# ---------------------------------------------------------------- the INT8 gate


def _logits_agreeing_on_a_fifth(classes: int = 10):
    """Reference and engine logits whose argmax agree on 20 of 100 samples while both get 50 labels right."""
    labels = np.random.default_rng(0).integers(0, classes, 100)
    ref_pred = np.where(np.arange(100) < 50, labels, (labels + 1) % classes)  # right on the first half
    eng_pred = ref_pred.copy()  # agrees on samples 0..19
    eng_pred[20:50] = (labels[20:50] + 2) % classes  # wrong where the reference is right: -30
    eng_pred[50:80] = labels[50:80]  # right where the reference is wrong: +30
    eng_pred[80:] = (labels[80:] + 3) % classes  # wrong, and not the reference's wrong answer
    ref, eng = np.eye(classes)[ref_pred] * 5, np.eye(classes)[eng_pred] * 5
    return eng.astype(np.float32), ref.astype(np.float32), labels


def test_int8_engine_that_disagrees_with_the_reference_fails_even_with_equal_top1():
    from lkca_runtime.metrics import Thresholds, classification_parity, with_verdict

    eng, ref, labels = _logits_agreeing_on_a_fifth()
    metrics = classification_parity(eng, ref, labels)
    assert metrics["agreement"] == 0.2 and metrics["top1_drop"] == 0.0
    verdict = with_verdict(metrics, "int8", "classification")
    assert not verdict["passed"] and any("agreement" in f for f in verdict["failures"])
    # configurable like the other limits
    loose = Thresholds().with_limit("classification", "int8", "agreement", 0.1)
    assert with_verdict(metrics, "int8", "classification", loose)["passed"]


def test_int8_segmentation_needs_pixel_agreement():
    from lkca_runtime.metrics import segmentation_parity, with_verdict

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (4, 16, 16))
    ref = np.eye(3)[labels].transpose(0, 3, 1, 2).astype(np.float32)
    eng = np.roll(ref, 1, axis=1)  # every pixel of the engine says another class
    eng_labels = eng.argmax(1)
    metrics = segmentation_parity(eng, ref, eng_labels)  # labels that make the engine's mIoU perfect
    assert metrics["pixel_agreement"] == 0.0 and metrics["miou_drop"] < 0
    verdict = with_verdict(metrics, "int8", "segmentation")
    assert not verdict["passed"] and any("pixel_agreement" in f for f in verdict["failures"])
