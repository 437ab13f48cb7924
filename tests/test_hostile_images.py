"""Input images and arrays: 16-bit images are scaled, never clipped; non-finite or complex arrays are
refused; folder data is converted to the model's channels everywhere, as the Predictor converts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hostile_common import cli, mean_classifier_bundle
from PIL import Image

from lkca_runtime.errors import UserError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mean")
    return mean_classifier_bundle(root / "bundle", root)


def _mid_gray() -> np.ndarray:
    """An 8x8 ramp around mid-gray: the mean classifier says "mid"; clipped to 255 it would say "bright"."""
    return np.linspace(70, 190, 64).reshape(8, 8).round().astype(np.uint8)


def test_16_bit_png_gives_the_8_bit_answer(bundle, tmp_path):
    from lkca_runtime.predictor import Predictor

    gray = _mid_gray()
    Image.fromarray(gray).save(tmp_path / "digit_8bit.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "digit_16bit.png")
    assert Image.open(tmp_path / "digit_16bit.png").mode.startswith("I")
    with Predictor(bundle, top_k=3) as p:
        eight, sixteen = p(tmp_path / "digit_8bit.png"), p(tmp_path / "digit_16bit.png")
    assert eight[0][0] == "mid"
    assert [label for label, _ in sixteen] == [label for label, _ in eight]
    np.testing.assert_allclose([s for _, s in sixteen], [s for _, s in eight], rtol=1e-5)
    outcome = cli("predict", bundle, tmp_path / "digit_16bit.png", "--json")
    assert outcome.code == 0, outcome.err
    assert json.loads(outcome.out)[0]["label"] == "mid"


def test_uint16_arrays_are_scaled_not_clipped(bundle):
    from lkca_runtime.predictor import Predictor

    gray = _mid_gray()
    with Predictor(bundle, top_k=3) as p:
        expected = p(gray)
        for same in (gray.astype(np.uint16) * 257, np.repeat(gray[..., None].astype(np.uint16) * 257, 3, axis=2)):
            got = p(same)
            assert got[0][0] == "mid"
            np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5)


@pytest.mark.parametrize("make", [
    lambda g: np.full(g.shape, np.nan, np.float32),
    lambda g: np.where(g > 128, np.inf, g.astype(np.float64)),
    lambda g: g.astype(np.complex64),
    lambda g: np.array([[True, False]] * 4),
])
def test_non_finite_complex_or_boolean_arrays_are_refused(bundle, make):
    from lkca_runtime.predictor import Predictor

    with Predictor(bundle) as p, pytest.raises(UserError, match="image #0"):
        p(make(_mid_gray()))


# ---------------------------------------------------------------- folders, converted to the model's channels


def _digit_folder(root: Path, per_class: int = 4) -> list[tuple[Path, int]]:
    """An ImageFolder of grayscale digit PNGs (train/ and test/, one folder per class); the test files."""
    from lkca_deploy.data.datasets import digits_images

    images, labels = digits_images()
    tests = []
    for split, offset in (("train", 0), ("test", 500)):
        for c in range(10):
            picks = np.flatnonzero(labels == c)[offset // 50 : offset // 50 + per_class]
            folder = root / split / str(c)
            folder.mkdir(parents=True)
            for i in picks:
                path = folder / f"{i}.png"
                Image.fromarray(images[i]).save(path)  # mode L
                if split == "test":
                    tests.append((path, c))
    return tests


def test_evaluate_a_grayscale_image_folder_with_a_grayscale_model(nano_checkpoint, tmp_path):
    import torch

    from lkca_deploy.checkpoint import load_checkpoint

    tests = _digit_folder(tmp_path / "digits")
    outcome = cli("evaluate", nano_checkpoint, "--data", tmp_path / "digits", "--json")
    assert outcome.code == 0, outcome.err
    top1 = json.loads(outcome.out)["top1"]
    # The same files through the checkpoint's own preprocessing, as the Predictor runs them.
    model, ckpt = load_checkpoint(nano_checkpoint)
    x = ckpt.spec.preprocess([p for p, _ in tests])
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    assert top1 == pytest.approx(float(np.mean(pred == np.array([c for _, c in tests]))))


def test_evaluate_a_grayscale_mask_folder_with_a_grayscale_segmenter(tmp_path):
    from lkca_deploy.checkpoint import save_checkpoint
    from lkca_deploy.data.segmentation import open_segmentation_source
    from lkca_deploy.models.zoo import build_model, get_config

    source = open_segmentation_source("digit-scenes", "test")
    folder = tmp_path / "scenes"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(6):
        image, mask = source.read(i)
        Image.fromarray(np.asarray(image, np.uint8)).save(folder / "images" / f"{i}.png")
        Image.fromarray(np.asarray(mask, np.uint8)).save(folder / "masks" / f"{i}.png")
    config = get_config("lkca_seg_nano")
    spec = source.spec(config.img_size, "segmentation")
    ckpt = save_checkpoint(tmp_path / "seg", build_model(config).eval(), config, spec, {"data": "digit-scenes"})
    outcome = cli("evaluate", ckpt, "--data", folder, "--json")
    assert outcome.code == 0, outcome.err
    assert 0.0 <= json.loads(outcome.out)["miou"] <= 1.0


def test_a_grayscale_folder_is_read_as_one_channel_for_calibration(tmp_path):
    """Calibration from a folder already goes through the model's spec: the same conversion, kept."""
    from lkca_deploy.calibration.sources import load_calibration
    from lkca_runtime.spec import PreprocessSpec

    _digit_folder(tmp_path / "digits", per_class=1)
    spec = PreprocessSpec((8, 8), 1, (0.5,), (0.5,))
    cal = load_calibration(tmp_path / "digits", spec, samples=10)
    assert cal.array.shape == (10, 1, 8, 8)
