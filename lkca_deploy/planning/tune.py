"""`tune`: time each candidate lowering on the machine at hand and keep the fastest exact one.

Candidates are checked against the model itself with ONNX Runtime, then timed interleaved round-robin so drift on
a noisy machine hits all alike. Every rewrite is a rule's (lowering/rules/); nothing here rewrites a graph.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lkca_deploy.backends.registry import get_backend
from lkca_deploy.lowering.apply import lower_model
from lkca_deploy.lowering.registry import CONV, STRATEGIES, tune_candidates
from lkca_deploy.lowering.rules.matmul import DEFAULT_MATMUL_BUDGET
from lkca_deploy.lowering.sites import with_conv_names
from lkca_deploy.measure.latency import measure_latency
from lkca_runtime.errors import UserError
from lkca_runtime.onnx_io import graph_inputs, input_spec, save_onnx_atomic

DEFAULT_TUNE_CANDIDATES = tune_candidates()
TUNE_REPEATS = 5


@dataclass
class TuneRow:
    candidate: str  # e.g. "tiled:16"
    strategy: str
    max_kernel: int | None
    status: str  # "timed" | "refused" | "inexact" | "same as conv"
    reason: str = ""
    max_abs_error: float | None = None
    median_s: float | None = None
    best: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def parse_candidate(candidate: str) -> tuple[str, int | None]:
    """'tiled:16' -> ('tiled', 16); 'matmul' -> ('matmul', None)."""
    strategy, _, size = candidate.partition(":")
    if strategy not in STRATEGIES:
        raise UserError(
            f"unknown lowering {candidate!r}: choose from {', '.join(STRATEGIES)} (tiled:N for tiles)"
        )
    if size and not size.isdigit():
        raise UserError(f"bad tile size in {candidate!r}: write it like tiled:16")
    return strategy, int(size) if size else None


def tune_lowering(
    model: onnx.ModelProto,
    candidates: Iterable[str],
    time_fn: Callable[[onnx.ModelProto], float],
    repeats: int = 5,
    *,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
    inputs: dict[str, np.ndarray] | None = None,
    rtol: float = 1e-4,
    seed: int = 0,
) -> tuple[onnx.ModelProto, list[TuneRow]]:
    """The fastest exact lowering of `model` among `candidates`, and a table of what each did.

    Each candidate is built (those over the matmul budget are refused, not fatal), checked against the model
    itself with onnxruntime on random inputs (max |diff| <= rtol * max |output|), then timed with `time_fn`
    (seconds per run) interleaved round-robin `repeats` times so drift on a noisy machine hits all alike.
    When no candidate changes the model, the model itself comes back untimed.
    """
    feeds = inputs if inputs is not None else random_inputs(model, seed)
    reference = run_onnxruntime(model, feeds)
    rows, built = [], []
    for candidate in candidates:
        strategy, max_kernel = parse_candidate(candidate)
        row = TuneRow(candidate, strategy, max_kernel, "timed")
        rows.append(row)
        try:
            lowered, report = lower_model(model, strategy, max_kernel=max_kernel, budget_bytes=budget_bytes)
        except UserError as err:
            row.status, row.reason = "refused", str(err)
            continue
        if strategy != CONV and report.nothing_lowered:
            row.status, row.reason = "same as conv", report.summary()
            continue
        row.reason = report.summary()
        row.max_abs_error = _max_abs_error(reference, run_onnxruntime(lowered, feeds))
        scale = max(float(np.max(np.abs(r))) for r in reference) or 1.0
        if row.max_abs_error > rtol * scale:
            row.status = "inexact"
            continue
        built.append((row, lowered))
    if not built:
        if any(row.status == "inexact" for row in rows):
            raise RuntimeError(f"no candidate lowering reproduced the model's outputs: {rows}")
        return with_conv_names(model), rows
    times: dict[int, list[float]] = {id(row): [] for row, _ in built}
    for _ in range(repeats):
        for row, lowered in built:
            times[id(row)].append(float(time_fn(lowered)))
    for row, _ in built:
        row.median_s = statistics.median(times[id(row)])
    best_row, best_model = min(built, key=lambda pair: pair[0].median_s)
    best_row.best = True
    return best_model, rows


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float inputs of the model's shapes, 1 for every dynamic dimension."""
    rng = np.random.default_rng(seed)
    return {
        spec.name: rng.standard_normal([d or 1 for d in spec.shape]).astype(spec.dtype)
        for spec in graph_inputs(model)
    }


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _max_abs_error(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(np.asarray(r, np.float64) - o))) for r, o in zip(reference, outputs))


def tune_model(model, backend_name: str, *, budget_bytes: int = DEFAULT_MATMUL_BUDGET, batch=None, seed: int = 0):
    """Time each candidate on the local backend; rebuild the winner with lower_model for its per-layer report."""
    x = np.random.default_rng(seed).standard_normal([d or batch or 1 for d in input_spec(model).shape]).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="lkca-tune-") as tmp:
        timer = _CandidateTimer(backend_name, Path(tmp), x)
        try:
            _, rows = tune_lowering(
                model,
                DEFAULT_TUNE_CANDIDATES,
                timer,
                repeats=TUNE_REPEATS,
                budget_bytes=budget_bytes,
                seed=seed,
            )
        finally:
            timer.close()
    best = next((row for row in rows if row.best), None)
    strategy, max_kernel = (best.strategy, best.max_kernel) if best else (CONV, None)
    lowered, report = lower_model(model, strategy, max_kernel=max_kernel, budget_bytes=budget_bytes)
    return lowered, report, [], rows


class _CandidateTimer:
    """time_fn for tune_lowering: seconds per run of a candidate on one backend, each built and loaded once."""

    def __init__(self, backend_name: str, folder: Path, x: np.ndarray):
        self.backend = get_backend(backend_name)
        self.folder, self.x = folder, x
        self.runners: dict[int, Any] = {}

    def __call__(self, model: onnx.ModelProto) -> float:
        runner = self.runners.get(id(model))
        if runner is None:
            runner = self.runners[id(model)] = self._load(model)
        return measure_latency(runner, self.x, warmup=2, budget_s=0.2, min_iters=5).p50_ms / 1e3

    def _load(self, model: onnx.ModelProto):
        n = len(self.runners)
        onnx_path = save_onnx_atomic(model, self.folder / f"candidate_{n}.onnx")
        artifact = self.folder / f"candidate_{n}{self.backend.artifact_suffix}"
        self.backend.build(onnx_path, artifact, precision="fp32")
        return self.backend.load(artifact, **self.backend.interleaved_load_options)

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
