"""Engine commands: quantize an ONNX, build one engine."""

from __future__ import annotations

from pathlib import Path

import typer

from lkca_deploy.calibration import CALIB_SAMPLES, DEFAULT_METHOD
from lkca_deploy.cli.common import app, calibration_samples
from lkca_deploy.ranges import NON_NEGATIVE, NON_NEGATIVE_INT, PERCENTILE, POSITIVE_INT, option
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_outputs, guard_output


@app.command()
def quantize(
    file: Path = typer.Argument(..., help="FP32 ONNX file."),
    calib: str = typer.Option(..., help="Calibration source: a data set name (its training split), an image "
                                        "folder, or a .npy/.npz of preprocessed tensors."),
    out: Path = typer.Option(..., help="Output INT8 QDQ ONNX file."),
    flavor: str = typer.Option("cpu", help="cpu (uint8 activations, ORT x86) | tensorrt (int8, zero-point 0)."),
    method: str = typer.Option(DEFAULT_METHOD, help="minmax | entropy | percentile."),
    percentile: float = option(99.99, "Percentile for --method percentile.", PERCENTILE),
    calib_samples: int = option(CALIB_SAMPLES, "Calibration samples (warns below 300).", POSITIVE_INT),
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
                                                        "10.3.0 is JetPack 6.1/6.2's, 8.5.2 JetPack 5.1's, 8.6.2 "
                                                        "JetPack 6.0's)."),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
    download: bool = typer.Option(False, help="Download the data set where a network exists."),
) -> None:
    """Quantize an ONNX model to INT8 Q/DQ, calibrated on real samples; sensitive ops stay float."""
    from lkca_deploy.calibration.quantize import quantize_int8, trt_cache_header, write_trt_calibration_cache
    from lkca_runtime.onnx_io import load_onnx, save_onnx_atomic

    # Every output is checked before the work and written only when all of them succeed.
    header = trt_cache_header(tensorrt_version) if cache is not None else None
    inputs = [file, calib if Path(calib).exists() else None]
    for path in (out, *([cache] if cache is not None else [])):
        guard_output(path, inputs)
    if cache is not None and Path(cache).resolve() == Path(out).resolve():
        raise UserError(f"--cache and --out both name {out}: give each output its own path")
    if max_drop is None and (max_float_units is not None or val_data is not None):
        raise UserError("--max-float-units and --val-data shape the accuracy-aware search: add --max-drop PTS")
    if max_drop is not None and keep_fp:
        raise UserError("--keep-fp and --max-drop both choose what stays float: use one of them")
    array = calibration_samples(calib, file, calib_samples, data_root, download)
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
    from lkca_deploy.onnx_meta import read_metadata, set_metadata, spec_from_model
    from lkca_deploy.precision.accuracy_aware import metadata_for
    from lkca_deploy.precision.plan import search_int8

    data = val_data or (calib if not Path(calib).exists() else None)
    if data is None:
        raise UserError("--max-drop measures top-1/mIoU on labelled images: give --val-data DATASET (its training "
                        "split is read)")
    searched = search_int8(model, array, data, spec=spec_from_model(model),
                           task=read_metadata(model).get("task") or "classification", max_drop=max_drop,
                           max_float_units=max_float_units, method=method,
                           calib_samples=calib_samples if data == calib else 0, data_root=data_root, download=download)
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
    calib_samples: int = option(CALIB_SAMPLES, "Calibration samples (warns below 300).", POSITIVE_INT),
    flavor: str | None = typer.Option(None, help="INT8 flavour: cpu | tensorrt (ORT), nncf | qdq (OpenVINO)."),
    device: str | None = typer.Option(None, help="cpu | cuda | tensorrt (ORT); CPU | GPU | NPU (OpenVINO); "
                                                    "cuda:N | dla:N (TensorRT)."),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
) -> None:
    """Build a backend artifact at a precision (precision is baked into the ONNX first)."""
    from lkca_deploy.backends.build import build_engine

    guard_output(out, [file, calib if calib and Path(calib).exists() else None])
    array = calibration_samples(calib, file, calib_samples, data_root, False) if calib else None
    built = build_engine(file, backend, precision, out, calib=array, flavor=flavor, device=device)
    if built.artifact is None:
        written = ", ".join(p.name for p in built.files)
        raise UserError(f"{built.deferred}. Wrote {written} in {out.parent}: run the script on the target to build "
                        "the engine there")
    typer.echo(f"wrote {built.artifact}")


