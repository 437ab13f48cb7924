"""Graph forms for older parsers (Gelu as Erf, Reduce axes as an attribute, LayerNormalization decomposed) and the
file's opset: each form on a tiny graph against the original through ONNX Runtime, then a whole export for a target
whose table asks for them, against PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lkca_deploy import targets
from lkca_deploy.export import export_model
from lkca_deploy.forms.apply import apply_forms, fp32_nodes
from lkca_deploy.forms.registry import FORM_NAMES, GELU_ERF, LAYERNORM_DECOMPOSED, REDUCE_AXES_ATTRIBUTE
from lkca_deploy.onnx_graph import opset_of
from lkca_runtime.errors import UserError

SHAPE = [2, 5, 8]


def _model(nodes, initializers=(), opset=20, y_shape=("batch", *SHAPE[1:])) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *SHAPE[1:]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))
    graph = helper.make_graph(nodes, "g", [x], [y], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def _x(seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(SHAPE) * 3).astype(np.float32)


def _ops(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_as_its_erf_or_tanh_form_computes_the_same(approximate):
    model = _model([helper.make_node("Gelu", ["x"], ["y"], name="act", approximate=approximate)])
    for opset in (20, 17):
        formed, report = apply_forms(model, [GELU_ERF], opset)
        assert "Gelu" not in _ops(formed) and opset_of(formed) == opset
        assert ("Tanh" if approximate == "tanh" else "Erf") in _ops(formed)
        assert [c.action for c in report.changes] == ["rewritten"]
        np.testing.assert_allclose(_run(formed, _x()), _run(model, _x()), rtol=0, atol=1e-5)


def test_reduce_axes_become_the_attribute_at_opset_17_and_reduce_only_those_axes():
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    model = _model([helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="pool", keepdims=0),
                    helper.make_node("ReduceMax", ["m", "axes"], ["y"], name="peak", keepdims=1)], [axes], opset=18,
                   y_shape=("batch", 1))
    formed, report = apply_forms(model, [REDUCE_AXES_ATTRIBUTE], 17)
    assert opset_of(formed) == 17 and [c.action for c in report.changes] == ["rewritten"] * 2
    for node in formed.graph.node:
        assert list(node.input) == [node.input[0]] and helper.get_attribute_value(node.attribute[0]) == [1]
    assert [n.name for n in formed.graph.node] == ["pool", "peak"]
    assert not formed.graph.initializer  # the axes input has no reader left
    np.testing.assert_allclose(_run(formed, _x()), _run(model, _x()), rtol=0, atol=1e-6)
    with pytest.raises(UserError, match="opset <= 17"):
        apply_forms(model, [REDUCE_AXES_ATTRIBUTE], 18)


@pytest.mark.parametrize("opset", [20, 17])
def test_layernorm_decomposed_matches_and_lists_its_nodes_for_fp32(opset):
    scale = numpy_helper.from_array(np.linspace(0.5, 2, SHAPE[-1], dtype=np.float32), "scale")
    bias = numpy_helper.from_array(np.linspace(-1, 1, SHAPE[-1], dtype=np.float32), "bias")
    ln = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], name="norm1", epsilon=1e-6)
    model = _model([ln], [scale, bias], opset=opset)
    formed, report = apply_forms(model, FORM_NAMES, 17)
    assert "LayerNormalization" not in _ops(formed) and opset_of(formed) == 17
    assert [c.rule for c in report.rewritten][:1] == [LAYERNORM_DECOMPOSED]
    written = [n.name for n in formed.graph.node]
    assert fp32_nodes(formed) == written and all(n.startswith("norm1/layernorm_decomposed/") for n in written)
    assert all(len(n.input) == 1 for n in formed.graph.node if n.op_type == "ReduceMean")  # attribute form
    np.testing.assert_allclose(_run(formed, _x()), _run(model, _x()), rtol=0, atol=1e-5)


def test_an_opset_that_cannot_express_the_graph_is_refused_with_the_form_that_would():
    model = _model([helper.make_node("Gelu", ["x"], ["y"], name="act")])
    with pytest.raises(UserError, match=r"opset 17 cannot express Gelu \(opset 20\).*graph form gelu_erf"):
        apply_forms(model, [], 17)
    with pytest.raises(UserError, match="unknown graph form"):
        apply_forms(model, ["gelu_as_relu"], 20)


def test_an_export_for_a_target_with_forms_is_opset_17_exact_and_has_only_old_ops(tmp_path, monkeypatch):
    fake = targets.Target("fake-tensorrt-8.5", "tensorrt", None, 0, "the conv", opsets=(9, 17),
                          graph_forms=(GELU_ERF, LAYERNORM_DECOMPOSED, REDUCE_AXES_ATTRIBUTE))
    monkeypatch.setitem(targets.TARGETS, fake.name, fake)
    result = export_model("lkca_vit_nano", tmp_path / "m.onnx", target=fake.name, lowering="conv", check_samples=8)
    model = onnx.load(tmp_path / "m.onnx")
    assert opset_of(model) == 17 and result.metadata["opset"] == "17"
    assert not _ops(model) & {"Gelu", "LayerNormalization"}
    assert all(len(n.input) == 1 for n in model.graph.node if n.op_type == "ReduceMean")
    assert result.max_abs_err <= 1e-4  # the self-check ran on this very graph
    forms = result.metadata["lowering"]["graph_forms"]
    assert forms["fp32_nodes"] == fp32_nodes(model) and forms["fp32_nodes"]
    # Without the target's forms the same opset is a one-line refusal naming the ops
    with pytest.raises(UserError, match="LayerNormalization"):
        export_model("lkca_vit_nano", tmp_path / "n.onnx", opset=16, check_samples=8)
    assert not (tmp_path / "n.onnx").exists()


def test_export_opset_17_writes_17_and_says_so(tmp_path):
    result = export_model("lkca_vit_nano", tmp_path / "m.onnx", opset=17, check_samples=8, lowering="conv")
    assert opset_of(onnx.load(tmp_path / "m.onnx")) == 17 and result.metadata["opset"] == "17"
