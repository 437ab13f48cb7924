"""One latency protocol for every backend: warm-up, then timed calls until a time budget is spent, then percentiles.

Protocol
- `run(x)` is called `warmup` times untimed, then timed call by call with `time.perf_counter_ns`; the garbage
  collector is paused while timing so a collection does not land inside one call.
- GPU: pass `sync` (e.g. `torch.cuda.synchronize` or a stream's synchronize); it is called after every `run` inside
  the timed span, so each sample is wall time from launch to completion. CUDA-event timing, pinned buffers and
  host/device copies are the caller's concern: what `run` does is what is timed.
- Without `iters`, calls continue until `budget_s` of timed calls have elapsed and at least `min_iters` were made
  (warm-up is not counted in the budget). One call longer than the budget still runs `min_iters` times.
- `throughput` is images per second at the median: batch * 1000 / p50_ms. The median rather than the mean keeps one
  descheduled call on a noisy 2-core machine from moving it.
- The thread count is the caller's to record (it belongs to the session, not to this protocol).
- Comparing engines: `interleaved` runs them in round-robin rounds, rotating the order each round, and ranks them by
  the median of their per-round medians, so drift of the machine (thermal, neighbours) hits every engine alike.
  ONNX Runtime sessions timed this way need `session.intra_op.allow_spinning = 0` (see docs/backend-limits.md).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

# Samples kept on LatencyStats for box plots: beyond this many, evenly spaced quantiles of all samples are kept.
MAX_KEPT_SAMPLES = 256
# A bound on timed calls so a microsecond-long `run` with a long budget cannot fill memory.
MAX_ITERS = 100_000


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one engine at one batch size. Times in milliseconds; throughput in images per second."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float  # std / mean
    min_ms: float
    max_ms: float
    iters: int
    batch: int
    throughput: float  # batch * 1000 / p50_ms
    warmup: int = 0
    samples_ms: tuple[float, ...] = ()  # compact: at most MAX_KEPT_SAMPLES values (quantiles beyond that)

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if include_samples:
            d["samples_ms"] = list(self.samples_ms)
        else:
            del d["samples_ms"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyStats:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["samples_ms"] = tuple(values.get("samples_ms", ()))
        return cls(**values)


def _compact(samples_ms: np.ndarray) -> tuple[float, ...]:
    if samples_ms.size > MAX_KEPT_SAMPLES:
        samples_ms = np.quantile(samples_ms, np.linspace(0.0, 1.0, MAX_KEPT_SAMPLES))
    return tuple(round(float(v), 4) for v in samples_ms)


def stats_from_samples(samples_ms: Sequence[float] | np.ndarray, batch: int, warmup: int = 0) -> LatencyStats:
    """Summarise per-call times (ms) of calls that each processed `batch` images."""
    s = np.asarray(samples_ms, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    mean = float(s.mean())
    std = float(s.std(ddof=1)) if s.size > 1 else 0.0
    return LatencyStats(
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=mean,
        std_ms=std,
        cv=std / mean if mean > 0 else 0.0,
        min_ms=float(s.min()),
        max_ms=float(s.max()),
        iters=int(s.size),
        batch=int(batch),
        throughput=batch * 1000.0 / p50 if p50 > 0 else float("inf"),
        warmup=warmup,
        samples_ms=_compact(s),
    )


def _timed_calls(
    run: Callable[[Any], Any],
    x: Any,
    sync: Callable[[], Any] | None,
    *,
    count: int | None = None,
    budget_s: float = 0.0,
    min_count: int = 1,
) -> np.ndarray:
    """Per-call times in ms: exactly `count` calls, or calls until `budget_s` has elapsed and `min_count` are done."""
    budget_ns = int(budget_s * 1e9)
    samples: list[int] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        while True:
            t0 = time.perf_counter_ns()
            run(x)
            if sync is not None:
                sync()
            t1 = time.perf_counter_ns()
            samples.append(t1 - t0)
            n = len(samples)
            if count is not None:
                if n >= count:
                    break
            elif (n >= min_count and t1 - start >= budget_ns) or n >= MAX_ITERS:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(samples, dtype=np.float64) / 1e6


def _batch_of(x: Any) -> int:
    shape = getattr(x, "shape", ())
    return int(shape[0]) if len(shape) else 1


def _check_counts(warmup: int, iters: int | None, min_iters: int) -> None:
    if warmup < 0 or min_iters < 1 or (iters is not None and iters < 1):
        raise ValueError(f"need warmup >= 0, min_iters >= 1, iters >= 1 (got {warmup}, {min_iters}, {iters})")


def measure_latency(
    run: Callable[[np.ndarray], Any],
    x: np.ndarray,
    *,
    warmup: int = 10,
    iters: int | None = None,
    budget_s: float = 2.0,
    min_iters: int = 10,
    sync: Callable[[], Any] | None = None,
    batch: int | None = None,
) -> LatencyStats:
    """Time `run(x)`: `warmup` untimed calls, then `iters` calls, or calls for `budget_s` (at least `min_iters`).

    `batch` defaults to x.shape[0] and only feeds `throughput`.
    """
    _check_counts(warmup, iters, min_iters)
    if warmup:
        _timed_calls(run, x, sync, count=warmup)
    samples = _timed_calls(run, x, sync, count=iters, budget_s=budget_s, min_count=min_iters)
    return stats_from_samples(samples, batch if batch is not None else _batch_of(x), warmup)


def sweep(
    make_input: Callable[[int], np.ndarray],
    run: Callable[[np.ndarray], Any],
    batches: Sequence[int] = (1, 32),
    **kwargs: Any,
) -> dict[str, LatencyStats]:
    """measure_latency at each batch size; keys are str(batch) as in report.json. kwargs go to measure_latency."""
    return {str(b): measure_latency(run, make_input(b), batch=b, **kwargs) for b in batches}


@dataclass(frozen=True)
class InterleavedStats:
    """One engine's share of an interleaved comparison."""

    median_ms: float  # median of the per-round medians: the number to rank engines by
    round_medians_ms: tuple[float, ...]
    stats: LatencyStats  # all of its timed calls pooled


def _calls_per_round(
    runs: Mapping[str, Callable],
    x: Any,
    sync: Callable | None,
    warmup: int,
    round_budget_s: float,
    min_iters: int,
) -> dict[str, int]:
    """Warm each engine up and size its rounds from the warm-up calls' later half (the early ones are slow)."""
    per_round = {}
    for name, run in runs.items():
        warm = _timed_calls(run, x, sync, count=max(warmup, 1))
        per_call_s = max(float(np.median(warm[len(warm) // 2 :])) / 1e3, 1e-9)
        per_round[name] = max(min_iters, min(MAX_ITERS, int(round_budget_s / per_call_s)))
    return per_round


def interleaved(
    runs: Mapping[str, Callable[[np.ndarray], Any]],
    x: np.ndarray,
    repeats: int = 5,
    *,
    warmup: int = 10,
    iters: int | None = None,
    budget_s: float = 2.0,
    min_iters: int = 3,
    sync: Callable[[], Any] | None = None,
) -> dict[str, InterleavedStats]:
    """Compare engines fairly: `repeats` rounds, each running every engine for `iters` calls (or its share of
    `budget_s`: budget_s / (repeats * engines) per engine per round, at least `min_iters`), the order rotated
    each round. At least one warm-up call per engine (it sizes the rounds). Keys keep the order of `runs`."""
    _check_counts(warmup, iters, min_iters)
    if not runs or repeats < 1:
        raise ValueError("need at least one engine and one round")
    names = list(runs)
    if iters is None:
        per_round = _calls_per_round(runs, x, sync, warmup, budget_s / (repeats * len(names)), min_iters)
    else:
        for run in runs.values():
            if warmup:
                _timed_calls(run, x, sync, count=warmup)
        per_round = dict.fromkeys(names, iters)
    rounds: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            rounds[name].append(_timed_calls(runs[name], x, sync, count=per_round[name]))
    batch = _batch_of(x)
    return {
        name: InterleavedStats(
            median_ms=float(np.median([np.median(s) for s in rounds[name]])),
            round_medians_ms=tuple(float(np.median(s)) for s in rounds[name]),
            stats=stats_from_samples(np.concatenate(rounds[name]), batch, warmup),
        )
        for name in names
    }


def fastest(results: Mapping[str, InterleavedStats]) -> str:
    """The engine with the lowest median of per-round medians."""
    return min(results, key=lambda name: results[name].median_ms)
