"""Segmentation at ADE20K scale: lkca_seg_tiny (512 px, 32x32 grid, K63, 150 classes), batch 1, in ONE run.

Engines, all FP32 from the same random-weight checkpoint, timed interleaved (measure.latency.interleaved, medians of
per-round medians), ONNX Runtime with intra-op spinning off, OpenVINO with the f32 hint:
  plain ONNX + ORT          torch.onnx.export of the conv view as a user calls it (peers.py), no lowering
  OpenVINO from PyTorch     openvino.convert_model(module) (peers.py)
  spectral                  `auto` above 16x16 before token_spectral: DFT matmuls around each conv, four
                            Transposes per mixer; the head's Resize to 512 x 512
  token_spectral            the mixer alone changed: the whole mixer on the token layout, no Transpose (a real
                            DFT along H, a Toeplitz product along W per head); the head's Resize as before
  token_spectral = auto     what `export` writes now: also the head's upsample as two MatMuls (forms/upsample.py)
  token_spectral, grid      the graph ending at the 150 x 32 x 32 grid logits (export logits="grid")
Beside each: its FLOPs as exported (MatMul, Gemm and Conv multiply-adds x 2 from the ONNX's static shapes) over the
SGEMM peak measured here with 2 threads (ONNX Runtime's MatMul and numpy's, the better of the two): the time the
arithmetic alone would take, and measured / that.

Then the Predictor end to end on a 683 x 512 PNG (ADE20K's typical size; decode, preprocess, engine, upsample to the
image and argmax), torch-free, interleaved: the old path (the spectral engine with input-size logits and the mask
made with dense bilinear matrices, as masks.upsampled_argmax did before its two-tap upsample) against the new one (the
token_spectral engine ending at the grid logits, one two-tap upsample from 32 x 32 straight to 512 x 683).

    python benchmarks/segmentation_speed.py --markdown
    python benchmarks/segmentation_speed.py --repeats 3 --budget 1 --backends onnxruntime
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lkca_deploy.lowering.registry import SPECTRAL, TOKEN_SPECTRAL

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common
import peers

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as peers.py: torch's idle threads must not spin

MODEL = "lkca_seg_tiny"
IMAGE_SIZE = (512, 683)  # (H, W): ADE20K's typical landscape photo
BACKENDS = ("onnxruntime", "openvino")
OLD, NEW = SPECTRAL, TOKEN_SPECTRAL
AUTO = f"{NEW} = auto"
GOALS = {"predictor": 2.0, "engine": 1.3}  # Predictor >= 2x the old path; engine >= 1.3x the spectral lowering
SGEMM_SIZE = 1024
PLAIN_ONNX = "plain-conv.onnx"


# ---------------------------------------------------------------- FLOPs and the SGEMM peak


def graph_flops(path: Path) -> float:
    """2 x the multiply-adds of every MatMul, Gemm and Conv of an ONNX at batch 1 (a dynamic batch counts as 1)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    shapes = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value or 1 for d in dims]  # dynamic: the batch, timed at 1
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    macs = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if not out:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            a = shapes[node.input[0]]
            trans_a = any(x.name == "transA" and x.i for x in node.attribute)
            macs += int(np.prod(out)) * (a[-2] if trans_a else a[-1])
        elif node.op_type == "Conv":
            w = shapes[node.input[1]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
    return 2.0 * macs


def sgemm_peak_gflops(threads: int, repeats: int = 15) -> dict[str, float]:
    """GFLOP/s of a 1024^3 float32 matrix product: ONNX Runtime's MatMul (the engines' kernel) and numpy's."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = SGEMM_SIZE
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "sgemm",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    runs = {"onnxruntime": lambda: session.run(None, {"a": a, "b": b}), "numpy": lambda: a @ b}
    peaks = {}
    for name, run in runs.items():
        run()
        best = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best.append(time.perf_counter() - start)
        peaks[name] = 2 * n**3 / np.median(best) / 1e9
    return peaks


# ---------------------------------------------------------------- engines


def export_variants(source: Path, folder: Path) -> dict[str, Path]:
    """label -> ONNX: spectral, the new one, the new one ending at the grid logits (all batch 1, self-checked)."""
    from lkca_deploy.export import export_model

    # (lowering, logits, the head's upsample as MatMuls): False keeps the head's Resize (exports before upsample.py)
    jobs = {OLD: (OLD, None, False), NEW: (NEW, None, False), AUTO: (NEW, None, True),
            f"{NEW}, grid": (NEW, "grid", None)}
    out = {}
    for label, (lowering, logits, upsample) in jobs.items():
        path = folder / f"{lowering}-{logits or 'input'}{'-resize' if upsample is False else ''}.onnx"
        if not path.exists():
            common.warn(f"exporting {label} ...")
            export_model(source, path, lowering=lowering, batch=1, logits=logits, check_samples=1,
                         upsample_matmuls=upsample)
        out[label] = path
    return out


def load_engines(onnx_files: dict[str, Path], backends, threads: int, folder: Path) -> dict[tuple[str, str], object]:
    """(backend, label) -> runner, built and loaded through the project's backends."""
    from lkca_deploy.backends.registry import get_backend

    runners = {}
    for name in backends:
        backend = get_backend(name)
        for label, path in onnx_files.items():
            artifact = folder / f"{path.stem}-{name}{backend.artifact_suffix}"
            if not artifact.exists():
                backend.build(path, artifact, precision="fp32")
            runners[(name, label)] = backend.load(artifact, threads=threads, **backend.interleaved_load_options)
    return runners


def peer_engines(source: Path, backends, threads: int, folder: Path) -> dict[tuple[str, str], Callable]:
    """The two peers a user would try first: plain ONNX of the conv view on ORT, OpenVINO converting the module."""
    import openvino as ov

    from lkca_deploy.checkpoint import load_checkpoint

    module, ckpt = load_checkpoint(source, view="conv")
    shape = tuple(ckpt.spec.input_shape)
    runs = {}
    path = folder / PLAIN_ONNX  # also what the FLOPs of both peers are counted on: the conv view as exported
    if not path.exists():
        common.warn("torch.onnx.export of the conv view ...")
        peers.plain_onnx(module, shape, path)
    if "onnxruntime" in backends:
        runs[("onnxruntime", "plain ONNX (conv view)")] = peers.ort_run(peers.ort_session(path, threads))
    if "openvino" in backends:
        common.warn("openvino.convert_model of the module ...")
        converted, _ = peers.openvino_from_torch(module, shape)
        compiled = ov.Core().compile_model(converted, "CPU", peers.openvino_config(threads))
        runs[("openvino", "OpenVINO from PyTorch")] = peers.openvino_run(compiled)
    return runs


# ---------------------------------------------------------------- the Predictor, end to end


def dense_upsampled_argmax(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """masks.upsampled_argmax before its two-tap upsample: dense (out, in) bilinear matrices, row blocks of 64 MiB."""
    from lkca_runtime.masks import bilinear_matrix

    height, width = size
    columns = logits @ bilinear_matrix(width, logits.shape[2]).T
    rows = bilinear_matrix(height, logits.shape[1])
    step = max(1, (64 << 20) // (4 * logits.shape[0] * width))
    mask = np.empty((height, width), dtype=np.int32)
    for start in range(0, height, step):
        mask[start : start + step] = (rows[start : start + step] @ columns).argmax(axis=0)
    return mask


@contextlib.contextmanager
def dense_masks():
    """The runtime's mask step as it was before its two-tap upsample, for the baseline only."""
    from lkca_runtime import predictor as runtime

    current = runtime.upsampled_argmax
    runtime.upsampled_argmax = dense_upsampled_argmax
    try:
        yield
    finally:
        runtime.upsampled_argmax = current


def sample_image(folder: Path) -> Path:
    """A seeded 683 x 512 RGB PNG (smooth blobs plus noise: decodes like a photo, not like a flat colour)."""
    from PIL import Image

    height, width = IMAGE_SIZE
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width] / 64.0
    base = np.stack([np.sin(xx * f + p) + np.cos(yy * g) for f, g, p in rng.uniform(0.3, 2.0, (3, 3))], axis=-1)
    pixels = np.clip((base + 2) * 60 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    path = folder / "ade20k-size.png"
    Image.fromarray(pixels).save(path)
    return path


def predictor_runs(runners, spec, image: Path, backends) -> tuple[dict[str, Callable], dict[str, np.ndarray]]:
    """name -> one end-to-end call on `image` (the old path or the new one), and the mask each made."""
    from lkca_runtime.predictor import Predictor

    runs, masks = {}, {}
    for name in backends:
        old = Predictor.around(runners[(name, OLD)], spec)
        new = Predictor.around(runners[(name, f"{NEW}, grid")], spec)

        def run_old(_x, p=old):
            with dense_masks():
                return p(image)

        def run_new(_x, p=new):
            return p(image)

        runs[f"{name}: old"], runs[f"{name}: new"] = run_old, run_new
        masks[f"{name}: old"], masks[f"{name}: new"] = run_old(None), run_new(None)
    return runs, masks


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="threads per engine (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--budget", type=float, default=2.0, help="timed seconds per engine, all rounds (default 2)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default both)")
    parser.add_argument("--work", type=Path, help="keep checkpoint, ONNX files and engines here (default: temp)")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables (for the README)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    from lkca_deploy.measure.latency import interleaved

    warnings.filterwarnings("ignore")
    with common.work_folder(args.work) as folder:
        source = common.random_checkpoint(MODEL, folder / f"{MODEL}-random", args.seed)
        onnx_files = export_variants(source, folder)
        runners = load_engines(onnx_files, backends, args.threads, folder)
        runs = {f"{b}: {label}": run for (b, label), run in peer_engines(source, backends, args.threads, folder).items()}
        runs.update({f"{b}: {label}": runner for (b, label), runner in runners.items()})
        x = common.inputs((3, 512, 512), 1, args.seed)
        common.warn(f"timing {len(runs)} engines, {args.repeats} interleaved rounds ...")
        timed = common.time_interleaved(runs, x, repeats=args.repeats, budget_per_engine=args.budget, cpu_time=True)
        engine_ms = {k: t.ms for k, t in timed.items()}
        engine_cpu = {k: t.cpu_ms for k, t in timed.items()}
        from lkca_deploy.export import default_spec
        from lkca_deploy.models.zoo import get_config

        spec = default_spec(get_config(MODEL))
        image = sample_image(folder)
        e2e, masks = predictor_runs(runners, spec, image, backends)
        common.warn(f"timing the Predictor on a {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} image ...")
        e2e_ms = {k: v.median_ms for k, v in interleaved(e2e, np.zeros(1), args.repeats, warmup=1,
                                                            budget_s=args.budget * len(e2e), min_iters=2).items()}
        peaks = sgemm_peak_gflops(args.threads)
        flops = {label: graph_flops(path) for label, path in onnx_files.items()}
        flops["plain ONNX (conv view)"] = flops["OpenVINO from PyTorch"] = graph_flops(folder / PLAIN_ONNX)
    peak = max(peaks.values())
    notes = [
        (
            f"{MODEL}: random weights, batch 1, FP32; ms = median of {args.repeats} interleaved rounds; cpu ms = "
            "process CPU time per call, all threads (other jobs on the machine inflate wall time, not this)"
        ),
        "SGEMM peak, " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()) + f" GFLOP/s ({SGEMM_SIZE}^3, "
        f"{args.threads} threads): the bound below uses {peak:.0f}",
    ]
    common.print_header("Segmentation engines at ADE20K scale", args.threads, notes, markdown=args.markdown)
    rows = []
    for key, ms in engine_ms.items():
        backend, label = key.split(": ", 1)
        base = engine_ms.get(f"{backend}: {OLD}")
        gflop = flops.get(label)
        bound = gflop / peak / 1e6 if gflop else None  # ms
        cpu, cpu_base = engine_cpu[key], engine_cpu.get(f"{backend}: {OLD}")
        rows.append([backend, label, ms, common.ratio(base, ms), cpu, common.ratio(cpu_base, cpu),
                     gflop / 1e9 if gflop else None, bound, f"{ms / bound:.1f}x" if bound else "-"])
    common.print_table(["backend", "engine", "ms", f"x {OLD}", "cpu ms", f"cpu x {OLD}", "GFLOP",
                        "GEMM-bound ms", "ms / bound"], rows, markdown=args.markdown)
    e2e_rows = []
    for name in backends:
        old, new = e2e_ms[f"{name}: old"], e2e_ms[f"{name}: new"]
        same = float(np.mean(masks[f"{name}: old"] == masks[f"{name}: new"]))
        e2e_rows.append([name, old, new, common.ratio(old, new), f"{same:.4f}"])
    print(f"Predictor, one {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} PNG to its mask (decode, preprocess, engine, upsample, "
          "argmax):\n")
    common.print_table(["backend", "old path ms", "new ms", "speed-up", "same mask pixels"], e2e_rows,
                       markdown=args.markdown)
    for name in backends:
        engine = engine_ms[f"{name}: {OLD}"] / engine_ms[f"{name}: {NEW}"]
        auto = engine_ms[f"{name}: {OLD}"] / engine_ms[f"{name}: {AUTO}"]
        e2e_gain = e2e_ms[f"{name}: old"] / e2e_ms[f"{name}: new"]
        print(f"{name}: engine with input-size logits {engine:.2f}x spectral from the mixer alone (goal "
              f"{GOALS['engine']}x on onnxruntime), {auto:.2f}x with the MatMul upsample; Predictor "
              f"{e2e_gain:.2f}x the old path (goal {GOALS['predictor']}x)")


if __name__ == "__main__":
    main()
