"""torch -> ONNX export: every lowering against PyTorch FP32 through ONNX Runtime and OpenVINO (real libraries).

The zoo's random initialisation (std 0.02) leaves logits near 0.05, where a 1e-4 tolerance proves little, so most
tests export checkpoints whose weights are rescaled to give O(1) activations and a token mixer that matters.
Tracing takes seconds; export_model memoises the trace per model and options, so each model here is traced once
or twice and lowered many times.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from export_checks import strong_checkpoint, torch_logits

import lkca_deploy
from lkca_deploy import export as exporter
from lkca_deploy.export import META_KEYS, SelfCheckError, export_model, read_metadata, self_check
from lkca_deploy.models.zoo import create_model, get_config
from lkca_runtime.errors import UserError

TOL = 1e-4
LOWERINGS = [("conv", None), ("crop", None), ("matmul", None), ("tiled", 8), ("spectral", None), ("auto", None)]


# ---------------------------------------------------------------- helpers


def ort_outputs(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x})))


def openvino_logits(path: Path, x: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x)[compiled.output("logits")])


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)))


def random_x(batch: int, name: str, seed: int = 1) -> np.ndarray:
    config = get_config(name)
    shape = (batch, config.in_chans, config.img_size, config.img_size)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def assert_matches_torch(path: Path, model: torch.nn.Module, x: np.ndarray) -> None:
    want = torch_logits(model, x)
    assert np.abs(want).max() > 0.3  # logits big enough for the tolerance to mean something
    assert max_abs(ort_outputs(path, x)["logits"], want) < TOL
    assert max_abs(openvino_logits(path, x), want) < TOL


def shift_head_bias(model: onnx.ModelProto, delta: float) -> None:
    """A wrong graph, as a buggy pass would leave it: every logit off by `delta`."""
    bias = next(t for t in model.graph.initializer if t.name == "head.fc.bias")
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + delta, bias.name))


def conv_nodes(path: Path) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


# ---------------------------------------------------------------- fixtures: each model traced once


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    """lkca_vit_nano checkpoint (digits), exported with every lowering: {lowering: ExportResult}, torch model."""
    folder = tmp_path_factory.mktemp("nano")
    ckpt, model = strong_checkpoint(folder, "lkca_vit_nano", "digits")
    results = {
        low: export_model(ckpt, folder / f"{low}.onnx", lowering=low, max_kernel=mk, check_samples=16)
        for low, mk in LOWERINGS
    }
    return results, model, ckpt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    ckpt, model = strong_checkpoint(folder, "lkca_vit_tiny", None)
    results = {
        low: export_model(ckpt, folder / f"{low}.onnx", lowering=low, max_kernel=mk, check_samples=4)
        for low, mk in LOWERINGS
    }
    return results, model


# ---------------------------------------------------------------- every lowering matches torch


@pytest.mark.parametrize("lowering", [low for low, _ in LOWERINGS])
def test_nano_every_lowering_matches_torch_in_ort_and_openvino(nano, lowering):
    results, model, _ = nano
    result = results[lowering]
    assert result.path.is_file() and result.max_abs_err < TOL
    assert_matches_torch(result.path, model, random_x(4, "lkca_vit_nano"))


def test_nano_lowerings_did_what_they_say(nano):
    results, _, _ = nano
    kernels = {
        low: sorted(
            {tuple(a.ints) for n in conv_nodes(r.path) for a in n.attribute if a.name == "kernel_shape"}
        )
        for low, r in results.items()
    }
    assert kernels["conv"] == [(4, 4), (15, 15)]  # patch embedding + the LKCA convs
    assert results["crop"].lowering.nothing_lowered  # at 8x8 every tap of a 15x15 kernel touches the grid
    assert kernels["matmul"] == [(4, 4)] and len(results["matmul"].lowering.lowered) == 4
    assert max(max(k) for k in kernels["tiled"]) <= 8 and len(results["tiled"].lowering.lowered) == 4
    assert kernels["spectral"] == [(4, 4)] and len(results["spectral"].lowering.lowered) == 4
    # auto on ORT CPU at 8x8 takes the Toeplitz matmul, one plan per layer, each with its reason
    assert [p.strategy for p in results["auto"].plans] == ["matmul"] * 4
    assert all(p.reason for p in results["auto"].plans)


@pytest.mark.parametrize("lowering", [low for low, _ in LOWERINGS])
def test_tiny_every_lowering_matches_torch_in_ort_and_openvino(tiny, lowering):
    results, model = tiny
    assert results[lowering].metadata["check_inputs"] == "random"  # 3 channels, no data set
    assert_matches_torch(results[lowering].path, model, random_x(2, "lkca_vit_tiny"))


# ---------------------------------------------------------------- graph facts and metadata


def test_matmul_toeplitz_is_an_initializer_not_a_gather_over_the_kernel(nano):
    model = onnx.load(str(nano[0]["matmul"].path))
    assert not [n for n in model.graph.node if n.op_type in ("Gather", "GatherElements", "Tile", "Expand")]
    toeplitz = [t for t in model.graph.initializer if "toeplitz" in t.name]
    assert len(toeplitz) == 4 and all(tuple(t.dims) == (4, 64, 64) for t in toeplitz)  # heads x N x N


def test_conv_export_has_constant_lkca_weights_of_the_repeated_kernel(nano):
    model = onnx.load(str(nano[0]["conv"].path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    lkca = [
        n
        for n in model.graph.node
        if n.op_type == "Conv" and n.input[1] in inits and inits[n.input[1]].shape == (64, 1, 15, 15)
    ]
    assert len(lkca) == 4
    weight = inits[lkca[0].input[1]]
    assert np.array_equal(weight[:16], np.broadcast_to(weight[:1], weight[:16].shape))  # one kernel per head


def test_metadata_says_what_was_exported(nano):
    result = nano[0]["auto"]
    meta = read_metadata(result.path)
    assert set(META_KEYS) <= set(meta)
    assert meta == result.metadata
    assert meta["model_name"] == "lkca_vit_nano" and meta["task"] == "classification"
    assert meta["preprocessing"]["mean"] == [0.5] and meta["class_names"] == [str(i) for i in range(10)]
    assert meta["target"] == "onnxruntime-cpu" and meta["toolkit_version"] == lkca_deploy.__version__
    assert meta["opset"] == "20" and meta["batch"] == "batch"
    assert meta["check_inputs"] == "digits test split" and meta["check_samples"] == "16"
    assert float(meta["self_check_max_abs_error"]) == pytest.approx(result.max_abs_err, rel=0.01, abs=1e-12)
    lowering = meta["lowering"]
    assert lowering["requested"] == "auto" and len(lowering["plans"]) == 4
    assert [c["strategy"] for c in lowering["report"]["changes"]] == ["matmul"] * 4
    assert all("8x8" in plan["reason"] for plan in lowering["plans"])


def test_dynamic_batch_runs_batch_1_and_5(nano):
    results, model, _ = nano
    path = results["auto"].path
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    for batch in (1, 5):
        x = random_x(batch, "lkca_vit_nano", seed=batch)
        got = ort_outputs(path, x)["logits"]
        assert got.shape == (batch, 10) and max_abs(got, torch_logits(model, x)) < TOL


def test_static_batch_and_block_outputs_equal_torch_forward_blocks(nano, tmp_path):
    _, model, ckpt = nano
    result = export_model(
        ckpt, tmp_path / "blocks.onnx", lowering="matmul", batch=3, block_outputs=True, check_samples=4
    )
    onnx_model = onnx.load(str(result.path))
    dims = [d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 1, 32, 32] and result.metadata["batch"] == "3"
    assert [o.name for o in onnx_model.graph.output] == ["logits", "block_0", "block_1", "block_2", "block_3"]
    x = random_x(3, "lkca_vit_nano")
    got = ort_outputs(result.path, x)
    with torch.no_grad():
        blocks = model.forward_blocks(torch.from_numpy(x))
    for i, want in enumerate(blocks):
        want = want.numpy()
        assert got[f"block_{i}"].shape == (3, 64, 64)
        assert max_abs(got[f"block_{i}"], want) < TOL * max(1.0, float(np.abs(want).max()))
    assert max_abs(got["logits"], torch_logits(model, x)) < TOL


def test_tune_times_the_candidates_and_keeps_an_exact_one(nano, tmp_path):
    _, model, ckpt = nano
    result = export_model(ckpt, tmp_path / "tuned.onnx", lowering="tune", check_samples=4)
    rows = {row.candidate: row for row in result.tune_table}
    assert set(rows) == {"conv", "crop", "matmul", "spectral", "token_spectral", "tiled:32"}
    assert rows["spectral"].median_s > 0  # timed like the others (it loses at 8x8)
    assert rows["conv"].median_s > 0 and rows["matmul"].median_s > 0
    assert rows["crop"].status == "same as conv" and rows["tiled:32"].status == "same as conv"
    best = [row for row in result.tune_table if row.best]
    assert len(best) == 1 and result.lowering.strategy == best[0].strategy
    assert result.metadata["lowering"]["tune"][0]["candidate"] == "conv"
    assert_matches_torch(result.path, model, random_x(2, "lkca_vit_nano"))


# ---------------------------------------------------------------- zoo names


def test_a_zoo_name_exported_twice_computes_the_same_function(tmp_path):
    first = export_model("lkca_vit_nano", tmp_path / "a.onnx", lowering="conv", check_samples=8)
    # The second export reuses the trace, but its self-check runs a freshly seeded torch model against it.
    second = export_model("lkca_vit_nano", tmp_path / "b.onnx", lowering="matmul", check_samples=8)
    x = random_x(2, "lkca_vit_nano")
    a, b = ort_outputs(first.path, x)["logits"], ort_outputs(second.path, x)["logits"]
    fresh = torch_logits(create_model("lkca_vit_nano", view="conv", seed=0).eval(), x)
    assert max_abs(a, b) < 1e-6 and max_abs(a, fresh) < 1e-6
    other_seed = torch_logits(create_model("lkca_vit_nano", view="conv", seed=1).eval(), x)
    assert max_abs(a, other_seed) > 1e-3  # the seed, not luck, fixes the weights
    assert first.metadata["check_inputs"] == "digits test split"  # 1 channel, classification: real digits


# ---------------------------------------------------------------- failures leave nothing behind


def test_self_check_catches_a_wrong_graph(nano):
    results, model, _ = nano
    broken = onnx.load(str(results["conv"].path))
    shift_head_bias(broken, 1e-3)
    with pytest.raises(SelfCheckError, match="SELF-CHECK FAILED"):
        self_check(broken, model, random_x(4, "lkca_vit_nano"))


def test_a_failed_self_check_writes_nothing(nano, tmp_path, monkeypatch):
    _, _, ckpt = nano
    real = exporter.apply_lowering

    def lowering_with_a_bug(*args, **kwargs):
        model, *rest = real(*args, **kwargs)
        shift_head_bias(model, 1e-3)
        return (model, *rest)

    monkeypatch.setattr(exporter, "apply_lowering", lowering_with_a_bug)
    with pytest.raises(SelfCheckError):
        export_model(ckpt, tmp_path / "bad.onnx", lowering="conv", check_samples=4)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lowering": "fft"}, "unknown lowering"),
        ({"target": "tpu"}, "unknown target"),
        ({"opset": 16}, "opset"),
        ({"lowering": "conv", "max_kernel": 8}, "tiled"),
        ({"lowering": "tune", "tune_backend": "tensorrt"}, "tune backend"),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs, match):
    with pytest.raises(UserError, match=match):
        export_model("lkca_vit_nano", tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_unknown_source_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="neither a checkpoint directory nor a zoo model"):
        export_model(tmp_path / "missing", tmp_path / "x.onnx")


# ---------------------------------------------------------------- the 32x32 / K63 segmentation grid


@pytest.fixture(scope="module")
def seg_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg")
    return (folder, *strong_checkpoint(folder, "lkca_seg_tiny", None))


def test_seg_tiny_matmul_is_refused_before_the_self_check_and_writes_nothing(seg_tiny, monkeypatch):
    folder, ckpt, _ = seg_tiny

    def never(*args, **kwargs):
        raise AssertionError("the self-check ran before the refusal")

    monkeypatch.setattr(exporter, "self_check", never)
    monkeypatch.setattr(exporter, "check_inputs_for", never)
    out = folder / "matmul.onnx"
    with pytest.raises(UserError, match=r"matmul lowering needs 432\.0 MiB .* over the 64\.0 MiB budget"):
        export_model(ckpt, out, lowering="matmul")
    assert not out.exists() and not list(folder.glob(".matmul*"))


@pytest.fixture(scope="module")
def seg_tiny_reference(seg_tiny):
    """One input and PyTorch's logits for it, shared by the lowerings (a 512 px forward takes seconds)."""
    x = random_x(1, "lkca_seg_tiny")
    want = torch_logits(seg_tiny[2], x)
    assert want.shape == (1, 150, 512, 512) and np.abs(want).max() > 0.3
    return x, want


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lowering", "max_kernel"), [("conv", None), ("crop", None), ("tiled", 32), ("spectral", None)]
)
def test_seg_tiny_lowerings_match_torch(seg_tiny, seg_tiny_reference, lowering, max_kernel):
    folder, ckpt, _ = seg_tiny
    x, want = seg_tiny_reference
    result = export_model(
        ckpt, folder / f"{lowering}.onnx", lowering=lowering, max_kernel=max_kernel, check_samples=1
    )
    assert result.max_abs_err < TOL and result.metadata["check_inputs"] == "random"
    # K63 = 2 * 32 - 1: every tap touches the 32x32 grid, so crop has nothing to drop
    assert result.lowering.nothing_lowered == (lowering in ("conv", "crop"))
    kernels = {max(a.ints) for n in conv_nodes(result.path) for a in n.attribute if a.name == "kernel_shape"}
    assert max(kernels) == {"conv": 63, "crop": 63, "tiled": 32, "spectral": 16}[lowering]  # 16: patch embed
    assert max_abs(ort_outputs(result.path, x)["logits"], want) < TOL
    assert max_abs(openvino_logits(result.path, x), want) < TOL


def test_auto_for_tensorrt_at_int8_exports_matmul_mixers_and_records_the_precision(tmp_path):
    result = export_model(
        "lkca_vit_nano", tmp_path / "int8.onnx", target="tensorrt", precision="int8", check_samples=4
    )
    assert [p.strategy for p in result.plans] == ["matmul"] * len(result.plans) and result.plans
    assert "INT8 on tensorrt" in result.plans[0].reason
    assert result.metadata["lowering"]["precision"] == "int8" and result.max_abs_err < TOL
    assert not [n for n in conv_nodes(result.path) if any(a.name == "group" and a.i > 1 for a in n.attribute)]


def test_an_unknown_precision_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="unknown precision 'int4'"):
        export_model("lkca_vit_nano", tmp_path / "x.onnx", precision="int4")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- where segmentation logits end


def test_grid_logits_upsampled_by_masks_equal_the_models_own_resize(tmp_path):
    """`logits="grid"` stops before the head's Resize; the one numpy upsample (masks.py) reproduces that Resize."""
    from lkca_runtime.masks import resize_bilinear

    ckpt, model = strong_checkpoint(tmp_path, "lkca_seg_nano", None)
    full = export_model(ckpt, tmp_path / "full.onnx", lowering="token_spectral", check_samples=2)
    grid = export_model(ckpt, tmp_path / "grid.onnx", lowering="token_spectral", logits="grid", check_samples=2)
    named = export_model(ckpt, tmp_path / "named.onnx", lowering="conv", logits="24x40", check_samples=2)
    assert (full.metadata["logits"], grid.metadata["logits"], named.metadata["logits"]) == ("input", "grid", "24x40")
    x = random_x(3, "lkca_seg_nano")
    at_input, at_grid = ort_outputs(full.path, x)["logits"], ort_outputs(grid.path, x)["logits"]
    assert at_grid.shape == (3, 11, 16, 16) and ort_outputs(named.path, x)["logits"].shape == (3, 11, 24, 40)
    assert max_abs(at_input, torch_logits(model, x)) < TOL
    assert max_abs(np.stack([resize_bilinear(g, (64, 64)) for g in at_grid]), at_input) < 1e-5


@pytest.mark.parametrize(
    ("name", "logits", "match"),
    [
        ("lkca_seg_nano", "3y4", "must be input, grid or a size HxW"),
        ("lkca_seg_nano", "0x8", "must be input, grid or a size HxW"),
        ("lkca_vit_nano", "grid", "for segmentation models"),
    ],
)
def test_bad_logits_options_are_user_errors_before_any_tracing(tmp_path, name, logits, match, monkeypatch):
    monkeypatch.setattr(exporter, "traced_onnx", lambda *a, **k: pytest.fail("traced before the refusal"))
    with pytest.raises(UserError, match=match):
        export_model(name, tmp_path / "x.onnx", logits=logits)
    assert not (tmp_path / "x.onnx").exists()
