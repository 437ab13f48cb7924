"""A model trained with the paper's own code, imported, through the whole pipeline on CIFAR-10 files in the real
binary release format: every CPU engine built, proven and at parity, and its export the paper's logits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from test_datasets import write_cifar10

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from official_reference import max_relative_error, official_forward, official_state

from lkca_deploy.official import import_official
from lkca_deploy.pipeline import PipelineOptions, run_pipeline


def test_imported_cifar10_model_passes_the_pipeline(tmp_path):
    write_cifar10(tmp_path / "data" / "cifar-10-batches-bin")  # 15 training images, 3 test images
    state = official_state("vit-05m-lkca", 32, 10)
    torch.save({"model_state_dict": state, "epoch": 99}, tmp_path / "best.pth")
    ckpt = import_official(tmp_path / "best.pth", "vit-05m-lkca", "CIFAR10", tmp_path / "imported")
    # Small on purpose: 8 of the 15 training images calibrate (the rest validate), plain INT8, short timings.
    opts = PipelineOptions(backends=("onnxruntime", "openvino"), precisions=("fp32", "fp16", "int8"), batches=(1,),
                           calib_samples=8, bench_budget_s=0.05, cost=False, golden=3, max_drop=None,
                           data_root=str(tmp_path / "data"))
    report = run_pipeline(ckpt, "cifar10", tmp_path / "bundle", opts)
    assert report.passed
    ran = {(e.backend, e.precision) for e in report.engines if e.status != "skipped"}
    assert {(b, p) for b in ("onnxruntime", "openvino") for p in ("fp32", "fp16", "int8")} <= ran
    assert all(e.status == "ok" for e in report.engines if e.status != "skipped")
    # The bundle's ONNX computes the paper's model (32 px, the shared kernel lowered for the CPU).
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for onnx_path in sorted((tmp_path / "bundle").rglob("*.onnx")):
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        if session.get_inputs()[0].type != "tensor(float)" or "int8" in onnx_path.name or "fp16" in onnx_path.name:
            continue
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert np.isfinite(got).all()
        assert max_relative_error(got, official_forward("vit-05m-lkca", state, x)) <= 1e-4, onnx_path
