"""This project's FP32 engines against what a user would pick instead, same weights and inputs, ONE run.

Peers, each in both exact views of the LKCA mixer a PyTorch user has (conv, attention = Toeplitz matmul):
  PyTorch eager          torch.set_num_threads(threads), torch.no_grad()
  torch.compile          default mode (inductor); a failure is reported, not fatal
  plain ONNX + ORT       torch.onnx.export with the installed torch's defaults (no lowering, no onnx-simplifier),
                         run by ONNX Runtime with default session options except threads and spinning off
  OpenVINO from PyTorch  openvino.convert_model(module, example_input=...), compiled with the f32 precision hint
                         (fair at FP32: CPUs with bf16 otherwise compute in bf16) and LATENCY
This project: export_model(lowering auto for the backend's target) -> build_engine fp32 -> registry load
(ORT spinning off). Printed: ms (median of interleaved rounds) and each engine's speed-up over the fastest peer at
that batch. Goal: the best FP32 engine >= 1.3x faster than the fastest peer at batch 1.
--profile adds where the time goes: ONNX Runtime per-op-type times (SessionOptions.enable_profiling, on the graph
after ORT's own fusions) and OpenVINO per-layer-type times (PERF_COUNT), for this project's engine and a peer.

    python benchmarks/peers.py --markdown
    python benchmarks/peers.py --repeats 3 --budget 1 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

# PyTorch's OpenMP threads busy-wait after each parallel region, like ORT's spinning threads, and would slow
# the engine timed next on few cores; passive waiting is the same treatment ORT gets (spinning off). It must be
# set before torch loads libgomp; an OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TARGETS = {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino-cpu"}
GOAL_SPEEDUP = 1.3
OURS = "this project"
PROFILE_RUNS = 50

Run = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------- peers


def ort_session(path: Path, threads: int, **extra):
    """ONNX Runtime with its default session options, except the thread count and no spinning (interleaving)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in extra.items():
        setattr(options, key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_run(session) -> Run:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def openvino_config(threads: int, **extra) -> dict:
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": threads,
        **extra,
    }


def openvino_run(compiled) -> Run:
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data)  # a copy: the request reuses its buffer

    return run


def torch_run(module) -> Run:
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():  # not inference_mode: torch.compile of the attention view fails under it
            return module(torch.from_numpy(x)).numpy()

    return run


def plain_onnx(module, shape, out: Path) -> Path:
    """torch.onnx.export exactly as a user calls it (the installed torch's exporter and its defaults)."""
    import torch

    # Its progress lines go to stderr so stdout holds the tables only.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, *shape),),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return out


def openvino_from_torch(module, shape) -> tuple[object, str]:
    """(ov.Model, how): convert_model on the module; where its TorchScript tracing fails, on torch.export's program."""
    import openvino as ov
    import torch

    example = torch.zeros(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ov.convert_model(
                module, example_input=example, input=[(-1, *shape)]
            ), "convert_model(module)"
        except Exception as err:  # noqa: BLE001 - OpenVINO's torch frontend raises plain RuntimeErrors and more
            common.warn(f"openvino.convert_model(module) failed ({type(err).__name__}); trying torch.export")
        batch = torch.export.Dim("batch")
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        return ov.convert_model(program), "convert_model(torch.export)"


def build_peers(source: Path, views, shape, folder: Path, args) -> tuple[dict[str, Run], list[str]]:
    """name -> run for every peer that could be built, and one note per peer that could not (or how it was)."""
    import openvino as ov
    import torch

    from lkca_deploy.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    core = ov.Core()
    runs, notes = {}, []
    for view in views:
        module, _ = load_checkpoint(source, view=view)
        runs[f"PyTorch eager ({view})"] = torch_run(module)
        # One eager call first, as a user checking the model would: the attention view builds its Toeplitz index
        # lazily on the first call, and TorchScript tracing (convert_model) fails when that happens inside it.
        runs[f"PyTorch eager ({view})"](common.inputs(shape, 1))
        if not args.no_compile:
            name = f"torch.compile ({view})"
            try:
                compiled = torch_run(torch.compile(module))
                for batch in args.batches:  # compile now, per shape, so a failure is a note, not a crash
                    compiled(common.inputs(shape, batch))
                runs[name] = compiled
            except Exception as err:  # noqa: BLE001 - inductor can fail in many ways; the table says so
                notes.append(f"{name}: failed ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
        path = plain_onnx(module, shape, folder / f"plain-{view}.onnx")
        runs[f"plain ONNX + ORT ({view})"] = ort_run(ort_session(path, args.threads))
        ov_model, how = openvino_from_torch(module, shape)
        runs[f"OpenVINO from PyTorch ({view})"] = openvino_run(
            core.compile_model(ov_model, "CPU", openvino_config(args.threads))
        )
        if how != "convert_model(module)":
            notes.append(f"OpenVINO from PyTorch ({view}): convert_model(module) failed, timed {how}")
    return runs, notes


# ---------------------------------------------------------------- this project


def build_ours(source: Path, folder: Path, threads: int) -> tuple[dict[str, Run], dict[str, Path]]:
    """name -> runner of this project's fp32 engine per backend, and the ONNX each was built from."""
    from lkca_deploy.backends.build import build_engine
    from lkca_deploy.backends.registry import get_backend
    from lkca_deploy.export import export_model

    runs, onnx_files = {}, {}
    for backend_name, target in TARGETS.items():
        backend = get_backend(backend_name)
        onnx_path = folder / f"ours-{backend_name}.onnx"
        result = export_model(source, onnx_path, lowering="auto", target=target, check_samples=16)
        artifact = build_engine(
            onnx_path, backend_name, "fp32", folder / f"ours-{backend_name}.fp32{backend.artifact_suffix}"
        ).artifact
        label = f"{OURS}: {backend_name} fp32 ({_lowering_label(result)})"
        runs[label] = backend.load(artifact, threads=threads, **backend.interleaved_load_options)
        onnx_files[backend_name] = onnx_path
    return runs, onnx_files


def _lowering_label(result) -> str:
    strategies = sorted({change.strategy for change in result.lowering.changes})
    return "auto: " + ("+".join(strategies) if strategies else "conv")


# ---------------------------------------------------------------- table


def max_errors(runs: dict[str, Run], reference: Run, x: np.ndarray) -> dict[str, float]:
    """Max abs logit difference of each engine against PyTorch eager: same weights, same inputs."""
    want = reference(x)
    return {
        name: float(np.max(np.abs(np.asarray(run(x), dtype=np.float64) - want))) for name, run in runs.items()
    }


def peers_table(timed, errors: dict[str, float], batches, cpu_time: bool) -> tuple[list, list]:
    """Rows: engine, its error against eager, then per batch its ms (and CPU ms) and its speed-up over the fastest
    peer (by CPU time with --cpu-time)."""
    headers = ["engine", "max abs err"]
    for batch in batches:
        headers += [f"b{batch} ms"] + ([f"b{batch} cpu ms"] if cpu_time else [])
        headers += [f"b{batch} vs fastest peer" + (" (cpu)" if cpu_time else "")]
    rows = []
    for name, error in errors.items():
        row = [name, f"{error:.1e}"]
        for batch in batches:
            mine = timed[batch][name]
            _, peer = fastest(timed[batch], peers=True, cpu_time=cpu_time)
            row += [mine.ms] + ([mine.cpu_ms] if cpu_time else [])
            row += [common.ratio(peer.basis(cpu_time), mine.basis(cpu_time))]
        rows.append(row)
    return headers, rows


def fastest(timings: dict, *, peers: bool, cpu_time: bool) -> tuple[str, common.Timing]:
    """(name, Timing) of the fastest peer (peers=True) or of the fastest of this project's engines."""
    mine = {n: t for n, t in timings.items() if n.startswith(OURS) != peers}
    name = min(mine, key=lambda n: mine[n].basis(cpu_time))
    return name, mine[name]


def goal_lines(timed, batches, cpu_time: bool) -> list[str]:
    unit = "cpu ms" if cpu_time else "ms"
    lines = []
    for batch in batches:
        peer, peer_t = fastest(timed[batch], peers=True, cpu_time=cpu_time)
        best, best_t = fastest(timed[batch], peers=False, cpu_time=cpu_time)
        speedup = peer_t.basis(cpu_time) / best_t.basis(cpu_time)
        verdict = ""
        if batch == 1:
            verdict = (
                f" -> {'PASS' if speedup >= GOAL_SPEEDUP else 'MISS'} (goal >= {GOAL_SPEEDUP}x at batch 1)"
            )
        lines.append(
            f"batch {batch}: best engine {best} {best_t.basis(cpu_time):.3g} {unit} vs fastest peer {peer} "
            f"{peer_t.basis(cpu_time):.3g} {unit}: {speedup:.2f}x{verdict}"
        )
    return lines


# ---------------------------------------------------------------- profiles


def ort_op_profile(path: Path, x: np.ndarray, threads: int, folder: Path) -> dict[str, tuple[int, float]]:
    """op type -> (nodes after ORT's graph optimizations, ms per run), from ORT's own profiler."""
    optimized = folder / f"{path.stem}.ort-optimized.onnx"
    session = ort_session(
        path,
        threads,
        enable_profiling=True,
        profile_file_prefix=str(folder / f"{path.stem}.profile"),
        optimized_model_filepath=str(optimized),
    )
    run = ort_run(session)
    for _ in range(PROFILE_RUNS):
        run(x)
    events = json.loads(Path(session.end_profiling()).read_text())
    spent: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            spent[event["args"]["op_name"]] += event["dur"] / 1e3 / PROFILE_RUNS
    import onnx

    counts = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    return {op: (counts.get(op, 0), ms) for op, ms in spent.items()}


def openvino_layer_profile(compiled_or_model, x: np.ndarray, threads: int) -> dict[str, tuple[int, float]]:
    """layer type -> (executed layers, ms per run) from OpenVINO's PERF_COUNT."""
    import openvino as ov

    compiled = ov.Core().compile_model(compiled_or_model, "CPU", openvino_config(threads, PERF_COUNT=True))
    request = compiled.create_infer_request()
    spent: dict[str, float] = defaultdict(float)
    counts: Counter = Counter()
    for _ in range(PROFILE_RUNS):
        request.infer({0: x})
        for info in request.profiling_info:
            if info.status == info.Status.EXECUTED:
                spent[info.node_type] += info.real_time.total_seconds() * 1e3 / PROFILE_RUNS
                counts[info.node_type] += 1
    return {kind: (counts[kind] // PROFILE_RUNS, ms) for kind, ms in spent.items()}


def print_profile(title: str, profiles: dict[str, dict[str, tuple[int, float]]], markdown: bool) -> None:
    """One row per op type, per engine its node count and ms per run; sorted by the first engine's time."""
    names = list(profiles)
    kinds = sorted(
        {k for p in profiles.values() for k in p}, key=lambda k: -profiles[names[0]].get(k, (0, 0.0))[1]
    )
    headers = ["op type"] + [f"{n}: {h}" for n in names for h in ("nodes", "ms")]
    rows = [[kind] + [v for n in names for v in profiles[n].get(kind, (0, 0.0))] for kind in kinds]
    rows.append(["total", *[v for n in names for v in ("", sum(ms for _, ms in profiles[n].values()))]])
    print(f"\n{'#### ' if markdown else ''}{title}\n")
    common.print_table(headers, rows, markdown=markdown)


def run_profiles(args, source: Path, shape, onnx_files: dict[str, Path], folder: Path) -> None:
    from lkca_deploy.checkpoint import load_checkpoint

    x = common.inputs(shape, 1, args.seed)
    view = args.views[0]
    plain = folder / f"plain-{view}.onnx"
    print_profile(
        f"ONNX Runtime per op type, batch 1, ms per run ({PROFILE_RUNS} runs; node counts after ORT's optimizations)",
        {
            "ours (auto)": ort_op_profile(onnx_files["onnxruntime"], x, args.threads, folder),
            f"plain ONNX ({view})": ort_op_profile(plain, x, args.threads, folder),
        },
        args.markdown,
    )
    module, _ = load_checkpoint(source, view="conv")
    print_profile(
        f"OpenVINO per layer type, batch 1, ms per run ({PROFILE_RUNS} runs, PERF_COUNT)",
        {
            "ours (auto)": openvino_layer_profile(str(folder / "ours-openvino.fp32.xml"), x, args.threads),
            "from PyTorch (conv)": openvino_layer_profile(
                openvino_from_torch(module, shape)[0], x, args.threads
            ),
        },
        args.markdown,
    )


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser)
    parser.add_argument(
        "--views",
        default="attention,conv",
        type=lambda s: tuple(s.split(",")),
        help="peer views (default both)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    parser.add_argument("--profile", action="store_true", help="also per-op-type profiles (ORT and OpenVINO)")
    args = parser.parse_args(argv)
    with common.work_folder(args.work) as folder:
        source = common.speed_source(args, folder)
        shape = common.model_input_shape(source)
        peers, notes = build_peers(source, args.views, shape, folder, args)
        ours, onnx_files = build_ours(source, folder, args.threads)
        runs = {**peers, **ours}
        reference = peers[f"PyTorch eager ({args.views[0]})"]
        errors = max_errors(runs, reference, common.inputs(shape, 4, args.seed + 1))
        timed = {
            batch: common.time_interleaved(
                runs,
                common.inputs(shape, batch, args.seed),
                repeats=args.repeats,
                budget_per_engine=args.budget,
                cpu_time=args.cpu_time,
            )
            for batch in args.batches
        }
        common.print_header(
            f"FP32 against the peers: {source.name}, ms (median of interleaved rounds)",
            args.threads,
            [
                (
                    f"One run, {args.repeats} interleaved rounds, {args.budget:g} s per engine per batch, same weights and "
                    "inputs; ORT sessions with intra-op spinning off, PyTorch with OMP_WAIT_POLICY"
                    f"={os.environ['OMP_WAIT_POLICY']}; OpenVINO with the f32 hint and LATENCY."
                ),
                (
                    "'vs fastest peer': the fastest peer's time / this engine's time (> 1 is faster; '(cpu)': by CPU "
                    "time per call, which a loaded machine does not inflate); "
                    f"max abs err: logits against PyTorch eager ({args.views[0]})."
                ),
                *notes,
            ],
            markdown=args.markdown,
        )
        common.print_table(*peers_table(timed, errors, args.batches, args.cpu_time), markdown=args.markdown)
        for line in goal_lines(timed, args.batches, args.cpu_time):
            print(line)
        if args.profile:
            run_profiles(args, source, shape, onnx_files, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
