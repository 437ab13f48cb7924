"""Shared fixtures: a small real checkpoint, trained once per session on the embedded digits data."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def nano_checkpoint(tmp_path_factory) -> Path:
    """lkca_vit_nano trained a few epochs on digits: real weights, real accuracy, seconds to make."""
    from lkca_deploy.train import TrainOptions, train

    out = tmp_path_factory.mktemp("ckpt") / "lkca_vit_nano-digits"
    train("lkca_vit_nano", "digits", out=out, opts=TrainOptions(epochs=4, batch_size=16, progress=False))
    return out


@pytest.fixture(scope="session")
def small_bundle(nano_checkpoint, tmp_path_factory):
    """(bundle dir, report) from one small real pipeline run: ONNX Runtime and OpenVINO engines at fp32/fp16/int8,
    TensorRT's device files written for JetPack 5.1 (`pipeline --target jetson-jp5`: the oldest TensorRT the
    toolkit writes for), 64 golden samples. Shared: tests that change it work on a copy."""
    from lkca_deploy.pipeline import PipelineOptions, run_pipeline

    out = tmp_path_factory.mktemp("bundle") / "b"
    opts = PipelineOptions(backends=("onnxruntime", "openvino", "tensorrt"), precisions=("fp32", "fp16", "int8"),
                           batches=(1, 4), calib_samples=128, bench_budget_s=0.2, target="jetson-jp5")
    old_umask = os.umask(0o022)  # the common default; test_pipeline's mode test reads the bundle it gives
    try:
        report = run_pipeline(nano_checkpoint, "digits", out, opts)
    finally:
        os.umask(old_umask)
    return out, report
