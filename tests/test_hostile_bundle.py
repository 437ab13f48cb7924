"""Bundle integrity: a bundle is proven whole before it serves (every file the manifest lists, and no
file it does not list), parity's PyTorch reference is checked by hash, and the precision an engine reports is the
one its artifact computes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile_common import assert_one_line, cli
from PIL import Image


@pytest.fixture(scope="module")
def pipeline_bundle(nano_checkpoint, tmp_path_factory) -> Path:
    from lkca_deploy.pipeline import PipelineOptions, run_pipeline

    out = tmp_path_factory.mktemp("bundle") / "B"
    opts = PipelineOptions(backends=("onnxruntime",), precisions=("fp32", "fp16"), batches=(1,),
                           calib_samples=16, bench_budget_s=0.1)
    run_pipeline(nano_checkpoint, "digits", out, opts)
    return out


@pytest.fixture
def bundle(pipeline_bundle, tmp_path) -> Path:
    copy = tmp_path / "B"
    shutil.copytree(pipeline_bundle, copy)
    return copy


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> Path:
    from lkca_deploy.data.datasets import digits_images

    path = tmp_path_factory.mktemp("png") / "digit0.png"
    Image.fromarray(digits_images()[0][0]).save(path)
    return path


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rehash(bundle: Path, *rels: str) -> None:
    """What a careless tool does after editing files: make manifest.json agree with them again."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["path"] in rels:
            data = (bundle / entry["path"]).read_bytes()
            entry["sha256"], entry["size_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _engine(bundle: Path, precision: str) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return next(e["artifact"] for e in manifest["engines"] if e["precision"] == precision)


def test_the_untouched_bundle_serves(bundle, digit_png):
    outcome = cli("predict", bundle, digit_png, "--json")
    assert outcome.code == 0, outcome.err


def test_a_byte_flipped_in_any_listed_file_is_refused(bundle, digit_png):
    _flip_a_byte(bundle / "onnx" / "model.conv.onnx")  # not the engine's file: still the bundle's
    assert_one_line(cli("predict", bundle, digit_png), "onnx/model.conv.onnx")


def test_a_deleted_report_is_refused(bundle, digit_png):
    (bundle / "reports" / "report.html").unlink()
    assert_one_line(cli("predict", bundle, digit_png), "reports/report.html")


def test_parity_refuses_an_altered_reference_checkpoint(bundle):
    _flip_a_byte(bundle / "checkpoint" / "model.safetensors")
    assert_one_line(cli("parity", bundle), "checkpoint/model.safetensors")


def test_swapped_precisions_are_refused(bundle, digit_png):
    fp32, fp16 = _engine(bundle, "fp32"), _engine(bundle, "fp16")
    for suffix in ("", ".json"):
        a, b = bundle / f"{fp32}{suffix}", bundle / f"{fp16}{suffix}"
        data_a, data_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(data_b)
        b.write_bytes(data_a)
    _rehash(bundle, fp32, fp16, f"{fp32}.json", f"{fp16}.json")
    outcome = cli("predict", bundle, digit_png, "--precision", "fp32", "--json")
    assert_one_line(outcome, "fp16", fp32)


def test_an_unlisted_external_data_file_is_refused(bundle, digit_png):
    from lkca_runtime.fsutil import sha256_file

    rel = _engine(bundle, "fp32")
    artifact = bundle / rel
    model = onnx.load(str(artifact))
    onnx.save_model(model, str(artifact), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    sidecar = json.loads((bundle / f"{rel}.json").read_text())
    sidecar["artifact_sha256"] = sha256_file(artifact)
    (bundle / f"{rel}.json").write_text(json.dumps(sidecar))
    _rehash(bundle, rel, f"{rel}.json")
    weights = artifact.with_name("weights.bin")
    weights.write_bytes(np.zeros(weights.stat().st_size, np.uint8).tobytes())  # every answer would change
    assert_one_line(cli("predict", bundle, digit_png), "weights.bin")
