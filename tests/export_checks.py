"""Checkpoints whose activations are O(1) (so export tolerances mean something), and an exported file checked
against PyTorch: shared by the export, lowering, forms and Jetson tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from conv_graphs import run_openvino, run_ort

from lkca_deploy import export as exporter
from lkca_deploy.checkpoint import save_checkpoint
from lkca_deploy.models.zoo import create_model, get_config


def strong_checkpoint(
    folder: Path, name: str, data: str | None, seed: int = 0
) -> tuple[Path, torch.nn.Module]:
    """A checkpoint of `name` with weights scaled for O(1) activations (kernel taps ~ 1/K, Linear ~ 1/sqrt(in))."""
    model = create_model(name, view="conv", seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("mixer.kernel"):
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1])
            elif p.ndim >= 2:  # Linear and patch-embedding weights
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p[0].numel()))
            elif "norm" not in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    exporter_spec = exporter.default_spec(get_config(name))
    path = save_checkpoint(
        folder / name, model, get_config(name), exporter_spec, {"data": data} if data else {}
    )
    return path, model


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def assert_exports_match(path, want: np.ndarray, x: np.ndarray, tol: float = 1e-4) -> None:
    """The ONNX file at `path` computes `want` from `x` in ONNX Runtime and OpenVINO."""
    model = onnx.load(str(path))
    assert np.abs(want).max() > 0.3  # logits big enough for the tolerance to mean something
    assert np.abs(run_ort(model, x) - want).max() < tol
    assert np.abs(run_openvino(model, x) - want).max() < tol
