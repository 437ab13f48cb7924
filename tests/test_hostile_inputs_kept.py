"""Outputs never destroy inputs: no command writes onto one of its inputs (the same file, through a symlink or a
hard link, or a folder holding it) nor inside a bundle unless it writes bundles, refused in one line before any
work; multi-file outputs (masks, reports) appear whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hostile_common import (
    assert_one_line,
    cli,
    leftovers,
    mean_classifier,
    mean_classifier_bundle,
    segmenter_bundle,
)
from PIL import Image

from lkca_runtime.errors import UserError


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    return segmenter_bundle(root / "SEG", root)


@pytest.fixture(scope="module")
def cls_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    return mean_classifier_bundle(root / "B", root)


def _gray_pngs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"img{i:02d}.png")
        Image.fromarray(np.full((8, 8), 6 * i, np.uint8)).save(paths[-1])
    return paths


def test_an_output_onto_its_own_input_is_refused_and_the_input_kept(tmp_path):
    model = mean_classifier(tmp_path / "M.onnx")
    original = model.read_bytes()
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).uniform(-1, 1, (8, 1, 8, 8)).astype(np.float32))
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    hard = tmp_path / "hard.onnx"
    os.link(model, hard)
    for args in (["lower", model, "--out", model, "--strategy", "crop"],
                 ["quantize", model, "--calib", calib, "--out", model],
                 ["build", model, "--backend", "onnxruntime", "--out", model],
                 ["lower", model, "--out", link, "--strategy", "crop"],  # the same file through a symlink
                 ["build", model, "--backend", "onnxruntime", "--out", hard],  # and through a hard link
                 ["quantize", model, "--calib", calib, "--out", calib]):  # the calibration data is an input too
        line = assert_one_line(cli(*args), "input")
        assert "destroy" in line
    assert model.read_bytes() == original
    assert np.load(calib).shape == (8, 1, 8, 8)


def test_an_output_inside_a_bundle_is_refused_and_the_bundle_still_serves(cls_bundle, seg_bundle, tmp_path):
    from lkca_runtime.bundle import read_manifest, require_whole

    model = mean_classifier(tmp_path / "M.onnx")
    image = _gray_pngs(tmp_path / "images", 1)[0]
    assert_one_line(cli("lower", model, "--out", cls_bundle / "onnx" / "extra.onnx", "--strategy", "crop"),
                    "inside the bundle")
    assert_one_line(cli("parity", cls_bundle, "--out", cls_bundle / "reports"), "inside the bundle")
    assert_one_line(cli("predict", seg_bundle, image, "--save-mask", seg_bundle), "input")
    assert_one_line(cli("predict", seg_bundle, image, "--save-mask", seg_bundle / "masks"), "inside the bundle")
    for bundle in (cls_bundle, seg_bundle):
        require_whole(bundle, read_manifest(bundle))  # nothing was added: it still serves


def test_a_mask_never_replaces_the_image_it_comes_from(seg_bundle, tmp_path):
    images = _gray_pngs(tmp_path / "in", 1)
    twin = images[0].with_name("img00.mask.png")  # what the mask of img00.png would be called
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(twin)
    before = twin.read_bytes()
    assert_one_line(cli("predict", seg_bundle, images[0], twin, "--save-mask", tmp_path / "in"), "img00.mask.png")
    assert twin.read_bytes() == before


def test_masks_appear_whole_or_not_at_all(seg_bundle, tmp_path):
    """40 images whose 35th is corrupt: the masks of the first chunk of 32 were written before it was read."""
    images = _gray_pngs(tmp_path / "in", 40)
    images[34].write_bytes(b"not a png")
    out = tmp_path / "masks"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line(cli("predict", seg_bundle, *images, "--save-mask", out), "img34.png")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert leftovers(tmp_path) == []
    fresh = tmp_path / "fresh"
    assert_one_line(cli("predict", seg_bundle, *images, "--save-mask", fresh), "img34.png")
    assert not fresh.exists() and leftovers(tmp_path) == []
    # and whole: every image's mask and overlay
    outcome = cli("predict", seg_bundle, *images[:3], "--save-mask", out, "--json")
    assert outcome.code == 0, outcome.err
    assert len(list(out.glob("*.png"))) == 6


def test_a_report_appears_whole_or_not_at_all(tmp_path):
    from lkca_deploy.reports.contract import EngineResult, Report
    from lkca_deploy.reports.render import write_report
    from lkca_runtime.metrics import classification_parity, with_verdict

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 3)).astype(np.float32)
    parity = with_verdict(classification_parity(ref, ref, ref.argmax(1)), "fp32", "classification")
    report = Report.on_this_machine("mean", "classification", [EngineResult("onnxruntime", "fp32", "conv",
                                                                           size_bytes=10, parity=parity)])
    out = tmp_path / "reports"
    (out / "report.html").mkdir(parents=True)  # the last of the three cannot be written
    with pytest.raises(UserError, match="report.html"):
        write_report(report, out)
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    (out / "report.html").rmdir()
    write_report(report, out)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
