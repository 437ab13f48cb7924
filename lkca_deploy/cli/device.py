"""On the device, torch-free: predict with a bundle, verify its engines, build TensorRT engines there."""

from __future__ import annotations

from pathlib import Path

import typer

from lkca_deploy.cli.common import SCALE_HELP, STRIDE_HELP, app, echo_json
from lkca_deploy.ranges import POSITIVE, POSITIVE_INT, option
from lkca_runtime.cli import prediction_lines, verify_table
from lkca_runtime.masks import cli_slide
from lkca_runtime.predictor import predict as run_prediction
from lkca_runtime.verify import build_device_engines, verify_bundle


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
    results = run_prediction(bundle, [str(i) for i in images], backend, top_k, save_mask, precision=precision,
                             slide=cli_slide(slide, stride, scale), verify=verify_mode)
    if as_json:
        echo_json(results)
        return
    for line in prediction_lines(results):
        typer.echo(line)


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
    misses its tolerance or raises (engines this machine cannot run are listed as refused, with the reason). A TensorRT engine the bundle's trtexec script wrote is adopted only when it passes."""
    result = verify_bundle(bundle, backend=backend, precision=precision, engine=engine, all_engines=all_engines,
                           threads=threads)
    if as_json:
        echo_json(result.to_dict())
    else:
        typer.echo(verify_table(result))
    if result.exit_code():
        raise typer.Exit(1)


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
    checks = build_device_engines(bundle, precision=precision, all_engines=all_engines, gpu_index=gpu,
                                  echo=lambda line: typer.echo(line, err=True))
    for c in checks:
        typer.echo(f"{c.engine}: {c.status}" + (f" ({'; '.join(c.failures)})" if c.failures else ""))
    if any(c.status == "failed" for c in checks):
        raise typer.Exit(1)


