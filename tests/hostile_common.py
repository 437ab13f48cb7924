"""What the hostile-input tests share: the CLI run in-process (fast: torch is imported once per session), a tiny
real ONNX classifier bundle (no torch needed), and file systems that are read-only or full (tmpfs, root only).

The CLI in-process goes through `lkca_deploy.cli.main`, the console entry point itself, so the one-line error
and exit-code handling under test is the real one.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.err.strip().splitlines() if ln.strip()]


def cli(*args) -> Outcome:
    """`lkca-deploy ARGS` through the real entry point, in this process; its exit code, stdout and stderr."""
    from lkca_deploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["lkca-deploy", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_one_line(outcome: Outcome, *fragments: str, code: int = 2) -> str:
    """Exit `code`, exactly one line on stderr, no traceback, no temp-file name; the line holds every fragment."""
    assert outcome.code == code, f"exit {outcome.code}\nstdout:\n{outcome.out}\nstderr:\n{outcome.err}"
    assert "Traceback" not in outcome.err, outcome.err
    # Warnings and the pipeline's stage lines ("[1/7] model ...") are progress, not the error.
    lines = [ln for ln in outcome.lines if not ln.startswith("warning:") and not re.match(r"\[\d+/\d+\] ", ln)]
    assert len(lines) == 1, outcome.err
    line = lines[0]
    assert ".tmp" not in line, line  # the user's path, never the temp file beside it
    for fragment in fragments:
        assert fragment in line, line
    return line


def leftovers(folder: Path) -> list[str]:
    """Hidden temp files or folders an atomic write may leave beside its target."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- a tiny real classifier


def mean_classifier(path: Path, size: int = 8, opset: int = 17) -> Path:
    """1-channel SIZExSIZE input -> 3 logits from the image's mean brightness (dark, mid, bright): a model whose
    answer changes when pixel values are clipped or scaled wrongly."""
    mix = numpy_helper.from_array(np.array([[-8.0, 0.0, 8.0]], np.float32), "mix")
    bias = numpy_helper.from_array(np.array([-4.0, 0.0, -4.0], np.float32), "bias")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),  # the same op at every opset
        helper.make_node("Flatten", ["pooled"], ["means"]),
        helper.make_node("MatMul", ["means", "mix"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "mean_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [mix, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def mean_classifier_bundle(out: Path, work: Path, *, golden: int = 0, background: float | None = None,
                           backend: str = "onnxruntime") -> Path:
    """A bundle (an fp32 engine of `mean_classifier`) written by the toolkit's own BundleWriter; with `golden`
    samples (the engine's own outputs on random inputs) for the first-use check."""
    from lkca_runtime.spec import PreprocessSpec

    given = {} if background is None else {"background": background}
    spec = PreprocessSpec((8, 8), 1, (0.5,), (0.5,), class_names=("dark", "mid", "bright"), **given)
    return one_engine_bundle(out, mean_classifier(Path(work) / "mean.onnx"), spec, golden, backend)


def one_engine_bundle(out: Path, source: Path, spec, golden: int = 0, backend: str = "onnxruntime") -> Path:
    """A bundle of `source` built for `backend` at fp32, as the pipeline lays one out."""
    from lkca_deploy.backends.registry import get_backend
    from lkca_deploy.bundle import BundleWriter

    folder, suffix = ("openvino", ".xml") if backend == "openvino" else ("onnx", ".onnx")
    rel = f"{folder}/model.fp32{suffix}"
    with BundleWriter(out) as b:
        b.set_model(source.stem, spec.task, {"name": source.stem}, spec)
        runner_path = b.path / rel
        get_backend(backend).build(source, runner_path, precision="fp32")
        b.register(rel, "openvino-ir" if backend == "openvino" else "onnx")
        b.register(f"{rel}.json", "sidecar")
        if backend == "openvino":
            b.register(f"{folder}/model.fp32.bin", "openvino-weights")
        b.add_engine(backend, "fp32", rel, passed=True, p50_ms={"1": 0.1})
        if golden:
            from lkca_runtime.golden import GOLDEN_REL, make_golden, write_golden

            x = np.random.default_rng(0).uniform(-1, 1, (golden, *spec.input_shape)).astype(np.float32)
            with get_backend(backend).load(runner_path) as runner:
                logits = runner(x)
            labels = logits.argmax(1)
            made = make_golden(x, labels, logits, spec.task, samples=golden)
            digest = write_golden(made, b.path / GOLDEN_REL)
            b.register(GOLDEN_REL, "golden")
            b.set_extra(golden={"path": GOLDEN_REL, "sha256": digest, "samples": made.samples, "seed": 0})
    return out


def brightness_segmenter(path: Path, size: int = 8) -> Path:
    """1-channel SIZExSIZE input -> 3 classes per pixel (background, dark, bright) from each pixel's value: a 1x1
    Conv, so every pixel of the mask is known from the image."""
    weight = numpy_helper.from_array(np.array([0.0, -8.0, 8.0], np.float32).reshape(3, 1, 1, 1), "w")
    bias = numpy_helper.from_array(np.array([2.0, -4.0, -4.0], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["logits"])], "brightness_segmenter",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, size, size])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def segmenter_bundle(out: Path, work: Path) -> Path:
    """A segmentation bundle (onnxruntime fp32 engine of `brightness_segmenter`)."""
    from lkca_runtime.spec import PreprocessSpec

    spec = PreprocessSpec((8, 8), 1, (0.5,), (0.5,), class_names=("background", "dark", "bright"),
                          task="segmentation")
    return one_engine_bundle(out, brightness_segmenter(Path(work) / "seg.onnx"), spec)


# ---------------------------------------------------------------- file systems that fail


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "64k", read_only: bool = False):
    """A small tmpfs mounted at `where` (read-only if asked); skips the test where mounting is not allowed."""
    where = Path(where)
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def untrained_checkpoint(out: Path, name: str = "lkca_vit_nano") -> Path:
    """A checkpoint of a zoo model's seeded random weights, saved as `train` saves one (no training: a second)."""
    import torch

    from lkca_deploy.checkpoint import save_checkpoint
    from lkca_deploy.data.datasets import open_source
    from lkca_deploy.models.zoo import build_model, get_config

    config = get_config(name)
    torch.manual_seed(0)
    spec = open_source("digits").spec(config.img_size, config.task)
    return save_checkpoint(out, build_model(config).eval(), config, spec, {"data": "digits"})
