"""Images are read as a person sees them (EXIF orientation applied; transparency composited on the training data's
background, or refused with the reason), by one rule for the Predictor, data loading and calibration; every
preprocessing value and every file entry of a manifest is checked when the bundle opens, duplicates refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile_common import assert_one_line, cli, mean_classifier_bundle, one_engine_bundle
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from lkca_runtime.errors import UserError


def _halves_classifier(path: Path) -> Path:
    """1x8x8 -> (left, right): which half of the image is brighter."""
    w = np.zeros((64, 2), np.float32)
    cols = np.tile(np.arange(8), 8)
    w[cols < 4, 0], w[cols >= 4, 0] = 1.0, -1.0
    w[:, 1] = -w[:, 0]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "halves", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_phone_photo_is_classified_as_displayed(tmp_path):
    from lkca_runtime.predictor import Predictor
    from lkca_runtime.spec import PreprocessSpec

    spec = PreprocessSpec((8, 8), 1, (0.5,), (0.5,), class_names=("left", "right"))
    bundle = one_engine_bundle(tmp_path / "B", _halves_classifier(tmp_path / "halves.onnx"), spec)
    stored = np.zeros((16, 16), np.uint8)
    stored[:, :8] = 250  # bright on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotate 180 degrees to display, as a phone held upside down writes it
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    with Predictor(bundle, verify="off") as p:
        assert p(tmp_path / "photo.jpg")[0][0] == "right"  # as displayed
        assert p(stored)[0][0] == "left"  # an array has no orientation: as given


def _alpha_only(mode: str) -> Image.Image:
    """White ink whose shape is only in the alpha channel: opaque on the left half, transparent elsewhere."""
    alpha = np.zeros((8, 8), np.uint8)
    alpha[:, :4] = 255
    white = np.full((8, 8), 255, np.uint8)
    channels = [white, alpha] if mode == "LA" else [white, white, white, alpha]
    return Image.fromarray(np.stack(channels, axis=-1), mode)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_the_training_background_or_refused(tmp_path, mode):
    from lkca_runtime.predictor import Predictor

    path = tmp_path / f"ink.{mode}.png"
    _alpha_only(mode).save(path)
    with Predictor(mean_classifier_bundle(tmp_path / "B", tmp_path, background=0.0), verify="off") as p:
        assert p(path)[0][0] == "mid"  # half white on black; with the alpha dropped: all white, "bright"
    with Predictor(mean_classifier_bundle(tmp_path / "N", tmp_path), verify="off") as p, \
            pytest.raises(UserError, match="transparent"):
        p(path)


def test_one_rule_for_the_predictor_data_loading_and_calibration(tmp_path):
    from lkca_deploy.calibration.sources import load_calibration
    from lkca_deploy.data.datasets import read_image
    from lkca_runtime.predictor import Predictor
    from lkca_runtime.spec import BACKGROUNDS, PreprocessSpec

    folder = tmp_path / "calib"
    folder.mkdir()
    path = folder / "ink.png"
    _alpha_only("LA").save(path)
    spec = PreprocessSpec((8, 8), 1, (0.5,), (0.5,), background=BACKGROUNDS["digits"])
    with Predictor(mean_classifier_bundle(tmp_path / "B", tmp_path, background=0.0), verify="off") as p:
        served = p.preprocess(p.decode([path]))
    np.testing.assert_array_equal(spec.preprocess([read_image(path)]), served)  # training and evaluation
    np.testing.assert_array_equal(load_calibration(folder, spec, samples=1).array, served)


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.mark.parametrize("field, value, fragment", [
    ("std", [0.0], "std"),
    ("mean", [float("nan")], "mean"),
    ("resize", "lanczos9", "resize"),
    ("input_size", [8, -8], "input_size"),
    ("background", 3, "background"),
])
def test_every_preprocessing_value_is_checked_when_the_bundle_opens(tmp_path, field, value, fragment):
    from lkca_runtime.bundle import read_manifest

    bundle = mean_classifier_bundle(tmp_path / "B", tmp_path)
    doc = _manifest(bundle)
    doc["preprocessing"][field] = value
    (bundle / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=fragment):
        read_manifest(bundle)


def test_a_bad_manifest_is_one_line_and_never_a_nan(tmp_path):
    bundle = mean_classifier_bundle(tmp_path / "B", tmp_path)
    doc = _manifest(bundle)
    doc["preprocessing"]["std"] = [0.0]
    (bundle / "manifest.json").write_text(json.dumps(doc))
    image = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(image)
    outcome = cli("predict", bundle, image, "--json")
    assert_one_line(outcome, "manifest.json", "std")
    assert "NaN" not in outcome.out


def test_a_file_listed_twice_is_refused(tmp_path):
    from lkca_runtime.bundle import read_manifest

    bundle = mean_classifier_bundle(tmp_path / "B", tmp_path)
    doc = _manifest(bundle)
    first = doc["artifacts"][0]
    doc["artifacts"].append({**first, "sha256": "0" * 64})  # the second entry's hash was never checked
    (bundle / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="twice"):
        read_manifest(bundle)
    doc["artifacts"].pop()
    doc["engines"].append(dict(doc["engines"][0]))
    (bundle / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="twice"):
        read_manifest(bundle)
