"""Golden samples: what is stored, how it is read (hash first, never unpickled), and how engines are judged on it."""

import numpy as np
import pytest

from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import sha256_file
from lkca_runtime.golden import (
    compact_segmentation_reference,
    golden_metrics,
    judge_outputs,
    make_golden,
    pick_samples,
    read_golden,
    tolerance_for,
    write_golden,
)
from lkca_runtime.metrics import Thresholds

RNG = np.random.default_rng(0)


def classification_set(n=200, samples=64):
    x = RNG.standard_normal((n, 1, 8, 8)).astype(np.float32)
    logits = RNG.standard_normal((n, 10)).astype(np.float32) * 3
    labels = logits.argmax(1)
    labels[:20] = (labels[:20] + 1) % 10  # the reference is wrong on some: top1_reference < 1
    return make_golden(x, labels, logits, "classification", samples=samples, seed=0)


def flip(logits, rows):
    """The same logits with the top class of `rows` demoted below the runner-up."""
    out = logits.copy()
    for r in rows:
        top = out[r].argmax()
        out[r, top] = out[r].min() - 1.0
    return out


def test_pick_samples_is_seeded_sorted_and_bounded():
    a, b = pick_samples(360, 64, seed=0), pick_samples(360, 64, seed=0)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 64 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, pick_samples(360, 64, seed=1))
    assert np.array_equal(pick_samples(10, 64), np.arange(10))
    with pytest.raises(UserError, match="positive"):
        pick_samples(10, 0)


def test_write_then_read_round_trips_and_hash_matches(tmp_path):
    golden = classification_set()
    path = tmp_path / "golden" / "golden.npz"
    digest = write_golden(golden, path)
    assert digest == sha256_file(path)
    back = read_golden(path, digest)
    assert back.task == "classification" and back.samples == 64
    assert np.array_equal(back.x, golden.x) and np.array_equal(back.labels, golden.labels)
    assert np.array_equal(back.reference["ref_logits"], golden.reference["ref_logits"])
    assert [p.name for p in path.parent.iterdir()] == ["golden.npz"]  # no temp file left behind


def test_a_golden_file_altered_by_one_byte_is_refused(tmp_path):
    path = tmp_path / "golden.npz"
    digest = write_golden(classification_set(), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="altered"):
        read_golden(path, digest)
    with pytest.raises(UserError, match="missing"):
        read_golden(tmp_path / "nope.npz", digest)


def test_a_file_that_needs_unpickling_is_refused_not_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, format=np.asarray(1), task=np.asarray("classification"),
             x=np.zeros((2, 1, 2, 2), np.float32), labels=np.array([object(), object()], dtype=object),
             ref_logits=np.zeros((2, 3), np.float32))
    with pytest.raises(UserError, match="not a readable .npz"):
        read_golden(path, None)


def test_exact_outputs_pass_every_precision_and_numbers_are_right():
    golden = classification_set()
    ref = golden.reference["ref_logits"]
    for precision in ("fp32", "fp16", "bf16", "int8"):
        tol = tolerance_for("classification", precision, None, golden.samples)
        result = judge_outputs(golden, ref, precision, tol)
        assert result["passed"], (precision, result["failures"])
    m = golden_metrics(golden, ref + 0.25)
    assert m["agreement"] == 1.0 and m["max_abs_err"] == pytest.approx(0.25, abs=1e-6)
    assert m["top1"] == m["top1_reference"] < 1.0 and m["top1_drop"] == 0.0


def test_tolerance_comes_from_the_thresholds_relaxed_to_one_sample():
    tol = {p: tolerance_for("classification", p, None, 64) for p in ("fp32", "fp16", "int8")}
    assert tol["fp32"] == {"agreement": 1.0, "max_abs_err": 1e-3}  # exactness is never relaxed
    assert tol["fp16"] == {"agreement": pytest.approx(63 / 64)}  # 0.995 of 64 would allow no miss
    assert tol["int8"] == {"top1_drop": pytest.approx(100 / 64), "agreement": 0.9}  # lkca_runtime/metrics.py
    assert tolerance_for("classification", "fp16", None, 1000) == {"agreement": 0.995}
    stricter = Thresholds().with_limit("classification", "fp32", "max_abs_err", 1e-5)
    assert tolerance_for("classification", "fp32", stricter, 64)["max_abs_err"] == 1e-5
    assert tolerance_for("segmentation", "int8", None, 64) == {"miou_drop": 1.0, "pixel_agreement": 0.9}


def test_one_miss_passes_fp16_two_fail_and_fp32_wants_all():
    golden = classification_set()
    ref = golden.reference["ref_logits"]
    one, two = flip(ref, [0]), flip(ref, [0, 1])
    tol16 = tolerance_for("classification", "fp16", None, golden.samples)
    assert judge_outputs(golden, one, "fp16", tol16)["passed"]
    failed = judge_outputs(golden, two, "fp16", tol16)
    assert not failed["passed"] and "agreement = 0.96875" in failed["failures"][0]
    assert not judge_outputs(golden, one, "fp32", tolerance_for("classification", "fp32", None, 64))["passed"]


def test_outputs_of_another_model_are_a_user_error():
    golden = classification_set()
    with pytest.raises(UserError, match="do not fit"):
        golden_metrics(golden, np.zeros((64, 7), np.float32))


def segmentation_logits(n=6, classes=5, size=16):
    logits = RNG.standard_normal((n, classes, size, size)).astype(np.float32) * 2
    return logits


def test_segmentation_keeps_argmax_top1_and_margin_not_the_logits():
    logits = segmentation_logits()
    ref = compact_segmentation_reference(logits)
    assert set(ref) == {"ref_argmax", "ref_top1", "ref_margin"}
    assert ref["ref_argmax"].dtype == np.uint8 and ref["ref_argmax"].shape == (6, 16, 16)
    assert np.array_equal(ref["ref_argmax"], logits.argmax(1))
    assert np.allclose(ref["ref_top1"], logits.max(1))
    second = np.sort(logits, axis=1)[:, -2]
    assert np.allclose(ref["ref_margin"], logits.max(1) - second, atol=1e-2)  # float16
    assert sum(a.nbytes for a in ref.values()) * 2 < logits.nbytes  # 7 bytes a pixel vs 4 per class


def test_segmentation_metrics_on_masks():
    logits = segmentation_logits()
    masks = logits.argmax(1).astype(np.uint8)
    masks[:, :2] = 255  # ignored rows
    golden = make_golden(np.zeros((6, 1, 16, 16), np.float32), masks, logits, "segmentation", samples=6)
    exact = golden_metrics(golden, logits)
    assert exact["pixel_agreement"] == 1.0 and exact["max_abs_err"] == 0.0 and exact["miou"] == 1.0
    assert exact["miou_drop"] == 0.0 and exact["disagreeing_margin_max"] == 0.0
    # Move one pixel to its runner-up class: one disagreement, at that pixel's margin.
    moved = logits.copy()
    c = logits[0, :, 5, 5].argmax()
    runner_up = np.argsort(logits[0, :, 5, 5])[-2]
    moved[0, runner_up, 5, 5] = logits[0, c, 5, 5] + 0.5
    m = golden_metrics(golden, moved)
    assert m["pixel_agreement"] == pytest.approx(1 - 1 / (6 * 16 * 16))
    assert m["disagreeing_margin_max"] == pytest.approx(float(golden.reference["ref_margin"][0, 5, 5]))
    tol = tolerance_for("segmentation", "fp32", None, 6)
    assert judge_outputs(golden, moved, "fp32", tol)["passed"]  # 0.9993 >= 0.999
    broken = judge_outputs(golden, logits[:, ::-1].copy(), "fp32", tol)
    assert not broken["passed"] and "pixel_agreement" in broken["failures"][0]


def test_grid_logits_are_scored_after_the_one_upsample_to_the_masks(tmp_path):
    """An export that ends at the grid logits: agreement at the logits, mIoU per mask pixel after the upsample."""
    from lkca_runtime.masks import upsampled_argmax

    logits = segmentation_logits()  # (6, K, 16, 16): grid logits for 64x64 masks
    masks = np.stack([upsampled_argmax(sample, (64, 64)) for sample in logits]).astype(np.uint8)
    masks[:, :3] = 255
    golden = make_golden(np.zeros((6, 1, 64, 64), np.float32), masks, logits, "segmentation", samples=6)
    assert golden.reference["ref_argmax_upsampled"].shape == (6, 64, 64)
    again = read_golden(tmp_path / "g.npz", write_golden(golden, tmp_path / "g.npz"))
    exact = golden_metrics(again, logits)
    assert exact["miou"] == 1.0 and exact["pixel_agreement"] == 1.0 and exact["pixels"] == 6 * 16 * 16
    assert not judge_outputs(again, logits[:, ::-1].copy(), "fp32", tolerance_for("segmentation", "fp32", None, 6))["passed"]
