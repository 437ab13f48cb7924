"""The torch-free Predictor on small real bundles: zoo models exported with torch, real onnxruntime and OpenVINO.

Bundles are built here with BundleWriter and the backend registry (the pipeline is not needed): a classifier
(lkca_vit_nano, random weights) with onnxruntime and OpenVINO fp32 engines, a segmenter (lkca_seg_nano) with an
onnxruntime engine, and an onnx.helper RGB model with a static batch of 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from lkca_deploy.backends.registry import get_backend
from lkca_deploy.bundle import BundleWriter
from lkca_runtime.errors import UserError
from lkca_runtime.masks import Slide, resize_bilinear
from lkca_runtime.predictor import Predictor, choose_engine, predict, softmax
from lkca_runtime.spec import PreprocessSpec

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLS_SPEC = PreprocessSpec((32, 32), 1, (0.5,), (0.25,), class_names=DIGITS)
SEG_CLASSES = ("background", *DIGITS)
SEG_SPEC = PreprocessSpec((64, 64), 1, (0.5,), (0.25,), class_names=SEG_CLASSES, task="segmentation")
RGB_SPEC = PreprocessSpec((8, 8), 3, (0.5,) * 3, (0.25,) * 3, class_names=("red", "green", "blue"))


def _export_zoo(name: str, size: int, path: Path) -> Path:
    import torch

    import lkca_deploy

    model = lkca_deploy.create_model(name, view="conv", seed=0).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, size, size),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


def _rgb_onnx(path: Path) -> Path:
    """Static batch 2: logits = per-channel means of the input, mixed by a fixed matrix."""
    mix = numpy_helper.from_array(np.array([[1, 0.2, 0], [0, 1, 0.3], [0.1, 0, 1]], np.float32), "mix")
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["means", "mix"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "rgb",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3])],
        [mix],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _write_bundle(
    out: Path, name: str, spec: PreprocessSpec, onnx_path: Path, backends: tuple[str, ...]
) -> Path:
    with BundleWriter(out) as b:
        b.set_model(name, spec.task, {"name": name}, spec)
        if "onnxruntime" in backends:  # built in place, then registered
            artifact = b.path / "onnx" / "model.fp32.onnx"
            get_backend("onnxruntime").build(onnx_path, artifact, precision="fp32")
            b.register("onnx/model.fp32.onnx", "onnx")
            b.register("onnx/model.fp32.onnx.json", "sidecar")
            b.add_engine("onnxruntime", "fp32", "onnx/model.fp32.onnx", passed=True, p50_ms={"1": 0.5})
        if "openvino" in backends:  # built outside, then copied in with its sidecar and weights
            built = get_backend("openvino").build(
                onnx_path, out.parent / f"{name}-ov" / "model.fp32.xml", precision="fp32"
            )
            b.add_artifact(built, "openvino", "openvino-ir")
            b.add_engine("openvino", "fp32", "openvino/model.fp32.xml", passed=True, p50_ms={"1": 0.4})
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    cls_onnx = _export_zoo("lkca_vit_nano", 32, root / "cls.onnx")
    seg_onnx = _export_zoo("lkca_seg_nano", 64, root / "seg.onnx")
    return {
        "cls": _write_bundle(root / "cls", "lkca_vit_nano", CLS_SPEC, cls_onnx, ("onnxruntime", "openvino")),
        "seg": _write_bundle(root / "seg", "lkca_seg_nano", SEG_SPEC, seg_onnx, ("onnxruntime",)),
        "rgb": _write_bundle(root / "rgb", "rgb", RGB_SPEC, _rgb_onnx(root / "rgb.onnx"), ("onnxruntime",)),
    }


def _images(n: int, shape=(28, 28), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def _assert_same(a: list, b: list) -> None:
    """Two top-k results (or lists of them) with the same labels in the same order and the same scores."""
    pairs = list(zip(a, b)) if a and isinstance(a[0], list) else [(a, b)]
    for x, y in pairs:
        assert [label for label, _ in x] == [label for label, _ in y]
        np.testing.assert_allclose([s for _, s in x], [s for _, s in y], rtol=1e-5, atol=1e-7)


def _direct_onnxruntime(bundle: Path, spec: PreprocessSpec, images) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(bundle / "onnx" / "model.fp32.onnx"))
    return session.run(None, {"input": spec.preprocess(images)})[0]


# ---------------------------------------------------------------- classification


def test_predictions_equal_a_direct_onnxruntime_run(bundles):
    images = _images(3)
    probs = softmax(_direct_onnxruntime(bundles["cls"], CLS_SPEC, images))
    with Predictor(bundles["cls"], backend="onnxruntime", top_k=10) as p:
        results = p(images)
    for result, expected in zip(results, probs):
        order = np.argsort(-expected)
        assert [label for label, _ in result] == [DIGITS[i] for i in order]
        np.testing.assert_allclose([s for _, s in result], expected[order], rtol=1e-5, atol=1e-7)


def test_auto_prefers_openvino_and_both_backends_agree(bundles):
    images = _images(4, seed=1)
    with Predictor(bundles["cls"]) as auto, Predictor(bundles["cls"], backend="onnxruntime") as ort:
        assert auto.engine["backend"] == "openvino" and ort.engine["backend"] == "onnxruntime"
        for a, b in zip(auto(images, top_k=10), ort(images, top_k=10)):
            assert [label for label, _ in a][:3] == [label for label, _ in b][:3]
            np.testing.assert_allclose(sorted(s for _, s in a), sorted(s for _, s in b), atol=1e-5)


def test_top_k_is_sorted_with_class_names(bundles):
    with Predictor(bundles["cls"], backend="onnxruntime") as p:
        result = p(_images(1)[0])
        assert len(result) == 5  # the constructor's default
        scores = [s for _, s in result]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
        assert {label for label, _ in result} <= set(DIGITS)
        assert len(p(_images(1)[0], top_k=3)) == 3
        assert len(p(_images(1)[0], top_k=50)) == 10
        with pytest.raises(UserError, match="top-k"):
            p(_images(1)[0], top_k=0)


def test_gray_and_rgb_inputs_are_converted(bundles, tmp_path):
    gray = _images(1, (32, 32), seed=2)[0]
    rgb = np.repeat(gray[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with Predictor(bundles["cls"], backend="onnxruntime", top_k=10) as p:  # a grayscale model
        expected = p(gray)
        for same in (
            rgb,
            Image.fromarray(rgb),
            tmp_path / "rgb.png",
            str(tmp_path / "rgb.png"),
            gray[..., None],
        ):
            _assert_same(p(same), expected)
    with Predictor(bundles["rgb"], top_k=3) as p:  # an RGB model
        _assert_same(p(Image.fromarray(gray[:8, :8])), p(np.repeat(gray[:8, :8, None], 3, axis=2)))


class _CountingRunner:
    """The real runner, recording the batch size of each call."""

    def __init__(self, runner):
        self.runner, self.batches = runner, []
        self.input_shape, self.max_batch = runner.input_shape, runner.max_batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        return self.runner(x)

    def close(self) -> None:
        self.runner.close()


def test_a_list_is_one_batch_and_static_batches_are_padded(bundles):
    images = _images(5, seed=3)
    with Predictor(bundles["cls"], backend="onnxruntime") as p:
        p.runner = _CountingRunner(p.runner)
        batched = p(images)
        assert p.runner.batches == [5]
        _assert_same(batched, [p(image) for image in images])
    rgb = [np.stack([im[:8, :8]] * 3, axis=2) for im in images]
    with Predictor(bundles["rgb"], top_k=3) as p:  # the engine takes exactly 2 images: 5 -> 2 + 2 + 1 padded
        assert p.runner.input_shape[0] == 2
        _assert_same(p(rgb), [p(image) for image in rgb])


# ---------------------------------------------------------------- segmentation


def test_segmentation_mask_is_at_the_image_size(bundles, tmp_path):
    image = _images(1, (50, 70), seed=4)[0]
    with Predictor(bundles["seg"]) as p:
        mask = p(image)
        assert mask.shape == (50, 70) and mask.dtype == np.int32
        assert 0 <= mask.min() and mask.max() < len(SEG_CLASSES)
        same_mask, scores = p(image, return_scores=True)
        assert scores.shape == (len(SEG_CLASSES), 50, 70)
        np.testing.assert_allclose(scores.sum(axis=0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(same_mask, mask)
        np.testing.assert_array_equal(scores.argmax(axis=0), mask)
        full = _images(2, (64, 64), seed=5)  # at the model's size no resizing: the plain argmax
        expected = _direct_onnxruntime(bundles["seg"], SEG_SPEC, full).argmax(axis=1)
        np.testing.assert_array_equal(np.stack(p(full)), expected)

        mask_png, overlay_png = p.save_mask(mask, image, tmp_path / "masks", "scene")
    assert (mask_png.name, overlay_png.name) == ("scene.mask.png", "scene.overlay.png")
    np.testing.assert_array_equal(np.asarray(Image.open(mask_png)), mask)
    with Image.open(overlay_png) as ov:
        assert ov.mode == "RGB" and ov.size == (70, 50)
    assert sorted(q.name for q in (tmp_path / "masks").iterdir()) == ["scene.mask.png", "scene.overlay.png"]


def test_sliding_windows_over_two_scenes_side_by_side_segment_each_scene(bundles):
    # A 64x128 image is two 64x64 model inputs side by side: with a 64-pixel stride the windows are exactly the two
    # scenes, so sliding must give each scene's own mask; whole-image resize squeezes the pair into one input.
    left, right = _images(2, (64, 64), seed=6)
    pair = np.concatenate([left, right], axis=1)
    with Predictor(bundles["seg"]) as p:
        expected = np.concatenate([p(left), p(right)], axis=1)
        np.testing.assert_array_equal(p(pair, slide=Slide(stride=64)), expected)
        assert not np.array_equal(p(pair), expected)
        overlapping, scores = p(pair, slide=True, return_scores=True)  # default stride 43: 3 windows
        assert overlapping.shape == (64, 128) and scores.shape == (len(SEG_CLASSES), 64, 128)
        np.testing.assert_array_equal(p(left, slide=True), p(left))  # one window: the plain run
        with pytest.raises(UserError, match="--stride must be 1..64"):
            p(pair, slide=Slide(stride=100))
    with Predictor(bundles["cls"]) as p, pytest.raises(UserError, match="are for segmentation; .* classification"):
        p(left, slide=True)


def test_sliding_at_the_images_own_scale_tiles_a_grid_of_scenes(bundles):
    scenes = _images(6, (64, 64), seed=7)
    grid = np.concatenate([np.concatenate(scenes[:3], axis=1), np.concatenate(scenes[3:], axis=1)], axis=0)
    with Predictor(bundles["seg"]) as p:
        masks = [p(scene) for scene in scenes]
        expected = np.concatenate([np.concatenate(masks[:3], axis=1), np.concatenate(masks[3:], axis=1)], axis=0)
        np.testing.assert_array_equal(p(grid, slide=Slide(stride=64, scale=1)), expected)
        # The default recipe first shrinks the 128x192 grid to a 64 short side: another answer, at the same size.
        assert p(grid, slide=Slide(stride=64)).shape == (128, 192)


@pytest.mark.parametrize("size", [(50, 70), (128, 96), (7, 3)])
def test_logit_upsampling_is_torch_bilinear(size):
    import torch
    import torch.nn.functional as F

    logits = np.random.default_rng(0).standard_normal((3, 16, 12)).astype(np.float32)
    batch = torch.from_numpy(logits)[None]
    expected = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(resize_bilinear(logits, size), expected.numpy(), atol=1e-5)


# ---------------------------------------------------------------- torch-free


def test_predictor_never_imports_torch(bundles, tmp_path):
    Image.fromarray(_images(1, (40, 30))[0]).save(tmp_path / "digit.png")
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from lkca_deploy.runtime import Predictor, predict
        for backend in ("onnxruntime", "openvino"):
            result = Predictor({str(bundles["cls"])!r}, backend=backend)(np.zeros((32, 32), np.uint8))
            assert len(result) == 5
        out = predict({str(bundles["seg"])!r}, [{str(tmp_path / "digit.png")!r}], save_mask_dir={str(tmp_path)!r})
        assert (out[0]["height"], out[0]["width"]) == (40, 30), out
        heavy = sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith(
            ("lkca_deploy.models", "lkca_deploy.train", "lkca_deploy.checkpoint")))
        assert not heavy, heavy
        print("torch-free")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch-free" in done.stdout
    assert (tmp_path / "digit.mask.png").is_file() and (tmp_path / "digit.overlay.png").is_file()


# ---------------------------------------------------------------- predict()


def test_predict_returns_json_friendly_results(bundles, tmp_path):
    paths = []
    for i, image in enumerate(_images(2, (32, 32), seed=6)):
        (tmp_path / str(i)).mkdir()
        paths.append(tmp_path / str(i) / "same.png")
        Image.fromarray(image).save(paths[-1])
    results = predict(bundles["cls"], paths, backend="onnxruntime", top_k=2)
    json.dumps(results)
    assert [r["image"] for r in results] == [str(p) for p in paths]
    assert all(r["backend"] == "onnxruntime" and r["label"] == r["top_k"][0]["label"] for r in results)
    assert all(len(r["top_k"]) == 2 and r["label"] in DIGITS for r in results)
    seg = predict(bundles["seg"], paths, save_mask_dir=tmp_path / "out")
    json.dumps(seg)
    assert [Path(r["mask"]).name for r in seg] == ["same.mask.png", "same-2.mask.png"]  # no overwrite
    assert all(
        sum(r["class_pixels"].values()) == 32 * 32 and set(r["class_pixels"]) <= set(SEG_CLASSES) for r in seg
    )
    with pytest.raises(UserError, match="--save-mask is for segmentation"):
        predict(bundles["cls"], paths, save_mask_dir=tmp_path / "out")


# ---------------------------------------------------------------- bad input


@pytest.fixture
def cls_copy(bundles, tmp_path) -> Path:
    return Path(shutil.copytree(bundles["cls"], tmp_path / "bundle"))


def test_an_altered_file_anywhere_in_the_bundle_is_named(cls_copy):
    """A bundle serves whole or not at all (bundle.require_whole): a changed OpenVINO file stops the onnxruntime
    engine too, since someone changed the bundle."""
    weights = cls_copy / "openvino" / "model.fp32.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # a real change (the tail may be zero already)
    for backend in ("openvino", "auto", "onnxruntime"):
        with pytest.raises(
            UserError, match=r"bundle file openvino/model.fp32.bin was altered \(sha256 mismatch\)"
        ):
            Predictor(cls_copy, backend=backend)
    weights.write_bytes(data)
    Predictor(cls_copy, backend="onnxruntime").close()  # whole again
    with open(cls_copy / "onnx" / "model.fp32.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="bundle file onnx/model.fp32.onnx was altered"):
        Predictor(cls_copy, backend="onnxruntime")


def test_a_missing_file_is_named(cls_copy):
    (cls_copy / "openvino" / "model.fp32.xml.json").unlink()
    with pytest.raises(UserError, match="bundle file openvino/model.fp32.xml.json is missing"):
        Predictor(cls_copy, backend="openvino")
    with pytest.raises(UserError, match="does not exist"):
        Predictor(cls_copy / "nowhere")


def test_what_is_not_an_image_is_named(bundles, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not pixels")
    with Predictor(bundles["cls"], backend="onnxruntime") as p:
        with pytest.raises(UserError, match=r"notes.png is not an image"):
            p([_images(1)[0], text])
        with pytest.raises(UserError, match="missing.png does not exist"):
            p(tmp_path / "missing.png")
        with pytest.raises(UserError, match=r"image #1 is an array of shape \(4, 4, 2\)"):
            p([_images(1)[0], np.zeros((4, 4, 2), np.uint8)])
        with pytest.raises(UserError, match="image #0 is a dict"):
            p({"pixels": 1})
        with pytest.raises(UserError, match="no images given"):
            p([])
    with pytest.raises(UserError, match="no images given"):
        predict(bundles["cls"], [])


def test_a_backend_not_in_the_bundle(bundles):
    with pytest.raises(UserError, match="the bundle has no openvino engine; it has: onnxruntime"):
        Predictor(bundles["seg"], backend="openvino")
    with pytest.raises(UserError, match="the bundle has no tensorrt engine; it has: onnxruntime, openvino"):
        Predictor(bundles["cls"], backend="tensorrt")
    with pytest.raises(UserError, match="no onnxruntime engine at int8; it has: fp32"):
        Predictor(bundles["cls"], backend="onnxruntime", precision="int8")
    with pytest.raises(UserError, match="unknown backend 'tflite'"):
        Predictor(bundles["cls"], backend="tflite")


# ---------------------------------------------------------------- engine choice


def _engine(backend, precision, passed=True, p50=None):
    return {
        "backend": backend,
        "precision": precision,
        "artifact": f"{backend}/{precision}",
        "passed": passed,
        "p50_ms": {} if p50 is None else {"1": p50},
    }


def _installed(*names):
    return lambda name: (name in names, f"{name} is not installed: pip install {name}")


def test_engine_choice():
    engines = [
        _engine("onnxruntime", "fp32", p50=1.0),
        _engine("onnxruntime", "int8", p50=0.3),
        _engine("onnxruntime", "fp16", passed=False, p50=0.1),
        _engine("openvino", "fp32"),
        _engine("openvino", "int8", passed=None),
        _engine("tensorrt", "fp16", p50=0.05),
    ]
    everything = _installed("onnxruntime", "openvino", "tensorrt")
    assert choose_engine(engines, status=everything)["backend"] == "tensorrt"
    # openvino before onnxruntime; without timings, the most exact passed engine
    assert choose_engine(engines, status=_installed("onnxruntime", "openvino"))["artifact"] == "openvino/fp32"
    # fastest passed engine, never the faster one that failed parity
    assert choose_engine(engines, "onnxruntime", status=everything)["artifact"] == "onnxruntime/int8"
    assert choose_engine(engines, "onnxruntime", "fp32", status=everything)["artifact"] == "onnxruntime/fp32"
    # auto skips a backend with nothing at that precision
    assert choose_engine(engines, precision="int8", status=everything)["artifact"] == "openvino/int8"
    with pytest.warns(UserWarning, match="failed parity"):
        assert choose_engine(engines, "onnxruntime", "fp16", status=everything)["precision"] == "fp16"
    with pytest.raises(UserError, match="openvino is not installed: pip install openvino"):
        choose_engine(engines, "openvino", status=_installed("onnxruntime"))
    with pytest.raises(UserError, match="none of the bundle's backends"):
        choose_engine(engines, status=_installed())
    failed = [_engine("onnxruntime", "fp32", passed=False)]
    with pytest.raises(UserError, match="every onnxruntime engine in the bundle failed parity"):
        choose_engine(failed, "onnxruntime", status=everything)
    with pytest.raises(UserError, match="no engine in the bundle passed parity"):
        choose_engine(failed, status=everything)
    with pytest.raises(UserError, match="has no engines"):
        choose_engine([], status=everything)
