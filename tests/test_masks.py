"""Sliding-window segmentation math (masks.py), on plain arrays: coverage, placement, sizes, bad strides."""

from itertools import pairwise

import numpy as np
import pytest

from lkca_runtime.errors import UserError
from lkca_runtime.masks import Slide, cli_slide, slide_logits, slide_options, window_origins


@pytest.mark.parametrize("length, window, stride", [(100, 64, 43), (64, 64, 43), (65, 64, 1), (513, 64, 64)])
def test_windows_cover_every_pixel_and_end_flush(length, window, stride):
    origins = window_origins(length, window, stride)
    covered = np.zeros(length, bool)
    for o in origins:
        covered[o : o + window] = True
    assert covered.all() and origins[0] == 0 and origins[-1] + window == max(length, window)
    assert all(0 < b - a <= stride for a, b in pairwise(origins))


def test_the_image_is_resized_for_windows_as_asked_and_always_fits_one():
    short_side = Slide().image_size
    assert short_side((64, 64), (64, 64)) == (64, 64)
    assert short_side((30, 40), (64, 64)) == (64, 85)  # upscaled until the short side fits
    assert short_side((1000, 500), (64, 64)) == (128, 64)  # downscaled to the short side
    assert short_side((10, 10), (32, 64)) == (64, 64)  # a non-square window: both sides fit
    own = Slide(scale=1).image_size
    assert own((1000, 500), (64, 64)) == (1000, 500)  # tiled at its own resolution
    assert own((30, 40), (64, 64)) == (64, 85)  # but never smaller than one window
    assert Slide(scale=0.5).image_size((1000, 500), (64, 64)) == (500, 250)


def test_window_averages_reproduce_a_pixelwise_model_exactly():
    # A model whose logits at a pixel depend on that pixel alone: every window agrees, so the average is exact,
    # and an uncovered or misplaced window would show as NaN or a wrong value.
    x = np.random.default_rng(0).standard_normal((2, 37, 53)).astype(np.float32)
    logits = slide_logits(x, lambda batch: np.concatenate([batch, -batch], axis=1), (16, 16), (5, 7), batch=3)
    np.testing.assert_allclose(logits, np.concatenate([x, -x]), rtol=1e-6)


def test_logits_at_a_lower_resolution_are_resized_to_the_window():
    x = np.ones((1, 32, 48), np.float32)
    logits = slide_logits(x, lambda batch: batch[:, :, ::4, ::4] * 3, (16, 16), (8, 8))
    assert logits.shape == (1, 32, 48)
    np.testing.assert_allclose(logits, 3.0, rtol=1e-6)


def test_window_options_are_checked():
    assert Slide().strides((64, 64)) == (43, 43) and Slide(32).strides((64, 64)) == (32, 32)
    for bad in (0, 65):
        with pytest.raises(UserError, match="--stride must be 1..64"):
            Slide(bad).strides((64, 64))
    with pytest.raises(UserError, match="--scale must be a positive factor"):
        Slide(scale=0)
    with pytest.raises(UserError, match="--stride and --scale set up sliding windows: add --slide"):
        cli_slide(False, 32, None)
    assert cli_slide(True, 32, 1.0) == Slide(32, 1.0) and cli_slide(False, None, None) is False
    assert slide_options(True, "segmentation", "") == Slide() and slide_options(False, "classification", "") is None
    with pytest.raises(UserError, match=r"\(--slide\) are for segmentation; x is a classification bundle"):
        slide_options(Slide(), "classification", "x is a classification bundle")


@pytest.mark.parametrize("shape, size", [((150, 32, 32), (512, 683)), ((11, 16, 16), (64, 64)), ((3, 9, 7), (5, 20))])
def test_upsampled_argmax_is_the_argmax_of_the_dense_bilinear_resize(shape, size):
    """Two taps per output row and column, row blocks, classes last: the same mask as the dense matrices."""
    from lkca_runtime.masks import bilinear_matrix, resize_bilinear, upsampled_argmax

    logits = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    dense = bilinear_matrix(size[0], shape[1]) @ logits @ bilinear_matrix(size[1], shape[2]).T
    np.testing.assert_allclose(resize_bilinear(logits, size), dense, atol=1e-5)
    mask = upsampled_argmax(logits, size)
    assert mask.shape == size and mask.dtype == np.int32
    near_tie = np.sort(dense, axis=0)[-1] - np.sort(dense, axis=0)[-2] < 1e-5  # float rounding may pick either
    assert np.array_equal(mask[~near_tie], dense.argmax(axis=0)[~near_tie])
