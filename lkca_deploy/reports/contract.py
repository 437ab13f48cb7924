"""The report.json contract: its keys, and the check that a dict keeps them (render writes it, compare reads it).

The keys and their meaning are documented in reports/render.py's docstring and in the README; keys are only ever
added, never renamed or removed.
"""

from __future__ import annotations

from typing import Any

from lkca_deploy.reports.e2e import STAGES, TOTAL
from lkca_deploy.tasks.names import TASKS

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "skipped")
TOP_LEVEL_KEYS = ("model", "task", "machine", "versions", "passed", "engines")
ENGINE_KEYS = (
    "backend",
    "precision",
    "lowering",
    "path",
    "size_bytes",
    "parity",
    "latency",
    "status",
    "reason",
)
PARITY_KEYS = {
    "classification": ("top1", "top1_reference", "top1_drop", "agreement", "max_abs_err", "cosine", "passed"),
    "segmentation": (
        "miou",
        "miou_reference",
        "miou_drop",
        "pixel_agreement",
        "max_abs_err",
        "cosine",
        "passed",
    ),
}
LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms", "throughput")
COST_KEYS = ("load_ms", "first_result_ms", "peak_mb", "process_peak_mb", "library_mb")
E2E_STAGES = (*STAGES, TOTAL)


def _parity_problems(where: str, parity: Any, task: str) -> list[str]:
    if parity is None:
        return []
    if not isinstance(parity, dict):
        return [f"{where} parity is not an object"]
    return [f"{where} parity lacks {k!r}" for k in PARITY_KEYS.get(task, ()) if k not in parity]


def _latency_problems(where: str, latency: Any) -> list[str]:
    if latency is None:
        return []
    if not isinstance(latency, dict):
        return [f"{where} latency is not an object"]
    problems = []
    for batch, stats in latency.items():
        if not str(batch).isdigit():
            problems.append(f"{where} latency key {batch!r} is not a batch size")
        missing = [k for k in LATENCY_KEYS if not isinstance(stats, dict) or k not in stats]
        problems += [f"{where} latency[{batch!r}] lacks {k!r}" for k in missing]
    return problems


def _cost_problems(where: str, cost: Any) -> list[str]:
    if cost is None:
        return []
    if not isinstance(cost, dict):
        return [f"{where} cost is not an object"]
    return [f"{where} cost lacks {k!r}" for k in COST_KEYS if k not in cost]


def _e2e_problems(where: str, e2e: Any) -> list[str]:
    if e2e is None:
        return []
    stages = e2e.get("stages") if isinstance(e2e, dict) else None
    if not isinstance(stages, dict):
        return [f"{where} e2e has no stages object"]
    problems = [f"{where} e2e lacks stage {s!r}" for s in E2E_STAGES if s not in stages]
    for name, stats in stages.items():
        missing = [k for k in ("p50_ms", "p99_ms") if not isinstance(stats, dict) or k not in stats]
        problems += [f"{where} e2e stage {name!r} lacks {k!r}" for k in missing]
    return problems


def _engine_problems(i: int, engine: Any, task: str) -> list[str]:
    if not isinstance(engine, dict):
        return [f"engines[{i}] is not an object"]
    where = f"engines[{i}] ({engine.get('backend')}/{engine.get('precision')}/{engine.get('lowering')})"
    problems = [f"{where} lacks {k!r}" for k in ENGINE_KEYS if k not in engine]
    status = engine.get("status")
    if status not in STATUSES:
        problems.append(f"{where} status {status!r} is not one of {STATUSES}")
    if status == "skipped" and not engine.get("reason"):
        problems.append(f"{where} is skipped without a reason")
    if status == "ok" and engine.get("parity") is None:
        problems.append(f"{where} is ok but has no parity")
    return (
        problems
        + _parity_problems(where, engine.get("parity"), task)
        + _latency_problems(where, engine.get("latency"))
        + _cost_problems(where, engine.get("cost"))
        + _e2e_problems(where, engine.get("e2e"))
    )


def validate_report_dict(d: Any) -> list[str]:
    """Every way `d` breaks the report.json contract, one line each; empty when it holds."""
    if not isinstance(d, dict):
        return ["report is not a JSON object"]
    problems = [f"report lacks {k!r}" for k in TOP_LEVEL_KEYS if k not in d]
    task = d.get("task")
    if "task" in d and task not in TASKS:
        problems.append(f"task {task!r} is not one of {TASKS}")
    if "passed" in d and not isinstance(d["passed"], bool):
        problems.append("passed is not a boolean")
    for key in ("machine", "versions"):
        if key in d and not isinstance(d[key], dict):
            problems.append(f"{key} is not an object")
    engines = d.get("engines", [])
    if not isinstance(engines, list):
        return problems + ["engines is not a list"]
    for i, engine in enumerate(engines):
        problems += _engine_problems(i, engine, task)
    comparison = d.get("comparison")
    if "comparison" in d and not (
        isinstance(comparison, dict)
        and isinstance(comparison.get("regressed"), bool)
        and isinstance(comparison.get("engines"), list)
    ):
        problems.append("comparison is not a comparison object (regressed, engines)")
    return problems
