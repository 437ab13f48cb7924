"""The report.json contract: its keys, and the check that a dict keeps them (render writes it, compare reads it).

Keys (only ever added, never renamed or removed; `validate_report_dict` checks them):
  model, task, machine, versions, passed, engines: [
    {backend, precision, lowering, path, size_bytes, status ("ok" | "failed" | "skipped"), reason,
     parity: null | {classification: top1, top1_reference, top1_drop, agreement, max_abs_err, cosine, passed;
                     segmentation: miou, miou_reference, miou_drop, pixel_agreement, max_abs_err, cosine, passed},
     latency: {"<batch>": {p50_ms, p90_ms, p99_ms, throughput, ...}},
     cost: null | {load_ms, first_result_ms, peak_mb, process_peak_mb, library_mb, batches, runs, peak_method},
     e2e: null | {batch: 1, images, stages: {decode, preprocess, inference, postprocess, total:
                                             {p50_ms, p90_ms, p99_ms, ...}}}}]
  comparison (only after `pipeline --baseline`): compare.Comparison.to_dict(), {regressed, regressions,
     engines: [{engine, figures: {figure: {base, new, change, unit, limit, regressed}}}], machine, thresholds, ...}
Fractions are in [0, 1], drops in percentage points, times in ms, memory in MiB, throughput in images/s at p50.
cost and e2e (measure/cost.py, measure/e2e.py) are checked where present: reports written before them lack them.
Non-finite numbers are written as null (strict JSON). Raw latency samples stay out of report.json; the HTML plots them.
The README shows the same keys with an example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lkca_deploy.measure.cost import EngineCost
from lkca_deploy.measure.e2e import STAGES, TOTAL, EndToEnd
from lkca_deploy.measure.latency import LatencyStats
from lkca_runtime.machine import int8_hint, isa_summary, machine_facts
from lkca_runtime.spec import TASKS

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


def _not_numbers(where: str, values: dict, keys) -> list[str]:
    """Figures that are neither a number nor null (a string where compare does arithmetic)."""
    return [f"{where} {k!r} is {values[k]!r}, not a number" for k in keys
            if k in values and values[k] is not None
            and (isinstance(values[k], bool) or not isinstance(values[k], (int, float)))]


def _parity_problems(where: str, parity: Any, task: str) -> list[str]:
    if parity is None:
        return []
    if not isinstance(parity, dict):
        return [f"{where} parity is not an object"]
    keys = PARITY_KEYS.get(task, ())
    return ([f"{where} parity lacks {k!r}" for k in keys if k not in parity]
            + _not_numbers(f"{where} parity", parity, [k for k in keys if k != "passed"]))


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
        if isinstance(stats, dict):
            problems += _not_numbers(f"{where} latency[{batch!r}]", stats, LATENCY_KEYS)
    return problems


def _cost_problems(where: str, cost: Any) -> list[str]:
    if cost is None:
        return []
    if not isinstance(cost, dict):
        return [f"{where} cost is not an object"]
    return [f"{where} cost lacks {k!r}" for k in COST_KEYS if k not in cost] + _not_numbers(f"{where} cost", cost,
                                                                                          COST_KEYS)


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
    problems += _not_numbers(where, engine, ("size_bytes",))
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


@dataclass
class EngineResult:
    """One engine (backend x precision x lowering) in a report.

    `parity` is parity.with_verdict(...)'s dict (metrics + passed + failures); `blocks` is
    parity.first_divergent_block(...)[0]. A status of "ok" with failed parity becomes "failed".
    """

    backend: str
    precision: str
    lowering: str
    path: str | None = None
    size_bytes: int | None = None
    parity: dict[str, Any] | None = None
    latency: dict[str, LatencyStats] = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None
    blocks: list[dict[str, Any]] | None = None
    first_divergent: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. threads, flavour, build seconds
    cost: EngineCost | None = None  # load time and peak memory (measure/cost.py)
    e2e: EndToEnd | None = None  # Predictor latency per stage at batch 1 (measure/e2e.py)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"engine status {self.status!r} is not one of {STATUSES}")
        if self.status == "skipped" and not self.reason:
            raise ValueError(f"skipped engine {self.name} needs a reason")
        if self.status == "ok" and self.parity is not None and self.parity.get("passed") is False:
            self.status = "failed"
        if self.path is not None:
            self.path = str(self.path)

    @classmethod
    def skipped(cls, backend: str, precision: str, lowering: str, reason: str) -> EngineResult:
        return cls(backend, precision, lowering, status="skipped", reason=reason)

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.precision}/{self.lowering}"

    def to_dict(self) -> dict[str, Any]:
        d = {
            "backend": self.backend,
            "precision": self.precision,
            "lowering": self.lowering,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "status": self.status,
            "reason": self.reason,
            "parity": self.parity,
            "latency": {batch: stats.to_dict() for batch, stats in self.latency.items()},
            "cost": self.cost.to_dict() if self.cost else None,
            "e2e": self.e2e.to_dict() if self.e2e else None,
        }
        if self.blocks is not None:
            d["blocks"] = self.blocks
            d["first_divergent"] = self.first_divergent
        if self.extra:
            d["extra"] = self.extra
        return _jsonable(d)


def _now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Report:
    """A parity + latency report for one model. `passed`: at least one engine ran, and none failed."""

    model: str
    task: str
    engines: list[EngineResult]
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    reference: str = "pytorch fp32"
    dataset: str | None = None
    thresholds: dict[str, Any] | None = None
    created_utc: str = field(default_factory=_now_utc)
    extra: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None  # compare.py against a baseline run

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"report task {self.task!r} is not one of {TASKS}")

    @classmethod
    def on_this_machine(cls, model: str, task: str, engines: list[EngineResult], **kwargs: Any) -> Report:
        """A report whose machine facts and library versions are this machine's."""
        facts = machine_facts()
        versions = facts.pop("versions")
        machine = {**facts, "summary": isa_summary(facts), "int8_hint": int8_hint(facts)}
        return cls(model, task, engines, machine=machine, versions=versions, **kwargs)

    @property
    def passed(self) -> bool:
        statuses = [e.status for e in self.engines]
        return "ok" in statuses and "failed" not in statuses

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "schema_version": SCHEMA_VERSION,
                "model": self.model,
                "task": self.task,
                "passed": self.passed,
                "reference": self.reference,
                "dataset": self.dataset,
                "created_utc": self.created_utc,
                "machine": self.machine,
                "versions": self.versions,
                "thresholds": self.thresholds,
                "engines": [e.to_dict() for e in self.engines],
                **({"extra": self.extra} if self.extra else {}),
                **({"comparison": self.comparison} if self.comparison is not None else {}),
            }
        )


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays unwrapped, tuples as lists, NaN/inf as None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array, without importing numpy for the check
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
