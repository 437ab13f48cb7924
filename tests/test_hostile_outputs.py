"""Output paths and data loss: nothing of the user's is deleted, concurrent writers are refused at the
rename, and every unwritable output (a file in the way, a directory, a read-only or full disk, an unwritable
cache) ends in one line naming the user's path, with nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile_common import assert_one_line, cli, leftovers, mean_classifier, tmpfs

from lkca_runtime.errors import UserError


@pytest.fixture(scope="module")
def nano_onnx(tmp_path_factory) -> Path:
    """lkca_vit_nano (deterministic random weights) exported with its metadata, as `export` writes it."""
    out = tmp_path_factory.mktemp("onnx") / "nano.onnx"
    outcome = cli("export", "lkca_vit_nano", "--out", out, "--lowering", "conv")
    assert outcome.code == 0, outcome.err
    return out


@pytest.fixture(scope="module")
def calib_npy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.npy"
    np.save(path, np.random.default_rng(0).standard_normal((16, 1, 32, 32)).astype(np.float32))
    return path


# ---------------------------------------------------------------- data loss


def test_train_never_deletes_a_directory_it_did_not_write(tmp_path):
    work = tmp_path / "w" / "p"
    work.mkdir(parents=True)
    (work / "thesis.txt").write_text("four years of work")
    assert_one_line(cli("train", "lkca_vit_nano", "--epochs", "1", "--out", work), str(work), "--force")
    assert (work / "thesis.txt").read_text() == "four years of work"
    # --force replaces a checkpoint, never a folder that is not one.
    assert_one_line(cli("train", "lkca_vit_nano", "--epochs", "1", "--out", work, "--force"), str(work),
                    "not a checkpoint")
    assert (work / "thesis.txt").read_text() == "four years of work"
    assert leftovers(work.parent) == []


def test_force_replaces_a_checkpoint_the_toolkit_wrote(nano_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(nano_checkpoint, ckpt)
    assert_one_line(cli("train", "lkca_vit_nano", "--epochs", "1", "--out", ckpt), "--force")
    outcome = cli("train", "lkca_vit_nano", "--epochs", "1", "--batch-size", "64", "--out", ckpt, "--force")
    assert outcome.code == 0, outcome.err
    assert '"epochs": 1' in (ckpt / "config.json").read_text()
    assert leftovers(tmp_path) == []


def test_a_directory_written_meanwhile_by_another_run_is_not_replaced(tmp_path):
    """Two runs on one --out: the later rename is refused, the earlier result stays (checked again at the rename)."""
    from lkca_runtime.fsutil import atomic_dir

    target = tmp_path / "bundle"
    with pytest.raises(UserError, match="meanwhile"), atomic_dir(target) as mine:
        (mine / "manifest.json").write_text("mine")
        with atomic_dir(target) as theirs:  # another writer that finishes first
            (theirs / "manifest.json").write_text("theirs")
    assert (target / "manifest.json").read_text() == "theirs"
    assert leftovers(tmp_path) == []


def test_a_bundle_written_meanwhile_is_not_replaced_even_with_force(tmp_path):
    from hostile_common import mean_classifier_bundle

    from lkca_deploy.bundle import BundleWriter
    from lkca_runtime.bundle import read_manifest

    target = tmp_path / "b"
    mean_classifier_bundle(target, tmp_path)
    first = (target / "manifest.json").read_text()
    with pytest.raises(UserError, match="meanwhile"), BundleWriter(target, force=True) as b:
        b.set_model("mean", "classification", {"name": "mean"}, read_manifest(target).spec)
        shutil.rmtree(target)
        mean_classifier_bundle(target, tmp_path)  # another run replaced it while this one worked
        first = (target / "manifest.json").read_text()
    assert (target / "manifest.json").read_text() == first
    assert leftovers(tmp_path) == []


def test_a_file_written_meanwhile_is_not_replaced(tmp_path):
    from lkca_runtime.fsutil import atomic_output

    target = tmp_path / "model.onnx"
    with pytest.raises(UserError, match="meanwhile"), atomic_output(target) as tmp:
        tmp.write_text("mine")
        target.write_text("theirs")
    assert target.read_text() == "theirs"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- unwritable outputs: one line, the user's path


def test_out_below_a_file_is_one_line(tmp_path, nano_onnx):
    blocker = tmp_path / "hostname"
    blocker.write_text("box\n")
    out = blocker / "x.onnx"
    assert_one_line(cli("export", "lkca_vit_nano", "--out", out, "--lowering", "conv"), str(blocker))
    assert_one_line(cli("lower", nano_onnx, "--out", out, "--strategy", "crop"), str(blocker))
    assert_one_line(cli("build", nano_onnx, "--backend", "onnxruntime", "--out", out), str(blocker))
    assert_one_line(cli("build", nano_onnx, "--backend", "openvino", "--out", blocker / "x.xml"), str(blocker))
    assert blocker.read_text() == "box\n"


def test_out_that_is_a_directory_is_one_line(tmp_path, nano_onnx):
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    assert_one_line(cli("lower", nano_onnx, "--out", folder, "--strategy", "crop"), str(folder), "directory")
    assert_one_line(cli("build", nano_onnx, "--backend", "onnxruntime", "--out", folder), str(folder), "directory")
    assert_one_line(cli("export", "lkca_vit_nano", "--out", folder, "--lowering", "conv"), str(folder), "directory")
    assert (folder / "keep.txt").read_text() == "keep"


def test_read_only_file_system_is_one_line(tmp_path, nano_onnx, calib_npy):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        assert_one_line(cli("lower", nano_onnx, "--out", ro / "x.onnx", "--strategy", "crop"), str(ro),
                        "read-only")
        assert_one_line(cli("quantize", nano_onnx, "--calib", calib_npy, "--out", ro / "x.int8.onnx"), str(ro),
                        "read-only")
        assert_one_line(cli("export", "lkca_vit_nano", "--out", ro / "x.onnx", "--lowering", "conv"), str(ro),
                        "read-only")


@pytest.mark.parametrize("command", ["lower", "build-onnxruntime", "build-openvino", "quantize"])
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, nano_onnx, calib_npy, command):
    with tmpfs(tmp_path / "small", size="64k") as small:
        args = {
            "lower": ["lower", nano_onnx, "--out", small / "x.onnx", "--strategy", "crop"],
            "build-onnxruntime": ["build", nano_onnx, "--backend", "onnxruntime", "--out", small / "x.onnx"],
            "build-openvino": ["build", nano_onnx, "--backend", "openvino", "--out", small / "x.xml"],
            "quantize": ["quantize", nano_onnx, "--calib", calib_npy, "--out", small / "x.int8.onnx"],
        }[command]
        line = assert_one_line(cli(*args), str(small), "full")
        assert "MiB" in line or "KiB" in line  # says how much was needed
        assert list(small.iterdir()) == []


def test_full_disk_during_pipeline_is_one_line_and_leaves_nothing(tmp_path, nano_checkpoint):
    with tmpfs(tmp_path / "small", size="256k") as small:
        outcome = cli("pipeline", nano_checkpoint, "--out", small / "b", "--backends", "onnxruntime",
                      "--precisions", "fp32")
        assert_one_line(outcome, str(small), "full")
        assert list(small.iterdir()) == []


def test_unwritable_cache_is_one_line_and_writes_nothing(tmp_path, nano_onnx, calib_npy):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out = tmp_path / "model.int8.onnx"
    assert_one_line(cli("quantize", nano_onnx, "--calib", calib_npy, "--out", out, "--flavor", "tensorrt",
                        "--cache", blocker / "calib.cache"), str(blocker))
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_bad_tensorrt_version_writes_nothing(tmp_path, nano_onnx, calib_npy):
    out = tmp_path / "model.int8.onnx"
    assert_one_line(cli("quantize", nano_onnx, "--calib", calib_npy, "--out", out, "--flavor", "tensorrt",
                        "--cache", tmp_path / "c.cache", "--tensorrt-version", "banana"), "banana")
    assert not out.exists() and not (tmp_path / "c.cache").exists()
    assert leftovers(tmp_path) == []


def test_errors_name_the_users_path_not_a_temp_file(tmp_path):
    """An output the backend cannot open is reported under the name the user gave."""
    from lkca_runtime.fsutil import atomic_output

    target = tmp_path / "model.onnx"
    with pytest.raises(UserError) as caught, atomic_output(target) as tmp:
        raise UserError(f"onnxruntime cannot open {tmp.name}: broken")
    assert str(caught.value) == "onnxruntime cannot open model.onnx: broken"
    with pytest.raises(UserError) as caught, atomic_output(target) as tmp:
        raise UserError(f"cannot read {tmp}: broken")
    assert str(caught.value) == f"cannot read {target}: broken"


# ---------------------------------------------------------------- external data


def test_onnx_with_external_data_builds_for_onnxruntime_into_another_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(str(mean_classifier(src / "tmp.onnx")))
    onnx.save_model(model, str(src / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.weights", size_threshold=0)
    (src / "tmp.onnx").unlink()
    out = tmp_path / "elsewhere" / "model.onnx"
    outcome = cli("build", src / "ext.onnx", "--backend", "onnxruntime", "--out", out)
    assert outcome.code == 0, outcome.err
    shutil.rmtree(src)  # the artifact must not read the source folder's data file
    from lkca_deploy.backends.registry import get_backend

    runner = get_backend("onnxruntime").load(out)
    logits = runner(np.full((1, 1, 8, 8), 0.5, np.float32))
    np.testing.assert_allclose(logits, [[-8.0, 0.0, 0.0]], atol=1e-6)
