"""TensorRT engines built on the device from the bundle: every decision tested here without a GPU (recipe, settings,
key, adoption of a script-built engine); the build itself runs only where TensorRT and a GPU are."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from test_fingerprint import jetson_tree

from lkca_runtime.backends.trtexec import SCRIPT_VERSIONS, TensorRTSettings, trtexec_command
from lkca_runtime.bundle import read_manifest
from lkca_runtime.device_build import (
    _remove_script_output,
    build_arguments,
    build_key,
    choose_build,
    device_builds,
    gpu_driver,
    script_engine,
)
from lkca_runtime.errors import UserError

HERE = {"gpu_name": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt_version": "10.3.0", "driver": "L4T 36.4.0"}


def has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_bundle_carries_a_recipe_per_tensorrt_precision(small_bundle):
    manifest = read_manifest(small_bundle[0])
    builds = {b["precision"]: b for b in device_builds(manifest)}
    assert set(builds) == {"fp32", "fp16", "int8"}
    for precision, build in builds.items():
        for rel in (build["onnx"], build["script"], *([build["calib_cache"]] if build["calib_cache"] else [])):
            assert manifest.artifact(rel) is not None, rel  # listed with its hash like every file
        assert build["settings"] == TensorRTSettings(precision).to_dict()
        assert build["golden"]["tolerance"]
    assert builds["int8"]["calib_cache"].endswith(".calib.cache")
    # TensorRT documents INT8 grouped convs for 4 channels per group, not 1: its INT8 ONNX has the MatMul mixer
    grouped = {p: [n.name for n in onnx.load(str(small_bundle[0] / b["onnx"])).graph.node
                   if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
               for p, b in builds.items()}
    assert grouped["int8"] == [] and len(grouped["fp32"]) == len(grouped["fp16"]) > 0, grouped
    assert choose_build(manifest)["precision"] == "fp32"  # without timings, the most exact
    assert choose_build(manifest, "int8") == builds["int8"]
    with pytest.raises(UserError, match="no TensorRT ONNX at bf16"):
        choose_build(manifest, "bf16")


def test_the_device_builds_with_the_settings_the_script_carries(small_bundle, tmp_path):
    bundle = small_bundle[0]
    manifest = read_manifest(bundle)
    for build in device_builds(manifest):
        onnx_path, device, options = build_arguments(build, bundle, tmp_path)
        assert onnx_path == bundle / build["onnx"] and onnx_path.is_file() and device is None
        settings = TensorRTSettings.from_options(build["precision"], device, **options)
        assert replace(settings, timing_cache=None) == TensorRTSettings.from_dict(build["settings"])
        assert Path(settings.timing_cache).parent == tmp_path  # kept with the engine being built, not the bundle
        # The script in the bundle runs trtexec with exactly these settings (and its own timing cache file).
        engine = bundle / build["engine"]
        scripted = replace(TensorRTSettings.from_dict(build["settings"]), timing_cache=f"{engine.stem}.timing.cache")
        line = trtexec_command(onnx_path, scripted, engine_path=engine, tensorrt_version=SCRIPT_VERSIONS["10"],
                               relative_to=onnx_path.parent)
        assert f"exec {line}" in (bundle / build["script"]).read_text()


def test_every_fact_of_the_key_makes_another_engine():
    build = {"settings": TensorRTSettings("fp16").to_dict()}
    base = build_key(build, HERE, "ab" * 32)
    assert build_key(build, dict(HERE), "ab" * 32) == base
    for fact, value in (("gpu_name", "Xavier"), ("compute_capability", "7.2"), ("tensorrt_version", "10.7.0"),
                        ("driver", "L4T 36.3.0")):
        assert build_key(build, {**HERE, fact: value}, "ab" * 32) != base, fact
    assert build_key(build, HERE, "cd" * 32) != base
    assert build_key({"settings": TensorRTSettings("fp16", max_batch=8).to_dict()}, HERE, "ab" * 32) != base


def test_driver_from_nvidia_smi_else_the_l4t_release(tmp_path):
    assert gpu_driver(0, gpus=[{"name": "NVIDIA H100", "driver": "570.86.15"}], root=tmp_path) == "570.86.15"
    jetson = jetson_tree(tmp_path / "orin")
    assert gpu_driver(0, gpus=[{"name": "Orin (nvgpu)", "driver": "[N/A]"}], root=jetson) == "L4T 36.4.0"
    assert gpu_driver(0, gpus=[], root=jetson) == "L4T 36.4.0"
    assert gpu_driver(0, gpus=[], root=tmp_path / "empty") is None


def test_an_engine_the_script_wrote_is_found_and_removed_from_the_bundle_once_adopted(small_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle[0], bundle)
    manifest = read_manifest(bundle)
    build = choose_build(manifest, "fp16")
    assert script_engine(bundle, manifest, build) is None
    engine = bundle / build["engine"]
    engine.write_bytes(b"what trtexec serialized")
    timing = engine.with_name(f"{engine.stem}.timing.cache")
    timing.write_bytes(b"tactics")
    assert script_engine(bundle, manifest, build) == engine
    _remove_script_output(bundle, manifest, engine)
    assert not engine.exists() and not timing.exists()
    assert (bundle / build["onnx"]).is_file()  # listed files are never touched


@pytest.mark.skipif(not has_tensorrt(), reason="TensorRT is not installed here (it needs an NVIDIA GPU: "
                                               "pip install tensorrt, or JetPack on a Jetson)")
def test_build_on_this_device_then_the_cache_serves_it(small_bundle, tmp_path):
    from lkca_runtime.bundle import engine_name
    from lkca_runtime.device_build import here_facts
    from lkca_runtime.predictor import Predictor
    from lkca_runtime.records import DeviceCache
    from lkca_runtime.verify import build_device_engines

    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle[0], bundle)
    checks = build_device_engines(bundle, precision="fp16")
    assert [c.status for c in checks] == ["passed"], [c.failures for c in checks]
    manifest = read_manifest(bundle)
    build = choose_build(manifest, "fp16")
    key = build_key(build, here_facts(), manifest.artifact(build["onnx"])["sha256"])
    cache = DeviceCache(bundle)
    folder = cache.find_engine(engine_name(build), key)
    assert folder is not None and json.loads((folder / "entry.json").read_text())["check"]["status"] == "passed"
    assert cache.find_engine(engine_name(build), {**key, "tensorrt_version": "0.0"}) is None
    with Predictor(bundle, backend="tensorrt", precision="fp16") as p:
        assert p.engine["device_built"] and p.verification.passed
