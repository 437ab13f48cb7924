"""`lkca-deploy verify` and the Predictor's first-use check, on a bundle from a small real pipeline run: every engine
passes torch-free, a deliberately wrong engine and an altered golden file are refused, a machine checks once."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from cli_runner import assert_user_error, run_cli

from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import sha256_file
from lkca_runtime.predictor import Predictor
from lkca_runtime.records import DeviceCache


@pytest.fixture
def bundle_copy(small_bundle, tmp_path):
    """A private copy of the shared bundle (its device cache, beside it, starts empty)."""
    out = tmp_path / "bundle"
    shutil.copytree(small_bundle[0], out)
    return out


def rewrite_listed(bundle, rel: str) -> None:
    """Record a file's new hash in the manifest (and in its sidecar when it has one): the bundle is then intact by
    every hash, and only running it can show what it computes."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    file = bundle / rel
    sidecar = bundle / f"{rel}.json"
    if sidecar.is_file():
        facts = json.loads(sidecar.read_text())
        facts["artifact_sha256"] = sha256_file(file)
        sidecar.write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    for entry in manifest["artifacts"]:
        if entry["path"] in (rel, f"{rel}.json"):
            path = bundle / entry["path"]
            entry["sha256"], entry["size_bytes"] = sha256_file(path), path.stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def corrupt_int8_scale(bundle) -> list[str]:
    """Scale one output channel of the classifier's INT8 weights by 100 in every ONNX Runtime Q/DQ engine."""
    import onnx
    from onnx import numpy_helper

    manifest = json.loads((bundle / "manifest.json").read_text())
    changed = []
    for engine in manifest["engines"]:
        if engine["backend"] != "onnxruntime" or engine["precision"] != "int8":
            continue
        model = onnx.load(bundle / engine["artifact"])
        dequantized = {n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        scale = next(i for i in model.graph.initializer if i.name in dequantized and i.name.startswith("head"))
        values = numpy_helper.to_array(scale).copy()
        values[0] *= 100.0
        scale.CopyFrom(numpy_helper.from_array(values.astype(np.float32), scale.name))
        onnx.save(model, bundle / engine["artifact"])
        rewrite_listed(bundle, engine["artifact"])
        changed.append(f"onnxruntime/int8-{engine['quantizer']}")
    return changed


def test_bundle_lists_the_golden_set_and_what_each_engine_achieved(small_bundle):
    out, _ = small_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    golden = manifest["golden"]
    assert golden["samples"] == 64
    listed = next(a for a in manifest["artifacts"] if a["path"] == golden["path"])
    assert listed["kind"] == "golden" and listed["sha256"] == golden["sha256"] == sha256_file(out / golden["path"])
    for engine in manifest["engines"]:
        achieved, tolerance = engine["golden"]["achieved"], engine["golden"]["tolerance"]
        assert achieved["passed"] is True and achieved["samples"] == 64, engine["artifact"]
        assert {"agreement", "max_abs_err", "mean_abs_err", "top1_drop"} <= set(achieved)
        if engine["precision"] == "fp32":
            assert tolerance == {"agreement": 1.0, "max_abs_err": 1e-3} and achieved["agreement"] == 1.0
    # TensorRT, not installed here: its device recipe is in the manifest instead of an engine.
    assert {b["precision"] for b in manifest["device_builds"]} == {"fp32", "fp16", "int8"}


def test_verify_all_passes_every_engine_torch_free(small_bundle):
    # Its wall time is measured by benchmarks/device_proof.py (speed goals live in benchmarks, not tests).
    out, _ = small_bundle
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: sys.stderr.write('TORCH_IMPORTED=%s\\n' % ('torch' in sys.modules)))\n"
        f"sys.argv = ['lkca-deploy', 'verify', {str(out)!r}, '--all', '--json']\n"
        "runpy.run_module('lkca_deploy.cli', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH_IMPORTED=False" in proc.stderr
    doc = json.loads(proc.stdout)
    ran = [e for e in doc["engines"] if e["status"] != "skipped"]
    assert len(ran) == 8 and all(e["status"] == "passed" for e in ran)  # ONNX Runtime x4, OpenVINO x4
    skipped = [e for e in doc["engines"] if e["status"] == "skipped"]
    assert all(e["backend"] == "tensorrt" and "TensorRT is not installed" in e["reason"] for e in skipped)
    assert doc["passed"] is True and doc["golden"]["samples"] == 64


def test_a_deliberately_broken_engine_is_refused(bundle_copy, tmp_path):
    broken = corrupt_int8_scale(bundle_copy)
    assert broken == ["onnxruntime/int8-cpu", "onnxruntime/int8-tensorrt"]
    proc = run_cli("verify", bundle_copy, "--engine", "onnxruntime/int8-tensorrt", check_exit=1)
    assert "FAILED" in proc.stdout and "top1_drop" in proc.stdout
    proc = run_cli("verify", bundle_copy, "--all", "--json", check_exit=1)
    status = {e["engine"]: e["status"] for e in json.loads(proc.stdout)["engines"]}
    assert status["onnxruntime/int8-cpu"] == status["onnxruntime/int8-tensorrt"] == "failed"
    assert status["onnxruntime/fp32"] == status["openvino/int8-nncf"] == "passed"
    # The Predictor refuses to serve it, in one line naming the engine and its numbers.
    with pytest.raises(UserError) as refusal:
        Predictor(bundle_copy, backend="onnxruntime", precision="int8")
    line = str(refusal.value)
    assert "\n" not in line and "onnxruntime/int8-" in line and "top1_drop = " in line and "needs <=" in line
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(image)
    assert_user_error(run_cli("predict", bundle_copy, image, "--backend", "onnxruntime", "--precision", "int8",
                              check_exit=None), "failed its golden check", "top1_drop")
    # Choosing for itself, the Predictor passes over the engines that failed here, and says so in one line.
    with pytest.warns(UserWarning, match=r"skipped onnxruntime/int8-\S+ \(failed its golden check here: top1_drop"):
        chosen = Predictor(bundle_copy, backend="onnxruntime")
    with chosen:
        assert chosen.engine["precision"] != "int8"
        assert sorted(name for name, _ in chosen.skipped) == ["onnxruntime/int8-cpu", "onnxruntime/int8-tensorrt"]
    # verify="off" serves it anyway (the user asked).
    with Predictor(bundle_copy, backend="onnxruntime", precision="int8", verify="off") as p:
        assert p.verification is None


def test_verify_all_keeps_an_engine_that_raises_as_its_result_and_checks_the_rest(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    weights = next(a["path"] for a in manifest["artifacts"]
                   if a["path"].startswith("openvino/fp16/") and a["path"].endswith(".bin"))
    data = bytearray((bundle_copy / weights).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / weights).write_bytes(bytes(data))
    proc = run_cli("verify", bundle_copy, "--all", "--json", check_exit=1)
    doc = json.loads(proc.stdout)
    checks = {e["engine"]: e for e in doc["engines"]}
    assert checks["openvino/fp16"]["status"] == "error" and "\n" not in checks["openvino/fp16"]["reason"]
    assert "model.fp16.bin" in checks["openvino/fp16"]["reason"]
    others = [e["status"] for name, e in checks.items() if name != "openvino/fp16" and e["backend"] != "tensorrt"]
    assert len(others) == 7 and set(others) == {"passed"}
    assert doc["passed"] is False


def test_a_golden_file_altered_by_one_byte_is_refused(bundle_copy):
    golden = bundle_copy / "golden" / "golden.npz"
    data = bytearray(golden.read_bytes())
    data[-100] ^= 0x01
    golden.write_bytes(bytes(data))
    assert_user_error(run_cli("verify", bundle_copy, "--all", check_exit=None), "golden", "altered (sha256 mismatch)")
    with pytest.raises(UserError, match="altered"):
        Predictor(bundle_copy, backend="onnxruntime", precision="fp32")
    golden.unlink()
    assert_user_error(run_cli("verify", bundle_copy, check_exit=None), "golden file", "missing")


def test_first_use_checks_once_per_machine_and_later_loads_skip(bundle_copy):
    with Predictor(bundle_copy, backend="openvino", precision="fp32") as first:
        assert first.verification.passed and not first.verification.cached
        assert first.verification.metrics["agreement"] == 1.0
    with Predictor(bundle_copy, backend="openvino", precision="fp32") as second:
        assert second.verification.passed and second.verification.cached  # recorded: not run again
        assert second.verification.seconds == 0.0
    recorded = list((bundle_copy.parent / "bundle.device-cache" / "verify").rglob("*.json"))
    assert len(recorded) == 1
    doc = json.loads(recorded[0].read_text())
    assert doc["fingerprint"]["backend"] == "openvino" and doc["result"]["passed"] is True
    # Another engine is another check; "always" checks again; "off" does not check.
    with Predictor(bundle_copy, backend="onnxruntime", precision="fp16") as other:
        assert not other.verification.cached
    with Predictor(bundle_copy, backend="openvino", precision="fp32", verify="always") as again:
        assert not again.verification.cached
    with Predictor(bundle_copy, backend="openvino", precision="fp32", verify="off") as unchecked:
        assert unchecked.verification is None
        assert unchecked.verify().passed  # on demand
    # The cache of a machine with other facts (here: another OpenVINO version) is not this machine's.
    cache = DeviceCache(bundle_copy)
    fingerprint = doc["fingerprint"]
    assert cache.load_result(doc["engine"], fingerprint) is not None
    assert cache.load_result(doc["engine"], {**fingerprint, "backend_version": "2024.0.0"}) is None


def test_bundle_without_golden_samples(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["golden"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    with Predictor(bundle_copy, backend="onnxruntime", precision="fp32") as p:  # first-use: nothing to check with
        assert p.verification is None
    with pytest.raises(UserError, match="no golden samples"):
        Predictor(bundle_copy, backend="onnxruntime", precision="fp32", verify="always")
    assert_user_error(run_cli("verify", bundle_copy, check_exit=None), "no golden samples", "--golden")


def test_unknown_engine_name_and_verify_mode_are_user_errors(small_bundle):
    out, _ = small_bundle
    assert_user_error(run_cli("verify", out, "--engine", "onnxruntime/int4", check_exit=None),
                      "no engine 'onnxruntime/int4'", "onnxruntime/int8-cpu")
    with pytest.raises(UserError, match="unknown verify mode"):
        Predictor(out, verify="sometimes")


def test_tensorrt_without_tensorrt_says_how_to_get_it(small_bundle):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: tests/test_device_build.py covers the device path")
    out, _ = small_bundle
    assert_user_error(run_cli("verify", out, "--backend", "tensorrt", check_exit=None), "TensorRT is not installed")
    assert_user_error(run_cli("build-device", out, check_exit=None), "TensorRT is not installed")
    with pytest.raises(UserError, match="TensorRT is not installed"):
        Predictor(out, backend="tensorrt")
