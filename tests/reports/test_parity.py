"""Parity metrics on small hand-computed arrays, thresholds at their edges, streaming equivalence, block localisation."""

import math

import numpy as np
import pytest

from lkca_runtime.errors import UserError
from lkca_runtime.metrics import (
    BlockParityMeter,
    ClassificationParityMeter,
    SegmentationMeter,
    SegmentationParityMeter,
    Thresholds,
    classification_parity,
    confusion_matrix,
    first_divergent_block,
    iou_per_class,
    judge,
    kl_divergence,
    miou_from_confusion,
    parity_meter,
    segmentation_parity,
    with_verdict,
)


# ---------------------------------------------------------------------------------------------------- classification
def test_classification_parity_hand_computed():
    reference = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0], [0.0, 3.0]], dtype=np.float32)  # sample 2 flips
    labels = np.array([0, 1, 1, 1])
    m = classification_parity(logits, reference, labels)
    assert m["top1"] == 1.0  # engine gets sample 2 right by flipping
    assert m["top1_reference"] == 0.75
    assert m["top1_drop"] == pytest.approx(-25.0)  # points; negative = engine better
    assert m["agreement"] == 0.75
    assert m["max_abs_err"] == 1.0
    assert m["mean_abs_err"] == pytest.approx(2.0 / 8)
    # cosine: samples 0, 1, 3 identical (1.0); sample 2 orthogonal (0.0)
    assert m["cosine"] == pytest.approx(0.75)
    # KL for sample 2: p = softmax([1, 0]) = (p0, p1), q = (p1, p0), log(p0 / p1) = 1 -> (p0 - p1); others 0
    p0 = math.exp(1) / (math.exp(1) + 1)
    assert m["kl"] == pytest.approx((2 * p0 - 1) / 4)
    assert m["samples"] == 4


def test_kl_known_value_and_zero_for_equal():
    ref = np.log(np.array([[0.5, 0.5]]))
    eng = np.log(np.array([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(ref, eng)[0] == pytest.approx(expected)
    assert kl_divergence(ref, ref)[0] == pytest.approx(0.0, abs=1e-12)


def test_cosine_edge_cases_and_scale_invariance():
    ref = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    eng = np.array([[2.0, 4.0, 6.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    m = classification_parity(eng, ref)
    # scaled copy -> 1, both zero -> 1, zero against non-zero -> 0
    assert m["cosine"] == pytest.approx(2 / 3)
    assert m["top1"] is None and m["top1_drop"] is None  # no labels


def test_nan_output_is_not_exact():
    ref = np.array([[1.0, 2.0]], dtype=np.float32)
    eng = np.array([[np.nan, 2.0]], dtype=np.float32)
    m = classification_parity(eng, ref)
    assert math.isnan(m["max_abs_err"])
    passed, failures = judge(m, "fp32", "classification")
    assert not passed and any("max_abs_err is NaN" in f for f in failures)


def test_shape_mismatch_is_a_bug():
    with pytest.raises(ValueError, match="shape"):
        classification_parity(np.zeros((2, 3)), np.zeros((2, 4)))


def test_classification_streaming_equals_all_at_once():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 10)).astype(np.float32)
    logits = reference + rng.normal(scale=0.3, size=reference.shape).astype(np.float32)
    labels = rng.integers(0, 10, size=50)
    meter = ClassificationParityMeter()
    for s in (slice(0, 7), slice(7, 30), slice(30, 50)):
        meter.update(logits[s], reference[s], labels[s])
    streamed, at_once = meter.result(), classification_parity(logits, reference, labels)
    assert streamed.keys() == at_once.keys()
    for key in at_once:
        assert streamed[key] == pytest.approx(at_once[key], rel=1e-12), key
    assert at_once["agreement"] < 1.0  # the noise was large enough to matter


# ------------------------------------------------------------------------------------------------------ segmentation
def test_confusion_matrix_and_miou_hand_computed():
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 3]])  # last two pixels ignored
    cm = confusion_matrix(pred, labels, num_classes=4)
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    ious = iou_per_class(cm)
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: 2/3; class 2: 1/2; class 3 absent from both -> excluded
    np.testing.assert_allclose(ious[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(ious[3])
    assert miou_from_confusion(cm) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_class_only_predicted_counts_in_mean():
    labels = np.array([0, 0])
    pred = np.array([0, 1])  # class 1 predicted but never labelled: IoU 0, included
    cm = confusion_matrix(pred, labels, num_classes=3)
    assert miou_from_confusion(cm) == pytest.approx((0.5 + 0.0) / 2)


def test_out_of_range_label_is_rejected():
    with pytest.raises(ValueError, match="label ids"):
        confusion_matrix(np.array([0]), np.array([7]), num_classes=3)


def test_segmentation_meter_accumulates_and_names_classes():
    meter = SegmentationMeter(num_classes=3)
    meter.update(np.array([[0, 1]]), np.array([[0, 1]]))
    meter.update(np.array([[1, 1]]), np.array([[0, 255]]))
    r = meter.result(["sky", "road", "car"])
    assert r["pixel_acc"] == pytest.approx(2 / 3)
    assert r["per_class_iou"] == {"sky": pytest.approx(0.5), "road": pytest.approx(0.5), "car": None}
    assert r["miou"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="class names"):
        meter.result(["only-one"])


def _seg_data(seed=1, batch=4, classes=5, size=8):
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(batch, classes, size, size)).astype(np.float32)
    logits = reference + rng.normal(scale=0.2, size=reference.shape).astype(np.float32)
    labels = rng.integers(0, classes, size=(batch, size, size))
    labels[:, 0, :] = 255
    return logits, reference, labels


def test_segmentation_parity_values():
    logits, reference, labels = _seg_data()
    m = segmentation_parity(logits, reference, labels)
    pred, pred_ref = logits.argmax(1), reference.argmax(1)
    assert m["pixel_agreement"] == pytest.approx(np.mean(pred == pred_ref))
    keep = labels != 255
    assert m["pixel_acc"] == pytest.approx(np.mean(pred[keep] == labels[keep]))
    assert m["miou_drop"] == pytest.approx((m["miou_reference"] - m["miou"]) * 100)
    assert m["max_abs_err"] == pytest.approx(np.abs(logits - reference).max())
    assert 0.9 < m["cosine"] < 1.0
    exact = segmentation_parity(reference, reference, labels)
    assert (
        exact["pixel_agreement"] == 1.0
        and exact["miou_drop"] == 0.0
        and exact["cosine"] == pytest.approx(1.0)
    )


def test_segmentation_streaming_equals_all_at_once():
    logits, reference, labels = _seg_data(batch=6)
    meter = SegmentationParityMeter()
    for s in (slice(0, 1), slice(1, 4), slice(4, 6)):
        meter.update(logits[s], reference[s], labels[s])
    streamed, at_once = meter.result(), segmentation_parity(logits, reference, labels)
    for key in at_once:
        assert streamed[key] == pytest.approx(at_once[key], rel=1e-12), key


def test_parity_meter_by_task():
    assert isinstance(parity_meter("classification"), ClassificationParityMeter)
    assert isinstance(parity_meter("segmentation"), SegmentationParityMeter)
    with pytest.raises(UserError, match="unknown task"):
        parity_meter("detection")


# -------------------------------------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize(
    ("precision", "metrics", "passes"),
    [
        ("fp32", {"agreement": 1.0, "max_abs_err": 1e-3}, True),
        ("fp32", {"agreement": 1.0, "max_abs_err": 1.1e-3}, False),
        ("fp32", {"agreement": 0.999, "max_abs_err": 0.0}, False),
        ("fp16", {"agreement": 0.995}, True),
        ("fp16", {"agreement": 0.994}, False),
        ("bf16", {"agreement": 0.99}, True),
        ("bf16", {"agreement": 0.989}, False),
        ("int8", {"top1_drop": 1.0, "agreement": 0.9}, True),
        ("int8", {"top1_drop": 1.01, "agreement": 1.0}, False),
        ("int8", {"top1_drop": -3.0, "agreement": 1.0}, True),
        ("int8", {"top1_drop": 0.0, "agreement": 0.89}, False),
    ],
)
def test_classification_thresholds_at_edges(precision, metrics, passes):
    passed, failures = judge(metrics, precision, "classification")
    assert passed is passes
    assert bool(failures) is not passes


@pytest.mark.parametrize(
    ("precision", "metric", "edge", "beyond"),
    [
        ("fp32", "pixel_agreement", 0.999, 0.9989),
        ("fp16", "pixel_agreement", 0.995, 0.9949),
        ("bf16", "pixel_agreement", 0.99, 0.9899),
        ("int8", "miou_drop", 1.0, 1.001),
        ("int8", "pixel_agreement", 0.9, 0.8999),
    ],
)
def test_segmentation_thresholds_at_edges(precision, metric, edge, beyond):
    exact = {"pixel_agreement": 1.0, "miou_drop": 0.0}  # every other limit met
    assert judge({**exact, metric: edge}, precision, "segmentation") == (True, [])
    passed, failures = judge({**exact, metric: beyond}, precision, "segmentation")
    assert not passed and len(failures) == 1 and failures[0].startswith(metric)


def test_failure_message_names_threshold_and_margin():
    _, failures = judge({"agreement": 0.993}, "fp16", "classification")
    (message,) = failures
    assert "agreement = 0.993" in message
    assert ">= 0.995" in message and "classification fp16" in message
    assert "short by 0.002" in message
    _, failures = judge({"top1_drop": 1.5}, "int8", "classification")
    assert "<= 1" in failures[0] and "over by 0.5" in failures[0]


def test_missing_metric_fails_clearly():
    passed, failures = judge({"top1_drop": None}, "int8", "classification")
    assert not passed and "top1_drop not measured" in failures[0]


def test_thresholds_are_configurable():
    looser = Thresholds().with_limit("classification", "int8", "top1_drop", 2.0)
    assert judge({"top1_drop": 1.5, "agreement": 1.0}, "int8", "classification", looser)[0]
    assert not judge({"top1_drop": 1.5, "agreement": 1.0}, "int8", "classification")[0]  # defaults untouched
    stricter = Thresholds().with_limit("classification", "int8", "agreement", 0.98)
    passed, failures = judge({"top1_drop": 0.0, "agreement": 0.97}, "int8", "classification", stricter)
    assert not passed and failures[0].startswith("agreement")
    with pytest.raises(UserError, match="no threshold can be set"):
        Thresholds().with_limit("classification", "int8", "speed", 1.0)
    with pytest.raises(UserError, match="no parity thresholds"):
        judge({}, "fp8", "classification")


def test_with_verdict_carries_failures():
    d = with_verdict({"agreement": 0.5}, "fp16", "classification")
    assert d["agreement"] == 0.5 and d["passed"] is False and len(d["failures"]) == 1


# ------------------------------------------------------------------------------------------------------------ blocks
def test_first_divergent_block_in_block_order():
    rng = np.random.default_rng(2)
    ref = {f"block{i}": rng.normal(size=(3, 16, 4)).astype(np.float32) for i in (0, 1, 2, 9, 10)}
    eng = {name: value.copy() for name, value in ref.items()}
    eng["block9"] = eng["block9"] + rng.normal(scale=0.01, size=eng["block9"].shape).astype(np.float32)
    eng["block10"] = rng.normal(size=ref["block10"].shape).astype(np.float32)  # unrelated: cosine ~ 0
    eng["block2"] = -eng["block2"]  # but earlier: cosine -1
    # insertion order scrambled on purpose: the result follows the numbers in the names
    per_block, first = first_divergent_block(dict(reversed(list(eng.items()))), ref)
    assert [b["block"] for b in per_block] == ["block0", "block1", "block2", "block9", "block10"]
    assert first == "block2"
    by_name = {b["block"]: b for b in per_block}
    assert by_name["block0"]["cosine"] == pytest.approx(1.0) and by_name["block0"]["max_abs_err"] == 0.0
    assert by_name["block2"]["cosine"] == pytest.approx(-1.0)
    assert 0.99 < by_name["block9"]["cosine"] < 1.0
    eng["block2"] = ref["block2"]
    _, first = first_divergent_block(eng, ref)
    assert first == "block10"
    _, first = first_divergent_block(ref, ref)
    assert first is None


def test_block_names_must_match():
    with pytest.raises(ValueError, match="only in engine"):
        first_divergent_block({"a": np.zeros((1, 2)), "b": np.zeros((1, 2))}, {"a": np.zeros((1, 2))})


def test_block_meter_streams():
    rng = np.random.default_rng(3)
    ref = {"b0": rng.normal(size=(6, 8)), "b1": rng.normal(size=(6, 8))}
    eng = {k: v + rng.normal(scale=0.5, size=v.shape) for k, v in ref.items()}
    meter = BlockParityMeter()
    for s in (slice(0, 2), slice(2, 6)):
        meter.update({k: v[s] for k, v in eng.items()}, {k: v[s] for k, v in ref.items()})
    (streamed, first_streamed), (at_once, first) = meter.result(), first_divergent_block(eng, ref)
    assert first_streamed == first == "b0"
    assert streamed == [pytest.approx(b) for b in at_once]


def test_grid_logits_are_upsampled_like_the_predictor_before_the_argmax():
    """Errors at the graph's output (the grid); agreement and mIoU per label pixel after the same upsample."""
    from lkca_runtime.masks import resize_bilinear, upsampled_argmax

    rng = np.random.default_rng(3)
    reference = rng.standard_normal((2, 5, 8, 8)).astype(np.float32)
    engine = reference + rng.standard_normal(reference.shape).astype(np.float32) * 0.05
    labels = np.stack([upsampled_argmax(r, (32, 32)) for r in reference])
    grid = segmentation_parity(engine, reference, labels)
    full = segmentation_parity(
        np.stack([resize_bilinear(e, (32, 32)) for e in engine]), np.stack([resize_bilinear(r, (32, 32)) for r in reference]),
        labels,
    )
    assert grid["miou_reference"] == 1.0 and grid["miou"] == pytest.approx(full["miou"])
    assert grid["pixel_agreement"] == pytest.approx(full["pixel_agreement"]) and grid["pixels"] == 2 * 32 * 32
    assert grid["max_abs_err"] == pytest.approx(float(np.abs(engine - reference).max()))
