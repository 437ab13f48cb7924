"""FP32 / FP16 / BF16 / INT8 engines per backend, timed at each batch in ONE run, with the CPU's ISA beside them.

Engines (all through the product: export_model with the backend's `auto` lowering, build_engine, registry load):
  onnxruntime  fp32, fp16, int8 `cpu` flavour (U8S8: uint8 activations, x86 fast path), int8 `tensorrt` flavour
               (S8S8: what a TensorRT INT8 engine computes), CPU provider, intra-op spinning off;
  openvino     fp32 (f32 hint), fp16, bf16 (only where the CPU has avx512_bf16/AMX), int8 NNCF, int8 from the
               cpu-flavour Q/DQ ONNX.
Whether INT8 (or BF16) can be faster depends on avx512_vnni / avx_vnni / AMX: the header says which are present.
Speed uses --model with random weights (values do not change speed) and random calibration samples.
--accuracy adds top-1 of every engine on the digits test split for lkca_vit_nano trained on digits (trained here in
about a minute unless --accuracy-checkpoint is given), calibrated on the digits TRAIN split, against PyTorch FP32.

    python benchmarks/precision.py --markdown
    python benchmarks/precision.py --accuracy --repeats 3 --budget 1
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

TARGETS = {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino-cpu"}  # backend -> target of `auto`
SPEED_CALIB_SAMPLES = 64  # random inputs: INT8 speed does not depend on the ranges
# The accuracy goals (lkca_vit_nano on digits): INT8 within 0.5 point of FP32, FP16 agreeing on 99.5%
MAX_INT8_DROP_POINTS = 0.5
MIN_FP16_AGREEMENT = 0.995


@dataclass(frozen=True)
class EngineSpec:
    label: str
    backend: str
    precision: str
    flavor: str | None = None


ENGINES = (
    EngineSpec("ORT fp32", "onnxruntime", "fp32"),
    EngineSpec("ORT fp16", "onnxruntime", "fp16"),
    EngineSpec("ORT int8 U8S8 (cpu)", "onnxruntime", "int8", "cpu"),
    EngineSpec("ORT int8 S8S8 (tensorrt)", "onnxruntime", "int8", "tensorrt"),
    EngineSpec("OV fp32", "openvino", "fp32"),
    EngineSpec("OV fp16", "openvino", "fp16"),
    EngineSpec("OV bf16", "openvino", "bf16"),
    EngineSpec("OV int8 NNCF", "openvino", "int8", "nncf"),
    EngineSpec("OV int8 QDQ", "openvino", "int8", "qdq"),
)


@dataclass
class Built:
    spec: EngineSpec
    runner: object | None
    float_math: str
    problem: str | None = None  # why there is no runner


def engine_specs() -> list[EngineSpec]:
    """ENGINES, less bf16 where the CPU lacks native bf16 (OpenVINO would refuse or emulate it)."""
    from lkca_runtime.backends.openvino import cpu_flags, cpu_has_bf16

    has_bf16 = cpu_has_bf16(cpu_flags())
    return [e for e in ENGINES if e.precision != "bf16" or has_bf16]


def export_per_backend(source: Path, folder: Path, lowering: str) -> dict[str, Path]:
    """One fp32 ONNX per backend, lowered for that backend's target."""
    from lkca_deploy.export import export_model

    exports = {}
    for backend, target in TARGETS.items():
        out = folder / f"{source.name}.{backend}.onnx"
        result = export_model(source, out, lowering=lowering, target=target, check_samples=16)
        common.warn(f"exported {out.name}: {result.lowering.summary()}")
        exports[backend] = out
    return exports


def build_and_load(
    specs: list[EngineSpec], exports: dict[str, Path], folder: Path, calib: np.ndarray, threads: int
) -> list[Built]:
    """Every engine built and loaded; one that fails is kept with the reason instead of stopping the table."""
    from lkca_deploy.backends.build import build_engine
    from lkca_deploy.backends.registry import get_backend

    built = []
    for spec in specs:
        backend = get_backend(spec.backend)
        name = spec.label.split(" (")[0].replace(" ", "_").lower()
        out = folder / f"{exports[spec.backend].stem}.{name}{backend.artifact_suffix}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NNCF / ORT quantizer chatter
                build_engine(
                    exports[spec.backend],
                    spec.backend,
                    spec.precision,
                    out,
                    calib=calib if spec.precision == "int8" else None,
                    flavor=spec.flavor,
                )
            runner = backend.load(out, threads=threads, **backend.interleaved_load_options)
        except Exception as err:  # noqa: BLE001 - one engine that cannot be built is a row, not a crash
            common.warn(f"{spec.label}: {type(err).__name__}: {err}")
            built.append(Built(spec, None, "-", f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"))
            continue
        built.append(Built(spec, runner, _float_math(runner)))
    return built


def _float_math(runner) -> str:
    """What the float parts compute in: OpenVINO's inference precision read back; ORT: fp16 or fp32 as baked."""
    info = runner.info
    if "inference_precision" in info:
        return str(info["inference_precision"])
    return "f16" if info.get("precision") == "fp16" else "f32"


def close_all(engines: list[Built]) -> None:
    for engine in engines:
        if engine.runner is not None:
            engine.runner.close()


# ---------------------------------------------------------------- speed


def speed_table(engines: list[Built], shape, args) -> tuple[list[str], list[list]]:
    """Rows: engine, float math, then per batch its ms (and CPU ms) and its speed-up over the same backend's fp32."""
    live = {e.spec.label: e.runner for e in engines if e.runner is not None}
    timed = {}
    for batch in args.batches:
        x = common.inputs(shape, batch, args.seed)
        timed[batch] = common.time_interleaved(
            live, x, repeats=args.repeats, budget_per_engine=args.budget, cpu_time=args.cpu_time
        )
    headers = ["engine", "float math"]
    for batch in args.batches:
        headers += [f"b{batch} ms"] + ([f"b{batch} cpu ms"] if args.cpu_time else [])
        headers += [f"b{batch} vs fp32" + (" (cpu)" if args.cpu_time else "")]
    rows = []
    for engine in engines:
        row = [engine.spec.label, engine.float_math]
        if engine.problem is not None:
            rows.append([*row, f"not built: {engine.problem}"])
            continue
        fp32 = _fp32_label(engines, engine.spec.backend)
        for batch in args.batches:
            mine, base = timed[batch][engine.spec.label], timed[batch].get(fp32)
            row += [mine.ms] + ([mine.cpu_ms] if args.cpu_time else [])
            row += [common.ratio(base.basis(args.cpu_time) if base else None, mine.basis(args.cpu_time))]
        rows.append(row)
    return headers, rows


def _fp32_label(engines: list[Built], backend: str) -> str | None:
    return next(
        (e.spec.label for e in engines if e.spec.backend == backend and e.spec.precision == "fp32"), None
    )


def run_speed(args, folder: Path) -> None:
    source = common.speed_source(args, folder)
    shape = common.model_input_shape(source)
    exports = export_per_backend(source, folder, args.lowering)
    calib = (
        np.random.default_rng(args.seed + 7).standard_normal((SPEED_CALIB_SAMPLES, *shape)).astype(np.float32)
    )
    engines = build_and_load(engine_specs(), exports, folder, calib, args.threads)
    try:
        headers, rows = speed_table(engines, shape, args)
    finally:
        close_all(engines)
    common.print_header(
        f"Precision per backend: {source.name}, lowering {args.lowering}, ms (median of interleaved rounds)",
        args.threads,
        [
            (
                f"One run, {args.repeats} interleaved rounds, {args.budget:g} s per engine per batch; "
                "ORT CPU provider with intra-op spinning off; OpenVINO CPU, LATENCY hint."
            ),
            (
                "'vs fp32': the same backend's fp32 engine time / this engine's time (> 1 is faster); '(cpu)': by CPU "
                "time per call (--cpu-time), which a loaded machine does not inflate."
            ),
            (
                "'float math': what the non-INT8 parts compute in (OpenVINO: INFERENCE_PRECISION_HINT read back; its fp16 "
                "engine runs in f32 on a CPU without FP16 math)."
            ),
        ],
        markdown=args.markdown,
    )
    common.print_table(headers, rows, markdown=args.markdown)


# ---------------------------------------------------------------- accuracy


def run_accuracy(args, folder: Path) -> None:
    import torch

    from lkca_deploy.calibration.sources import load_calibration
    from lkca_deploy.checkpoint import load_checkpoint
    from lkca_deploy.data import load_arrays

    source = args.accuracy_checkpoint or common.trained_checkpoint(folder, args.epochs, args.seed)
    model, ckpt = load_checkpoint(source, view="conv")
    data = ckpt.meta.get("data") or common.ACCURACY_DATA
    x, labels = load_arrays(data, "test", ckpt.spec)
    with torch.no_grad():
        reference = common.batched(lambda chunk: model(torch.from_numpy(chunk)).numpy(), x)
    calib = load_calibration(data, ckpt.spec, samples=args.calib_samples, seed=args.seed)
    for message in calib.warnings:
        common.warn(message)
    exports = export_per_backend(source, folder, args.lowering)
    engines = build_and_load(engine_specs(), exports, folder, calib.array, args.threads)
    ref_pred = reference.argmax(1)
    ref_top1 = float((ref_pred == labels).mean())
    rows, verdicts = [["PyTorch fp32 (reference)", "f32", 100 * ref_top1, "-", "100"]], []
    try:
        for engine in engines:
            if engine.runner is None:
                rows.append([engine.spec.label, "-", f"not built: {engine.problem}", "-", "-"])
                continue
            pred = common.batched(engine.runner, x).argmax(1)
            top1, agreement = float((pred == labels).mean()), float((pred == ref_pred).mean())
            drop = 100 * (ref_top1 - top1)
            rows.append(
                [engine.spec.label, engine.float_math, 100 * top1, f"{drop:+.2f}", f"{100 * agreement:.2f}"]
            )
            verdicts += _done_when(engine.spec, drop, agreement)
    finally:
        close_all(engines)
    common.print_header(
        f"Top-1 per engine: {ckpt.config.name} trained on {data}, {len(x)} test images",
        args.threads,
        [
            f"Calibration: {len(calib)} samples of {calib.source}; lowering {args.lowering}.",
            "drop: PyTorch FP32 top-1 minus the engine's, in points; agreement: same top-1 class as PyTorch FP32.",
        ],
        markdown=args.markdown,
    )
    common.print_table(
        ["engine", "float math", "top-1 %", "drop (points)", "agreement %"], rows, markdown=args.markdown
    )
    for line in verdicts:
        print(line)


def _done_when(spec: EngineSpec, drop: float, agreement: float) -> list[str]:
    """The accuracy goals above, for the engines they name."""
    if spec.precision == "int8" and spec.flavor in ("cpu", "nncf"):
        ok = drop <= MAX_INT8_DROP_POINTS
        return [
            f"{'PASS' if ok else 'MISS'}: {spec.label} drops {drop:.2f} points (goal <= {MAX_INT8_DROP_POINTS})"
        ]
    if spec.precision == "fp16":
        ok = agreement >= MIN_FP16_AGREEMENT
        return [f"{'PASS' if ok else 'MISS'}: {spec.label} agrees on {100 * agreement:.2f}% (goal >= 99.5%)"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser)
    parser.add_argument("--lowering", default="auto", help="export lowering for every engine (default auto)")
    parser.add_argument(
        "--accuracy", action="store_true", help="also top-1 per engine on digits (trained nano)"
    )
    parser.add_argument("--accuracy-checkpoint", type=Path, help="trained digits checkpoint for --accuracy")
    parser.add_argument(
        "--epochs", type=int, help="epochs when --accuracy trains its checkpoint (default: train's)"
    )
    parser.add_argument("--calib-samples", type=int, default=512, help="calibration samples for --accuracy")
    parser.add_argument("--no-speed", action="store_true", help="skip the timing table")
    args = parser.parse_args(argv)
    with common.work_folder(args.work) as folder:
        if not args.no_speed:
            run_speed(args, folder)
        if args.accuracy:
            run_accuracy(args, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
