"""Sliding-window segmentation math (masks.py), on plain arrays: coverage, placement, sizes, bad strides."""

from itertools import pairwise

import numpy as np
import pytest

from lkca_deploy.data.spec import PreprocessSpec
from lkca_deploy.errors import UserError
from lkca_deploy.masks import covering_size, slide_logits, stride_pair, window_origins

SPEC = PreprocessSpec((64, 64), 1, (0.5,), (0.25,), class_names=("a", "b"), task="segmentation")


@pytest.mark.parametrize("length, window, stride", [(100, 64, 43), (64, 64, 43), (65, 64, 1), (513, 64, 64)])
def test_windows_cover_every_pixel_and_end_flush(length, window, stride):
    origins = window_origins(length, window, stride)
    covered = np.zeros(length, bool)
    for o in origins:
        covered[o : o + window] = True
    assert covered.all() and origins[0] == 0 and origins[-1] + window == max(length, window)
    assert all(0 < b - a <= stride for a, b in pairwise(origins))


def test_a_short_side_fits_one_window_and_the_aspect_is_kept():
    assert covering_size((64, 64), (64, 64)) == (64, 64)
    assert covering_size((30, 40), (64, 64)) == (64, 85)  # upscaled until the short side fits
    assert covering_size((1000, 500), (64, 64)) == (128, 64)  # downscaled to the short side
    assert covering_size((10, 10), (32, 64)) == (64, 64)  # a non-square window: both sides fit


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


def test_strides_are_checked_against_the_window():
    assert stride_pair(None, SPEC) == (43, 43)
    assert stride_pair(32, SPEC) == (32, 32)
    for bad in (0, 65):
        with pytest.raises(UserError, match="--stride must be 1..64"):
            stride_pair(bad, SPEC)
