"""The `lkca-deploy` command line: a thin typer layer; every command is a package function first.

User errors (lkca_deploy.errors.UserError) end as one line on stderr and exit code 2; gates (check, parity) exit 1
when the model or an engine fails.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from .errors import UserError
from .ranges import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    OPSET,
    PERCENTILE,
    POINTS,
    POSITIVE,
    POSITIVE_INT,
    int_list_option,
    option,
)

app = typer.Typer(
    name="lkca-deploy",
    help="Train, export, lower, quantize and deploy compact LKCA vision models, with parity and latency reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MiB = 2**20
STRIDE_HELP = "With --slide: window step in pixels (default 2/3 of the model input)."
SCALE_HELP = "With --slide: resize factor before sliding (default: short side = model input; 1: own size)."


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


# --------------------------------------------------------------------------------------------------- models, train


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="One JSON list on stdout.")) -> None:
    """List the model zoo: params, GFLOPs, input size, grid and kernel."""
    from .models.zoo import list_models, model_summary

    rows = [model_summary(name) for name in list_models()]
    if as_json:
        _echo_json(rows)
        return
    typer.echo(f"{'name':<18} {'task':<14} {'params':>9} {'GFLOPs':>8} {'input':>11} {'grid':>7} {'kernel':>7}")
    for r in rows:
        kernel = "x".join(map(str, r["kernel"])) if r["kernel"] else "-"
        typer.echo(f"{r['name']:<18} {r['task']:<14} {r['params'] / 1e6:>8.2f}M {r['gflops']:>8.3f} "
                   f"{'x'.join(map(str, r['input_size'])):>11} {'x'.join(map(str, r['grid'])):>7} {kernel:>7}")


@app.command()
def train(
    model: str = typer.Argument(..., help="Zoo name (see `lkca-deploy models`)."),
    data: str = typer.Option("digits", help="digits | cifar10 | cifar100 | svhn | tiny-imagenet | digit-scenes | "
                                            "ade20k | a folder."),
    epochs: int | None = option(None, "Epochs (default: per data set).", POSITIVE_INT),
    batch_size: int | None = option(None, "Batch size (default: per data set).", POSITIVE_INT),
    lr: float = option(2e-3, "Peak learning rate (AdamW, cosine with warm-up).", POSITIVE),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    out: Path | None = typer.Option(None, help="Checkpoint directory (default runs/MODEL-DATA)."),
    resume: Path | None = typer.Option(None, help="Continue training this checkpoint."),
    force: bool = typer.Option(False, help="Replace an existing checkpoint at --out (never another folder)."),
    download: bool = typer.Option(False, help="Download the data set where a network exists."),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
    seed: int = option(0, "Random seed.", NON_NEGATIVE_INT),
    view: str | None = typer.Option(None, help="LKCA view for training: conv | attention | fft (default: "
                                                  "the faster one for the grid)."),
    workers: int = option(0, "Data loader worker processes.", NON_NEGATIVE_INT),
) -> None:
    """Train a zoo model on a data set and save a checkpoint (safetensors + config.json)."""
    from .train import TrainOptions, default_batch_size, default_epochs
    from .train import train as run_training

    out = out or Path("runs") / f"{model}-{Path(data).name}"
    # Resuming into the checkpoint itself replaces it: naming it twice is the consent --force gives.
    force = force or (resume is not None and Path(resume).resolve() == Path(out).resolve())
    opts = TrainOptions(epochs=default_epochs(data) if epochs is None else epochs,
                        batch_size=default_batch_size(data) if batch_size is None else batch_size,
                        lr=lr, device=device,
                        seed=seed, view=view, workers=workers, data_root=str(data_root) if data_root else None,
                        download=download, force=force)
    metrics = run_training(model, data, out=out, resume=resume, opts=opts)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 saves and reports
        return
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "per_class_iou"}
    typer.echo(f"saved {out}  {shown}")


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory."),
    data: str | None = typer.Option(None, help="Data set (default: the one it was trained on)."),
    split: str = typer.Option("test", help="Split to evaluate."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
    download: bool = typer.Option(False, help="Download the data set where a network exists."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    slide: bool = typer.Option(False, help="Segmentation: sliding windows, mIoU at each image's own size."),
    stride: int | None = option(None, STRIDE_HELP, POSITIVE_INT),
    scale: float | None = option(None, SCALE_HELP, POSITIVE),
) -> None:
    """Evaluate a checkpoint: top-1/top-5 (classification) or mIoU/pixel accuracy (segmentation)."""
    from .masks import cli_slide
    from .train import evaluate as run_evaluation

    metrics = run_evaluation(checkpoint, data, split, data_root, download, device,
                             slide=cli_slide(slide, stride, scale))
    if as_json:
        _echo_json(metrics)
    else:
        typer.echo("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in metrics.items() if k != "per_class_iou"))


# ------------------------------------------------------------------------------------------ export, lower, check


@app.command()
def export(
    source: str = typer.Argument(..., help="Checkpoint directory, or a zoo name (deterministic random weights)."),
    out: Path = typer.Option(..., help="Output .onnx file."),
    lowering: str = typer.Option(
        "auto", help="auto | conv | crop | matmul | tiled | spectral | token_spectral | tune."
    ),
    max_kernel: int | None = option(None, "Largest kernel side a tile may have (tiled).", POSITIVE_INT),
    target: str = typer.Option("onnxruntime-cpu", help="Target the auto lowering plans for."),
    batch: str = typer.Option("dynamic", help="Batch size N for a static shape, or 'dynamic'."),
    opset: int | None = option(None, "ONNX opset (default 20: GELU as one op; >= 17: LayerNormalization as one op).",
                               OPSET),
    no_simplify: bool = typer.Option(False, "--no-simplify", help="Skip onnxsim."),
    seed: int = option(0, "Seed of a zoo model's random weights.", NON_NEGATIVE_INT),
    matmul_budget: float = option(64.0, "Most MiB of Toeplitz weights the matmul lowering may add.", POSITIVE),
    tune_backend: str = typer.Option("onnxruntime", help="Backend that times candidates for --lowering tune."),
    precision: str | None = typer.Option(None, help="Precision the engines will run (fp32 | fp16 | bf16 | int8), "
                                         "for --lowering auto: int8 on tensorrt gets a MatMul mixer."),
    logits: str = typer.Option("input", help="Segmentation: input (logits at the input size, as PyTorch) | grid "
                               "(the head's grid logits; the Predictor upsamples once to each image) | HxW."),
) -> None:
    """Export to ONNX with the large-kernel conv lowered for a target; checks itself against PyTorch."""
    from .export import export_model
    from .fsutil import check_output

    check_output(out)  # before tracing: a bad --out fails in a second, not after the export

    result = export_model(source, out, lowering=lowering, target=target, max_kernel=max_kernel,
                          batch=_parse_batch(batch), opset=opset, simplify=not no_simplify,
                          budget_bytes=int(matmul_budget * MiB), seed=seed, tune_backend=tune_backend,
                          precision=precision, logits=None if logits == "input" else logits)
    if result.lowering is not None:
        typer.echo(result.lowering.summary())
    typer.echo(f"wrote {result.path}  (self-check: max abs error vs PyTorch {result.max_abs_err:.2e})")


def _parse_batch(batch: str) -> int | None:
    if batch == "dynamic":
        return None
    if not batch.isdigit() or int(batch) < 1:
        raise UserError(f"--batch takes a positive integer or 'dynamic', not {batch!r}")
    return int(batch)


@app.command()
def lower(
    src: Path = typer.Argument(..., help="Input ONNX file (any model)."),
    out: Path = typer.Option(..., help="Output ONNX file."),
    strategy: str = typer.Option(..., help="crop | matmul | tiled | spectral | token_spectral."),
    max_kernel: int | None = option(None, "Largest kernel side after tiling.", POSITIVE_INT),
    min_kernel: int | None = option(None, "Only convs with a larger kernel side are rewritten.", POSITIVE_INT),
    matmul_budget: float = option(64.0, "Most MiB of Toeplitz weights the matmul lowering may add.", POSITIVE),
) -> None:
    """Rewrite every large stride-1 depthwise/grouped Conv of any ONNX model; says what changed and why."""
    from .fsutil import check_output
    from .lowering.passes import STRATEGIES, lower_file

    check_output(out)

    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    report = lower_file(src, out, strategy, max_kernel=max_kernel, min_kernel=min_kernel,
                        budget_bytes=int(matmul_budget * MiB))
    typer.echo(report.summary())
    if report.nothing_lowered:
        typer.echo(f"nothing to lower in {src}: no depthwise/grouped conv needed the {strategy} rewrite "
                   f"({out} is an unchanged copy)")


@app.command()
def check(
    file: Path = typer.Argument(..., help="ONNX file."),
    target: str = typer.Option(..., help="tensorrt | jetson-dla | openvino-cpu | openvino-gpu | openvino-npu | "
                                         "onnxruntime-cpu."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    allow_gpu_fallback: bool = typer.Option(False, help="jetson-dla: GPU fallbacks are listed, not failures."),
    precision: str | None = typer.Option(None, help="fp16: also list the tensors FP16 cannot hold with a margin "
                                                    "and the ops kept FP32 for them (FP16 headroom)."),
    calib: str | None = typer.Option(None, help="With --precision fp16: calibration source whose ranges are "
                                                "measured (default: the check the pipeline stored in the model)."),
    calib_samples: int = option(512, "Calibration samples for --calib.", POSITIVE_INT),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
) -> None:
    """Lint a model against a target's documented limits; exit 1 when the target cannot run it as it stands."""
    from .check import check_model
    from .onnx_io import load_onnx

    model = load_onnx(file)
    risks = _fp16_headroom(model, file, precision, calib, calib_samples, data_root)
    report = check_model(model, target, allow_gpu_fallback=allow_gpu_fallback)
    if as_json:
        extra = {"fp16_headroom": [r.to_dict() for r in risks]} if risks is not None else {}
        _echo_json({**report.to_dict(), **extra})
    else:
        typer.echo(report.format_text())
        if risks is not None:
            from .calibration.headroom import risks_table

            typer.echo(risks_table(risks))
    if not report.ok:
        raise typer.Exit(1)


def _fp16_headroom(model, file: Path, precision, calib, calib_samples: int, data_root):
    """The FP16 risks (calibration/headroom.py) `check --precision fp16` prints; None without --precision."""
    from .calibration import headroom
    from .onnx_meta import FP16_HEADROOM, read_metadata

    if precision is None:
        if calib is not None:
            raise UserError("--calib measures FP16 headroom: add --precision fp16")
        return None
    if precision != "fp16":
        raise UserError(f"--precision {precision!r} has no headroom check; only fp16 does (bf16 and int8 keep the "
                        "float32 exponent range)")
    if calib is not None:
        return headroom.measure_risks(model, _calibration(calib, file, calib_samples, data_root, False))
    stored = read_metadata(model).get(FP16_HEADROOM)
    if not isinstance(stored, dict):
        raise UserError(f"{file} carries no FP16 headroom check (the pipeline stores one): give --calib SOURCE to "
                        "measure its ranges")
    return [headroom.Risk.from_dict(r) for r in stored.get("risks") or []]


# ------------------------------------------------------------------------------------------ quantize, build


def _calibration(source: str, onnx_path: Path, samples: int, data_root: Path | None, download: bool):
    from .calibration.sources import load_calibration
    from .onnx_io import load_onnx
    from .onnx_meta import spec_from_model

    cal = load_calibration(source, spec_from_model(load_onnx(onnx_path, load_external_data=False)),
                           samples=samples, data_root=data_root, download=download)
    for message in cal.warnings:
        _warn(message)
    if cal.skipped:
        _warn(f"skipped {cal.skipped} unreadable file(s) in {source}")
    return cal.array


@app.command()
def quantize(
    file: Path = typer.Argument(..., help="FP32 ONNX file."),
    calib: str = typer.Option(..., help="Calibration source: a data set name (its training split), an image "
                                        "folder, or a .npy/.npz of preprocessed tensors."),
    out: Path = typer.Option(..., help="Output INT8 QDQ ONNX file."),
    flavor: str = typer.Option("cpu", help="cpu (uint8 activations, ORT x86) | tensorrt (int8, zero-point 0)."),
    method: str = typer.Option("minmax", help="minmax | entropy | percentile."),
    percentile: float = option(99.99, "Percentile for --method percentile.", PERCENTILE),
    calib_samples: int = option(512, "Calibration samples (warns below 300).", POSITIVE_INT),
    keep_fp: list[str] = typer.Option([], help="Node names or op types to keep in float (repeatable)."),
    max_drop: float | None = option(None, "Accuracy-aware INT8: return units (a block's mixer or MLP, the patch "
                                    "embedding, the head) to float until top-1/mIoU is at most this many points "
                                    "below FP32 on a validation subset of the training split.", NON_NEGATIVE),
    max_float_units: int | None = option(None, "With --max-drop: most units in float (default a quarter).",
                                         NON_NEGATIVE_INT),
    val_data: str | None = typer.Option(None, help="With --max-drop: the labelled data set whose training split "
                                                   "validates (default: --calib, when it names a data set)."),
    cache: Path | None = typer.Option(None, help="Also write a TensorRT calibration cache here."),
    tensorrt_version: str = typer.Option("10.3.0", help="TensorRT the cache is for (its header must match; "
                                                        "10.3.0 is JetPack 6's)."),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
    download: bool = typer.Option(False, help="Download the data set where a network exists."),
) -> None:
    """Quantize an ONNX model to INT8 Q/DQ, calibrated on real samples; sensitive ops stay float."""
    from .calibration.quantize import quantize_int8, trt_cache_header, write_trt_calibration_cache
    from .fsutil import atomic_outputs, check_output
    from .onnx_io import load_onnx, save_onnx_atomic

    # Every output is checked before the work and written only when all of them succeed.
    header = trt_cache_header(tensorrt_version) if cache is not None else None
    for path in (out, *([cache] if cache is not None else [])):
        check_output(path)
    if max_drop is None and (max_float_units is not None or val_data is not None):
        raise UserError("--max-float-units and --val-data shape the accuracy-aware search: add --max-drop PTS")
    if max_drop is not None and keep_fp:
        raise UserError("--keep-fp and --max-drop both choose what stays float: use one of them")
    array = _calibration(calib, file, calib_samples, data_root, download)
    if max_drop is None:
        result = quantize_int8(load_onnx(file), array, flavor=flavor, method=method, percentile=percentile,
                               keep_fp=keep_fp)
    else:
        result = _accuracy_aware_int8(load_onnx(file), array, calib, calib_samples, flavor, method, max_drop,
                                      max_float_units, val_data, data_root, download)
    with atomic_outputs(out, *([cache] if cache is not None else []), size_hint=result.model.ByteSize()) as tmps:
        save_onnx_atomic(result.model, tmps[0])
        if cache is not None:
            write_trt_calibration_cache(result.ranges, tmps[1], version_header=header)
    typer.echo(f"wrote {out} ({flavor} flavour, {method}, {len(array)} samples"
               f"{', kept float: ' + ', '.join(result.excluded_nodes) if result.excluded_nodes else ''})")


def _accuracy_aware_int8(model, array, calib: str, calib_samples: int, flavor: str, method: str, max_drop: float,
                         max_float_units, val_data, data_root, download: bool):
    """quantize_accuracy_aware for `quantize --max-drop`: the search runs on both flavours (one split for every
    target), the table of tries goes to stderr, the result carries the plan in its metadata."""
    from .calibration.accuracy_aware import metadata_for, quantize_accuracy_aware
    from .calibration.holdout import validation_subset
    from .onnx_meta import read_metadata, set_metadata, spec_from_model

    data = val_data or (calib if not Path(calib).exists() else None)
    if data is None:
        raise UserError("--max-drop measures top-1/mIoU on labelled images: give --val-data DATASET (its training "
                        "split is read)")
    holdout = validation_subset(data, spec_from_model(model), calib=array, samples=1000,
                                calib_samples=calib_samples if data == calib else 0, data_root=data_root,
                                download=download)
    task = read_metadata(model).get("task") or "classification"
    searched = quantize_accuracy_aware(model, array, holdout.x, holdout.labels, task=task, max_drop=max_drop,
                                       max_float_units=max_float_units, method=method,
                                       validation_source=holdout.source)
    typer.echo(searched.table(), err=True)
    result = searched.results[flavor]
    set_metadata(result.model, metadata_for(result.model, searched.summary()))
    return result


@app.command()
def build(
    file: Path = typer.Argument(..., help="FP32 ONNX file."),
    backend: str = typer.Option(..., help="onnxruntime | openvino | tensorrt."),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | bf16 | int8."),
    out: Path = typer.Option(..., help="Artifact path (.onnx, .xml, .engine)."),
    calib: str | None = typer.Option(None, help="Calibration source for int8."),
    calib_samples: int = option(512, "Calibration samples (warns below 300).", POSITIVE_INT),
    flavor: str | None = typer.Option(None, help="INT8 flavour: cpu | tensorrt (ORT), nncf | qdq (OpenVINO)."),
    device: str | None = typer.Option(None, help="cpu | cuda | tensorrt (ORT); CPU | GPU | NPU (OpenVINO); "
                                                    "cuda:N | dla:N (TensorRT)."),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
) -> None:
    """Build a backend artifact at a precision (precision is baked into the ONNX first)."""
    from .backends.build import build_engine
    from .fsutil import check_output

    check_output(out)
    array = _calibration(calib, file, calib_samples, data_root, False) if calib else None
    built = build_engine(file, backend, precision, out, calib=array, flavor=flavor, device=device)
    if built.artifact is None:
        written = ", ".join(p.name for p in built.files)
        raise UserError(f"{built.deferred}. Wrote {written} in {out.parent}: run the script on the target to build "
                        "the engine there")
    typer.echo(f"wrote {built.artifact}")


# ------------------------------------------------------------------------------- pipeline, parity, bench, predict


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
        "auto", help="auto (planned per target) | conv | crop | matmul | tiled | spectral | token_spectral."
    ),
    logits: str = typer.Option("grid", help="Segmentation: where the engines' logits end: grid (the Predictor "
                               "upsamples once, to each image) | input (the model's input size) | HxW."),
    epochs: int | None = option(None, "Training epochs when training (default: per data set).", POSITIVE_INT),
    calib_samples: int = option(512, "Calibration samples for INT8.", POSITIVE_INT),
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
    max_drop: float = option(0.5, "INT8: top-1/mIoU points the engines may lose on a validation subset of the "
                                  "training split before units (mixers, MLPs, ...) return to float.", NON_NEGATIVE),
    plain_int8: bool = typer.Option(False, "--plain-int8", help="INT8 with every unit quantized: no accuracy "
                                                                "search (--max-drop is then unused)."),
) -> None:
    """The main job: train or load, export, build every backend x precision, parity, bench, bundle."""
    from .backends.base import PRECISIONS
    from .backends.openvino import cpu_flags, cpu_has_bf16
    from .backends.registry import BACKENDS
    from .export import check_logits
    from .pipeline import PipelineOptions, run_pipeline
    from .reports.render import summary_table

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
                           max_drop=None if plain_int8 else max_drop, compare_thresholds=limits)
    report = run_pipeline(source, data, out, opts)
    regressed = bool(report.comparison and report.comparison["regressed"])
    typer.echo(summary_table(report))
    typer.echo(f"bundle: {out}  report: {out / 'reports' / 'report.html'}  "
               f"{'PASSED' if report.passed else 'FAILED'}{'  REGRESSED against the baseline' if regressed else ''}")
    if not report.passed or regressed:
        raise typer.Exit(1)


def _baseline_limits(baseline: Path | None, accuracy: float | None, latency: float | None, memory: float | None):
    """pipeline's --baseline-max-* limits over compare's defaults; UserError when they come without --baseline."""
    from .reports.compare import CompareThresholds

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
    from .reports.compare import CompareThresholds
    from .reports.compare import compare as run_comparison

    limits = CompareThresholds(max_accuracy_drop, max_latency_increase, max_memory_increase, same_machine_required)
    result = run_comparison(base, new, limits)
    if as_json:
        _echo_json(result.to_dict())
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
    from .proof import bundle_parity
    from .reports.parity import Thresholds
    from .reports.render import summary_table, write_report

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
    from .proof import bench_artifacts
    from .reports.machine import isa_summary

    rows = bench_artifacts(targets, batches, threads, budget, cost=cost)
    if as_json:
        _echo_json({"machine": isa_summary(), "engines": rows})
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
    from .reports.e2e import STAGES, TOTAL

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


@app.command()
def predict(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `lkca-deploy pipeline`)."),
    images: list[Path] = typer.Argument(..., help="Image files."),
    backend: str = typer.Option("auto", help="auto | onnxruntime | openvino | tensorrt."),
    precision: str | None = typer.Option(None, help="Engine precision (default: the fastest that passed)."),
    top_k: int = option(5, "Classes to show per image.", POSITIVE_INT),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
    save_mask: Path | None = typer.Option(None, help="Segmentation: write masks and overlays here."),
    slide: bool = typer.Option(False, help="Segmentation: sliding windows instead of one whole-image resize."),
    stride: int | None = option(None, STRIDE_HELP, POSITIVE_INT),
    scale: float | None = option(None, SCALE_HELP, POSITIVE),
    verify_mode: str = typer.Option("first-use", "--verify", help="first-use | always | off: check the engine on "
                                                                  "the bundle's golden samples before serving."),
) -> None:
    """Run a bundle on images with numpy + one backend (no torch); top-k labels or segmentation masks."""
    from .masks import cli_slide
    from .runtime import predict as run_prediction

    results = run_prediction(bundle, [str(i) for i in images], backend, top_k, save_mask, precision=precision,
                             slide=cli_slide(slide, stride, scale), verify=verify_mode)
    if as_json:
        _echo_json(results)
        return
    for r in results:
        if "label" in r:
            shown = ", ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"])
            typer.echo(f"{r['image']}: {r['label']}  ({shown})")
        else:
            typer.echo(f"{r['image']}: {r['height']}x{r['width']} mask" + (f" -> {r['mask']}" if "mask" in r else ""))


# ------------------------------------------------------------------------------------- proof on the device


@app.command()
def verify(
    bundle: Path = typer.Argument(..., help="Bundle directory (from `lkca-deploy pipeline`)."),
    engine: str | None = typer.Option(None, help="One engine by name, e.g. onnxruntime/int8-cpu (see --all)."),
    all_engines: bool = typer.Option(False, "--all", help="Every engine whose backend is installed here."),
    backend: str = typer.Option("auto", help="auto | onnxruntime | openvino | tensorrt."),
    precision: str | None = typer.Option(None, help="Engine precision (default: the Predictor's choice)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    threads: int | None = typer.Option(None, help="Inference threads."),
) -> None:
    """Re-prove engines on THIS machine with the bundle's golden samples (no torch, no data set); exit 1 when one
    misses its tolerance. A TensorRT engine the bundle's trtexec script wrote is adopted only when it passes."""
    from .bundle_check import verify_bundle

    result = verify_bundle(bundle, backend=backend, precision=precision, engine=engine, all_engines=all_engines,
                           threads=threads)
    if as_json:
        _echo_json(result.to_dict())
    else:
        typer.echo(_verify_table(result))
    if not result.passed:
        raise typer.Exit(1)


def _verify_table(result) -> str:
    """One row per engine: status, agreement, errors, task metric, the limits it was held to, seconds."""
    golden = result.golden
    lines = [result.machine["summary"],
             f"golden samples: {golden.get('samples')} ({golden.get('path')}, sha256 {golden.get('sha256', '')[:12]})",
             (f"{'engine':<26} {'status':<8} {'agree':>7} {'max err':>9} {'mean err':>9} {'metric':>15} "
              f"{'s':>5}  tolerance")]
    for c in result.checks:
        if c.status == "skipped":
            lines.append(f"{c.engine:<26} {'skipped':<8} {c.reason}")
            continue
        m = c.metrics
        agree = m.get("agreement", m.get("pixel_agreement"))
        metric = ("top1_drop", m.get("top1_drop")) if "top1_drop" in m else ("miou_drop", m.get("miou_drop"))
        metric_text = f"{metric[0]} {metric[1]:+.2f}" if metric[1] is not None else f"{metric[0]} -"
        limits = ", ".join(f"{k} {'>=' if k.endswith('agreement') else '<='} {v:g}" for k, v in c.tolerance.items())
        status = c.status + ("*" if c.cached else "")
        lines.append(f"{c.engine:<26} {status:<8} {agree:>7.4f} {m.get('max_abs_err', 0):>9.2e} "
                     f"{m.get('mean_abs_err', 0):>9.2e} {metric_text:>15} {c.seconds:>5.2f}  {limits}")
        lines += [f"    {f}" for f in c.failures]
    lines.append("PASSED" if result.passed else "FAILED")
    return "\n".join(lines)


@app.command("build-device")
def build_device(
    bundle: Path = typer.Argument(..., help="Bundle directory holding the TensorRT ONNX."),
    precision: str | None = typer.Option(None, help="fp32 | fp16 | int8 (default: the most exact one)."),
    all_engines: bool = typer.Option(False, "--all", help="Every TensorRT precision the bundle holds."),
    gpu: int = typer.Option(0, help="GPU index."),
) -> None:
    """Build the TensorRT engine(s) on THIS device from the bundle's ONNX with the trtexec script's settings,
    prove each on the golden samples, and cache it beside the bundle (or in the user cache when the bundle is
    read-only) under this GPU, compute capability, TensorRT version and driver; exit 1 when one fails."""
    from .bundle_check import build_device_engines

    checks = build_device_engines(bundle, precision=precision, all_engines=all_engines, gpu_index=gpu,
                                  echo=lambda line: typer.echo(line, err=True))
    for c in checks:
        typer.echo(f"{c.engine}: {c.status}" + (f" ({'; '.join(c.failures)})" if c.failures else ""))
    if any(c.status == "failed" for c in checks):
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------------- entry point


def main() -> None:
    """Run the app; a user's mistake (a UserError, or a usage error typer finds: unknown option, value out of
    range) becomes one line on stderr and exit code 2, never a traceback. SIGINT and SIGTERM clean up as an
    exception would (temp files, work folders), then say "interrupted" and exit 128 + the signal number."""
    try:
        from typer._click.exceptions import (  # typer vendors click
            ClickException,
            NoArgsIsHelpError,
            UsageError,
        )
    except ImportError:
        from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    from .interrupts import Interrupted, interrupts_raise

    try:
        with interrupts_raise():
            code = app(standalone_mode=False)
    except UserError as e:
        typer.echo(f"lkca-deploy: error: {e}", err=True)
        sys.exit(2)
    except NoArgsIsHelpError as e:
        typer.echo(e.format_message(), err=True)
        sys.exit(2)
    except UsageError as e:
        hint = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        typer.echo(f"lkca-deploy: error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)
    except ClickException as e:
        typer.echo(f"lkca-deploy: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except (Interrupted, KeyboardInterrupt) as e:
        typer.echo("lkca-deploy: interrupted", err=True)
        sys.exit(e.exit_code if isinstance(e, Interrupted) else 130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
