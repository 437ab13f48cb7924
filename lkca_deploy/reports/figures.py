"""The report's figures, drawn to be read: every engine named by a legend entry (marker = backend, colour =
precision and INT8 flavour), latencies on log axes so one slow outlier cannot flatten everyone else's spread, and
the change against a baseline after `compare`.

matplotlib is imported only here, and figures are drawn on Agg canvases without pyplot's global state.
`benchmarks/report_screenshots.py` shows how they look in a browser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lkca_deploy.reports.contract import EngineResult, Report

MARKERS = {"onnxruntime": "o", "openvino": "s", "tensorrt": "^"}
_OTHER_MARKERS = ("D", "v", "P", "X")
# One colour per precision (and INT8 flavour: two flavours of one backend are different engines).
COLOURS = {
    "fp32": "#1f77b4",
    "fp16": "#ff7f0e",
    "bf16": "#9467bd",
    "int8": "#2ca02c",
    "int8 (cpu)": "#2ca02c",
    "int8 (tensorrt)": "#17becf",
    "int8 (nncf)": "#8c564b",
    "int8 (qdq)": "#e377c2",
}
_OTHER_COLOURS = ("#bcbd22", "#7f7f7f", "#d62728")
FAIL_COLOUR = "#d62728"
_LEGEND = {"fontsize": 9, "frameon": False, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}


def precision_label(engine: EngineResult) -> str:
    quantizer = engine.extra.get("quantizer")
    return f"{engine.precision} ({quantizer})" if quantizer else engine.precision


def legend_label(engine: EngineResult) -> str:
    """e.g. "openvino int8 (nncf), matmul": what the legend and tick labels call an engine."""
    return f"{engine.backend} {precision_label(engine)}, {engine.lowering}"


def marker(backend: str) -> str:
    return MARKERS.get(backend) or _OTHER_MARKERS[sum(map(ord, backend)) % len(_OTHER_MARKERS)]


def colour(engine: EngineResult) -> str:
    label = precision_label(engine)
    return COLOURS.get(label) or COLOURS.get(engine.precision) or _OTHER_COLOURS[len(label) % len(_OTHER_COLOURS)]


def _plain_log_axis(ax: Any) -> None:
    """Log x with ticks written 0.2, 0.5, 2 (not 2x10^-1), dense enough to read a value: 1-2-5 per decade, or
    more steps when the data span less than a decade (where 1-2-5 leaves one or two ticks)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    low, high = ax.get_xlim()  # after autoscaling
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for steps in ((1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10))):
        ticks = [m * 10.0**e for e in decades for m in steps if low <= m * 10.0**e <= high]
        if len(ticks) >= 4:
            break
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(low, high)


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]


# ----------------------------------------------------------------------------------------------------------------
# Accuracy against latency.


def _coincident_sizes(points: Sequence[tuple[float, float]], x_span: float, y_span: float) -> list[float]:
    """Marker areas: points drawn on top of each other get nested sizes (largest first), so hollow markers of
    engines with the same accuracy and latency stay visible as rings instead of hiding one another."""
    sizes, groups = [], []
    for x, y in points:
        group = next((g for g in groups if abs(g[0] - x) <= x_span and abs(g[1] - y) <= y_span), None)
        if group is None:
            group = [x, y, 0]
            groups.append(group)
        sizes.append(max(260.0 * 0.55 ** group[2], 25.0))
        group[2] += 1
    return sizes


def accuracy_latency(report: Report, batch: str, metric: str, title: str, reference: float | None) -> Any | None:
    """One hollow marker per engine at (p50 at `batch`, metric %), a legend naming each, the reference line."""
    engines = [
        e for e in report.engines
        if e.status != "skipped" and e.parity and e.parity.get(metric) is not None and batch in e.latency
    ]
    if not engines:
        return None
    xs = [e.latency[batch].p50_ms for e in engines]
    ys = [e.parity[metric] * 100 for e in engines]
    y_values = ys + ([reference * 100] if reference is not None else [])
    y_span = max(max(y_values) - min(y_values), 0.5)
    x_log_span = max(math.log10(max(xs) / min(xs)), 0.3) if min(xs) > 0 else 1.0
    # coincident: within ~2 % of the axes in each direction (log x)
    sizes = _coincident_sizes([(math.log10(max(x, 1e-9)), y) for x, y in zip(xs, ys)],
                              0.02 * x_log_span, 0.02 * y_span)
    fig, (ax,) = new_figure(11, 5)
    for e, x, y, size in zip(engines, xs, ys, sizes):
        failed = e.status == "failed"
        ax.scatter(x, y, s=size, marker=marker(e.backend), facecolors="none", edgecolors=colour(e),
                   linewidths=2.2, zorder=3, label=legend_label(e) + (" - FAILED" if failed else ""))
        if failed:
            ax.scatter(x, y, s=30, marker="x", color=FAIL_COLOUR, zorder=4)
    if reference is not None:
        ax.axhline(reference * 100, linestyle="--", color="gray", linewidth=1.2, label=f"{report.reference} "
                   f"({reference * 100:.2f})", zorder=1)
    ax.set(xlabel=f"p50 latency at batch {batch} (ms, log scale)", ylabel=title,
           title=f"{title} against p50 latency at batch {batch}")
    ax.set_ylim(min(y_values) - 0.15 * y_span, max(y_values) + 0.15 * y_span)
    ax.set_xscale("log")
    ax.margins(x=0.15)
    _plain_log_axis(ax)
    ax.grid(alpha=0.3, which="both")
    legend = ax.legend(title="engine (marker: backend, colour: precision)", title_fontsize=9, **_LEGEND)
    for handle in legend.legend_handles:
        if hasattr(handle, "set_sizes"):  # one size in the legend, whatever the nesting on the plot
            handle.set_sizes([70])
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Latency distributions.


def latency_distributions(report: Report, batches: Sequence[str]) -> Any | None:
    """Per batch size, one horizontal box per engine on a log axis: box = quartiles, whiskers = p1..p99, dots =
    the calls beyond them, the p50 tick in the engine's colour."""
    panels = [
        (b, [e for e in report.engines if e.status != "skipped" and b in e.latency and e.latency[b].samples_ms])
        for b in batches
    ]
    panels = [(b, engines) for b, engines in panels if engines]
    if not panels:
        return None
    rows = max(len(engines) for _, engines in panels)
    fig, axes = new_figure(11, 0.9 + 0.42 * rows * len(panels) + 0.6 * len(panels), rows=len(panels))
    for ax, (batch, engines) in zip(axes, panels):
        engines = engines[::-1]  # the report's first engine at the top
        data = [e.latency[batch].samples_ms for e in engines]
        boxes = ax.boxplot(data, orientation="horizontal", whis=(1, 99), widths=0.6, patch_artist=True,
                           flierprops={"marker": ".", "markersize": 3, "alpha": 0.5})
        for box, median, e in zip(boxes["boxes"], boxes["medians"], engines):
            box.set(facecolor=colour(e), alpha=0.35, edgecolor="#333")
            median.set(color=colour(e), linewidth=2.5, alpha=1.0)
        ax.set_yticks(range(1, len(engines) + 1), [legend_label(e) for e in engines], fontsize=9)
        _plain_log_axis(ax)
        ax.set(xlabel="latency per call (ms, log scale)", title=f"Latency per call at batch {batch} "
               f"(box: quartiles, whiskers: p1-p99)")
        ax.grid(axis="x", alpha=0.3, which="both")
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Per-block error.


def block_errors(engines: Sequence[EngineResult]) -> Any | None:
    """Cosine and max abs error per block for the engines whose divergence was localised."""
    if not engines:
        return None
    fig, (cos_ax, err_ax) = new_figure(12, 4.5, cols=2)
    for e in engines:
        labels = [b["block"] for b in e.blocks]
        style = {"marker": marker(e.backend), "color": colour(e), "label": legend_label(e)}
        cos_ax.plot(labels, [b["cosine"] for b in e.blocks], **style)
        err_ax.plot(labels, [max(b["max_abs_err"], 1e-12) for b in e.blocks], **style)
    cos_ax.set(title="Cosine to reference per block", ylabel="mean per-sample cosine", xlabel="block")
    err_ax.set(title="Max abs error per block", ylabel="max |engine - reference| (0 drawn at 1e-12)",
               xlabel="block", yscale="log")
    for ax in (cos_ax, err_ax):
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(alpha=0.3)
    err_ax.legend(**_LEGEND)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Change against the baseline (the dict compare.Comparison.to_dict() makes).


def _figure_values(engines: Sequence[Mapping[str, Any]], prefix: str) -> list[str]:
    seen: list[str] = []
    for e in engines:
        seen += [f for f in e["figures"] if f.startswith(prefix) and f not in seen]
    return seen


def baseline_changes(comparison: Mapping[str, Any]) -> Any | None:
    """Per engine, horizontal bars: accuracy change (points) and p50 change (percent) per batch, memory change
    when measured; red where the change is a regression, dashed lines at the limits."""
    engines = list(comparison.get("engines") or [])[::-1]
    if not engines:
        return None
    thresholds = comparison["thresholds"]
    panels = [("accuracy", "accuracy change (points)", -thresholds["max_accuracy_drop"])]
    panels += [(f, f"p50 @{f.split('@')[1]} change (%)", thresholds["max_latency_increase"])
               for f in _figure_values(engines, "p50_ms@")]
    if _figure_values(engines, "peak_mb"):
        panels.append(("peak_mb", "memory change (%)", thresholds["max_memory_increase"]))
    fig, axes = new_figure(3.2 * len(panels) + 3.5, 1.2 + 0.38 * len(engines), cols=len(panels))
    names = [e["engine"] for e in engines]
    for i, (ax, (figure, title, limit)) in enumerate(zip(axes, panels)):
        values, colours = [], []
        for e in engines:
            f = e["figures"].get(figure) or {}
            values.append(f.get("change") if f.get("change") is not None else 0.0)
            colours.append(FAIL_COLOUR if f.get("regressed") else "#4c72b0")
        ax.barh(range(len(engines)), values, color=colours, height=0.6)
        unit = " pt" if figure == "accuracy" else " %"
        for y, value in enumerate(values):  # the number itself, beside its bar's end
            ax.annotate(f"{value:+.2f}{unit}" if unit == " pt" else f"{value:+.0f}{unit}", (value, y),
                        xytext=(4 if value >= 0 else -4, 0), textcoords="offset points", va="center",
                        ha="left" if value >= 0 else "right", fontsize=8)
        ax.axvline(0, color="#333", linewidth=0.8)
        gated = figure == "accuracy" or figure == "peak_mb" or comparison["machine"]["latency_gated"]
        if gated:
            ax.axvline(limit, color=FAIL_COLOUR, linestyle="--", linewidth=1, alpha=0.7)
        ax.set_yticks(range(len(engines)), names if i == 0 else [""] * len(engines), fontsize=9)
        ax.set_title(title + ("\n(dashed: the limit)" if gated else "\n(not gated: machines differ)"), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        span = max([abs(v) for v in values] + [abs(limit) * 1.1 if gated else 0.0, 1.0])
        ax.set_xlim(-span * 1.45, span * 1.45)  # room for the numbers beside the longest bars
    return fig
