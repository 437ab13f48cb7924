"""End-to-end Predictor latency per stage, on real image files (digits, digit-scenes) and real onnxruntime engines."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
from backend_models import tiny_lkca_model

from lkca_deploy.backends.registry import get_backend
from lkca_deploy.data.datasets import digits_images, digits_split_indices
from lkca_deploy.measure.cost import measure_cost
from lkca_deploy.measure.e2e import STAGES, TOTAL, EndToEnd, measure_e2e, write_sample_images
from lkca_runtime.predictor import Predictor
from lkca_runtime.spec import PreprocessSpec

DIGITS = tuple(str(i) for i in range(10))
CLS_SPEC = PreprocessSpec((8, 8), 3, (0.5,) * 3, (0.25,) * 3, class_names=DIGITS)  # the tiny model takes RGB 8x8
SEG_CLASSES = ("background", "ink", "edge")
SEG_SPEC = PreprocessSpec((16, 16), 1, (0.5,), (0.25,), class_names=SEG_CLASSES, task="segmentation")


def _seg_model() -> onnx.ModelProto:
    """(N, 1, 16, 16) -> 1x1 conv -> (N, 3, 16, 16) class logits: the smallest real segmenter."""
    w = numpy_helper.from_array(np.array([-1.0, 1.0, 0.2], np.float32).reshape(3, 1, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])],
        "seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _ort_engine(model: onnx.ModelProto, folder: Path) -> Path:
    onnx.save(model, str(folder / "src.onnx"))
    return get_backend("onnxruntime").build(folder / "src.onnx", folder / "model.onnx", precision="fp32")


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-cls")
    engine = _ort_engine(tiny_lkca_model(), root)
    files = write_sample_images("digits", "classification", root / "images", count=6)
    return engine, files


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-seg")
    engine = _ort_engine(_seg_model(), root)
    files = write_sample_images("digit-scenes", "segmentation", root / "images", count=4)
    return engine, files


def _predictor(engine: Path, spec: PreprocessSpec) -> Predictor:
    return Predictor.around(get_backend("onnxruntime").load(engine), spec)


def test_sample_images_are_the_test_split_as_png(tmp_path):
    files = write_sample_images("digits", "classification", tmp_path, count=5)
    assert len(files) == 5 and all(f.suffix == ".png" and f.parent == tmp_path for f in files)
    images, _ = digits_images()
    test_rows = digits_split_indices()[1]  # files are named by their place in the test split: never a training image
    for f in files:
        row = test_rows[int(f.stem.split("-")[1])]
        np.testing.assert_array_equal(np.asarray(Image.open(f)), images[row])


def test_every_stage_of_a_classifier_is_timed_per_image(cls):
    engine, files = cls
    with _predictor(engine, CLS_SPEC) as p:
        result = measure_e2e(p, files, warmup=2, iters=12)
    assert result.images == len(files)
    assert list(result.stages) == [*STAGES, TOTAL]
    for stats in result.stages.values():
        assert stats.iters == 12 and stats.batch == 1 and 0 < stats.p50_ms <= stats.p99_ms
    total = result.stages[TOTAL]
    # Each call's total spans its four stages, so every percentile of the total is at least each stage's.
    assert all(total.p50_ms >= result.stages[s].p50_ms for s in STAGES)
    assert total.mean_ms == pytest.approx(sum(result.stages[s].mean_ms for s in STAGES), rel=1e-6)
    assert EndToEnd.from_dict(result.to_dict()).to_dict() == result.to_dict()


class _SlowRunner:
    """The real runner, 20 ms slower per call: inference time must land in the inference stage."""

    def __init__(self, runner):
        self.runner, self.input_shape, self.max_batch = runner, runner.input_shape, runner.max_batch

    def __call__(self, x):
        time.sleep(0.02)
        return self.runner(x)

    def close(self):
        self.runner.close()


def test_time_is_attributed_to_the_stage_that_spends_it(cls):
    engine, files = cls
    with _predictor(engine, CLS_SPEC) as p:
        p.runner = _SlowRunner(p.runner)
        result = measure_e2e(p, files, warmup=1, iters=5)
    assert result.stages["inference"].p50_ms >= 20.0
    assert all(result.stages[s].p50_ms < 20.0 for s in ("decode", "preprocess", "postprocess"))


def test_mask_postprocessing_grows_with_the_image(seg, tmp_path):
    # Masks are upsampled to each image's own size and argmaxed there: a 512x512 photo costs far more
    # post-processing than a 64x64 scene, for the same 16x16 logits.
    engine, files = seg
    big = tmp_path / "big.png"
    Image.open(files[0]).resize((512, 512), Image.BILINEAR).save(big)
    with _predictor(engine, SEG_SPEC) as p:
        small = measure_e2e(p, files, warmup=2, iters=15)
        large = measure_e2e(p, [big], warmup=2, iters=15)
        assert p.postprocess(p.run(p.preprocess(p.decode([big]))), p.decode([big]))[0].shape == (512, 512)
    assert large.stages["postprocess"].p50_ms > 3 * small.stages["postprocess"].p50_ms


def test_the_cost_child_times_the_predictor_without_torch(seg):
    # The child refuses to report if torch got imported; its e2e timings come back as a dict.
    engine, files = seg
    request = {"files": [str(f) for f in files], "spec": SEG_SPEC.to_dict(), "task": "segmentation",
               "warmup": 1, "iters": 4}
    cost, e2e = measure_cost("onnxruntime", engine, runs=1, e2e=request)
    result = EndToEnd.from_dict(e2e)
    assert result.images == len(files) and result.stages[TOTAL].iters == 4
    assert cost.peak_mb > 0


def test_nothing_to_time_is_refused(cls):
    engine, files = cls
    with _predictor(engine, CLS_SPEC) as p:
        with pytest.raises(ValueError):
            measure_e2e(p, [])
        with pytest.raises(ValueError):
            measure_e2e(p, files, min_iters=0)
