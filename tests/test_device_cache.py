"""The device cache: results and engines are found only under exactly the facts they were stored with."""

import json

import pytest

from lkca_runtime.fingerprint import fingerprint_key
from lkca_runtime.records import DeviceCache, beside_bundle, safe_name

FP = {"format": 1, "cpu_model": "AMD EPYC 7B13", "isa_flags": ["avx2"], "gpus": [], "backend": "onnxruntime",
      "backend_version": "1.32.0", "jetson": None}
TRT = {"gpu_name": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt_version": "10.3.0",
       "driver": "L4T 36.4.0", "onnx_sha256": "ab" * 32, "settings": {"precision": "fp16"}}


@pytest.fixture
def bundle(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"format": "lkca-deploy-bundle/1"}\n')
    return folder


def test_results_are_keyed_by_engine_and_fingerprint(bundle, tmp_path):
    cache = DeviceCache(bundle, user_root=tmp_path / "user")
    assert cache.load_result("onnxruntime/fp32", FP) is None
    path = cache.record_result("onnxruntime/fp32", FP, {"passed": True, "agreement": 1.0})
    assert path.is_relative_to(tmp_path / "bundle.device-cache") and path.stem == fingerprint_key(FP)
    assert not any(p.name != "manifest.json" for p in bundle.iterdir())  # the bundle itself stays as written
    doc = cache.load_result("onnxruntime/fp32", FP)
    assert doc["result"] == {"passed": True, "agreement": 1.0} and doc["fingerprint"] == FP
    assert DeviceCache(bundle, user_root=tmp_path / "user").load_result("onnxruntime/fp32", FP) is not None
    assert cache.load_result("onnxruntime/fp16", FP) is None
    assert cache.load_result("onnxruntime/fp32", {**FP, "backend_version": "1.33.0"}) is None


def test_a_stored_result_whose_facts_differ_from_its_key_is_never_loaded(bundle, tmp_path):
    cache = DeviceCache(bundle, user_root=tmp_path / "user")
    path = cache.record_result("openvino/int8-nncf", FP, {"passed": True})
    doc = json.loads(path.read_text())
    doc["fingerprint"]["isa_flags"] = ["avx2", "avx512_vnni"]  # a file copied from another machine, renamed
    path.write_text(json.dumps(doc))
    assert cache.load_result("openvino/int8-nncf", FP) is None
    path.write_text("{ not json")
    assert cache.load_result("openvino/int8-nncf", FP) is None


def test_when_the_bundle_cannot_be_written_the_user_cache_is_used(bundle, tmp_path):
    # A file where the cache folder would go: that place cannot take the cache (as on a read-only mount).
    beside_bundle(bundle).write_text("in the way")
    user = tmp_path / "user"
    cache = DeviceCache(bundle, user_root=user)
    path = cache.record_result("onnxruntime/fp32", FP, {"passed": True})
    assert path.is_relative_to(user / cache.bundle_id)
    assert cache.load_result("onnxruntime/fp32", FP)["result"] == {"passed": True}
    # Another bundle (another manifest) has its own folder in the user cache.
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"format": "lkca-deploy-bundle/1", "x": 1}\n')
    beside_bundle(other).write_text("in the way")
    assert DeviceCache(other, user_root=user).load_result("onnxruntime/fp32", FP) is None


def test_engines_are_found_only_under_their_exact_key_and_intact(bundle, tmp_path):
    cache = DeviceCache(bundle, user_root=tmp_path / "user")
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"serialized plan")
    sidecar = tmp_path / "model.fp16.engine.json"
    sidecar.write_text("{}")
    folder = cache.store_engine("tensorrt/fp16", TRT, [engine, sidecar], extra={"verified": True})
    assert sorted(p.name for p in folder.iterdir()) == ["entry.json", "model.fp16.engine", "model.fp16.engine.json"]
    assert cache.find_engine("tensorrt/fp16", TRT) == folder
    assert cache.entry(folder)["verified"] is True
    for key, value in (("tensorrt_version", "10.7.0"), ("compute_capability", "8.6"), ("driver", "L4T 36.3.0"),
                       ("gpu_name", "Xavier"), ("onnx_sha256", "cd" * 32)):
        assert cache.find_engine("tensorrt/fp16", {**TRT, key: value}) is None, key
    (folder / "model.fp16.engine").write_bytes(b"serialized plan, truncated")  # damaged on disk
    assert cache.find_engine("tensorrt/fp16", TRT) is None


def test_safe_names():
    assert safe_name("onnxruntime/int8-cpu") == "onnxruntime-int8-cpu"
    assert safe_name("../..") == safe_name("") == "engine"  # never a path
    assert "/" not in safe_name("a/../b")
