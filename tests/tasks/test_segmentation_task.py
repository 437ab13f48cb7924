"""SegmentationTask: loss ignores 255, augmentation keeps image and mask aligned, mIoU on a known case, one real
training run through the shared trainer and evaluate."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lkca_deploy.data import scenes
from lkca_deploy.tasks import get_task
from lkca_deploy.tasks.segmentation import SegmentationTask, joint_scale_crop
from lkca_runtime.errors import UserError
from lkca_runtime.masks import Slide


def test_task_is_found_by_name():
    task = get_task("segmentation")
    assert isinstance(task, SegmentationTask) and task.name == "segmentation" and task.headline == "miou"


def test_loss_ignores_255():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 5)
    target = torch.randint(0, 4, (2, 5, 5))
    target[:, :2] = 255
    task = SegmentationTask()
    kept = target != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[kept], target[kept])
    torch.testing.assert_close(task.loss(logits, target), expected)
    changed = logits.clone()
    changed[:, :, :2] = 100.0  # ignored pixels can say anything
    torch.testing.assert_close(task.loss(changed, target), expected)


def label_batch(b=16, h=24, w=24, classes=5):
    torch.manual_seed(1)
    y = torch.randint(0, classes, (b, h // 4, w // 4)).repeat_interleave(4, 1).repeat_interleave(4, 2)
    y[:, 0, 0] = 255  # an ignored pixel in the source stays ignored wherever it lands
    return y


@pytest.mark.parametrize("natural", [False, True])
def test_augmentation_moves_image_and_mask_together(natural):
    """An image whose pixel values equal its mask, sampled nearest like the mask, still equals it afterwards."""
    y = label_batch()
    x = y[:, None].float()
    torch.manual_seed(2)
    xa, ya = joint_scale_crop(x, y, (0.5, 2.0), flip=natural, image_mode="nearest")
    inside = ya != 255
    assert 0.2 < inside.float().mean() < 1.0  # some samples zoomed out: padding is ignored, not background
    torch.testing.assert_close(xa[:, 0][inside], ya[inside].float())
    outside = xa[:, 0][~inside]
    assert ((outside == 0) | (outside == 255)).all()  # zero padding, or the source's own ignored pixel


def test_default_augmentation_keeps_labels_exact():
    y = label_batch()
    x = torch.randn(16, 3, 24, 24)
    torch.manual_seed(3)
    xa, ya = SegmentationTask().augment(x, y, natural=True)
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.int64
    assert set(ya.unique().tolist()) <= set(y.unique().tolist()) | {255}  # nearest: no label between two labels


def test_flips_only_where_the_data_allows():
    y = torch.zeros(64, 8, 8, dtype=torch.int64)
    y[:, :, :4] = 1  # left half 1, right half 0: a flip shows
    x = y[:, None].float()
    flipped = []
    for natural in (False, True):
        torch.manual_seed(4)
        _, ya = joint_scale_crop(x, y, (1.0, 1.0), flip=natural)
        same, mirrored = (ya == y).flatten(1).all(1), (ya == y.flip(-1)).flatten(1).all(1)
        assert (same | mirrored).all()  # scale 1: exactly the source or its mirror
        flipped.append(int(mirrored.sum()))
    assert flipped[0] == 0 and 16 < flipped[1] < 48


def test_scale_one_without_flip_is_the_identity():
    y = label_batch()
    x = torch.randn(16, 2, 24, 24)
    xa, ya = joint_scale_crop(x, y, (1.0, 1.0))
    torch.testing.assert_close(xa, x, atol=1e-5, rtol=0)
    assert torch.equal(ya, y)


def test_meter_miou_on_a_known_case():
    labels = torch.tensor([[[0, 0], [1, 1]], [[2, 255], [2, 2]]])
    pred = torch.tensor([[[0, 1], [1, 1]], [[2, 0], [1, 2]]])
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    meter = SegmentationTask().meter(("sky", "road", "car"))
    meter.update(logits[:1], labels[:1])  # streamed in two batches
    meter.update(logits[1:], labels[1:])
    result = meter.result()
    # sky: tp 1, union 2 -> 1/2; road: tp 2, union 4 -> 1/2; car: tp 2, union 3 -> 2/3 (the 255 pixel is skipped)
    assert result["per_class_iou"] == pytest.approx({"sky": 0.5, "road": 0.5, "car": 2 / 3})
    assert result["miou"] == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert result["pixel_acc"] == pytest.approx(5 / 7)
    assert result["samples"] == 2


def test_meter_with_no_batches_is_nan():
    result = SegmentationTask().meter(("a", "b")).result()
    assert math.isnan(result["miou"]) and result["samples"] == 0


def test_train_and_evaluate_on_digit_scenes_end_to_end(tmp_path, monkeypatch):
    from lkca_deploy.train import TrainOptions, evaluate, train

    monkeypatch.setitem(scenes.SCENE_COUNTS, "train", 48)
    monkeypatch.setitem(scenes.SCENE_COUNTS, "test", 16)
    out = tmp_path / "seg"
    metrics = train("lkca_seg_nano", "digit-scenes", out=out,
                    opts=TrainOptions(epochs=1, batch_size=16, warmup_epochs=0.5, progress=False))
    assert metrics["view"] == "attention" and metrics["samples"] == 16
    result = evaluate(out)
    assert set(result) == {"miou", "pixel_acc", "per_class_iou", "samples", "inference"}
    assert result["inference"] == "whole"
    assert 0.0 <= result["miou"] <= 1.0 and 0.5 < result["pixel_acc"] <= 1.0  # background alone is ~90%
    assert list(result["per_class_iou"]) == list(scenes.CLASS_NAMES)
    assert result["miou"] == pytest.approx(metrics["miou"])
    assert np.isfinite(result["pixel_acc"])


def test_sliding_evaluation_scores_each_image_at_its_own_size(tmp_path, monkeypatch):
    """Scenes paired side by side (64x128) and slid with a 64-pixel stride score exactly as the single scenes do."""
    from PIL import Image

    from lkca_deploy.train import TrainOptions, evaluate, train

    monkeypatch.setitem(scenes.SCENE_COUNTS, "train", 32)
    monkeypatch.setitem(scenes.SCENE_COUNTS, "test", 8)
    out = tmp_path / "seg"
    train("lkca_seg_nano", "digit-scenes", out=out, opts=TrainOptions(epochs=1, batch_size=16, progress=False))
    test = scenes.make_scenes("test")
    pairs = tmp_path / "pairs"  # an image+mask folder, read in the checkpoint's channels
    for sub in ("images/test", "masks/test"):
        (pairs / sub).mkdir(parents=True)
    (pairs / "classes.txt").write_text("\n".join(scenes.CLASS_NAMES))
    for i in range(4):
        for array, sub in ((test.images, "images/test"), (test.masks, "masks/test")):
            Image.fromarray(np.concatenate([array[2 * i], array[2 * i + 1]], axis=1)).save(pairs / sub / f"p{i}.png")
    whole = evaluate(out)  # the same 8 scenes one by one, each exactly a model input
    slid = evaluate(out, data=str(pairs), slide=Slide(stride=64))
    assert (slid["inference"], slid["stride"], slid["samples"]) == ("slide", [64, 64], 4)
    assert slid["miou"] == pytest.approx(whole["miou"]) and slid["pixel_acc"] == pytest.approx(whole["pixel_acc"])
    # Whole-image evaluation reads the folder in the model's channels too (an RGB folder was once refused).
    whole_pairs = evaluate(out, data=str(pairs))
    assert (whole_pairs["inference"], whole_pairs["samples"]) == ("whole", 4)

def test_sliding_a_classifier_is_refused(nano_checkpoint):
    from lkca_deploy.train import evaluate

    with pytest.raises(UserError, match=r"\(--slide\) are for segmentation; .* is a classification checkpoint"):
        evaluate(nano_checkpoint, slide=True)
