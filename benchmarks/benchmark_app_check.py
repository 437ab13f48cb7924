"""Check this project's OpenVINO latency against OpenVINO's own benchmark_app: same IR, threads and batch.

Ours: the openvino backend's runner (registry load: LATENCY hint, f32 precision hint, INFERENCE_NUM_THREADS) timed by
measure.latency.measure_latency, p50. Theirs: `benchmark_app` from the openvino pip package (the console script, or
`python -m openvino.tools.benchmark.main`), its median latency read from -json_stats. benchmark_app refuses
-nthreads/-nstreams together with a -hint ("fine tune options ... set -hint option to none"), so it runs with
  -d CPU -hint none -api sync -nireq 1 -nstreams 1 -nthreads N -infer_precision f32 -data_shape [B,C,H,W] -t T
which is what the LATENCY hint chooses (one stream, one synchronous request); both sides' effective settings are
printed. The IR keeps its dynamic batch on both sides (-data_shape); a -shape row (benchmark_app reshaping the IR
to a static batch) is printed for information. The two are timed in alternating rounds, medians over rounds.
Passes (exit 0) when ours is within --tolerance (20%) of benchmark_app's median at every batch.

    python benchmarks/benchmark_app_check.py
    python benchmarks/benchmark_app_check.py --onnx model.onnx --batches 1 --repeats 3 --budget 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

TOLERANCE = 0.2
# Settings that decide latency, read back from both sides (benchmark_app prints them at its step 8).
SETTINGS = (
    "PERFORMANCE_HINT",
    "NUM_STREAMS",
    "INFERENCE_NUM_THREADS",
    "INFERENCE_PRECISION_HINT",
    "ENABLE_CPU_PINNING",
    "ENABLE_HYPER_THREADING",
)
_SETTING_LINE = re.compile(r"^\[ INFO \]\s+([A-Z_]+):\s+(.*)$")
_MEDIAN_LINE = re.compile(r"Median:\s+([0-9.]+)\s*ms")


def benchmark_app_command() -> list[str] | None:
    """How to start benchmark_app here: the console script beside this Python, on PATH, or the module; else None."""
    beside = Path(sys.executable).with_name("benchmark_app")
    if beside.is_file():
        return [str(beside)]
    on_path = shutil.which("benchmark_app")
    if on_path:
        return [on_path]
    if importlib.util.find_spec("openvino.tools.benchmark") is not None:
        return [sys.executable, "-m", "openvino.tools.benchmark.main"]
    return None


def benchmark_app_args(
    ir: Path, dims: str, threads: int, seconds: float, static: bool, report: str
) -> list[str]:
    """benchmark_app's options for one run: one stream, one sync request, N threads, f32, this input shape."""
    return [
        "-m", str(ir),
        "-d", "CPU",
        "-hint", "none",
        "-api", "sync",
        "-nireq", "1",
        "-nstreams", "1",
        "-nthreads", str(threads),
        "-infer_precision", "f32",
        "-t", f"{seconds:g}",
        "-shape" if static else "-data_shape", dims,
        "-report_type", "no_counters",
        "-json_stats",
        "-report_folder", report,
    ]  # fmt: skip


def run_benchmark_app(
    command: list[str], ir: Path, shape, batch: int, threads: int, seconds: float, static: bool
):
    """(median ms, effective settings) of one benchmark_app run."""
    dims = f"[{batch},{','.join(map(str, shape))}]"
    with tempfile.TemporaryDirectory(prefix="benchmark_app-") as report:
        done = subprocess.run(
            [*command, *benchmark_app_args(ir, dims, threads, seconds, static, report)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise RuntimeError(f"benchmark_app failed ({done.returncode}): {' | '.join(tail)}")
        median = _median_ms(Path(report) / "benchmark_report.json", done.stdout)
    return median, _settings(done.stdout)


def _median_ms(report: Path, stdout: str) -> float:
    """The JSON report's latency (the median at the default -latency_percentile 50), else the 'Median:' line."""
    if report.is_file():
        results = json.loads(report.read_text()).get("execution_results", {})
        if "latency (ms)" in results:
            return float(results["latency (ms)"])
    found = _MEDIAN_LINE.search(stdout)
    if found is None:
        raise RuntimeError("benchmark_app printed no median latency")
    return float(found.group(1))


def _settings(stdout: str) -> dict[str, str]:
    settings = {}
    for line in stdout.splitlines():
        found = _SETTING_LINE.match(line)
        if found and found.group(1) in SETTINGS:
            settings[found.group(1)] = _plain(found.group(2))
    return settings


def _plain(value: object) -> str:
    """OpenVINO values as one spelling: "<Type: 'float32'>" -> f32, PerformanceMode.LATENCY -> LATENCY."""
    text = str(value)
    text = {"<Type: 'float32'>": "f32", "<Type: 'bfloat16'>": "bf16", "<Type: 'float16'>": "f16"}.get(
        text, text
    )
    return text.split(".")[-1]


def our_settings(runner) -> dict[str, str]:
    values = {}
    for key in SETTINGS:
        try:
            values[key] = _plain(runner.compiled.get_property(key))
        except RuntimeError:
            values[key] = "?"
    return {k: {"float32": "f32", "bfloat16": "bf16"}.get(v, v) for k, v in values.items()}


def build_ir(args, folder: Path) -> Path:
    """The IR both sides time: --ir as given, else built (fp32) from --onnx or from --model exported for OpenVINO."""
    from lkca_deploy.backends.build import build_engine
    from lkca_deploy.export import export_model

    if args.ir is not None:
        return args.ir
    onnx_path = args.onnx
    if onnx_path is None:
        source = common.speed_source(args, folder)
        onnx_path = folder / f"{source.name}.openvino.onnx"
        export_model(source, onnx_path, lowering="auto", target="openvino-cpu", check_samples=16)
    return build_engine(onnx_path, "openvino", "fp32", folder / f"{Path(onnx_path).stem}.fp32.xml").artifact


def main(argv: list[str] | None = None) -> int:
    from lkca_deploy.backends.registry import get_backend
    from lkca_deploy.measure.latency import measure_latency

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser)
    parser.add_argument(
        "--onnx", type=Path, help="an fp32 ONNX to build the IR from (default: export --model)"
    )
    parser.add_argument(
        "--ir", type=Path, help="an IR built by this project (lkca-deploy build --backend openvino)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help="allowed relative gap (default 0.2)"
    )
    parser.set_defaults(repeats=5, budget=2.0)
    args = parser.parse_args(argv)

    command = benchmark_app_command()
    if command is None:
        import openvino

        print(
            f"benchmark_app is not available with openvino {openvino.get_version()}: it ships in the openvino pip "
            "package as the `benchmark_app` console script (python -m openvino.tools.benchmark.main); reinstall "
            "openvino, or use the C++ benchmark_app of an OpenVINO archive install"
        )
        return 2
    with common.work_folder(args.work) as folder:
        ir = build_ir(args, folder)
        runner = get_backend("openvino").load(ir, threads=args.threads)
        shape = tuple(d for d in runner.input_shape[1:])
        rows, failed, settings = [], False, {}
        for batch in args.batches:
            x = common.inputs(shape, batch, args.seed)
            ours, theirs, static = [], [], []
            for r in range(args.repeats):  # alternate who goes first, so drift hits both alike
                steps = ["ours", "app", "static"] if r % 2 == 0 else ["static", "app", "ours"]
                for step in steps:
                    if step == "ours":
                        ours.append(measure_latency(runner, x, warmup=5, budget_s=args.budget).p50_ms)
                    else:
                        median, settings = run_benchmark_app(
                            command, ir, shape, batch, args.threads, args.budget, step == "static"
                        )
                        (static if step == "static" else theirs).append(median)
            ours_ms, app_ms, static_ms = (float(np.median(v)) for v in (ours, theirs, static))
            ok = abs(ours_ms / app_ms - 1) <= args.tolerance
            failed |= not ok
            rows.append(
                [batch, ours_ms, app_ms, f"{ours_ms / app_ms:.2f}", "PASS" if ok else "FAIL", static_ms]
            )
        ours_cfg = our_settings(runner)
        common.print_header(
            f"OpenVINO latency: this project against benchmark_app, {ir.name}",
            args.threads,
            [
                (
                    f"{args.repeats} alternating rounds of {args.budget:g} s per side; medians over rounds. "
                    f"Pass: ours within {100 * args.tolerance:.0f}% of benchmark_app (same IR, dynamic batch, -data_shape)."
                ),
                "command: benchmark_app "
                + " ".join(benchmark_app_args(ir, "[B,C,H,W]", args.threads, args.budget, False, "DIR")),
                "Settings (ours / benchmark_app): "
                + ", ".join(f"{k} {ours_cfg.get(k, '?')} / {settings.get(k, '?')}" for k in SETTINGS),
            ],
            markdown=args.markdown,
        )
        common.print_table(
            ["batch", "ours p50 ms", "benchmark_app median ms", "ours / app", "within tolerance",
             "benchmark_app -shape (static batch) ms"],
            rows,
            markdown=args.markdown,
        )  # fmt: skip
        runner.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
