"""Graph commands: export a checkpoint to ONNX, lower an ONNX, check it against a target."""

from __future__ import annotations

from pathlib import Path

import typer

from lkca_deploy.calibration import CALIB_SAMPLES
from lkca_deploy.cli.common import MiB, app, calibration_samples, echo_json
from lkca_deploy.lowering.registry import MATMUL_BUDGET_MIB, STRATEGIES
from lkca_deploy.ranges import NON_NEGATIVE_INT, OPSET, POSITIVE, POSITIVE_INT, option
from lkca_deploy.targets import DEFAULT_TARGET, TARGET_NAMES
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import guard_output


@app.command()
def export(
    source: str = typer.Argument(..., help="Checkpoint directory, or a zoo name (deterministic random weights)."),
    out: Path = typer.Option(..., help="Output .onnx file."),
    lowering: str = typer.Option(
        "auto", help=f"auto | {' | '.join(STRATEGIES)} | tune."
    ),
    max_kernel: int | None = option(None, "Largest kernel side a tile may have (tiled).", POSITIVE_INT),
    target: str = typer.Option(DEFAULT_TARGET, help="Target the auto lowering plans for."),
    batch: str = typer.Option("dynamic", help="Batch size N for a static shape, or 'dynamic'."),
    opset: int | None = option(None, "ONNX opset (default 20: GELU as one op; >= 17: LayerNormalization as one op).",
                               OPSET),
    no_simplify: bool = typer.Option(False, "--no-simplify", help="Skip onnxsim."),
    seed: int = option(0, "Seed of a zoo model's random weights.", NON_NEGATIVE_INT),
    matmul_budget: float = option(float(MATMUL_BUDGET_MIB), "Most MiB of Toeplitz weights the matmul lowering may add.", POSITIVE),
    tune_backend: str = typer.Option("onnxruntime", help="Backend that times candidates for --lowering tune."),
    precision: str | None = typer.Option(None, help="Precision the engines will run (fp32 | fp16 | bf16 | int8), "
                                         "for --lowering auto: int8 on tensorrt gets a MatMul mixer."),
    logits: str = typer.Option("input", help="Segmentation: input (logits at the input size, as PyTorch) | grid "
                               "(the head's grid logits; the Predictor upsamples once to each image) | HxW."),
) -> None:
    """Export to ONNX with the large-kernel conv lowered for a target; checks itself against PyTorch."""
    from lkca_deploy.export import export_model

    guard_output(out, [source if Path(source).exists() else None])  # before tracing: fails in a second

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
    strategy: str = typer.Option(..., help=f"{' | '.join(STRATEGIES)}."),
    max_kernel: int | None = option(None, "Largest kernel side after tiling.", POSITIVE_INT),
    min_kernel: int | None = option(None, "Only convs with a larger kernel side are rewritten.", POSITIVE_INT),
    matmul_budget: float = option(float(MATMUL_BUDGET_MIB), "Most MiB of Toeplitz weights the matmul lowering may add.", POSITIVE),
) -> None:
    """Rewrite every large stride-1 depthwise/grouped Conv of any ONNX model; says what changed and why."""
    from lkca_deploy.lowering.apply import lower_file

    guard_output(out, [src])

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
    target: str = typer.Option(..., help=" | ".join(TARGET_NAMES) + "."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    allow_gpu_fallback: bool = typer.Option(False, help="jetson-dla: GPU fallbacks are listed, not failures."),
    precision: str | None = typer.Option(None, help="fp16: also list the tensors FP16 cannot hold with a margin "
                                                    "and the ops kept FP32 for them (FP16 headroom)."),
    calib: str | None = typer.Option(None, help="With --precision fp16: calibration source whose ranges are "
                                                "measured (default: the check the pipeline stored in the model)."),
    calib_samples: int = option(CALIB_SAMPLES, "Calibration samples for --calib.", POSITIVE_INT),
    data_root: Path | None = typer.Option(None, help="Where data sets live (default ./data)."),
) -> None:
    """Lint a model against a target's documented limits; exit 1 when the target cannot run it as it stands."""
    from lkca_deploy.check import check_model
    from lkca_runtime.onnx_io import load_onnx

    model = load_onnx(file)
    risks = _fp16_headroom(model, file, precision, calib, calib_samples, data_root)
    report = check_model(model, target, allow_gpu_fallback=allow_gpu_fallback)
    if as_json:
        extra = {"fp16_headroom": [r.to_dict() for r in risks]} if risks is not None else {}
        echo_json({**report.to_dict(), **extra})
    else:
        typer.echo(report.format_text())
        if risks is not None:
            from lkca_deploy.precision.headroom import risks_table

            typer.echo(risks_table(risks))
    if not report.ok:
        raise typer.Exit(1)


def _fp16_headroom(model, file: Path, precision, calib, calib_samples: int, data_root):
    """The FP16 risks (precision/headroom.py) `check --precision fp16` prints; None without --precision."""
    from lkca_deploy.onnx_meta import FP16_HEADROOM, read_metadata
    from lkca_deploy.precision import headroom

    if precision is None:
        if calib is not None:
            raise UserError("--calib measures FP16 headroom: add --precision fp16")
        return None
    if precision != "fp16":
        raise UserError(f"--precision {precision!r} has no headroom check; only fp16 does (bf16 and int8 keep the "
                        "float32 exponent range)")
    if calib is not None:
        return headroom.measure_risks(model, calibration_samples(calib, file, calib_samples, data_root, False))
    stored = read_metadata(model).get(FP16_HEADROOM)
    if not isinstance(stored, dict):
        raise UserError(f"{file} carries no FP16 headroom check (the pipeline stores one): give --calib SOURCE to "
                        "measure its ranges")
    return [headroom.Risk.from_dict(r) for r in stored.get("risks") or []]


