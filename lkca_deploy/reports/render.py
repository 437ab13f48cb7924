"""Reports: report.json (a contract other tools read), report.md, report.html (self-contained) and a terminal table.

The report.json contract (its keys and units) is reports/contract.py's.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

from lkca_deploy.compare import (
    comparison_markdown,
    comparison_summary_lines,
    comparison_tables,
    comparison_text,
)
from lkca_deploy.measure.e2e import TOTAL
from lkca_deploy.measure.latency import LatencyStats
from lkca_deploy.reports import figures as plots
from lkca_deploy.reports.contract import (
    E2E_STAGES,
    EngineResult,
    Report,
    validate_report_dict,
)
from lkca_deploy.reports.figures import accuracy_latency, baseline_changes
from lkca_deploy.reports.tables import html_table, md_table, text_table
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_outputs
from lkca_runtime.machine import isa_summary


class _Columns(NamedTuple):
    """The parity keys a task's tables and plots show."""

    metric: str  # shown as the accuracy
    reference: str
    drop: str
    agreement: str
    title: str


_TASK_COLUMNS = {
    "classification": _Columns("top1", "top1_reference", "top1_drop", "agreement", "top-1 %"),
    "segmentation": _Columns("miou", "miou_reference", "miou_drop", "pixel_agreement", "mIoU %"),
}


# ----------------------------------------------------------------------------------------------------------------
# The data.


# ----------------------------------------------------------------------------------------------------------------
# Tables (one model of each table, three renderings: markdown, HTML, fixed-width text).


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _fmt_pct(fraction: float | None) -> str:
    return "-" if fraction is None or math.isnan(fraction) else f"{fraction * 100:.2f}"


def _fmt_size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "-"
    return f"{size_bytes / 2**20:.2f} MiB" if size_bytes >= 2**20 else f"{size_bytes / 2**10:.1f} KiB"


def _batches(report: Report) -> list[str]:
    return sorted({b for e in report.engines for b in e.latency}, key=int)


def _ran(report: Report) -> list[EngineResult]:
    return [e for e in report.engines if e.status != "skipped"]


def _accuracy_cell(parity: dict[str, Any] | None, task: str) -> str:
    if not parity:
        return "-"
    cols = _TASK_COLUMNS[task]
    value = _fmt_pct(parity.get(cols.metric))
    return value if parity.get(cols.drop) is None else f"{value} ({parity[cols.drop]:+.2f})"


def engine_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the engines that ran (skipped ones have their own table)."""
    cols = _TASK_COLUMNS[report.task]
    batches = _batches(report)
    top = batches[-1] if batches else None
    headers = ["backend", "precision", "lowering", "size", f"{cols.title} (drop pt)", "agreement", "max err"]
    headers += [f"p50 @{b} ms" for b in batches] + ([f"img/s @{top}"] if top else [])
    with_cost = any(e.cost for e in _ran(report))
    with_e2e = any(e.e2e for e in _ran(report))
    headers += (["load ms", "peak MiB"] if with_cost else []) + (["e2e p50/p99 ms"] if with_e2e else [])
    headers.append("result")
    rows = []
    for e in _ran(report):
        p = e.parity or {}
        quantizer = e.extra.get("quantizer")
        row = [
            e.backend,
            f"{e.precision} ({quantizer})" if quantizer else e.precision,  # two INT8 routes per backend
            e.lowering,
            _fmt_size(e.size_bytes),
            _accuracy_cell(e.parity, report.task),
        ]
        row += [_fmt(p.get(cols.agreement), ".4f"), _fmt(p.get("max_abs_err"), ".2e")]
        row += [_fmt(e.latency[b].p50_ms, ".2f") if b in e.latency else "-" for b in batches]
        if top:
            row.append(_fmt(e.latency[top].throughput, ".0f") if top in e.latency else "-")
        if with_cost:
            row += [_fmt(e.cost.first_result_ms, ".0f"), _fmt(e.cost.peak_mb, ".1f")] if e.cost else ["-", "-"]
        if with_e2e:
            row.append(_p50_p99(e.e2e.stages[TOTAL]) if e.e2e else "-")
        rows.append(row + ["PASS" if e.status == "ok" else "FAIL"])
    return headers, rows


def _p50_p99(stats: LatencyStats) -> str:
    return f"{stats.p50_ms:.2f} / {stats.p99_ms:.2f}"


def e2e_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """One image file through the Predictor at batch 1: p50 / p99 ms per stage, per engine that has timings."""
    rows = [[f"{e.name} ({e.extra['quantizer']})" if e.extra.get("quantizer") else e.name]  # two INT8 routes
            + [_p50_p99(e.e2e.stages[s]) for s in E2E_STAGES] for e in _ran(report) if e.e2e]
    return ["engine"] + [f"{s} p50 / p99 ms" for s in E2E_STAGES], rows


def skipped_table(report: Report) -> tuple[list[str], list[list[str]]]:
    rows = [
        [e.backend, e.precision, e.lowering, e.reason or ""] for e in report.engines if e.status == "skipped"
    ]
    return ["backend", "precision", "lowering", "reason"], rows


def float_parts_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Per reduced-precision engine: which of its parts run in float, and why (pipeline's precision plan)."""
    rows = [[f"{e.name} ({e.extra['quantizer']})" if e.extra.get("quantizer") else e.name,
             ", ".join(note["float"]) or "nothing", note["why"]]
            for e in _ran(report) if (note := e.extra.get("float_parts"))]
    return ["engine", "runs in float", "why"], rows


def int8_search_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """The accuracy-aware INT8 search, one row per try (precision/accuracy_aware.py); empty when none ran."""
    plan = report.extra.get("int8_accuracy") or {}
    steps = plan.get("steps") or []
    flavors = list(steps[0]["drop"]) if steps else []
    rows = [[str(i), s["unit"] or "(every unit INT8)", ", ".join(s["float_units"]) or "-",
             *(f"{s['drop'][f]:.2f}" for f in flavors), "-" if s["unit"] is None else ("yes" if s["kept"] else "no")]
            for i, s in enumerate(steps)] if len(steps) > 1 else []
    return ["step", "returned to float", "float units", *(f"drop {f} (pt)" for f in flavors), "kept"], rows


def _precision_sections(report: Report) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """The reduced-precision tables that have rows, with their titles: one list for every rendering."""
    sections = [
        ("What runs in float", float_parts_table(report)),
        ("Accuracy-aware INT8 search (validation subset of the training split)", int8_search_table(report)),
    ]
    return [(title, table) for title, table in sections if table[1]]


def _failure_lines(report: Report) -> list[str]:
    lines = []
    for e in report.engines:
        if e.status != "failed":
            continue
        reasons = list((e.parity or {}).get("failures") or []) + ([e.reason] if e.reason else [])
        lines.append(f"{e.name}: {'; '.join(reasons) or 'failed'}")
    return lines


def _with_blocks(report: Report) -> list[EngineResult]:
    return [e for e in report.engines if e.blocks]


def block_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Per-block error side by side: one row per block, one column per engine ('cosine / max abs err')."""
    engines = _with_blocks(report)
    names: list[str] = []
    for e in engines:
        names += [b["block"] for b in e.blocks if b["block"] not in names]
    cells = {
        (e.name, b["block"]): f"{_fmt(b['cosine'], '.5f')} / {_fmt(b['max_abs_err'], '.2e')}"
        for e in engines
        for b in e.blocks
    }
    rows = [[name] + [cells.get((e.name, name), "-") for e in engines] for name in names]
    return ["block"] + [e.name for e in engines], rows


def _reference_line(report: Report) -> str:
    cols = _TASK_COLUMNS[report.task]
    values = [
        e.parity[cols.reference] for e in _ran(report) if (e.parity or {}).get(cols.reference) is not None
    ]
    shown = f"{cols.title.split()[0]} {_fmt_pct(values[0])} %" if values else "no labels, agreement only"
    return f"Reference: {report.reference} ({shown})" + (f" on {report.dataset}" if report.dataset else "")


def _header_lines(report: Report) -> list[str]:
    machine = report.machine.get("summary") or (
        isa_summary(report.machine) if report.machine else "not recorded"
    )
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items() if v)
    lines = [
        f"Verdict: {'PASSED' if report.passed else 'FAILED'}",
        _reference_line(report),
        f"Machine: {machine}",
    ]
    if report.machine.get("int8_hint"):
        lines.append(report.machine["int8_hint"])
    return lines + ([f"Versions: {versions}"] if versions else [])


def summary_table(report: Report) -> str:
    """Fixed-width text for the terminal: verdict, machine, engines, skipped engines, failures."""
    parts = ["\n".join(_header_lines(report)), text_table(*engine_table(report))]
    headers, skipped = skipped_table(report)
    if skipped:
        parts.append("Skipped:\n" + text_table(headers, skipped))
    failures = _failure_lines(report)
    if failures:
        parts.append("Failures:\n" + "\n".join(f"  {line}" for line in failures))
    if report.comparison is not None:

        parts.append("Against the baseline:\n" + comparison_text(report.comparison))
    return "\n\n".join(parts) + "\n"


_E2E_TITLE = "End to end through the Predictor (batch 1, one image file per call)"
_COST_NOTE = (
    "load ms: from the artifact on disk to the first result, in a fresh process; peak MiB: the resident-set "
    "high-water mark the engine adds while loaded and running (a child process per engine, measure/cost.py)."
)


def render_markdown(report: Report) -> str:
    parts = [
        f"# lkca-deploy report: {report.model} ({report.task})",
        "\n".join(f"- {x}" for x in _header_lines(report)),
    ]
    parts += ["## Engines", md_table(*engine_table(report))]
    for title, table in _precision_sections(report):
        parts += [f"## {title}", md_table(*table)]
    headers, skipped = skipped_table(report)
    if skipped:
        parts += ["## Skipped engines", md_table(headers, skipped)]
    failures = _failure_lines(report)
    if failures:
        parts += ["## Failures", "\n".join(f"- {line}" for line in failures)]
    if any(e.e2e for e in report.engines):
        parts += [f"## {_E2E_TITLE}", md_table(*e2e_table(report)), _COST_NOTE]
    if _with_blocks(report):
        parts += [
            "## Per-block error (cosine / max abs err)",
            md_table(*block_table(report)),
            _divergence_text(report),
        ]
    if report.comparison is not None:

        parts += ["## Against the baseline", comparison_markdown(report.comparison, heading=None).strip()]
    return "\n\n".join(parts) + "\n"


def _divergence_text(report: Report) -> str:
    return "\n".join(
        f"- {e.name}: first divergent block {e.first_divergent or 'none'}" for e in _with_blocks(report)
    )


# ----------------------------------------------------------------------------------------------------------------
# Figures (matplotlib imported only here, drawn on Agg canvases without pyplot's global state).


def _png_base64(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _accuracy_latency_figure(report: Report) -> Any | None:
    """Accuracy (or agreement, without labels) against p50 latency at the smallest batch."""
    cols = _TASK_COLUMNS[report.task]
    batches = _batches(report)
    if not batches:
        return None
    parities = [e.parity for e in _ran(report) if e.parity]
    metric, title = cols.metric, cols.title
    if not any(p.get(metric) is not None for p in parities):  # no labels: plot agreement instead
        metric, title = cols.agreement, "agreement with reference %"
    ref = next((p[cols.reference] for p in parities if p.get(cols.reference) is not None), None)
    return accuracy_latency(report, batches[0], metric, title, ref if metric == cols.metric else None)


# ----------------------------------------------------------------------------------------------------------------
# HTML.

_CSS = """
body { font: 14px/1.5 system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; white-space: nowrap; }
th { background: #f4f4f4; } tr:nth-child(even) td { background: #fafafa; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; }
ul.facts { list-style: none; padding: 0; } img { max-width: 100%; }
"""


def _html_figure(fig: Any | None, alt: str) -> str:
    return (
        ""
        if fig is None
        else f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png_base64(fig)}">'
    )


def _comparison_html(comparison: dict[str, Any]) -> list[str]:
    """The `compare` verdict against the baseline run: findings, the change per engine as tables and a figure."""
    regressed = comparison["regressed"]
    verdict = f'<span class="{"fail" if regressed else "pass"}">{"REGRESSED" if regressed else "NO REGRESSION"}</span>'
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in comparison_summary_lines(comparison))
    parts = ['<h2 id="baseline">Against the baseline</h2>', f"<p>Verdict: {verdict}</p>", f"<ul>{lines}</ul>"]
    parts += [html_table(*table) for table in comparison_tables(comparison)]
    return parts + [_html_figure(baseline_changes(comparison), "Change against the baseline")]


def render_html(report: Report) -> str:
    """A self-contained page: facts, tables, and figures embedded as base64 PNG (no external assets)."""
    title = f"lkca-deploy report: {report.model} ({report.task})"
    verdict = '<span class="pass">PASSED</span>' if report.passed else '<span class="fail">FAILED</span>'
    facts = "".join(f"<li>{html.escape(line)}</li>" for line in _header_lines(report)[1:])
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Verdict: {verdict}</p>",
        f'<ul class="facts">{facts}</ul>',
    ]
    parts += ["<h2>Engines</h2>", html_table(*engine_table(report))]
    for title, table in _precision_sections(report):
        parts += [f"<h2>{title}</h2>", html_table(*table)]
    failures = _failure_lines(report)
    if failures:
        parts += [
            "<h2>Failures</h2>",
            "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in failures) + "</ul>",
        ]
    headers, skipped = skipped_table(report)
    if skipped:
        parts += ["<h2>Skipped engines</h2>", html_table(headers, skipped)]
    if any(e.e2e for e in report.engines):
        parts += [f"<h2>{_E2E_TITLE}</h2>", html_table(*e2e_table(report)), f"<p>{html.escape(_COST_NOTE)}</p>"]

    figures = [
        ("Accuracy against latency", _accuracy_latency_figure(report)),
        ("Latency distributions", plots.latency_distributions(report, _batches(report))),
    ]
    parts += [f"<h2>{name}</h2>{_html_figure(fig, name)}" for name, fig in figures if fig is not None]
    if _with_blocks(report):
        divergence = "".join(
            f"<li>{html.escape(e.name)}: first divergent block {html.escape(e.first_divergent or 'none')}</li>"
            for e in _with_blocks(report)
        )
        parts += ["<h2>Per-block error (cosine / max abs err)</h2>", html_table(*block_table(report))]
        parts += [f"<ul>{divergence}</ul>", _html_figure(plots.block_errors(_with_blocks(report)), "Per-block error")]
    if report.comparison is not None:
        parts += _comparison_html(report.comparison)
    body = "\n".join(parts)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


# ----------------------------------------------------------------------------------------------------------------
# Writing.


def write_report(report: Report, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `out_dir` (created if needed); returns their paths.

    Everything is rendered before the first file is written, so a rendering error leaves no new file behind.
    """
    d = report.to_dict()
    problems = validate_report_dict(d)
    if problems:
        raise ValueError("report breaks the report.json contract: " + "; ".join(problems))
    texts = {
        "report.json": json.dumps(d, indent=2, allow_nan=False) + "\n",
        "report.md": render_markdown(report),
        "report.html": render_html(report),
    }
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"report directory {out} is an existing file; pass a directory path")
    paths = {name: out / name for name in texts}
    # The three appear together or not at all: a report.json whose report.html failed would say nothing of it.
    with atomic_outputs(*paths.values(), size_hint=len(texts["report.json"])) as tmps:
        for tmp, text in zip(tmps, texts.values()):
            tmp.write_text(text, encoding="utf-8")
    return paths
