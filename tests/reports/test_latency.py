"""The latency protocol on functions of known cost. Wide bands only: these machines are noisy."""

import time

import numpy as np
import pytest

from lkca_deploy.measure.latency import (
    MAX_KEPT_SAMPLES,
    LatencyStats,
    fastest,
    interleaved,
    measure_latency,
    stats_from_samples,
    sweep,
)


def _sleeper(ms):
    def run(x):
        time.sleep(ms / 1e3)

    return run


def test_sleep_2ms_within_wide_band_and_ordered():
    x = np.zeros((4, 3), dtype=np.float32)
    stats = measure_latency(_sleeper(2), x, warmup=2, budget_s=0.15, min_iters=10)
    assert 1.9 <= stats.p50_ms <= 20
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.iters >= 10
    assert stats.batch == 4 and stats.warmup == 2
    assert stats.throughput == pytest.approx(4 * 1000 / stats.p50_ms)
    assert stats.cv == pytest.approx(stats.std_ms / stats.mean_ms)
    assert len(stats.samples_ms) == stats.iters


def test_budget_respected_and_min_iters_wins_over_budget():
    start = time.perf_counter()
    stats = measure_latency(_sleeper(2), np.zeros(1), warmup=0, budget_s=0.2, min_iters=1)
    elapsed = time.perf_counter() - start
    assert 0.2 <= elapsed < 0.2 + 0.5  # stops soon after the budget
    assert stats.iters >= 10  # ~100 in theory; a loaded machine still fits ten 2 ms sleeps in 0.2 s
    stats = measure_latency(_sleeper(2), np.zeros(1), warmup=0, budget_s=0.0, min_iters=7)
    assert stats.iters == 7


def test_fixed_iters_and_sync_called_every_call():
    calls = {"run": 0, "sync": 0}

    def run(x):
        calls["run"] += 1

    def sync():
        calls["sync"] += 1

    stats = measure_latency(run, np.zeros((2, 2)), warmup=3, iters=25, sync=sync)
    assert stats.iters == 25
    assert calls == {"run": 28, "sync": 28}


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError):
        measure_latency(_sleeper(0), np.zeros(1), iters=0)


def test_sweep_keys_are_batches_as_strings():
    result = sweep(lambda b: np.zeros((b, 3), dtype=np.float32), lambda x: x.sum(), batches=(1, 8), iters=5)
    assert list(result) == ["1", "8"]
    assert result["8"].batch == 8 and result["1"].iters == 5


def test_stats_from_known_samples_and_compaction():
    stats = stats_from_samples([1.0, 2.0, 3.0, 4.0, 5.0], batch=2)
    assert stats.p50_ms == 3.0 and stats.mean_ms == 3.0 and stats.throughput == pytest.approx(2000 / 3)
    many = stats_from_samples(np.arange(1, 10_001, dtype=float), batch=1)
    assert len(many.samples_ms) == MAX_KEPT_SAMPLES
    assert many.samples_ms[0] == 1.0 and many.samples_ms[-1] == 10_000.0  # extremes kept for box plots
    assert "samples_ms" not in many.to_dict()
    assert len(many.to_dict(include_samples=True)["samples_ms"]) == MAX_KEPT_SAMPLES
    assert LatencyStats.from_dict(many.to_dict(include_samples=True)) == many


def test_interleaved_returns_every_engine_and_ranks_them():
    runs = {"slow": _sleeper(4), "fast": _sleeper(0.5), "mid": _sleeper(2)}
    x = np.zeros((1, 3))
    result = interleaved(runs, x, repeats=3, warmup=1, budget_s=0.3, min_iters=2)
    assert list(result) == ["slow", "fast", "mid"]
    for r in result.values():
        assert len(r.round_medians_ms) == 3
        assert r.stats.iters >= 3 * 2
        assert r.stats.p50_ms <= r.stats.p90_ms <= r.stats.p99_ms
    assert fastest(result) == "fast"
    assert result["slow"].median_ms > result["fast"].median_ms


def test_interleaved_fixed_iters_rotates_order():
    order = []
    runs = {name: (lambda x, n=name: order.append(n)) for name in ("a", "b", "c")}
    interleaved(runs, np.zeros(1), repeats=3, warmup=0, iters=1)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
