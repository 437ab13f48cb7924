"""Compare two runs: what got worse between a baseline report and a new one, engine by engine, as a CI gate.

BASE and NEW are report.json files, folders holding one (a bundle's reports/), or bundles (their manifest names the
report, whose hash is checked). Engines are matched by backend, precision, quantizer (INT8 flavour) and lowering;
engines that ran in only one report are listed, not compared.

What gates (a regression makes `Comparison.regressed` true and the CLI exit 1):
- accuracy (top-1 or mIoU), the engine's drop against its own reference, and its agreement with the reference, each
  falling by more than `max_accuracy_drop` percentage points; an engine whose parity passed and now fails;
- p50 latency rising by more than `max_latency_increase` percent at EVERY batch size both reports timed, and only
  when both reports come from the same machine (CPU model, cores, ISA flags, GPUs, library versions), unless
  `same_machine_required`, which then also makes a machine difference itself a regression;
- memory rising by more than `max_memory_increase` percent;
- what cannot be judged: a figure that is NaN or infinite in either report, an engine of the new report without
  parity figures, and an engine that ran in the baseline and not in the new report (a new report with no engines
  would otherwise pass). A string where a number belongs breaks the report contract: refused (UserError).
p99, throughput, maximum error, size and load time are shown with their change but never gate.

Why the latency default is loose (+100 %, i.e. more than 2x at every batch size): on this project's shared 2-core
machines the same engine's p50 moves by 2x and more between back-to-back runs when other jobs land on the cores
(two main-job bundles here, load average 12-13: OpenVINO int8 qdq 0.59 -> 3.00 ms at batch 1 while its batch 32 moved
+20 %), and p99 by far more (0.3 ms p50 with 20 ms p99 in one run). Requiring every batch size to be slower keeps one
disturbed measurement from failing a build; a dedicated, quiet runner can pass --max-latency-increase 20.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lkca_deploy.reports.contract import validate_report_dict
from lkca_deploy.reports.tables import md_table, text_table
from lkca_runtime.bundle import MANIFEST, engine_name, read_manifest, require_hashes
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import json_loads
from lkca_runtime.spec import METRIC_NAMES

REPORT_FILE = "report.json"
COMPARISON_SCHEMA = 1

# Machine facts whose difference makes latency incomparable (the same CPU with other neighbours is still "same").
_MACHINE_KEYS = ("cpu_model", "arch", "usable_cores", "isa_flags")
_UNTIMED_LIBRARIES = ("matplotlib",)  # draws the report, never runs an engine
_ACCURACY_KEYS = {
    # task: (accuracy, its drop against the engine's own reference, agreement with the reference)
    "classification": ("top1", "top1_drop", "agreement"),
    "segmentation": ("miou", "miou_drop", "pixel_agreement"),
}
# Where an engine's cost figures live in report.json; the first key path present is used.
_MEMORY_PATHS = (("cost", "peak_mb"), ("extra", "cost", "peak_mb"))
_LOAD_PATHS = (("cost", "load_ms"), ("extra", "cost", "load_ms"))
_E2E_PATHS = (("e2e", "stages", "total", "p50_ms"),)


@dataclass(frozen=True)
class CompareThresholds:
    """Limits of a regression. Points are percentage points; percents are relative to the baseline's figure."""

    max_accuracy_drop: float = 1.0  # the parity gate's INT8 default: 3-4 of the 360 digits test images
    max_latency_increase: float = 100.0  # p50, at every batch size (see the module docstring)
    max_memory_increase: float = 20.0  # resident memory is far steadier than time
    same_machine_required: bool = False

    def __post_init__(self) -> None:
        for name in ("max_accuracy_drop", "max_latency_increase", "max_memory_increase"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UserError(f"{name.replace('_', '-')} must be a number >= 0, not {value!r}")

    def describe(self) -> str:
        return (
            f"accuracy drop <= {self.max_accuracy_drop:g} pt; p50 increase <= {self.max_latency_increase:g} % "
            f"at every batch size{'' if self.same_machine_required else ' (same machine only)'}; "
            f"memory increase <= {self.max_memory_increase:g} %"
        )


# ----------------------------------------------------------------------------------------------------------------
# Reading reports.


def load_report(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(report dict, label) from a report.json, a folder holding one, a bundle, or an already-loaded dict."""
    if isinstance(source, Mapping):
        return _checked_report(dict(source), "report"), "report"
    path = Path(source)
    if path.is_dir():
        path = _report_in_dir(path)
    elif not path.is_file():
        raise UserError(f"{source} does not exist: pass a report.json or a bundle directory")
    try:
        doc = json_loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} is not a readable report.json ({e})") from None
    return _checked_report(doc, str(path)), str(source)


def _report_in_dir(folder: Path) -> Path:
    if (folder / REPORT_FILE).is_file():
        return folder / REPORT_FILE

    if not (folder / MANIFEST).is_file():
        raise UserError(f"{folder} holds neither {REPORT_FILE} nor a bundle manifest")
    manifest = read_manifest(folder)
    rel = next((a["path"] for a in manifest.artifacts if a["path"].endswith(f"/{REPORT_FILE}")), None)
    if rel is None:
        raise UserError(f"bundle {folder} has no {REPORT_FILE} in its manifest")
    require_hashes(folder, manifest, [rel])  # a report edited after the bundle was written is refused
    return folder / rel


def _checked_report(doc: Any, where: str) -> dict[str, Any]:
    problems = validate_report_dict(doc)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{where} is not a lkca-deploy report: {problems[0]}{more}")
    return doc


# ----------------------------------------------------------------------------------------------------------------
# The figures.


@dataclass
class Change:
    """One figure of one engine in both reports. `change`: points for percentages, else percent (x for errors)."""

    figure: str  # stable id, e.g. "accuracy", "p50_ms@1"
    label: str  # for people, e.g. "top-1", "p50 @1"
    shown_in: str  # the values' unit: "%", "pt", "ms", "img/s", "bytes", "MiB", ""
    base: float | None
    new: float | None
    unit: str  # "pt" | "%" | "x"
    change: float | None
    limit: float | None = None  # the limit that gates this figure; None: shown only
    regressed: bool = False
    not_finite: str | None = None  # "base" / "new" / "both": a NaN or infinite figure, which cannot be judged


def _judged(change: Change) -> Change:
    """A figure that is NaN or infinite in either report cannot be judged, so it fails (a NaN compares false with
    every limit and would pass in silence); its values become None, so the comparison stays valid JSON."""
    bad = [side for side, v in (("base", change.base), ("new", change.new)) if v is not None and not math.isfinite(v)]
    if not bad:
        return change
    return Change(change.figure, change.label, change.shown_in, None if "base" in bad else change.base,
                  None if "new" in bad else change.new, change.unit, None, change.limit, True,
                  "both" if len(bad) == 2 else bad[0])


def _points(figure: str, label: str, shown_in: str, base: float | None, new: float | None, worse_if_lower: bool,
            limit: float | None) -> Change:
    """A figure kept as a fraction (or points) whose change is counted in percentage points."""
    change = None if base is None or new is None else new - base
    worse = None if change is None else (-change if worse_if_lower else change)
    return _judged(Change(figure, label, shown_in, base, new, "pt", change, limit,
                          limit is not None and worse is not None and worse > limit + 1e-9))


def _percent(figure: str, label: str, shown_in: str, base: float | None, new: float | None,
             limit: float | None = None) -> Change:
    """A cost figure (lower is better) whose change is counted in percent of the baseline."""
    change = None if base is None or new is None or base <= 0 else (new / base - 1) * 100
    return _judged(Change(figure, label, shown_in, base, new, "%", change, limit,
                          limit is not None and change is not None and change > limit + 1e-9))


def _ratio(figure: str, label: str, base: float | None, new: float | None) -> Change:
    change = None if base is None or new is None or base <= 0 else new / base
    return _judged(Change(figure, label, "", base, new, "x", change))


def _as_pct(fraction: Any) -> float | None:
    return None if fraction is None else float(fraction) * 100


def _nested(engine: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]) -> float | None:
    for path in paths:
        node: Any = engine
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            return float(node)
    return None


def _accuracy_changes(base: Mapping, new: Mapping, task: str, t: CompareThresholds) -> list[Change]:
    metric, drop, agreement = _ACCURACY_KEYS[task]
    bp, np_ = base.get("parity") or {}, new.get("parity") or {}
    title = METRIC_NAMES[task]
    limit = t.max_accuracy_drop
    return [
        _points("accuracy", title, "%", _as_pct(bp.get(metric)), _as_pct(np_.get(metric)), True, limit),
        # drops are stored in points already; a larger drop is worse
        _points("accuracy_drop", "drop vs ref", "pt", bp.get(drop), np_.get(drop), False, limit),
        _points("agreement", "agreement", "%", _as_pct(bp.get(agreement)), _as_pct(np_.get(agreement)), True,
                limit),
        _ratio("max_abs_err", "max err", bp.get("max_abs_err"), np_.get("max_abs_err")),
    ]


def _latency_changes(base: Mapping, new: Mapping, t: CompareThresholds, gated: bool) -> list[Change]:
    bl, nl = base.get("latency") or {}, new.get("latency") or {}
    batches = sorted(set(bl) & set(nl), key=int)
    limit = t.max_latency_increase if gated else None
    p50 = [
        _percent(f"p50_ms@{b}", f"p50 @{b}", "ms", bl[b].get("p50_ms"), nl[b].get("p50_ms"), limit) for b in batches
    ]
    # Slower at every batch size, or it is taken for noise (one batch size hit by a neighbour).
    every = bool(p50) and all(c.regressed for c in p50)
    for c in p50:
        c.regressed = every
    p99 = [_percent(f"p99_ms@{b}", f"p99 @{b}", "ms", bl[b].get("p99_ms"), nl[b].get("p99_ms")) for b in batches]
    throughput = [
        _percent(f"throughput@{b}", f"throughput @{b}", "img/s", bl[b].get("throughput"), nl[b].get("throughput"))
        for b in batches
    ]
    return p50 + p99 + throughput


def _cost_changes(base: Mapping, new: Mapping, t: CompareThresholds) -> list[Change]:
    changes = [_percent("size_bytes", "size", "bytes", base.get("size_bytes"), new.get("size_bytes"))]
    memory = (_nested(base, _MEMORY_PATHS), _nested(new, _MEMORY_PATHS))
    if any(v is not None for v in memory):
        changes.append(_percent("peak_mb", "memory", "MiB", *memory, limit=t.max_memory_increase))
    load = (_nested(base, _LOAD_PATHS), _nested(new, _LOAD_PATHS))
    if any(v is not None for v in load):
        changes.append(_percent("load_ms", "load", "ms", *load))
    e2e = (_nested(base, _E2E_PATHS), _nested(new, _E2E_PATHS))
    if any(v is not None for v in e2e):  # a latency like p50: shown, never gating
        changes.append(_percent("e2e_p50_ms", "end-to-end p50", "ms", *e2e))
    return changes


# ----------------------------------------------------------------------------------------------------------------
# Matching engines and machines.


def match_key(engine: Mapping[str, Any]) -> tuple[str, str, str, str]:
    quantizer = (engine.get("extra") or {}).get("quantizer") or ""
    return (engine["backend"], engine["precision"], quantizer, engine["lowering"])


def match_name(key: tuple[str, str, str, str]) -> str:
    """e.g. "openvino/int8-nncf/matmul": the bundle's folder name for the engine, and its lowering."""
    backend, precision, quantizer, lowering = key
    return f"{engine_name({'backend': backend, 'precision': precision, 'quantizer': quantizer})}/{lowering}"


def _ran_engines(report: Mapping[str, Any]) -> dict[tuple, Mapping[str, Any]]:
    engines: dict[tuple, Mapping[str, Any]] = {}
    for e in report["engines"]:
        if e["status"] == "skipped":
            continue
        key = match_key(e)
        n = 2
        while key in engines:  # the same engine twice in one report: keep both, in order
            key = (*match_key(e)[:3], f"{e['lowering']}#{n}")
            n += 1
        engines[key] = e
    return engines


def _skip_reasons(report: Mapping[str, Any]) -> dict[tuple, str]:
    return {match_key(e): e.get("reason") or "" for e in report["engines"] if e["status"] == "skipped"}


def _gpu_names(machine: Mapping[str, Any]) -> list[str]:
    return [f"{g.get('name')} (driver {g.get('driver')})" for g in machine.get("gpus") or []]


def machine_differences(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Every machine fact and library version that differs, one line each; empty when the machines match."""
    bm, nm = base.get("machine") or {}, new.get("machine") or {}
    missing = [name for name, m in (("base", bm), ("new", nm)) if not m]
    if missing:
        return [f"machine facts not recorded in the {' and '.join(missing)} report"]
    lines = []
    for key in _MACHINE_KEYS:
        if bm.get(key) != nm.get(key):
            lines.append(f"{key}: {_show(bm.get(key))} -> {_show(nm.get(key))}")
    if _gpu_names(bm) != _gpu_names(nm):
        lines.append(f"gpus: {_show(_gpu_names(bm))} -> {_show(_gpu_names(nm))}")
    bv, nv = base.get("versions") or {}, new.get("versions") or {}
    for lib in sorted(set(bv) | set(nv)):
        if bv.get(lib) != nv.get(lib) and lib not in _UNTIMED_LIBRARIES:
            lines.append(f"{lib}: {bv.get(lib) or 'absent'} -> {nv.get(lib) or 'absent'}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return "unknown" if value in (None, "") else str(value)


# ----------------------------------------------------------------------------------------------------------------
# The comparison.


@dataclass
class EngineComparison:
    engine: str
    key: tuple[str, str, str, str]
    status: tuple[str, str]  # base, new
    changes: list[Change]
    failures: list[str] = field(default_factory=list)  # the new report's parity failures, when it now fails
    unjudged: str = ""  # why the new report's engine cannot be judged (no parity figures)

    @property
    def status_regressed(self) -> bool:
        return self.status == ("ok", "failed")

    @property
    def regressed(self) -> bool:
        return self.status_regressed or bool(self.unjudged) or any(c.regressed for c in self.changes)

    def regression_lines(self) -> list[str]:
        lines = []
        if self.status_regressed:
            why = f" ({'; '.join(self.failures)})" if self.failures else ""
            lines.append(f"{self.engine}: parity passed in the baseline and fails now{why}")
        p50 = [c for c in self.changes if c.figure.startswith("p50_ms@") and c.regressed]
        if p50:
            shown = ", ".join(_change_phrase(c) + ")" for c in p50)
            lines.append(f"{self.engine}: p50 latency up at every batch size: {shown}; limit +{p50[0].limit:g} %")
        for c in self.changes:
            if c.not_finite:
                side = "both reports" if c.not_finite == "both" else f"the {c.not_finite} report"
                lines.append(f"{self.engine}: {c.label} is NaN or infinite in {side}: it cannot be judged")
            elif c.regressed and c not in p50:
                lines.append(f"{self.engine}: {_change_phrase(c)}; limit {_limit_phrase(c)})")
        if self.unjudged:
            lines.append(f"{self.engine}: {self.unjudged}")
        return lines


def _change_phrase(c: Change) -> str:
    """e.g. "top-1 75.56 -> 40.00 % (-35.56 pt" (the caller closes the parenthesis, after a limit if any)."""
    unit = f" {c.shown_in}" if c.shown_in and c.figure != "size_bytes" else ""
    return f"{c.label} {_value(c, c.base)} -> {_value(c, c.new)}{unit} ({_delta(c)}"


def _limit_phrase(c: Change) -> str:
    sign = "-" if c.figure in ("accuracy", "agreement") else "+"
    return f"{sign}{c.limit:g} {'pt' if c.unit == 'pt' else '%'}"


def _value(c: Change, value: float | None) -> str:
    if value is None:
        return "-"
    if c.figure == "size_bytes":
        return f"{value / 2**20:.2f} MiB" if value >= 2**20 else f"{value / 2**10:.0f} KiB"
    if c.unit == "x":
        return f"{value:.1e}"
    if c.shown_in in ("%", "pt"):
        return f"{value:.2f}"
    if c.shown_in == "img/s":
        return f"{value:.0f}"
    return _num(value)


def _header(c: Change) -> str:
    return f"{c.label} {c.shown_in}" if c.shown_in and c.figure != "size_bytes" else c.label


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    return f"{value:.3f}" if magnitude < 1 else f"{value:.2f}" if magnitude < 1000 else f"{value:.0f}"


def _delta(c: Change) -> str:
    if c.change is None:
        return "n/a" if c.base is not None or c.new is not None else "-"
    if c.unit == "x":
        return f"x{c.change:.2g}" if c.change < 10 else f"x{c.change:.0f}"
    return f"{c.change:+.2f} pt" if c.unit == "pt" else f"{c.change:+.0f} %"


@dataclass
class Comparison:
    task: str
    base: dict[str, Any]  # label, model, created_utc, machine summary
    new: dict[str, Any]
    thresholds: CompareThresholds
    machine_differences: list[str]
    engines: list[EngineComparison]
    only_in_base: list[str]
    only_in_new: list[str]
    notes: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # engines that ran in the baseline and not in the new report

    @property
    def same_machine(self) -> bool:
        return not self.machine_differences

    @property
    def latency_gated(self) -> bool:
        return self.same_machine or self.thresholds.same_machine_required

    @property
    def regressions(self) -> list[str]:
        lines = []
        if self.machine_differences and self.thresholds.same_machine_required:
            lines.append("machines differ and --same-machine-required: " + "; ".join(self.machine_differences))
        for e in self.engines:
            lines += e.regression_lines()
        # An engine the new run lost is a regression: a new report with no engines would otherwise pass.
        return lines + [f"{engine}: ran in the baseline, not in the new report" for engine in self.lost]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": COMPARISON_SCHEMA,
            "verdict": "regressed" if self.regressed else "ok",
            "regressed": self.regressed,
            "task": self.task,
            "base": self.base,
            "new": self.new,
            "thresholds": asdict(self.thresholds),
            "machine": {
                "same": self.same_machine,
                "differences": self.machine_differences,
                "latency_gated": self.latency_gated,
            },
            "regressions": self.regressions,
            "engines": [
                {
                    "engine": e.engine,
                    "backend": e.key[0],
                    "precision": e.key[1],
                    "quantizer": e.key[2] or None,
                    "lowering": e.key[3],
                    "status": {"base": e.status[0], "new": e.status[1]},
                    "regressed": e.regressed,
                    "figures": {c.figure: {k: v for k, v in asdict(c).items() if k != "figure"} for c in e.changes},
                }
                for e in self.engines
            ],
            "lost": self.lost,
            "only_in_base": self.only_in_base,
            "only_in_new": self.only_in_new,
            "notes": self.notes,
        }

    def text(self) -> str:
        return comparison_text(self.to_dict())

    def markdown(self) -> str:
        return comparison_markdown(self.to_dict())


def compare(
    base: str | Path | Mapping[str, Any],
    new: str | Path | Mapping[str, Any],
    thresholds: CompareThresholds | None = None,
    *,
    base_label: str | None = None,
    new_label: str | None = None,
) -> Comparison:
    """Compare NEW against BASE (report.json paths, report folders, bundles or report dicts).

    The labels name the two sides in the output (default: the paths given). Raises UserError when either is
    unreadable or not a report, or when their tasks differ.
    """
    t = thresholds or CompareThresholds()
    base_doc, read_base_label = load_report(base)
    new_doc, read_new_label = load_report(new)
    base_label, new_label = base_label or read_base_label, new_label or read_new_label
    if base_doc["task"] != new_doc["task"]:
        raise UserError(
            f"cannot compare a {base_doc['task']} report ({base_label}) with a {new_doc['task']} report "
            f"({new_label}): their accuracy figures differ (top-1 against mIoU)"
        )
    task = new_doc["task"]
    differences = machine_differences(base_doc, new_doc)
    gated = not differences or t.same_machine_required
    base_engines, new_engines = _ran_engines(base_doc), _ran_engines(new_doc)
    if not base_engines and not new_engines:
        raise UserError(f"neither {base_label} nor {new_label} has an engine that ran: nothing to compare")
    compared = []
    for key, n in new_engines.items():
        b = base_engines.get(key)
        if b is None:
            continue
        changes = _accuracy_changes(b, n, task, t) + _latency_changes(b, n, t, gated) + _cost_changes(b, n, t)
        failures = list((n.get("parity") or {}).get("failures") or []) if n["status"] == "failed" else []
        unjudged = "" if n.get("parity") else "the new report has no parity figures for it: it cannot be judged"
        compared.append(EngineComparison(match_name(key), key, (b["status"], n["status"]), changes, failures,
                                         unjudged))
    return Comparison(
        task=task,
        base=_side(base_doc, base_label),
        new=_side(new_doc, new_label),
        thresholds=t,
        machine_differences=differences,
        engines=compared,
        only_in_base=_unmatched(base_engines, new_engines, _skip_reasons(new_doc), "new"),
        only_in_new=_unmatched(new_engines, base_engines, _skip_reasons(base_doc), "base"),
        notes=_notes(base_doc, new_doc),
        lost=[match_name(key) for key in base_engines if key not in new_engines],
    )


def _side(doc: Mapping[str, Any], label: str) -> dict[str, Any]:
    machine = doc.get("machine") or {}
    return {
        "label": label,
        "model": doc.get("model"),
        "dataset": doc.get("dataset"),
        "created_utc": doc.get("created_utc"),
        "machine": machine.get("summary") or machine.get("cpu_model"),
        "passed": doc.get("passed"),
    }


def _unmatched(these: Mapping, others: Mapping, other_skips: Mapping[tuple, str], other: str) -> list[str]:
    lines = []
    for key in these:
        if key in others:
            continue
        reason = other_skips.get(key)
        lines.append(match_name(key) + (f" (skipped in {other}: {reason})" if reason is not None else ""))
    return lines


def _notes(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    notes = []
    if base.get("model") != new.get("model"):
        notes.append(f"models differ: {base.get('model')} -> {new.get('model')}")
    if base.get("dataset") != new.get("dataset"):
        notes.append(f"evaluation data differ: {base.get('dataset')} -> {new.get('dataset')} "
                     "(accuracy changes may come from the data)")
    return notes


# ----------------------------------------------------------------------------------------------------------------
# Rendering (from the dict, so a comparison stored in a report renders the same way).


def _changes(engine: Mapping[str, Any]) -> list[Change]:
    return [Change(figure, **fields) for figure, fields in engine["figures"].items()]


def _cell(c: Change | None) -> str:
    if c is None:
        return "-"
    flag = " !" if c.regressed else ""
    return f"{_value(c, c.new)} ({_delta(c)}){flag}" if c.change is not None else _value(c, c.new) + flag


_ACCURACY_FIGURES = ("accuracy", "accuracy_drop", "agreement", "max_abs_err")
_SHORT_FIGURES = ("accuracy", "p50_ms@", "size_bytes", "peak_mb")  # the pull-request table


def _columns(d: Mapping[str, Any], wanted: Callable[[str], bool]) -> list[str]:
    """The figures any engine has that `wanted` keeps, in compare()'s order (accuracy, latency, cost)."""
    figures: list[str] = []
    for e in d["engines"]:
        figures += [f for f in e["figures"] if f not in figures and wanted(f)]
    return figures


def _top_throughput(d: Mapping[str, Any]) -> Callable[[str], bool]:
    """Throughput at the largest batch only: the smaller batches' figure is 1/p50 again."""
    batches = [int(f.split("@")[1]) for e in d["engines"] for f in e["figures"] if f.startswith("throughput@")]
    top = f"throughput@{max(batches)}" if batches else ""
    return lambda f: not f.startswith(_ACCURACY_FIGURES) and (not f.startswith("throughput@") or f == top)


def _table(d: Mapping[str, Any], columns: list[str], verdict: bool) -> tuple[list[str], list[list[str]]]:
    labels: dict[str, str] = {}
    rows = []
    for e in d["engines"]:
        changes = {c.figure: c for c in _changes(e)}
        labels.update({f: _header(c) for f, c in changes.items()})
        row = [e["engine"]] + [_cell(changes.get(f)) for f in columns]
        if verdict:
            base, new = e["status"]["base"], e["status"]["new"]
            row += [new if base == new else f"{base} -> {new}", "REGRESSED" if e["regressed"] else "ok"]
        rows.append(row)
    return ["engine"] + [labels.get(f, f) for f in columns] + (["parity", "verdict"] if verdict else []), rows


def _machine_line(d: Mapping[str, Any]) -> str:
    m = d["machine"]
    if m["same"]:
        return f"Machine: same ({d['new']['machine'] or 'unknown'})"
    gate = "latency gated anyway (--same-machine-required)" if m["latency_gated"] else "latency shown, not gated"
    return f"Machine differs ({gate}): " + "; ".join(m["differences"])


def _limits_line(d: Mapping[str, Any]) -> str:
    return "Limits: " + CompareThresholds(**d["thresholds"]).describe()


def comparison_tables(d: Mapping[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    """(headers, rows) of the accuracy table and of the speed and cost table; cells: new value (change)."""
    if not d["engines"]:
        return []
    accuracy = _table(d, _columns(d, lambda f: f.startswith(_ACCURACY_FIGURES)), verdict=True)
    return [accuracy, _table(d, _columns(d, _top_throughput(d)), verdict=False)]


def comparison_summary_lines(d: Mapping[str, Any]) -> list[str]:
    """Machine, limits, notes, each regression and each engine not compared: one line each."""
    lines = [_machine_line(d), _limits_line(d), *[f"Note: {n}" for n in d["notes"]]]
    return lines + [f"Regression: {line}" for line in d["regressions"]] + _unmatched_lines(d)


def comparison_text(d: Mapping[str, Any]) -> str:
    """The terminal rendering: verdict, sides, machine, limits, table (new value and its change), findings."""
    verdict = "REGRESSED" if d["regressed"] else "NO REGRESSION"
    parts = [
        "\n".join([
            f"Compare ({d['task']}): {d['base']['label']} -> {d['new']['label']}",
            f"Verdict: {verdict}",
            _machine_line(d),
            _limits_line(d),
            *[f"Note: {n}" for n in d["notes"]],
        ]),
    ]
    tables = comparison_tables(d)
    if tables:
        parts.append("Each cell: the new value (its change against the baseline); ! marks a regression.\n"
                     + "\n\n".join(text_table(*table) for table in tables))
    if d["regressions"]:
        parts.append("Regressions:\n" + "\n".join(f"  {line}" for line in d["regressions"]))
    unmatched = _unmatched_lines(d)
    if unmatched:
        parts.append("Not compared:\n" + "\n".join(f"  {line}" for line in unmatched))
    return "\n\n".join(parts) + "\n"


def _unmatched_lines(d: Mapping[str, Any]) -> list[str]:
    return [f"only in base: {x}" for x in d["only_in_base"]] + [f"only in new: {x}" for x in d["only_in_new"]]


def comparison_markdown(d: Mapping[str, Any], heading: str | None = "###") -> str:
    """Short enough for a pull-request comment: verdict and findings first, the table folded away.

    `heading`: the title's Markdown level, or None for no title (inside a report that has its own)."""
    icon = ":x: **Regressed**" if d["regressed"] else ":white_check_mark: **No regression**"
    lines = [f"{heading} lkca-deploy compare: {d['new'].get('model') or ''} ({d['task']})", ""] if heading else []
    lines += [f"{icon} against `{d['base']['label']}` ({len(d['engines'])} engines compared). {_machine_line(d)}."]
    lines += [f"- {line}" for line in d["regressions"]]
    lines += [f"- not compared, {line}" for line in _unmatched_lines(d)]
    lines += [f"- note: {n}" for n in d["notes"]]
    if d["engines"]:
        table = _table(d, _columns(d, lambda f: f.startswith(_SHORT_FIGURES)), verdict=True)
        summary = "Engines (new value, change against the baseline; ! = regression)"
        lines += ["", f"<details><summary>{summary}</summary>", "", md_table(*table), "",
                  f"{_limits_line(d)}.", "", "</details>"]
    return "\n".join(lines) + "\n"
