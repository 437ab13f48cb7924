"""Which engines this machine can take: OpenVINO's precision rules per device capabilities, the automatic choice
passing over engines a machine refuses or failed, and an engine that silently returns too few rows."""

import numpy as np
import pytest

from lkca_runtime.backends.base import run_batched
from lkca_runtime.backends.openvino import load_hint
from lkca_runtime.predictor import choose_engine

ARM_N1 = ("FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT")  # OpenVINO 2026.4 on an emulated Neoverse-N1
ARM_A72 = ("FP32", "INT8", "BIN", "EXPORT_IMPORT")
SAPPHIRE_RAPIDS = ("BF16", "WINOGRAD", "FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT")


def test_bf16_is_refused_without_bf16_arithmetic_and_fp16_follows_the_device():
    hint, why = load_hint("bf16", "bf16", ARM_N1, "aarch64")
    assert hint is None and "bf16 arithmetic" in why and "FP32 FP16 INT8" in why and "\n" not in why
    assert load_hint("bf16", "bf16", SAPPHIRE_RAPIDS, "x86_64") == ("bf16", None)
    assert load_hint("fp16", "f16", SAPPHIRE_RAPIDS, "x86_64") == ("f16", None)
    assert load_hint("fp16", "f16", ("FP32", "INT8"), "x86_64") == ("f32", None)  # no fp16 math: f32
    assert load_hint("fp16", "f16", ARM_N1, "aarch64") == ("f32", None)  # f16 MatMuls fail at batch > 1 there
    assert load_hint("fp16", "f16", ARM_A72, "aarch64") == ("f32", None)
    assert load_hint("fp16", "f32", SAPPHIRE_RAPIDS, "x86_64") == ("f32", None)  # built to run in f32: kept
    assert load_hint("int8", "f32", ARM_A72, "aarch64") == ("f32", None)


def engine(backend, precision, p50, quantizer=None):
    return {"backend": backend, "precision": precision, "quantizer": quantizer, "passed": True,
            "p50_ms": {"1": p50}, "artifact": f"{backend}/{precision}/model"}


ENGINES = [engine("openvino", "bf16", 0.1), engine("openvino", "fp16", 0.2), engine("openvino", "int8", 0.3),
           engine("onnxruntime", "fp32", 0.5)]


def test_the_automatic_choice_passes_over_what_this_machine_refuses_and_says_why():
    installed = lambda name: (True, "ok")
    reasons = {"openvino/bf16": "refused here: bf16 needs bf16 arithmetic",
               "openvino/fp16": "failed its golden check here: agreement = 0.1"}
    unsuitable = lambda e: reasons.get(f"{e['backend']}/{e['precision']}")
    skipped = []
    chosen = choose_engine(ENGINES, status=installed, unsuitable=unsuitable, skipped=skipped)
    assert (chosen["backend"], chosen["precision"]) == ("openvino", "int8")
    assert skipped == [("openvino/bf16", reasons["openvino/bf16"]), ("openvino/fp16", reasons["openvino/fp16"])]
    # Named by backend and precision, the user's choice stands (loading says why it cannot run).
    named = choose_engine(ENGINES, "openvino", "bf16", status=installed, unsuitable=unsuitable, skipped=[])
    assert named["precision"] == "bf16"
    # Nothing left on the preferred backend: the next one.
    reasons["openvino/int8"] = "refused here: x"
    assert choose_engine(ENGINES, status=installed, unsuitable=unsuitable)["backend"] == "onnxruntime"


def test_an_engine_returning_too_few_rows_raises():
    with pytest.raises(RuntimeError, match=r"returned output \(0, 10\) for a batch of 4"):
        run_batched(lambda x: np.zeros((0, 10), np.float32), np.zeros((8, 3), np.float32), step=4)
    out = run_batched(lambda x: x[:, :1] * 2, np.ones((5, 3), np.float32), step=2)
    assert out.shape == (5, 1) and float(out.sum()) == 10.0
