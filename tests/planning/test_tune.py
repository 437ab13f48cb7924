"""Choosing a lowering by timing (tune), on hand-built graphs run by onnxruntime."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conv_graphs import conv_model, random_x, run_ort

from lkca_deploy.lowering.apply import lower_model
from lkca_deploy.planning.tune import parse_candidate, tune_lowering
from lkca_runtime.errors import UserError


def ort_timer(threads: int = 1):
    """Seconds per onnxruntime run; one session per model, spinning off since the runs interleave."""
    sessions: dict[int, tuple[ort.InferenceSession, dict]] = {}

    def time_fn(model: onnx.ModelProto) -> float:
        if id(model) not in sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            sessions[id(model)] = (session, {"x": random_x(model, 1)})
        session, feeds = sessions[id(model)]
        start = time.perf_counter()
        session.run(None, feeds)
        return time.perf_counter() - start

    return time_fn


def test_tune_returns_the_fastest_exact_candidate():
    model = conv_model(channels=8, grid=(8, 8), kernel=(15, 15), heads=2)
    candidates = ["conv", "crop", "matmul", "tiled:8"]
    best, table = tune_lowering(model, candidates, ort_timer(), repeats=3)

    assert [row.candidate for row in table] == candidates
    by_name = {row.candidate: row for row in table}
    assert by_name["crop"].status == "same as conv"  # K15 on 8x8: every tap touches the grid
    timed = [row for row in table if row.status == "timed"]
    assert {row.candidate for row in timed} == {"conv", "matmul", "tiled:8"}
    assert all(row.median_s > 0 and row.max_abs_error <= 1e-4 for row in timed)
    (winner,) = [row for row in table if row.best]
    assert winner.median_s == min(row.median_s for row in timed)
    x = random_x(model, 3)
    np.testing.assert_allclose(run_ort(best, x), run_ort(model, x), rtol=0, atol=1e-5)


def test_tune_skips_candidates_over_the_budget():
    model = conv_model(channels=8, grid=(8, 8), kernel=(15, 15))
    best, table = tune_lowering(model, ["matmul", "tiled:8"], ort_timer(), repeats=1, budget_bytes=1024)
    matmul, tiled = table
    assert matmul.status == "refused" and "over the 1.0 KiB budget" in matmul.reason
    assert tiled.best and "Pad" in {n.op_type for n in best.graph.node}


def test_parse_candidate():
    assert parse_candidate("tiled:16") == ("tiled", 16)
    assert parse_candidate("matmul") == ("matmul", None)
    with pytest.raises(UserError, match="unknown lowering"):
        parse_candidate("fft")
    with pytest.raises(UserError, match="write it like tiled:16"):
        parse_candidate("tiled:big")


def test_tune_checks_exactness_against_the_model_itself():
    """A candidate that lowers nothing is reported as such, never timed twice as the conv."""
    model = conv_model(kernel=(5, 5))
    best, table = tune_lowering(model, ["crop", "matmul"], ort_timer(), repeats=1)
    assert [row.status for row in table] == ["same as conv", "same as conv"]
    assert best.graph == lower_model(model, "conv")[0].graph
