"""Reduced precision that keeps its accuracy by itself, on a model post-training quantization really hurts.

lkca_vit_nano trained on digits gets a function-preserving outlier (models/rescale.py: one value channel of a block
times --factor, the matching input column of its output projection divided by it; FP32 logits unchanged). Then,
through the product (export_model, calibration/plan, build_engine, registry load):
  INT8  plain (every unit INT8) against accuracy-aware (units returned to float until the top-1 drop on a
        validation subset of the training split is <= --max-drop), for ONNX Runtime's `cpu` and `tensorrt` Q/DQ
        flavours and OpenVINO NNCF; top-1 on the digits TEST split, and the latency the float units cost at each
        batch (all engines of a backend timed in the same interleaved rounds);
  FP16  the same rescale with --fp16-factor, past 65504: plain FP16 against FP16 with headroom, agreement with FP32.
The clean model (no rescale) is searched too: there nothing should go back to float.

    python benchmarks/int8_accuracy.py --markdown
    python benchmarks/int8_accuracy.py --checkpoint runs/nano-digits --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

from lkca_deploy.calibration import CALIB_SAMPLES

SEED = 0
ENGINES = (("ORT int8 cpu", "onnxruntime", "cpu"), ("ORT int8 tensorrt", "onnxruntime", "tensorrt"),
           ("OV int8 NNCF", "openvino", "nncf"))
TARGETS = {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino-cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, model=common.ACCURACY_MODEL)
    parser.add_argument("--block", type=int, default=1, help="block whose value channel is rescaled (default 1)")
    parser.add_argument("--channel", type=int, default=5, help="the rescaled channel (default 5)")
    parser.add_argument("--factor", type=float, default=1e3, help="INT8 outlier factor (default 1000)")
    parser.add_argument("--fp16-factor", type=float, default=1e5, help="FP16 outlier factor (default 1e5)")
    parser.add_argument("--max-drop", type=float, default=0.5, help="bound in top-1 points (default 0.5)")
    args = parser.parse_args()

    from lkca_deploy.checkpoint import read_checkpoint
    from lkca_deploy.models.rescale import outlier_checkpoint

    with common.work_folder(args.work) as folder:
        trained = args.checkpoint or common.trained_checkpoint(folder, seed=args.seed)
        spec = read_checkpoint(trained).spec
        data = load_data(spec)
        common.print_header("Accuracy-aware INT8 and FP16 headroom (lkca_vit_nano, digits)", args.threads, [
            (f"Model: {trained}; block {args.block} value channel {args.channel} times {args.factor:g} (INT8) and "
            f"{args.fp16_factor:g} (FP16); bound {args.max_drop} top-1 points"),
            (f"Calibration: {CALIB_SAMPLES} training digits; validation: {len(data['val_y'])} other training digits; "
            f"judged on the {len(data['test_y'])} test digits"),
        ], markdown=args.markdown)
        rows, steps = int8_rows(trained, None, folder / "clean", data, args)
        outlier = outlier_checkpoint(trained, folder / "outlier-int8", block=args.block, channel=args.channel,
                                     factor=args.factor)
        more_rows, steps = int8_rows(outlier, args.factor, folder / "int8", data, args)
        common.print_table(["model", "engine", "units kept float", "test top-1", "drop pt",
                            *(f"b{b} ms" for b in args.batches), *(f"float cost b{b}" for b in args.batches)],
                           rows + more_rows, markdown=args.markdown)
        print("Accuracy-aware search on the outlier model (validation subset, drop in top-1 points):\n")
        print(steps + "\n")
        fp16 = outlier_checkpoint(trained, folder / "outlier-fp16", block=args.block, channel=args.channel,
                                  factor=args.fp16_factor)
        common.print_table(["model", "engine", "kept FP32", "agreement with FP32", "non-finite logits"],
                           fp16_rows(fp16, args.fp16_factor, folder / "fp16", data), markdown=args.markdown)


def load_data(spec) -> dict:
    from lkca_deploy.calibration.sources import load_calibration
    from lkca_deploy.data import load_arrays
    from lkca_deploy.precision.holdout import validation_subset

    calib = load_calibration("digits", spec, samples=CALIB_SAMPLES, seed=SEED).array
    val = validation_subset("digits", spec, calib=calib, calib_samples=CALIB_SAMPLES, calib_seed=SEED)
    test_x, test_y = load_arrays("digits", "test", spec)
    return {"spec": spec, "calib": calib, "val_x": val.x, "val_y": val.labels, "test_x": test_x, "test_y": test_y}


def export(ckpt: Path, folder: Path) -> dict[str, Path]:
    from lkca_deploy.export import export_model

    folder.mkdir(parents=True, exist_ok=True)
    return {b: export_model(ckpt, folder / f"model.{b}.onnx", target=t).path for b, t in TARGETS.items()}


def int8_rows(ckpt: Path, factor: float | None, folder: Path, data: dict, args) -> tuple[list[list], str]:
    """Per engine: plain INT8 and accuracy-aware INT8, top-1 on the test split and latency of both."""
    from lkca_deploy.precision.accuracy_aware import run_onnx, task_metric
    from lkca_deploy.precision.plan import plan_precision
    from lkca_runtime.onnx_io import load_onnx, save_onnx_atomic

    exports = export(ckpt, folder)
    reference = task_metric(run_onnx(load_onnx(exports["onnxruntime"]), data["test_x"]), data["test_y"],
                            "classification")
    plain = {b: folder / f"plain.{b}.onnx" for b in exports}
    for backend, path in exports.items():
        save_onnx_atomic(load_onnx(path), plain[backend])  # before the plan writes its metadata into `path`
    plan = plan_precision(exports, search_on="onnxruntime", calib=data["calib"], data="digits", spec=data["spec"],
                          task="classification", int8=True, fp16=False, max_drop=args.max_drop,
                          calib_samples=CALIB_SAMPLES, calib_seed=SEED)
    units = ", ".join(plan.int8["float_units"]) or "none"
    model = "clean" if factor is None else f"outlier x{factor:g}"
    rows = [[model, "FP32 (ORT)", "-", f"{reference:.2f}", "-", *["-"] * (2 * len(args.batches))]]
    for label, backend, flavor in ENGINES:
        engines = {"plain": build(plain[backend], backend, flavor, folder / f"{label}-plain", data["calib"], args),
                   "aware": build(exports[backend], backend, flavor, folder / f"{label}-aware", data["calib"], args)}
        shape = data["test_x"].shape[1:]
        times = {b: common.time_interleaved(engines, common.inputs(shape, b, args.seed), repeats=args.repeats,
                                            budget_per_engine=args.budget) for b in args.batches}
        for kind, runner in engines.items():
            top1 = task_metric(common.batched(runner, data["test_x"]), data["test_y"], "classification")
            cost = [common.ratio(times[b][kind].ms, times[b]["plain"].ms) if kind == "aware" else "-"
                    for b in args.batches]
            rows.append([model, f"{label} {'accuracy-aware' if kind == 'aware' else 'plain'}",
                         units if kind == "aware" else "none", f"{top1:.2f}", f"{reference - top1:.2f}",
                         *(f"{times[b][kind].ms:.3f}" for b in args.batches), *cost])
            runner.close()
    return rows, steps_markdown(plan.int8)


def build(onnx_path: Path, backend: str, flavor: str, folder: Path, calib: np.ndarray, args):
    from lkca_deploy.backends.build import build_engine
    from lkca_deploy.backends.registry import get_backend

    be = get_backend(backend)
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NNCF / ORT quantizer chatter
        built = build_engine(onnx_path, backend, "int8", folder / f"int8{be.artifact_suffix}", calib=calib,
                             flavor=flavor)
    return be.load(built.artifact, threads=args.threads, **be.interleaved_load_options)


def steps_markdown(plan: dict) -> str:
    flavors = list(plan["steps"][0]["drop"])
    lines = ["| step | returned to float | " + " | ".join(f"drop {f}" for f in flavors) + " | kept |",
             "|---|---|" + "---|" * len(flavors) + "---|"]
    for i, step in enumerate(plan["steps"]):
        kept = "-" if step["unit"] is None else ("yes" if step["kept"] else "no")
        lines.append(f"| {i} | {step['unit'] or '(every unit INT8)'} | "
                     + " | ".join(f"{step['drop'][f]:.2f}" for f in flavors) + f" | {kept} |")
    return "\n".join(lines)


def fp16_rows(ckpt: Path, factor: float, folder: Path, data: dict) -> list[list]:
    from lkca_deploy.calibration import quantize
    from lkca_deploy.precision import headroom
    from lkca_deploy.precision.accuracy_aware import run_onnx
    from lkca_runtime.onnx_io import load_onnx

    model = load_onnx(export(ckpt, folder)["onnxruntime"])
    reference = run_onnx(model, data["test_x"])
    guarded, risks = headroom.to_fp16_with_headroom(model, headroom.tensor_ranges(model, data["calib"]))
    rows = []
    for label, fp16, kept in (("FP16 plain", quantize.to_fp16(copy.deepcopy(model)), "LayerNorm (default)"),
                              ("FP16 with headroom", guarded, (f"LayerNorm + {len(headroom.keep_fp32_nodes(risks))} "
                                                              f"nodes of {len(risks)} tensors past 65504/4"))):
        logits = run_onnx(fp16, data["test_x"])
        agree = float(np.mean(np.argmax(logits, 1) == np.argmax(reference, 1)) * 100)
        rows.append([f"outlier x{factor:g}", label, kept, f"{agree:.2f}%", str(not np.all(np.isfinite(logits)))])
    print(headroom.risks_table(risks) + "\n")
    return rows


if __name__ == "__main__":
    main()
