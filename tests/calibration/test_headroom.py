"""FP16 headroom: tensors that FP16 cannot hold, found from real calibration ranges and kept FP32 (ONNX Runtime)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from precision_cases import OUTLIER_BLOCK

from lkca_deploy.calibration import quantize
from lkca_deploy.precision import headroom
from lkca_deploy.precision.accuracy_aware import run_onnx
from lkca_deploy.precision.units import find_units, nodes_of


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, 1) == np.argmax(reference, 1)))


def fp16_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose weight is stored FP16, i.e. that compute in FP16."""
    fp16 = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in fp16 for i in n.input)]


def test_plain_fp16_fails_where_fp16_with_headroom_keeps_parity(fp16_outlier_case):
    case = fp16_outlier_case
    reference = run_onnx(case.model, case.test_x)
    ranges = headroom.tensor_ranges(case.model, case.calib)
    plain = run_onnx(quantize.to_fp16(case.model), case.test_x)
    guarded, risks = headroom.to_fp16_with_headroom(case.model, ranges)
    logits = run_onnx(guarded, case.test_x)

    assert not np.all(np.isfinite(plain)) or agreement(plain, reference) < 0.995
    assert np.all(np.isfinite(logits)) and agreement(logits, reference) >= 0.995
    # What was kept FP32 is the rescaled channel's path through block 1's mixer, and the rest stays FP16.
    kept = set(headroom.keep_fp32_nodes(risks))
    mixer = set(nodes_of(find_units(case.model), [f"blocks.{OUTLIER_BLOCK}.mixer"]))
    assert mixer <= kept
    assert not kept & set(fp16_matmuls(guarded))
    assert len(fp16_matmuls(guarded)) >= 10  # the other blocks' projections and MLPs
    assert max(r.observed_max for r in risks) > headroom.FP16_MAX
    assert {r.reason for r in risks} == {"range"}
    table = headroom.risks_table(risks)
    assert "value past the limit" in table and risks[0].tensor in table


def test_a_model_that_fits_fp16_is_converted_as_before(clean_case):
    ranges = headroom.tensor_ranges(clean_case.model, clean_case.calib)
    guarded, risks = headroom.to_fp16_with_headroom(clean_case.model, ranges)
    assert risks == []
    plain = quantize.to_fp16(clean_case.model)
    assert [n.op_type for n in guarded.graph.node] == [n.op_type for n in plain.graph.node]
    assert "fits FP16" in headroom.risks_table(risks)


def _model(nodes, initializers: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _scaled_layernorm(scale: float) -> onnx.ModelProto:
    """x (N, 4) -> Mul(scale) -> LayerNormalization -> MatMul: a norm whose input's square grows as scale^2."""
    return _model(
        [
            helper.make_node("Mul", ["x", "scale"], ["scaled"], name="scale"),
            helper.make_node("LayerNormalization", ["scaled", "gamma", "beta"], ["normed"], name="norm"),
            helper.make_node("MatMul", ["normed", "w"], ["y"], name="project"),
        ],
        {"scale": np.array(scale, np.float32), "gamma": np.ones(4, np.float32), "beta": np.zeros(4, np.float32),
         "w": np.full((4, 3), 0.1, np.float32)},
    )


def test_a_normalisation_whose_input_squared_passes_fp16_is_a_risk():
    calib = np.random.default_rng(0).uniform(-1, 1, (64, 4)).astype(np.float32)
    fits = _scaled_layernorm(50.0)  # max ~50: its square, 2500, fits
    assert headroom.find_risks(fits, headroom.tensor_ranges(fits, calib)) == []
    squared = _scaled_layernorm(1000.0)  # max ~1000 fits FP16, its square 1e6 does not
    risks = headroom.find_risks(squared, headroom.tensor_ranges(squared, calib))
    assert [(r.tensor, r.reason, r.keep_fp32) for r in risks] == [("scaled", "square", ("norm",))]
    assert 900 < risks[0].observed_max <= 1000


def test_a_weight_past_fp16_is_a_risk_and_its_reader_stays_fp32():
    w = np.full((4, 3), 0.1, np.float32)
    w[0, 0] = 1e5  # read by inputs of at most 0.1: the product fits, the weight itself does not
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="project")], {"w": w})
    calib = np.random.default_rng(0).uniform(-0.1, 0.1, (16, 4)).astype(np.float32)
    guarded, risks = headroom.to_fp16_with_headroom(model, headroom.tensor_ranges(model, calib))
    assert [(r.tensor, r.reason, r.keep_fp32) for r in risks] == [("w", "weight", ("project",))]
    assert fp16_matmuls(guarded) == []
    reference = run_onnx(model, calib)
    plain = run_onnx(quantize.to_fp16(model), calib)
    assert not np.allclose(plain, reference, rtol=0.1)  # the converter clips the weight to 65504
    np.testing.assert_allclose(run_onnx(guarded, calib), reference, rtol=1e-3, atol=1e-3)
