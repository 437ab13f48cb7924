"""The one atomic writer: whole files or nothing, and the modes the user's umask gives ordinary new files."""

from __future__ import annotations

import os
import stat

import pytest

from lkca_deploy.bundle import BundleWriter
from lkca_runtime.fsutil import (
    atomic_copy,
    atomic_dir,
    atomic_output,
    atomic_write_text,
    publish,
    staging_dir,
)
from lkca_runtime.spec import PreprocessSpec


def modes(root):
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_every_writer_gives_the_umask_modes(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "a")
    atomic_copy(tmp_path / "a.txt", tmp_path / "b.txt")
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o700)
    atomic_copy(tmp_path / "run.sh", tmp_path / "copied.sh")  # a copied executable stays executable
    with atomic_output(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"c")
    with staging_dir(tmp_path / "ir.xml") as folder:
        (folder / "ir.xml").write_text("<xml/>")
        publish(folder / "ir.xml", tmp_path / "ir.xml")
    with atomic_dir(tmp_path / "d") as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "e.txt").write_text("e")
        (folder / "build.sh").write_text("#!/bin/sh\n")
        (folder / "build.sh").chmod(0o700)  # executables stay executable
    found = modes(tmp_path)
    del found["."]  # pytest's own folder
    assert found == {
        "a.txt": file_mode, "b.txt": file_mode, "run.sh": 0o700, "copied.sh": dir_mode, "c.bin": file_mode, "ir.xml": file_mode,
        "d": dir_mode, "d/sub": dir_mode, "d/sub/e.txt": file_mode, "d/build.sh": dir_mode,
    }


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_a_bundle_gets_the_umask_modes(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    (tmp_path / "src.onnx").write_bytes(b"not read")
    with BundleWriter(tmp_path / "bundle") as bundle:
        bundle.add_file(tmp_path / "src.onnx", "onnx/model.onnx", "onnx")
        bundle.set_model("tiny", "classification", {"dim": 4}, PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.5,), std=(0.5,), class_names=("a", "b")))
    found = modes(tmp_path / "bundle")
    assert found.pop(".") == dir_mode and found.pop("onnx") == dir_mode
    assert found and set(found.values()) == {file_mode}, found


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "x.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d"):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
