"""digit-scenes: deterministic, masks that label exactly the digits' ink, no overlap, test digits never in training."""

import numpy as np
import pytest

from lkca_deploy.data.datasets import digits_images, digits_split_indices
from lkca_deploy.data.scenes import CLASS_NAMES, INK_THRESHOLD, SCENE_COUNTS, SCENE_SIZE, make_scenes


@pytest.fixture(scope="module")
def scenes():
    return make_scenes("train", count=60, seed=0)


def test_same_seed_same_scenes_other_seed_other_scenes(scenes):
    again = make_scenes("train", count=60, seed=0)
    other = make_scenes("train", count=60, seed=1)
    for field in ("images", "masks", "digit_indices", "boxes"):
        np.testing.assert_array_equal(getattr(scenes, field), getattr(again, field))
    assert not np.array_equal(scenes.images, other.images)


def test_shapes_dtypes_and_classes(scenes):
    assert scenes.images.shape == scenes.masks.shape == (60, SCENE_SIZE, SCENE_SIZE)
    assert scenes.images.dtype == scenes.masks.dtype == np.uint8
    assert CLASS_NAMES == ("background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
    assert scenes.masks.max() <= 10
    per_scene = (scenes.digit_indices >= 0).sum(axis=1)
    assert per_scene.min() >= 2 and per_scene.max() <= 4 and len(set(per_scene)) > 1


def test_mask_is_the_ink_labelled_class_plus_one(scenes):
    _, labels = digits_images()
    # Background noise stays below the ink threshold, so a pixel is ink exactly when the image is above it.
    np.testing.assert_array_equal(scenes.masks > 0, scenes.images > INK_THRESHOLD * 255)
    for mask, indices, boxes in zip(scenes.masks, scenes.digit_indices, scenes.boxes):
        outside = np.ones(mask.shape, bool)
        for index, (y, x, side) in zip(indices[indices >= 0], boxes[indices >= 0]):
            window = mask[y : y + side, x : x + side]
            assert set(np.unique(window)) == {0, labels[index] + 1}  # its own class + 1 on its ink, else 0
            outside[y : y + side, x : x + side] = False
        assert not mask[outside].any()  # background is 0 everywhere else


def test_digits_are_a_fifth_to_a_third_of_the_side_and_never_overlap(scenes):
    for boxes in scenes.boxes:
        boxes = boxes[boxes[:, 2] > 0]
        sides = boxes[:, 2]
        assert sides.min() >= round(SCENE_SIZE / 5) and sides.max() <= SCENE_SIZE // 3
        assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + sides[:, None] <= SCENE_SIZE).all()
        canvas = np.zeros((SCENE_SIZE, SCENE_SIZE), int)
        for y, x, side in boxes:
            canvas[y : y + side, x : x + side] += 1
        assert canvas.max() == 1


def test_test_scenes_use_only_test_split_digits():
    train_digits, test_digits = digits_split_indices()
    train = make_scenes("train")
    test = make_scenes("test")
    assert len(train) == SCENE_COUNTS["train"] and len(test) == SCENE_COUNTS["test"]
    used_train = set(train.digit_indices[train.digit_indices >= 0].tolist())
    used_test = set(test.digit_indices[test.digit_indices >= 0].tolist())
    assert used_train.isdisjoint(used_test)
    assert used_test <= set(test_digits.tolist()) and used_train <= set(train_digits.tolist())
    assert len(used_test) > 0.9 * len(test_digits)  # the test scenes cover the test split, not a few digits of it


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        make_scenes("validation")
