"""Calibration sources: real files on disk (PNG, JPEG, BMP, .npy, .npz) and the embedded digits data set."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lkca_deploy.calibration.sources import MIN_RELIABLE_SAMPLES, load_calibration
from lkca_deploy.data import load_arrays
from lkca_runtime.errors import UserError
from lkca_runtime.spec import PreprocessSpec

RGB = PreprocessSpec(input_size=(16, 16), channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
DIGITS = PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.5,), std=(0.5,))


def save_image(path, size=(20, 12), mode="RGB", seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """Five real images (PNG, JPEG, BMP, one grayscale, one in a sub-folder), a truncated PNG and a text file."""
    folder = tmp_path / "calib"
    save_image(folder / "a.png", seed=1)
    save_image(folder / "b.jpg", seed=2)
    save_image(folder / "c.bmp", seed=3)
    save_image(folder / "gray.png", mode="L", seed=4)
    save_image(folder / "nested" / "d.png", size=(64, 64), seed=5)
    corrupt = save_image(folder / "corrupt.png", seed=6)
    corrupt.write_bytes(corrupt.read_bytes()[:60])
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_images_are_preprocessed_and_bad_files_skipped_and_counted(image_folder):
    calibration = load_calibration(image_folder, RGB, samples=50)
    assert calibration.array.shape == (5, 3, 16, 16)
    assert calibration.array.dtype == np.float32
    assert calibration.skipped == 2
    assert any("skipped 2" in w for w in calibration.warnings)
    assert any("only 5 calibration samples" in w for w in calibration.warnings)
    assert any(f"below {MIN_RELIABLE_SAMPLES}" in w for w in calibration.warnings)


def test_a_grayscale_image_is_converted_for_an_rgb_spec(tmp_path):
    save_image(tmp_path / "gray.png", size=(16, 16), mode="L", seed=7)
    calibration = load_calibration(tmp_path, RGB)
    expected = RGB.preprocess([Image.open(tmp_path / "gray.png").convert("RGB")])
    np.testing.assert_array_equal(calibration.array, expected)
    np.testing.assert_array_equal(calibration.array[0, 0], calibration.array[0, 2])  # gray: R == B


def test_folder_subset_is_seeded(image_folder):
    first = load_calibration(image_folder, RGB, samples=3, seed=1).array
    assert first.shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(first, load_calibration(image_folder, RGB, samples=3, seed=1).array)
    others = [load_calibration(image_folder, RGB, samples=3, seed=s).array for s in range(2, 6)]
    assert any(not np.array_equal(first, other) for other in others)


def test_a_folder_with_train_and_test_is_calibrated_on_train_only(tmp_path):
    save_image(tmp_path / "train" / "cat" / "1.png", seed=8)
    save_image(tmp_path / "test" / "cat" / "2.png", seed=9)
    calibration = load_calibration(tmp_path, RGB)
    assert len(calibration) == 1
    np.testing.assert_array_equal(calibration.array, RGB.preprocess([Image.open(tmp_path / "train/cat/1.png")]))
    assert any("train" in w for w in calibration.warnings)


def test_a_folder_without_images_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no readable image"):
        load_calibration(tmp_path, RGB)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(UserError, match="1 files skipped"):
        load_calibration(tmp_path, RGB)


def test_npy_is_subsampled_with_a_seed(tmp_path):
    array = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", array)
    calibration = load_calibration(tmp_path / "x.npy", RGB, samples=10, seed=3)
    assert calibration.array.shape == (10, 3, 16, 16)
    rows = {row.tobytes() for row in array}
    assert all(row.tobytes() in rows for row in calibration.array)
    assert len({row.tobytes() for row in calibration.array}) == 10
    np.testing.assert_array_equal(calibration.array, load_calibration(tmp_path / "x.npy", RGB, samples=10, seed=3).array)


def test_npz_prefers_key_x_and_otherwise_takes_the_first_array(tmp_path):
    x = np.ones((4, 3, 16, 16), np.float64)
    np.savez(tmp_path / "keyed.npz", labels=np.arange(4), x=x)
    np.savez(tmp_path / "plain.npz", x)
    for name in ("keyed.npz", "plain.npz"):
        calibration = load_calibration(tmp_path / name, RGB, samples=600)
        assert calibration.array.dtype == np.float32 and calibration.array.shape == (4, 3, 16, 16)
        assert any("only 4 calibration samples" in w for w in calibration.warnings)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 1, 16, 16), np.float32), r"\(N, 3, 16, 16\)"),
        (np.zeros((4, 3, 16), np.float32), "shape"),
        (np.zeros((4, 3, 16, 16), np.uint8), "float"),
        (np.zeros((0, 3, 16, 16), np.float32), "no samples"),
    ],
)
def test_arrays_that_do_not_fit_the_spec_are_user_errors(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(UserError, match=message):
        load_calibration(tmp_path / "bad.npy", RGB)


def test_pickled_corrupt_and_unknown_sources_are_user_errors(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    for bad in ("objects.npy", "broken.npz", "model.onnx", "missing.npy"):
        with pytest.raises(UserError):
            load_calibration(tmp_path / bad, RGB)
    with pytest.raises(UserError, match="unknown data set"):
        load_calibration("no-such-data-set", RGB)
    with pytest.raises(UserError, match="at least one"):
        load_calibration(tmp_path / "objects.npy", RGB, samples=0)


def test_a_data_set_calibrates_on_its_training_split_never_its_test_split():
    calibration = load_calibration("digits", DIGITS, samples=5000)
    train, _ = load_arrays("digits", "train", DIGITS)
    test, _ = load_arrays("digits", "test", DIGITS)
    assert calibration.array.shape == train.shape and calibration.array.dtype == np.float32
    test_rows = {row.tobytes() for row in test}
    train_rows = {row.tobytes() for row in train}
    assert not any(row.tobytes() in test_rows for row in calibration.array)
    assert all(row.tobytes() in train_rows for row in calibration.array)
    assert "train" in calibration.source
    assert any(f"only {len(train)} calibration samples" in w for w in calibration.warnings)


def test_a_data_set_subset_is_seeded_and_quiet_above_300_samples():
    first = load_calibration("digits", DIGITS, samples=400, seed=1)
    assert first.array.shape == (400, 1, 8, 8) and first.warnings == []
    np.testing.assert_array_equal(first.array, load_calibration("digits", DIGITS, samples=400, seed=1).array)
    assert not np.array_equal(first.array, load_calibration("digits", DIGITS, samples=400, seed=2).array)
