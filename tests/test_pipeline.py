"""The main job end to end on a small real checkpoint: engines, parity, latency, report and bundle."""

import json
import stat
import subprocess
import sys

import pytest
from cli_runner import assert_user_error, run_cli

from lkca_deploy.reports.render import validate_report_dict
from lkca_runtime.bundle import read_manifest, require_hashes


@pytest.fixture(scope="module")
def bundle(small_bundle):
    return small_bundle  # one pipeline run per session (conftest.py), shared with the golden and verify tests


def test_bundle_is_readable_by_other_users_under_umask_022(bundle):
    # A bundle copied to a device is often served by another user or a container user: 0755 / 0644 (scripts 0755).
    out, _ = bundle
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir() or path.name.endswith(".trtexec.sh"):
            assert mode == 0o755, (path, oct(mode))
        else:
            assert mode == 0o644, (path, oct(mode))


def test_report_follows_the_contract(bundle):
    out, _ = bundle
    doc = json.loads((out / "reports" / "report.json").read_text())
    assert validate_report_dict(doc) == []
    ran = {(e["backend"], e["precision"]) for e in doc["engines"] if e["status"] != "skipped"}
    assert {("onnxruntime", p) for p in ("fp32", "fp16", "int8")} <= ran
    assert {("openvino", p) for p in ("fp32", "fp16", "int8")} <= ran
    for e in doc["engines"]:
        if e["status"] == "skipped":
            assert e["backend"] == "tensorrt" and "TensorRT" in e["reason"]
        else:
            assert set(e["latency"]) == {"1", "4"} and e["latency"]["1"]["p50_ms"] > 0
    assert (out / "reports" / "report.html").read_text().count("data:image/png;base64,") >= 1


def test_fp32_engines_match_pytorch(bundle):
    _, report = bundle
    for e in report.engines:
        if e.precision == "fp32" and e.status != "skipped":
            assert e.parity["agreement"] == 1.0 and e.parity["max_abs_err"] <= 1e-3, e.name


def test_bundle_manifest_hashes_every_file(bundle):
    out, _ = bundle
    manifest = read_manifest(out)
    require_hashes(out, manifest)  # raises on any mismatch
    kinds = {a["kind"] for a in manifest.artifacts}
    assert {"onnx", "openvino-ir", "openvino-weights", "checkpoint", "report", "trtexec"} <= kinds
    assert any(a["path"].endswith(".cache") for a in manifest.artifacts)  # TensorRT calibration cache


def test_predictor_on_the_bundle_runs_without_torch(bundle, tmp_path):
    out, _ = bundle
    from PIL import Image

    from lkca_deploy.data.datasets import digits_images, digits_split_indices

    images, labels = digits_images()
    test = digits_split_indices()[1][:20]
    paths = []
    for i in test:
        path = tmp_path / f"{i}.png"
        Image.fromarray(images[i]).save(path)
        paths.append(str(path))
    code = (
        "import sys, json; from lkca_deploy.runtime import predict; "
        f"r = predict({str(out)!r}, {paths!r}, backend='onnxruntime', precision='fp32'); "
        "assert 'torch' not in sys.modules; print(json.dumps([x['label'] for x in r]))"
    )
    got = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                    text=True).stdout)
    # The same images through the checkpoint in PyTorch: preprocessing on the device must be training's.
    import torch

    from lkca_deploy.checkpoint import load_checkpoint
    from lkca_deploy.data.datasets import open_source, preprocess_all

    model, ckpt = load_checkpoint(out / "checkpoint")
    x = preprocess_all(open_source("digits", "test"), ckpt.spec, range(20))
    with torch.no_grad():
        expected = [str(int(i)) for i in model(torch.from_numpy(x)).argmax(1)]
    assert got == expected
    assert labels[test].tolist() == open_source("digits", "test").labels[:20].tolist()


def test_existing_bundle_needs_force(bundle, nano_checkpoint):
    out, _ = bundle
    proc = run_cli("pipeline", nano_checkpoint, "--out", out, "--backends", "onnxruntime", check_exit=None)
    assert_user_error(proc, "--force")
    assert (out / "manifest.json").is_file()  # untouched


def test_unknown_backend_and_precision_are_user_errors(nano_checkpoint, tmp_path):
    assert_user_error(run_cli("pipeline", nano_checkpoint, "--out", tmp_path / "x", "--backends", "coreml",
                              check_exit=None), "unknown backend 'coreml'")
    assert_user_error(run_cli("pipeline", nano_checkpoint, "--out", tmp_path / "x", "--precisions", "int4",
                              check_exit=None), "unknown precision 'int4'")
    assert not (tmp_path / "x").exists()
