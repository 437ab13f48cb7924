"""The token_spectral lowering: the whole LKCA mixer in token layout, against the conv it replaces (ORT, OpenVINO)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conv_graphs import openvino_outputs, ort_outputs
from export_checks import assert_exports_match, strong_checkpoint, torch_logits
from onnx import TensorProto, helper, numpy_helper

from lkca_deploy.lowering import token_spectral
from lkca_deploy.lowering.apply import lower_model
from lkca_deploy.lowering.token_spectral import left_forward_h, left_inverse_h

TOL = 1e-4


def token_mixer_model(
    grid=(8, 8),
    channels=8,
    heads=2,
    kernel=(15, 15),
    *,
    pads=None,
    dilations=(1, 1),
    bias=False,
    batch: int | str = "batch",
    layers=1,
    grid_reader=False,
    seed=0,
) -> onnx.ModelProto:
    """tokens (B, H*W, C) -> [Transpose, Reshape, depthwise Conv, Reshape, Transpose, Relu] x layers, as exported.

    grid_reader: the grid view also feeds a second output, so the mixer's layout nodes must stay.
    """
    (h, w), (kh, kw) = grid, kernel
    pads = pads or [kh // 2 * dilations[0], kw // 2 * dilations[1]] * 2
    rng = np.random.default_rng(seed)
    ho = h + pads[0] + pads[2] - dilations[0] * (kh - 1)
    wo = w + pads[1] + pads[3] - dilations[1] * (kw - 1)
    assert ho * wo == h * w or layers == 1, "stacked layers need a grid-preserving conv"
    nodes, inits = [], [
        numpy_helper.from_array(np.array([-1, channels, h, w], np.int64), "to_grid"),
        numpy_helper.from_array(np.array([-1, channels, ho * wo], np.int64), "to_tokens"),
    ]
    t = "tokens"
    for layer in range(layers):
        kernels = rng.standard_normal((heads, 1, kh, kw)) / np.sqrt(kh * kw) * 3
        weight = np.repeat(kernels, channels // heads, axis=0).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{layer}"))
        conv_inputs = [f"grid{layer}", f"w{layer}"]
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), f"b{layer}"))
            conv_inputs.append(f"b{layer}")
        nodes += [
            helper.make_node("Transpose", [t], [f"channels{layer}"], perm=[0, 2, 1]),
            helper.make_node("Reshape", [f"channels{layer}", "to_grid"], [f"grid{layer}"]),
            helper.make_node("Conv", conv_inputs, [f"mixed{layer}"], name=f"mixer{layer}", group=channels,
                             pads=list(pads), dilations=list(dilations), kernel_shape=[kh, kw]),
            helper.make_node("Reshape", [f"mixed{layer}", "to_tokens"], [f"flat{layer}"]),
            helper.make_node("Transpose", [f"flat{layer}"], [f"back{layer}"], perm=[0, 2, 1]),
            helper.make_node("Relu", [f"back{layer}"], [f"out{layer}"]),
        ]
        t = f"out{layer}"
    outputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, [batch, ho * wo, channels])]
    if grid_reader:
        nodes.append(helper.make_node("Sigmoid", ["grid0"], ["grid_out"]))
        outputs.append(helper.make_tensor_value_info("grid_out", TensorProto.FLOAT, [batch, channels, h, w]))
    graph = helper.make_graph(
        nodes, "tokens", [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [batch, h * w, channels])],
        outputs, inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def tokens_for(model: onnx.ModelProto, batch: int, seed: int = 1) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return np.random.default_rng(seed).standard_normal((batch, dims[1].dim_value, dims[2].dim_value)).astype(
        np.float32
    )


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# ---------------------------------------------------------------- the DFT matrices


def test_forward_then_inverse_h_is_the_identity_on_the_grid():
    """Zero-padded DFT of length Ph and the first H samples of its inverse: [re|im] rows come back unchanged."""
    h, ph = 5, 9
    roundtrip = left_inverse_h(ph, h) @ left_forward_h(h, ph)
    assert np.allclose(roundtrip, np.eye(2 * h), atol=1e-12)


# ---------------------------------------------------------------- exact on hand-built graphs


CASES = {
    "square_same": {},
    "rect_grid_bias": {"grid": (6, 10), "kernel": (11, 19), "bias": True},
    "one_head_dilated": {"heads": 1, "kernel": (7, 9), "dilations": (2, 2), "grid": (8, 8)},
    "heads_equal_channels": {"heads": 8, "kernel": (13, 13)},
    "shrinking_pads": {"pads": [3, 5, 1, 2], "kernel": (9, 11)},  # output grid smaller than the input
    "two_layers": {"layers": 2},
}


FORMS = {"toeplitz_w": "Toeplitz product along W", "dft_hw": "DFT matmuls with periods"}


@pytest.fixture(params=sorted(FORMS))
def form(request, monkeypatch):
    """Both forms of the rewrite: the Toeplitz one wherever it fits its budget, else the DFT along both axes."""
    if request.param == "dft_hw":
        monkeypatch.setattr(token_spectral, "TOEPLITZ_W_BYTES", 0)
    return FORMS[request.param]


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_in_ort_and_openvino_with_a_dynamic_batch(case, form):
    model = token_mixer_model(**CASES[case])
    lowered, report = lower_model(model, "token_spectral")
    assert len(report.lowered) == CASES[case].get("layers", 1) and not report.skipped
    assert all(form in change.reason for change in report.lowered)
    assert not {"Transpose", "Conv"} & set(op_types(lowered))  # the layout changes went with the conv
    for batch in (1, 3):
        x = tokens_for(model, batch)
        (want,) = ort_outputs(model, x)
        assert np.abs(want).max() > 0.5
        assert np.abs(ort_outputs(lowered, x)[0] - want).max() < 1e-5
        assert np.abs(openvino_outputs(lowered, x)[0] - want).max() < 1e-5


def test_static_batch_exports_are_matched_too(form):
    model = token_mixer_model(batch=2)
    lowered, report = lower_model(model, "token_spectral")
    x = tokens_for(model, 2)
    assert len(report.lowered) == 1
    assert np.abs(ort_outputs(lowered, x)[0] - ort_outputs(model, x)[0]).max() < 1e-5


def test_a_grid_view_read_elsewhere_keeps_the_layout_and_lowers_the_conv_alone():
    """The pattern needs the layout nodes to be the mixer's own; otherwise the conv is lowered as `spectral` does."""
    model = token_mixer_model(grid_reader=True)
    lowered, report = lower_model(model, "token_spectral")
    (change,) = report.lowered
    assert change.strategy == "spectral" and "the conv alone: its input is not tokens" in change.reason
    assert op_types(lowered).count("Transpose") == 2 + 2 and "Conv" not in op_types(lowered)  # layout + spectral's
    x = tokens_for(model, 2)
    for got, want in zip(ort_outputs(lowered, x), ort_outputs(model, x)):
        assert np.abs(got - want).max() < 1e-5


def test_small_kernels_and_non_depthwise_convs_are_skipped():
    lowered, report = lower_model(token_mixer_model(kernel=(5, 5)), "token_spectral")
    assert report.nothing_lowered and "already small" in report.skipped[0].reason
    assert "Conv" in op_types(lowered)


def test_constants_are_small_and_one_spectrum_per_head(form):
    """lkca_seg_tiny's layer (32x32 grid, K63, 192 channels, 12 heads) stays far below its 3 MiB conv weight in
    the file; the runtime builds 6 MiB from it (the Toeplitz form's blocks, or the DFT form's per-channel factors)."""
    model = token_mixer_model(grid=(32, 32), channels=192, heads=12, kernel=(63, 63))
    _, report = lower_model(model, "token_spectral")
    (change,) = report.lowered
    assert change.heads == 12 and change.weight_bytes < 0.5 * 2**20 and form in change.reason
    assert report.extra_weight_bytes < 0  # the repeated 63x63 kernels are gone
    assert "6.0 MiB once the runtime has built them" in change.reason


def test_toeplitz_blocks_are_complex_products_on_re_im_rows():
    """table[..., index] per head and H-bin is [[Re T, -Im T], [Im T, Re T]] with T Toeplitz (T[j, w] = M[w - j])."""
    from lkca_deploy.lowering import spectral

    kernel = np.random.default_rng(0).standard_normal((2, 5, 7))
    table, index = spectral.w_toeplitz(kernel, (6, 6), (6, 6), (2, 3), (1, 1))
    blocks = table[..., index]
    assert blocks.shape == (2, 11 // 2 + 1, 12, 12)
    re, minus_im, im = blocks[..., :6, :6], blocks[..., :6, 6:], blocks[..., 6:, :6]
    assert np.array_equal(blocks[..., 6:, 6:], re) and np.array_equal(minus_im, -im) and np.abs(im).max() > 0
    assert np.array_equal(re[..., 1:, 1:], re[..., :-1, :-1])  # constant along each diagonal
    assert np.all(re[..., 0, 4:] == 0)  # column offsets past the kernel's reach (3 to the right) are zero


# ---------------------------------------------------------------- the zoo's exports, against PyTorch


@pytest.mark.parametrize("logits", [None, "grid"])
def test_seg_nano_export_matches_torch_and_drops_every_mixer_transpose(tmp_path, logits):
    from lkca_deploy.export import export_model, logits_module

    ckpt, model = strong_checkpoint(tmp_path, "lkca_seg_nano", None)
    result = export_model(ckpt, tmp_path / "tok.onnx", lowering="token_spectral", logits=logits, check_samples=4)
    assert [c.strategy for c in result.lowering.lowered] == ["token_spectral"] * 4
    assert result.metadata["logits"] == (logits or "input")
    # Left: the patch embedding's and the head's layout changes, none of the four mixers'
    assert op_types(onnx.load(str(result.path))).count("Transpose") == 2
    x = np.random.default_rng(1).standard_normal((2, 1, 64, 64)).astype(np.float32)
    want = torch_logits(logits_module(model, (16, 16) if logits else None), x)
    assert want.shape == ((2, 11, 16, 16) if logits else (2, 11, 64, 64))
    assert_exports_match(result.path, want, x)


@pytest.mark.slow
def test_seg_tiny_auto_is_token_spectral_and_exact_with_grid_logits(tmp_path):
    """The ADE20K setting (32x32 grid, K63): what `auto` ships for both CPU backends, within 1e-4 of PyTorch."""
    from lkca_deploy.export import export_model, logits_module

    ckpt, model = strong_checkpoint(tmp_path, "lkca_seg_tiny", None)
    result = export_model(ckpt, tmp_path / "auto.onnx", target="openvino-cpu", batch=1, logits="grid",
                          check_samples=1)
    assert {c.strategy for c in result.lowering.lowered} == {"token_spectral"}
    x = np.random.default_rng(1).standard_normal((1, 3, 512, 512)).astype(np.float32)
    want = torch_logits(logits_module(model, (32, 32)), x)
    assert want.shape == (1, 150, 32, 32)
    assert_exports_match(result.path, want, x)


def test_nncf_int8_of_both_forms_compiles_and_stays_close(tmp_path, form):
    """NNCF 3.4 fails on the Toeplitz blocks (a Gather into a MatMul's first input) unless the constants are folded
    first, and the CPU plugin refuses its per-row scales for them: they stay float (backends/openvino.py)."""
    from lkca_deploy.backends.openvino import OpenVinoBackend

    model = token_mixer_model(grid=(8, 8), channels=8, heads=2, kernel=(15, 15), layers=2)
    lowered, _ = lower_model(model, "token_spectral")
    onnx.save(lowered, str(tmp_path / "lowered.onnx"))
    calib = tokens_for(model, 16)
    artifact = OpenVinoBackend().build(tmp_path / "lowered.onnx", tmp_path / "int8.xml", precision="int8", calib=calib)
    x = tokens_for(model, 4, seed=5)
    with OpenVinoBackend().load(artifact) as runner:
        (got,) = runner.run_all(x).values()
    (want,) = ort_outputs(model, x)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()  # INT8, but the mixers' transforms in float
