"""Whole runs and their reports: pipeline, compare, parity, bench."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lkca_deploy.calibration import CALIB_SAMPLES
from lkca_deploy.cli.common import app, echo_json
from lkca_deploy.compare import CompareThresholds
from lkca_deploy.compare import compare as run_comparison
from lkca_deploy.lowering.registry import STRATEGIES
from lkca_deploy.measure.e2e import STAGES, TOTAL
from lkca_deploy.precision import DEFAULT_MAX_DROP
from lkca_deploy.ranges import FRACTION, NON_NEGATIVE, POINTS, POSITIVE, POSITIVE_INT, int_list_option, option
from lkca_deploy.reports.render import summary_table, write_report
from lkca_runtime.backends.base import PRECISIONS
from lkca_runtime.backends.openvino import cpu_flags, cpu_has_bf16
from lkca_runtime.backends.registry import BACKENDS
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import guard_output
from lkca_runtime.machine import isa_summary
from lkca_runtime.metrics import Thresholds


def _split_list(value: str, valid, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in valid]
    if bad or not items:
        raise UserError(f"unknown {what} {bad[0] if bad else value!r}; valid: {', '.join(valid)}")
    return items


@app.command()
def pipeline(
    source: str | None = typer.Argument(None, help="Checkpoint directory or zoo name (default: train "
                                                      "lkca_vit_nano on digits)."),
    data: str | None = typer.Option(None, help="Data set (default: digits, or digit-scenes for segmentation)."),
    backends: str = typer.Option("onnxruntime,openvino,tensorrt", help="Comma-separated backends."),
    precisions: str = typer.Option("fp32,fp16,int8", help="Comma-separated precisions (bf16 is added for "
                                                          "OpenVINO where the CPU has it)."),
    out: Path = typer.Option(Path("lkca-bundle"), help="Bundle directory."),
    force: bool = typer.Option(False, help="Replace an existing bundle."),
    lowering: str = typer.Option(
        "auto", help=f"auto (planned per target) | {' | '.join(STRATEGIES)}."
    ),
    target: str | None = typer.Option(None, help="The device TensorRT's engine recipes are written for: "
                                      "tensorrt (default), jetson-jp5, jetson-jp6.0, jetson-jp6, jetson-jp7."),
    logits: str = typer.Option("grid", help="Segmentation: where the engines' logits end: grid (the Predictor "
                               "upsamples once, to each image) | input (the model's input size) | HxW."),
    epochs: int | None = option(None, "Training epochs when training (default: per data set).", POSITIVE_INT),
    calib_samples: int = option(CALIB_SAMPLES, "Calibration samples for INT8.", POSITIVE_INT),
    batches: str = int_list_option("1,32", "Batch sizes to time."),
    threads: int | None = option(None, "Inference threads (default: the backend's).", POSITIVE_INT),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
    download: bool = typer.Option(False, help="Download the data set where a network exists."),
    baseline: Path | None = typer.Option(None, help="A report.json or bundle to compare against at the end "
                                                    "(as `compare` does); exit 1 on a regression."),
    baseline_max_accuracy_drop: float | None = option(None, "With --baseline: largest accuracy (or agreement) "
                                                            "drop, in points (default 1).", POINTS),
    baseline_max_latency_increase: float | None = option(None, "With --baseline: largest p50 increase in percent, "
                                                               "at every batch size (default 100).", NON_NEGATIVE),
    baseline_max_memory_increase: float | None = option(None, "With --baseline: largest peak-memory increase in "
                                                              "percent (default 20).", NON_NEGATIVE),
    cost: bool = typer.Option(True, "--cost/--no-cost", help="Load time, peak memory and end-to-end Predictor "
                                                             "latency per engine (a child process each)."),
    golden: int = typer.Option(64, help="Golden samples stored in the bundle, with which the device re-proves "
                                        "every engine (lkca-deploy verify); 0 for none."),
    max_drop: float = option(DEFAULT_MAX_DROP, "INT8: top-1/mIoU points the engines may lose on a validation subset of the "
                                  "training split before units (mixers, MLPs, ...) return to float.", NON_NEGATIVE),
    plain_int8: bool = typer.Option(False, "--plain-int8", help="INT8 with every unit quantized: no accuracy "
                                                                "search (--max-drop is then unused)."),
) -> None:
    """The main job: train or load, export, build every backend x precision, parity, bench, bundle."""
    from lkca_deploy.export import check_logits
    from lkca_deploy.pipeline import PipelineOptions, run_pipeline

    check_logits(logits)  # before any training: a typo ends here, in one line
    limits = _baseline_limits(baseline, baseline_max_accuracy_drop, baseline_max_latency_increase,
                              baseline_max_memory_increase)
    chosen = _split_list(backends, BACKENDS, "backend")
    extra = {"openvino": ("bf16",)} if "openvino" in chosen and cpu_has_bf16(cpu_flags()) else {}
    opts = PipelineOptions(backends=chosen, precisions=_split_list(precisions, PRECISIONS,
                                                                   "precision"),
                           lowering=lowering, batches=batches, epochs=epochs,
                           calib_samples=calib_samples, threads=threads, force=force,
                           data_root=str(data_root) if data_root else None, download=download,
                           extra_precisions=extra, golden=golden, baseline=baseline, cost=cost, logits=logits,
                           max_drop=None if plain_int8 else max_drop, compare_thresholds=limits, target=target)
    report = run_pipeline(source, data, out, opts)
    regressed = bool(report.comparison and report.comparison["regressed"])
    typer.echo(summary_table(report))
    typer.echo(f"bundle: {out}  report: {out / 'reports' / 'report.html'}  "
               f"{'PASSED' if report.passed else 'FAILED'}{'  REGRESSED against the baseline' if regressed else ''}")
    if not report.passed or regressed:
        raise typer.Exit(1)


def _baseline_limits(baseline: Path | None, accuracy: float | None, latency: float | None, memory: float | None):
    """pipeline's --baseline-max-* limits over compare's defaults; UserError when they come without --baseline."""
    given = {"max_accuracy_drop": accuracy, "max_latency_increase": latency, "max_memory_increase": memory}
    given = {k: v for k, v in given.items() if v is not None}
    if given and baseline is None:
        flags = ", ".join(f"--baseline-{k.replace('_', '-')}" for k in given)
        raise UserError(f"{flags} limit(s) the comparison with a baseline: add --baseline REPORT")
    return CompareThresholds(**given)


@app.command()
def compare(
    base: Path = typer.Argument(..., help="Baseline: a report.json, a reports folder or a bundle."),
    new: Path = typer.Argument(..., help="The run to judge: a report.json, a reports folder or a bundle."),
    as_json: bool = typer.Option(False, "--json", help="The comparison as one JSON object on stdout."),
    markdown: bool = typer.Option(False, "--markdown", help="Short Markdown for a pull-request comment."),
    max_accuracy_drop: float = typer.Option(1.0, help="Largest accuracy (or agreement) drop, in points."),
    max_latency_increase: float = typer.Option(100.0, help="Largest p50 increase in percent, at every batch size "
                                                           "(on a busy shared machine one batch size alone moved 5x)."),
    max_memory_increase: float = typer.Option(20.0, help="Largest peak-memory increase, in percent."),
    same_machine_required: bool = typer.Option(False, "--same-machine-required",
                                               help="Other machine facts are a regression; latency gates anyway."),
) -> None:
    """What got worse from BASE to NEW, engine by engine; exit 1 on a regression, 0 otherwise."""
    limits = CompareThresholds(max_accuracy_drop, max_latency_increase, max_memory_increase, same_machine_required)
    result = run_comparison(base, new, limits)
    if as_json:
        echo_json(result.to_dict())
    else:
        typer.echo(result.markdown() if markdown else result.text(), nl=False)
    raise typer.Exit(result.exit_code)


@app.command()
def parity(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    data: str | None = typer.Option(None, help="Evaluation data (default: the bundle's)."),
    as_json: bool = typer.Option(False, "--json", help="report.json on stdout."),
    out: Path | None = typer.Option(None, help="Also write report.json/.md/.html here."),
    fp32_max_err: float = option(1e-3, "FP32: largest max abs logit error.", NON_NEGATIVE),
    fp16_agreement: float = option(0.995, "FP16: least top-1 (or pixel) agreement.", FRACTION),
    int8_drop: float = option(1.0, "INT8: largest accuracy (or mIoU) drop, in points.", POINTS),
    int8_agreement: float = option(0.9, "INT8: least top-1 (or pixel) agreement with the reference.", FRACTION),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
    threads: int | None = option(None, "Inference threads.", POSITIVE_INT),
) -> None:
    """Re-prove a bundle's engines against PyTorch FP32 on the evaluation split; exit 1 when one fails."""
    from lkca_deploy.proof import bundle_parity

    if out is not None:
        guard_output(out, [bundle], folder=True)

    thresholds = Thresholds()
    for task, agreement in (("classification", "agreement"), ("segmentation", "pixel_agreement")):
        thresholds = thresholds.with_limit(task, "fp16", agreement, fp16_agreement)
        thresholds = thresholds.with_limit(task, "int8", "top1_drop" if task == "classification" else "miou_drop",
                                           int8_drop)
        thresholds = thresholds.with_limit(task, "int8", agreement, int8_agreement)
    thresholds = thresholds.with_limit("classification", "fp32", "max_abs_err", fp32_max_err)
    report = bundle_parity(bundle, data, thresholds, str(data_root) if data_root else None, threads=threads)
    if out is not None:
        write_report(report, out)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else summary_table(report))
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def bench(
    targets: list[Path] = typer.Argument(..., help="Artifacts (with their sidecar) or bundle directories."),
    batches: str = int_list_option("1,32", "Batch sizes."),
    threads: int | None = option(None, "Inference threads.", POSITIVE_INT),
    budget: float = option(2.0, "Seconds of timed runs per engine and batch size.", POSITIVE),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
    cost: bool = typer.Option(True, "--cost/--no-cost", help="Also load time and peak memory (a child process per "
                                                             "engine) and, for bundles, end-to-end Predictor "
                                                             "latency per stage."),
) -> None:
    """Latency of engines: warm-up, then p50/p90/p99 and throughput per batch size, with the machine's facts;
    then what each engine costs beyond that: load time, peak memory, end-to-end latency through the Predictor."""
    from lkca_deploy.proof import bench_artifacts

    rows = bench_artifacts(targets, batches, threads, budget, cost=cost)
    if as_json:
        echo_json({"machine": isa_summary(), "engines": rows})
        return
    typer.echo(isa_summary())
    typer.echo(f"{'backend':<12} {'precision':<9} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
               f"{'img/s':>9}  artifact")
    for r in rows:
        for b, s in r["latency"].items():
            typer.echo(f"{r['backend']:<12} {r['precision']:<9} {b:>5} {s['p50_ms']:>9.3f} {s['p90_ms']:>9.3f} "
                       f"{s['p99_ms']:>9.3f} {s['throughput']:>9.1f}  {r['artifact']}")
    if cost:
        _echo_costs(rows)


def _echo_costs(rows: list[dict]) -> None:
    """Load time and peak memory per engine, then the Predictor's stages (p50 / p99 ms) where they were timed."""
    typer.echo("\nload: artifact on disk -> first result, fresh process; peak: resident memory the engine adds")
    typer.echo(f"{'backend':<12} {'precision':<9} {'load ms':>9} {'peak MiB':>9} {'library MiB':>11}  artifact")
    for r in rows:
        c = r["cost"]
        typer.echo(f"{r['backend']:<12} {r['precision']:<9} {c['first_result_ms']:>9.1f} {c['peak_mb']:>9.1f} "
                   f"{c['library_mb']:>11.1f}  {r['artifact']}")
    timed = [r for r in rows if r.get("e2e")]
    if timed:
        typer.echo("\nend to end through the Predictor, one image file per call (p50 / p99 ms)")
        typer.echo(f"{'backend':<12} {'precision':<9} " + " ".join(f"{s:>15}" for s in (*STAGES, TOTAL)))
        for r in timed:
            cells = [f"{st['p50_ms']:.2f} / {st['p99_ms']:.2f}" for st in
                     (r["e2e"]["stages"][s] for s in (*STAGES, TOTAL))]
            typer.echo(f"{r['backend']:<12} {r['precision']:<9} " + " ".join(f"{c:>15}" for c in cells))
    for note in dict.fromkeys(r["e2e_note"] for r in rows if r.get("e2e_note")):
        typer.echo(f"note: {note}")


