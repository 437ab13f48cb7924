"""A Predictor shared between threads gives every call its own answer, on each CPU backend: 8 threads x 100 calls
against the serial answers (OpenVINO borrows an infer request per call; ONNX Runtime's session runs concurrently)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hostile_common import mean_classifier_bundle

THREADS, CALLS = 8, 100


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_eight_threads_get_the_serial_answers(tmp_path, backend):
    from lkca_runtime.predictor import Predictor

    bundle = mean_classifier_bundle(tmp_path / "B", tmp_path, backend=backend)
    rng = np.random.default_rng(0)
    # Every image its own brightness, so every answer (labels and scores) is its own.
    images = [np.full((8, 8), v, np.uint8) for v in rng.permutation(256)[: THREADS * CALLS // 4]]
    with Predictor(bundle, backend=backend, top_k=3, verify="off") as p:
        serial = [p(image) for image in images]
        jobs = [(i * 7 + t) % len(images) for t in range(THREADS) for i in range(CALLS)]
        with ThreadPoolExecutor(THREADS) as pool:
            answers = list(pool.map(lambda i: (i, p(images[i])), jobs))
    assert len(answers) == THREADS * CALLS
    wrong = [i for i, answer in answers if answer != serial[i]]
    assert wrong == [], f"{len(wrong)} of {len(answers)} calls got another image's answer"
