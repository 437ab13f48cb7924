"""The head's bilinear Resize as two MatMuls: against ONNX Runtime's and OpenVINO's own Resize, and the cases left."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
from export_checks import assert_exports_match, strong_checkpoint, torch_logits
from onnx import TensorProto, helper, numpy_helper

from lkca_deploy.forms.upsample import upsample_as_matmuls


def resize_model(grid=(5, 7), size=(20, 21), *, mode="linear", coords="half_pixel", antialias=0, channels=3,
                 batch="batch", by_scales=False) -> onnx.ModelProto:
    """x (B, C, h, w) -> Resize -> Relu: the Relu reads the Resize, as the head's consumers do."""
    inits = []
    if by_scales:
        scales = [1.0, 1.0, size[0] / grid[0], size[1] / grid[1]]
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        inputs = ["x", "", "scales"]
    else:
        inits.append(numpy_helper.from_array(np.array([2, channels, *size], np.int64), "sizes"))
        inputs = ["x", "", "", "sizes"]
    nodes = [
        helper.make_node("Resize", inputs, ["up"], name="head_up", mode=mode,
                         coordinate_transformation_mode=coords, antialias=antialias),
        helper.make_node("Relu", ["up"], ["y"]),
    ]
    out_batch = 2 if not by_scales else batch
    graph = helper.make_graph(
        nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2 if not by_scales else batch,
                                                                                 channels, *grid])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [out_batch, channels, *size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model: onnx.ModelProto, x: np.ndarray, backend: str) -> np.ndarray:
    if backend == "onnxruntime":
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x)[compiled.outputs[0]])


@pytest.mark.parametrize("kwargs", [{}, {"by_scales": True, "size": (20, 28)}, {"coords": "pytorch_half_pixel"},
                                    {"grid": (4, 4), "size": (4, 9)}])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_two_matmuls_compute_the_resize_the_runtime_computes(kwargs, backend):
    model = resize_model(**kwargs)
    rewritten, names = upsample_as_matmuls(model)
    assert names == ["head_up"]
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "MatMul", "Relu"]
    grid = kwargs.get("grid", (5, 7))
    x = np.random.default_rng(0).standard_normal((2, 3, *grid)).astype(np.float32)
    want = run(model, x, backend)
    assert np.abs(want).max() > 0.5
    np.testing.assert_allclose(run(rewritten, x, backend), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"mode": "nearest"}, {"mode": "cubic"}, {"coords": "align_corners"},
                                    {"antialias": 1}, {"grid": (8, 8), "size": (4, 16)}])
def test_other_resizes_are_left_as_they_are(kwargs):
    model = resize_model(**kwargs)
    rewritten, names = upsample_as_matmuls(model)
    assert names == [] and [n.op_type for n in rewritten.graph.node] == ["Resize", "Relu"]


def test_a_cpu_export_of_a_segmentation_model_upsamples_with_matmuls_and_matches_torch(tmp_path):
    from lkca_deploy.export import export_model, logits_module

    ckpt, model = strong_checkpoint(tmp_path, "lkca_seg_nano", None)
    ops = {}
    for target in ("onnxruntime-cpu", "tensorrt"):
        result = export_model(ckpt, tmp_path / f"{target}.onnx", target=target, check_samples=2)
        ops[target] = [n.op_type for n in onnx.load(str(result.path)).graph.node]
        assert (result.metadata["lowering"]["upsample_matmuls"] != []) == (target == "onnxruntime-cpu")
    assert "Resize" not in ops["onnxruntime-cpu"] and ops["tensorrt"].count("Resize") == 1
    x = np.random.default_rng(1).standard_normal((2, 1, 64, 64)).astype(np.float32)
    assert_exports_match(tmp_path / "onnxruntime-cpu.onnx", torch_logits(logits_module(model, None), x), x)


@pytest.mark.parametrize("backend,flavor", [("onnxruntime", "cpu"), ("openvino", "nncf")])
def test_int8_builds_keep_the_upsample_float_as_the_resize_was(tmp_path, backend, flavor):
    """Both MatMuls interpolate logits: Q/DQ around them would quantize the output itself (no Resize was)."""
    import json

    from lkca_deploy.backends.build import build_engine
    from lkca_deploy.backends.registry import get_backend
    from lkca_deploy.export import export_model
    from lkca_deploy.forms.upsample import upsample_nodes
    from lkca_runtime.backends.base import sidecar_path

    ckpt, _ = strong_checkpoint(tmp_path, "lkca_seg_nano", None)
    path = export_model(ckpt, tmp_path / "seg.onnx", lowering="matmul", check_samples=1).path
    names = upsample_nodes(onnx.load(str(path)))
    assert len(names) == 2
    calib = np.random.default_rng(0).standard_normal((8, 1, 64, 64)).astype(np.float32)
    suffix = get_backend(backend).artifact_suffix
    built = build_engine(path, backend, "int8", tmp_path / f"int8{suffix}", calib=calib, flavor=flavor)
    facts = json.loads(sidecar_path(built.artifact).read_text())
    assert facts["provenance"]["int8_float_upsample"] == names
    if backend == "onnxruntime":  # the baked Q/DQ graph: nothing dequantized feeds the upsample
        graph = onnx.load(str(built.artifact)).graph
        producers = {o: n.op_type for n in graph.node for o in n.output}
        for node in (n for n in graph.node if n.name in names):
            assert "DequantizeLinear" not in {producers.get(i) for i in node.input}, node.name
