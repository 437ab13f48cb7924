"""BundleWriter, read_manifest and require_hashes on small real files (no models needed)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from lkca_deploy.bundle import BundleWriter
from lkca_runtime.bundle import FORMAT, MANIFEST, engine_files, read_manifest, require_hashes, safe_relpath
from lkca_runtime.errors import UserError
from lkca_runtime.spec import PreprocessSpec

SPEC = PreprocessSpec(input_size=(8, 8), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, class_names=("a", "b"))


def _set_model(b: BundleWriter) -> None:
    b.set_model("tiny", "classification", {"dim": 4}, SPEC)


def _write_bundle(out: Path, force: bool = False, payload: bytes = b"onnx bytes") -> Path:
    with BundleWriter(out, force=force) as b:
        _set_model(b)
        (b.path / "onnx").mkdir()
        (b.path / "onnx" / "model.onnx").write_bytes(payload)
        b.register("onnx/model.onnx", "onnx")
        b.add_engine("onnxruntime", "fp32", "onnx/model.onnx", passed=True, p50_ms={1: 0.5, 32: 4.0})
    return out


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_manifest_lists_every_file_with_its_hash(tmp_path):
    src = tmp_path / "report.json"
    src.write_text('{"passed": true}')
    out = tmp_path / "bundle"
    with BundleWriter(out) as b:
        _set_model(b)
        (b.path / "model.onnx").write_bytes(b"\x08\x07model")
        b.register("./model.onnx", "onnx")
        b.add_file(src, "reports/report.json", "report")
        b.add_engine("onnxruntime", "fp32", "model.onnx", lowering="crop", p50_ms={"1": 0.25})
        b.set_versions({"onnxruntime": "1.0"})
        b.set_extra(data="digits")
        assert not (b.path / MANIFEST).exists()  # written last, on exit
        assert not out.exists()  # built beside the target, not in it
    doc = json.loads((out / MANIFEST).read_text())
    assert doc["format"] == FORMAT and doc["toolkit_version"] and doc["created_utc"].endswith("+00:00")
    assert doc["model"] == {"name": "tiny", "task": "classification", "config": {"dim": 4}}
    assert PreprocessSpec.from_dict(doc["preprocessing"]) == SPEC
    assert doc["class_names"] == ["a", "b"] and doc["input_shape"] == [3, 8, 8]
    assert doc["versions"] == {"onnxruntime": "1.0"} and doc["data"] == "digits"
    by_path = {a["path"]: a for a in doc["artifacts"]}
    assert set(by_path) == {"model.onnx", "reports/report.json"}
    for rel, entry in by_path.items():
        data = (out / rel).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size_bytes"] == len(data)
    assert by_path["reports/report.json"]["kind"] == "report"
    (engine,) = doc["engines"]
    assert engine == {
        "backend": "onnxruntime",
        "precision": "fp32",
        "lowering": "crop",
        "quantizer": None,
        "artifact": "model.onnx",
        "passed": None,
        "p50_ms": {"1": 0.25},
        "files": [],
    }
    manifest = read_manifest(out)
    assert (
        manifest.task == "classification" and manifest.spec == SPEC and manifest.extra == {"data": "digits"}
    )
    require_hashes(out, manifest)
    assert _leftovers(tmp_path, "bundle") == []


def test_existing_target_needs_force_and_force_replaces(tmp_path):
    out = _write_bundle(tmp_path / "b", payload=b"first")
    with pytest.raises(UserError, match="exists; pass --force to replace it"):
        _write_bundle(out, payload=b"second")
    assert (out / "onnx" / "model.onnx").read_bytes() == b"first"
    _write_bundle(out, force=True, payload=b"second")
    assert (out / "onnx" / "model.onnx").read_bytes() == b"second"
    require_hashes(out, read_manifest(out))
    assert _leftovers(tmp_path, "b") == []


def test_force_never_replaces_something_that_is_not_a_bundle(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not a bundle"):
        _write_bundle(precious, force=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    _write_bundle(empty, force=True)
    assert (empty / MANIFEST).is_file()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_inside_leaves_no_temp_dir_and_old_bundle_intact(tmp_path, error):
    out = _write_bundle(tmp_path / "b", payload=b"old")
    before = (out / MANIFEST).read_text()
    with pytest.raises(error), BundleWriter(out, force=True) as b:
        _set_model(b)
        (b.path / "half.onnx").write_bytes(b"half")
        raise error("interrupted")
    assert (out / MANIFEST).read_text() == before and (out / "onnx" / "model.onnx").read_bytes() == b"old"
    assert not (out / "half.onnx").exists()
    assert _leftovers(tmp_path, "b") == []


def test_failure_while_writing_the_manifest_leaves_nothing(tmp_path):
    out = tmp_path / "fresh"
    with pytest.raises(ValueError, match="never registered"), BundleWriter(out) as b:
        _set_model(b)
        b.add_engine("openvino", "fp32", "openvino/model.xml")  # the artifact was never added
    assert not out.exists() and _leftovers(tmp_path, "fresh") == []


def test_a_bundle_needs_its_model(tmp_path):
    with pytest.raises(ValueError, match="set_model"), BundleWriter(tmp_path / "b"):
        pass
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("rel", ["../escape.onnx", "/etc/passwd", "a/../../b", "", "~/x", MANIFEST])
def test_paths_leaving_the_bundle_are_refused(tmp_path, rel):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(ValueError), BundleWriter(tmp_path / "b") as b:
        _set_model(b)
        b.add_file(src, rel, "onnx")
    assert not (tmp_path / "escape.onnx").exists() and not (tmp_path / "b").exists()
    assert safe_relpath("./a//b.onnx") == "a/b.onnx"


def test_unknown_kind_backend_or_precision_is_a_bug(tmp_path):
    with BundleWriter(tmp_path / "b") as b:
        _set_model(b)
        (b.path / "m.onnx").write_bytes(b"m")
        with pytest.raises(ValueError, match="kind"):
            b.register("m.onnx", "pickle")
        with pytest.raises(ValueError, match="backend"):
            b.add_engine("tflite", "fp32", "m.onnx")
        with pytest.raises(ValueError, match="precision"):
            b.add_engine("onnxruntime", "int4", "m.onnx")
        with pytest.raises(ValueError, match="no such file"):
            b.register("absent.onnx", "onnx")


def test_add_artifact_brings_sidecar_and_weights_and_the_engine_lists_them(tmp_path):
    built = tmp_path / "built"
    built.mkdir()
    (built / "model.fp32.xml").write_text("<net/>")
    (built / "model.fp32.bin").write_bytes(b"\0" * 16)
    sidecar = {"backend": "openvino", "weights": {"file": "model.fp32.bin"}}
    (built / "model.fp32.xml.json").write_text(json.dumps(sidecar))
    out = tmp_path / "b"
    with BundleWriter(out) as b:
        _set_model(b)
        added = b.add_artifact(built / "model.fp32.xml", "openvino", "openvino-ir")
        b.add_engine("openvino", "fp32", "openvino/model.fp32.xml", passed=True)
    assert added == ["openvino/model.fp32.xml", "openvino/model.fp32.xml.json", "openvino/model.fp32.bin"]
    manifest = read_manifest(out)
    kinds = {a["path"]: a["kind"] for a in manifest.artifacts}
    assert (
        kinds["openvino/model.fp32.bin"] == "openvino-weights"
        and kinds["openvino/model.fp32.xml.json"] == "sidecar"
    )
    (engine,) = manifest.engines
    assert engine_files(manifest, engine) == added


def test_verify_names_the_altered_or_missing_file(tmp_path):
    out = _write_bundle(tmp_path / "b", payload=b"0123456789")
    manifest = read_manifest(out)
    model = out / "onnx" / "model.onnx"
    model.write_bytes(b"0123456780")  # same size, other bytes: only the hash can tell
    with pytest.raises(
        UserError, match=r"^bundle file onnx/model.onnx was altered \(sha256 mismatch\): rebuild"
    ):
        require_hashes(out, manifest)
    model.unlink()
    with pytest.raises(UserError, match="bundle file onnx/model.onnx is missing"):
        require_hashes(out, manifest, ["onnx/model.onnx"])
    with pytest.raises(UserError, match="lists no file other.onnx"):
        require_hashes(out, manifest, ["other.onnx"])


def test_symlink_out_of_the_bundle_is_refused(tmp_path):
    out = _write_bundle(tmp_path / "b")
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"onnx bytes")
    (out / "onnx" / "model.onnx").unlink()
    os.symlink(outside, out / "onnx" / "model.onnx")
    with pytest.raises(UserError, match="links outside the bundle"):
        require_hashes(out, read_manifest(out))


def test_read_manifest_refuses_what_is_not_a_bundle(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(UserError, match="is not a bundle: it has no manifest.json"):
        read_manifest(tmp_path)
    out = _write_bundle(tmp_path / "b")
    doc = json.loads((out / MANIFEST).read_text())

    def broken(text: str, pattern: str) -> None:
        (out / MANIFEST).write_text(text)
        with pytest.raises(UserError, match=pattern):
            read_manifest(out)

    broken('{"format": "lkca', "corrupt")
    broken(json.dumps({**doc, "format": "other/2"}), "format 'other/2'")
    broken(json.dumps({k: v for k, v in doc.items() if k != "engines"}), "corrupt")
    escaping = {**doc, "artifacts": [{**doc["artifacts"][0], "path": "../../etc/passwd"}]}
    broken(json.dumps(escaping), "leaves the bundle")
