"""What the command modules share: the typer app, JSON and warning output, help texts."""

from __future__ import annotations

from pathlib import Path

import typer

from lkca_deploy.calibration.sources import load_calibration
from lkca_runtime.cli import strict_json

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


def echo_json(obj) -> None:
    typer.echo(strict_json(obj))


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def calibration_samples(source: str, onnx_path: Path, samples: int, data_root: Path | None, download: bool):
    from lkca_deploy.onnx_meta import spec_from_model
    from lkca_runtime.onnx_io import load_onnx

    cal = load_calibration(source, spec_from_model(load_onnx(onnx_path, load_external_data=False)),
                           samples=samples, data_root=data_root, download=download)
    for message in cal.warnings:
        warn(message)
    if cal.skipped:
        warn(f"skipped {cal.skipped} unreadable file(s) in {source}")
    return cal.array
