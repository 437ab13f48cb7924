"""What the main job records beyond p50 : load time, peak memory and end-to-end Predictor latency."""

import json

from cli_runner import run_cli

from lkca_deploy.reports.contract import E2E_STAGES, validate_report_dict
from lkca_runtime.bundle import read_manifest


def test_every_engine_that_ran_has_its_load_time_memory_and_end_to_end_latency(small_bundle):
    out, _ = small_bundle
    doc = json.loads((out / "reports" / "report.json").read_text())
    assert validate_report_dict(doc) == []
    ran = [e for e in doc["engines"] if e["status"] != "skipped"]
    assert len(ran) >= 6
    for e in doc["engines"]:
        if e["status"] == "skipped":
            assert e["cost"] is None and e["e2e"] is None
            continue
        cost, stages = e["cost"], e["e2e"]["stages"]
        assert 0 < cost["load_ms"] <= cost["first_result_ms"], e
        assert 0 < cost["peak_mb"] < cost["process_peak_mb"] and cost["batches"] == [1, 4], e
        assert list(stages) == list(E2E_STAGES)
        assert stages["total"]["p50_ms"] >= stages["inference"]["p50_ms"] > 0
        assert e["e2e"]["images"] == 16 and stages["total"]["iters"] >= 10
    assert "End to end through the Predictor" in (out / "reports" / "report.md").read_text()


def test_bench_prints_what_each_engine_costs(small_bundle):
    out, _ = small_bundle
    engines = read_manifest(out).engines
    proc = run_cli("bench", out, "--batches", "1", "--budget", "0.05")
    costs = proc.stdout.split("peak MiB")[1].split("end to end through the Predictor")
    assert len(costs) == 2, proc.stdout  # the memory table, then the per-stage one
    assert sum(str(out) in line for line in costs[0].splitlines()) == len(engines)
    assert all(f"{stage:>15}" in costs[1] for stage in E2E_STAGES)
    artifact = out / engines[0]["artifact"]
    doc = json.loads(run_cli("bench", artifact, "--batches", "1", "--budget", "0.05", "--json", "--no-cost").stdout)
    assert "cost" not in doc["engines"][0]
