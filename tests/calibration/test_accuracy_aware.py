"""Accuracy-aware INT8 on a model post-training quantization really hurts (a planted value-channel outlier), and on
one it does not: real ONNX Runtime quantization and inference, real digits."""

import numpy as np
import pytest
from precision_cases import CALIB_SAMPLES, CALIB_SEED, OUTLIER_BLOCK

from lkca_deploy.calibration import quantize
from lkca_deploy.precision.accuracy_aware import (
    AccuracyBoundError,
    quantize_accuracy_aware,
    run_onnx,
    task_metric,
)
from lkca_deploy.precision.holdout import validation_subset
from lkca_deploy.precision.units import find_units
from lkca_runtime.errors import UserError

BOUND = 0.5
OUTLIER_MIXER = f"blocks.{OUTLIER_BLOCK}.mixer"


def top1(model, x, y) -> float:
    return task_metric(run_onnx(model, x), y, "classification")


@pytest.fixture(scope="module")
def searched(int8_outlier_case):
    case = int8_outlier_case
    return quantize_accuracy_aware(case.model, case.calib, case.holdout.x, case.holdout.labels,
                                   task="classification", max_drop=BOUND)


def test_validation_subset_is_from_the_training_split_and_disjoint_from_calibration(clean_case):
    from lkca_deploy.data.datasets import digits_split_indices, seeded_subset

    holdout = clean_case.holdout
    train_global, test_global = digits_split_indices()
    calib_indices = seeded_subset(len(train_global), CALIB_SAMPLES, CALIB_SEED)  # load_calibration's draw
    assert len(holdout) >= 900  # 1437 training digits less 512 calibration ones
    assert np.array_equal(holdout.excluded, calib_indices)
    assert not set(holdout.indices) & set(calib_indices)
    assert not set(train_global[holdout.indices]) & set(test_global)  # never a test digit
    calib_rows = {row.tobytes() for row in clean_case.calib}
    assert not any(row.tobytes() in calib_rows for row in holdout.x)


def test_calibration_rows_from_any_source_are_left_out_by_content(clean_case):
    from lkca_deploy.checkpoint import read_checkpoint

    spec = read_checkpoint(clean_case.ckpt).spec
    planted = clean_case.holdout.x[:20]  # as if a calibration folder held these training images
    holdout = validation_subset("digits", spec, calib=planted, samples=5000)
    rows = {row.tobytes() for row in holdout.x}
    assert 1437 - 40 < len(holdout) <= 1437 - len({r.tobytes() for r in planted})  # (and any duplicate digit)
    assert not any(row.tobytes() in rows for row in planted)


def test_plain_int8_of_the_outlier_model_loses_more_than_two_points(int8_outlier_case, tmp_path):
    from lkca_deploy.backends.build import build_engine
    from lkca_deploy.backends.registry import get_backend
    from lkca_deploy.proof import engine_logits
    from lkca_runtime.onnx_io import save_onnx_atomic

    case = int8_outlier_case
    reference = top1(case.model, case.test_x, case.test_y)
    for flavor in quantize.FLAVORS:
        int8 = quantize.quantize_int8(case.model, case.calib, flavor=flavor).model
        assert reference - top1(int8, case.test_x, case.test_y) > 2.0, flavor
    save_onnx_atomic(case.model, tmp_path / "model.onnx")
    built = build_engine(tmp_path / "model.onnx", "openvino", "int8", tmp_path / "int8.xml", calib=case.calib,
                         flavor="nncf")
    with get_backend("openvino").load(built.artifact) as runner:
        nncf_top1 = task_metric(engine_logits(runner, case.test_x), case.test_y, "classification")
    assert reference - nncf_top1 > 2.0


def test_accuracy_aware_int8_returns_that_blocks_mixer_to_float_and_meets_the_bound(int8_outlier_case, searched):
    case = int8_outlier_case
    assert searched.steps[0].worst > 2.0  # plain INT8, measured on the validation subset
    assert searched.float_units == (OUTLIER_MIXER,)
    assert searched.sensitivity[0][0] == OUTLIER_MIXER  # ranked first by its own quantization error
    assert searched.drop <= BOUND
    assert searched.validation_size == len(case.holdout)
    # The test split, which the search never saw, agrees: both flavours within the bound.
    reference = top1(case.model, case.test_x, case.test_y)
    for flavor, result in searched.results.items():
        assert reference - top1(result.model, case.test_x, case.test_y) <= BOUND, flavor
        float_nodes = set(searched.float_nodes)
        assert float_nodes == set(result.excluded_nodes)
        quantized = {n.input[0] for n in result.model.graph.node if n.op_type == "DequantizeLinear"}
        readers = [n for n in result.model.graph.node if n.name in float_nodes]
        assert readers and not any(i in quantized for n in readers for i in n.input)  # float reads float
    summary = searched.summary()
    assert summary["float_units"] == [OUTLIER_MIXER] and summary["validation_samples"] == len(case.holdout)
    assert [s["unit"] for s in summary["steps"]] == [None, OUTLIER_MIXER]


def test_the_tensorrt_flavour_with_float_units_still_follows_its_qdq_rules(searched):
    assert quantize.check_qdq_flavor(searched.results["tensorrt"].model, "tensorrt") == []
    assert quantize.check_qdq_flavor(searched.results["cpu"].model, "cpu") == []


def test_a_model_int8_does_not_hurt_keeps_every_unit_int8(clean_case):
    case = clean_case
    result = quantize_accuracy_aware(case.model, case.calib, case.holdout.x, case.holdout.labels,
                                     task="classification", max_drop=BOUND)
    assert result.float_units == () and result.float_nodes == ()
    assert len(result.steps) == 1 and result.sensitivity == []  # nothing ranked: no unit needed to move
    assert result.drop <= BOUND


def test_an_unreachable_bound_fails_in_one_line_naming_what_was_tried(int8_outlier_case):
    case = int8_outlier_case
    with pytest.raises(AccuracyBoundError) as raised:
        quantize_accuracy_aware(case.model, case.calib, case.holdout.x, case.holdout.labels,
                                task="classification", flavors=("cpu",), max_drop=BOUND, max_float_units=0)
    message = str(raised.value)
    assert isinstance(raised.value, UserError) and "\n" not in message
    assert "over the bound of 0.5" in message and "the limit" in message and "all INT8" in message
    assert "| 0 | (none: every unit INT8) |" in raised.value.table
    # The pipeline asks for the best split instead, and lets parity judge the engines.
    best = quantize_accuracy_aware(case.model, case.calib, case.holdout.x, case.holdout.labels,
                                   task="classification", flavors=("cpu",), max_drop=BOUND, max_float_units=0,
                                   fail=False)
    assert not best.met and best.float_units == () and best.drop > 2.0 and best.summary()["met"] is False


def test_units_cover_every_int8_op_once_and_are_named_by_module(clean_case):
    units = find_units(clean_case.model)
    assert [u.name for u in units] == ["patch_embed", *(f"blocks.{b}.{part}" for b in range(4)
                                                         for part in ("mixer", "mlp")), "head"]
    members = [n for u in units for n in u.nodes]
    int8_ops = [n.name for n in clean_case.model.graph.node if n.op_type in quantize.QUANTIZED_OP_TYPES]
    assert sorted(members) == sorted(int8_ops)
    mixer = next(u for u in units if u.name == "blocks.0.mixer")
    assert len(mixer.nodes) == 3  # value projection, the Toeplitz MatMul of the auto lowering, output projection


@pytest.mark.parametrize("backend,flavor", [("onnxruntime", "cpu"), ("onnxruntime", "tensorrt"), ("openvino", "nncf")])
def test_every_int8_engine_built_from_the_metadata_keeps_the_same_units_float(int8_outlier_case, searched, backend,
                                                                             flavor, tmp_path):
    import copy
    import json

    from lkca_deploy.backends.build import build_engine
    from lkca_deploy.backends.registry import get_backend
    from lkca_deploy.onnx_meta import set_metadata
    from lkca_deploy.precision.accuracy_aware import metadata_for
    from lkca_deploy.proof import engine_logits
    from lkca_runtime.backends.base import sidecar_path
    from lkca_runtime.onnx_io import save_onnx_atomic

    case = int8_outlier_case
    model = copy.deepcopy(case.model)
    set_metadata(model, metadata_for(model, searched.summary()))
    save_onnx_atomic(model, tmp_path / "model.onnx")
    be = get_backend(backend)
    built = build_engine(tmp_path / "model.onnx", backend, "int8", tmp_path / f"int8{be.artifact_suffix}",
                         calib=case.calib, flavor=flavor)
    with be.load(built.artifact) as runner:
        logits = engine_logits(runner, case.test_x)
    reference = top1(case.model, case.test_x, case.test_y)
    assert reference - task_metric(logits, case.test_y, "classification") <= BOUND
    facts = json.loads(sidecar_path(built.artifact).read_text())
    assert facts["provenance"]["int8_float_units"] == [OUTLIER_MIXER]


def test_localisation_builds_its_block_export_with_the_same_units_float(int8_outlier_case, searched, tmp_path):
    """Parity localises a failing engine by rebuilding it from an export with block outputs (proof.py): that
    export carries the plan of the one the engine was built from, or the rebuilt engine would be plain INT8."""
    import copy

    import onnx

    from lkca_deploy.export import export_model
    from lkca_deploy.onnx_meta import set_metadata
    from lkca_deploy.precision.accuracy_aware import metadata_for, planned_float_nodes
    from lkca_deploy.precision.plan import carry_plan
    from lkca_deploy.proof import EvalContext, localise_divergence
    from lkca_runtime.onnx_io import save_onnx_atomic

    case = int8_outlier_case
    model = copy.deepcopy(case.model)
    set_metadata(model, metadata_for(model, searched.summary()))
    save_onnx_atomic(model, tmp_path / "model.onnx")
    blocks = export_model(case.ckpt, tmp_path / "blocks.onnx", block_outputs=True).path
    assert planned_float_nodes(onnx.load(str(blocks))) == ([], [])
    carry_plan(tmp_path / "model.onnx", blocks)
    units, nodes = planned_float_nodes(onnx.load(str(blocks)))
    assert units == [OUTLIER_MIXER] and len(nodes) == len(planned_float_nodes(model)[1]) > 0

    ctx = EvalContext.load(case.ckpt, "digits", calib_samples=CALIB_SAMPLES, seed=CALIB_SEED)
    plain, _ = localise_divergence(ctx, "onnxruntime", "int8", "cpu")
    planned, _ = localise_divergence(ctx, "onnxruntime", "int8", "cpu", plan_from=tmp_path / "model.onnx")
    error = {name: [b["mean_abs_err"] for b in run if b["block"].endswith(str(OUTLIER_BLOCK))]
             for name, run in (("plain", plain), ("planned", planned))}
    assert error["planned"][0] < error["plain"][0] / 2, error  # the outlier block's mixer is float again
