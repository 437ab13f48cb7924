"""End-to-end latency through the torch-free Predictor at batch 1, stage by stage, on real image files.

A device answers one image at a time, and the time around inference can outweigh it. Each call here is
one image file through the Predictor's own stages, each timed with `time.perf_counter_ns`:
- decode: the file read and decoded by PIL, converted to the spec's mode (Predictor.decode);
- preprocess: resize to the model input and normalise into float32 NCHW (Predictor.preprocess);
- inference: the engine (Predictor.run);
- postprocess: softmax + top-k, or the logits upsampled to the image's size + argmax for masks
  (Predictor.postprocess);
- total: the four together, start to end.
The protocol is latency.py's: `warmup` untimed calls, then `iters` calls, or calls until `budget_s` is spent and at
least `min_iters` were made, the garbage collector paused while timing; p50 / p90 / p99 per stage. The files are
cycled in order, so every call decodes a real file (from the page cache after its first read).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lkca_deploy.data.datasets import open_source, seeded_subset
from lkca_deploy.data.segmentation import open_segmentation_source
from lkca_deploy.measure.latency import MAX_ITERS, LatencyStats, stats_from_samples

STAGES = ("decode", "preprocess", "inference", "postprocess")
TOTAL = "total"
IMAGES = 16  # distinct files cycled through: enough sizes/contents to vary, few enough to write in milliseconds


@dataclass(frozen=True)
class EndToEnd:
    """Per-stage latency of one image through the Predictor (batch 1); `stages` holds STAGES and "total"."""

    images: int  # distinct files cycled through
    stages: dict[str, LatencyStats]

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": 1,
            "images": self.images,
            "stages": {name: stats.to_dict() for name, stats in self.stages.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EndToEnd:
        return cls(d["images"], {name: LatencyStats.from_dict(s) for name, s in d["stages"].items()})


def _one_image(predictor, path: Path, top_k: int | None) -> tuple[int, ...]:
    """One file through the four stages; the perf_counter_ns instants between them."""
    t0 = time.perf_counter_ns()
    images = predictor.decode([path])
    t1 = time.perf_counter_ns()
    batch = predictor.preprocess(images)
    t2 = time.perf_counter_ns()
    logits = predictor.run(batch)
    t3 = time.perf_counter_ns()
    predictor.postprocess(logits, images, top_k=top_k)
    t4 = time.perf_counter_ns()
    return t0, t1, t2, t3, t4


def measure_e2e(
    predictor,
    files: Sequence[str | Path],
    *,
    warmup: int = 5,
    iters: int | None = None,
    budget_s: float = 1.0,
    min_iters: int = 10,
    top_k: int | None = None,
) -> EndToEnd:
    """Time `predictor` (runtime.Predictor) on `files`, one at a time, stage by stage (see the module docstring)."""
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no image files to time")
    if warmup < 0 or min_iters < 1 or (iters is not None and iters < 1):
        raise ValueError(f"need warmup >= 0, min_iters >= 1, iters >= 1 (got {warmup}, {min_iters}, {iters})")
    for i in range(warmup):
        _one_image(predictor, files[i % len(files)], top_k)
    instants: list[tuple[int, ...]] = []
    budget_ns = int(budget_s * 1e9)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        while True:
            instants.append(_one_image(predictor, files[len(instants) % len(files)], top_k))
            n, end = len(instants), instants[-1][-1]
            if iters is not None:
                if n >= iters:
                    break
            elif (n >= min_iters and end - start >= budget_ns) or n >= MAX_ITERS:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    ns = np.asarray(instants, dtype=np.float64)
    spans = {name: ns[:, i + 1] - ns[:, i] for i, name in enumerate(STAGES)}
    spans[TOTAL] = ns[:, -1] - ns[:, 0]
    return EndToEnd(
        images=len(files),
        stages={name: stats_from_samples(span / 1e6, batch=1, warmup=warmup) for name, span in spans.items()},
    )


def write_sample_images(
    data: str,
    task: str,
    folder: str | Path,
    count: int = IMAGES,
    *,
    data_root: str | None = None,
    download: bool = False,
    seed: int = 0,
) -> list[Path]:
    """`count` images of the data set's test split (a seeded subset) written into `folder` as PNG files.

    The e2e timings read these files as a device would read its camera's or its user's."""
    from PIL import Image


    if task == "segmentation":

        source = open_segmentation_source(data, "test", data_root, download)

        def read(i: int):
            return source.read(i)[0]
    else:

        source = open_source(data, "test", data_root, download)
        read = source.read
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in seeded_subset(len(source), count, seed):
        image = read(int(i))
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        path = folder / f"test-{int(i):05d}.png"
        pil.save(path, format="PNG")
        paths.append(path)
    return paths
