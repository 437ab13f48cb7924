"""The paper's own LKCA models, imported from its trainer's checkpoint layout: params, exactness, speed.

For each official LKCA configuration (models/create_model.py of the authors' trainer; vit-2m-lkca, largevit-cnn and
largevit-vit are one model, timed once): random weights in the trainer's layout are written as its final bare state
dict, imported with `lkca_deploy.official.import_official`, and
  exactness  max |imported - paper| / max |paper| over the logits, the paper's forward being the independent plain
             torch code in tests/models/official_reference.py (float32), and the same for the best engine;
  speed      PyTorch eager (the paper's own form: the shared kernel as a conv, torch.no_grad, OMP passive) against
             this project's fp32 engines (export_model, lowering auto for each backend's target, build_engine,
             registry load with ORT spinning off), ms per call at each batch, all timed in ONE run with
             interleaved rounds (median of the per-round medians).
Takes a few minutes on 2 cores:
    python benchmarks/official_models.py --markdown
    python benchmarks/official_models.py --models vit-05m-lkca --dataset T-IMNET --batches 1
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "models"))  # the paper's forward, written for the tests
import _common as common

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/peers.py: PyTorch threads must not spin

TARGETS = {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino-cpu"}
SAME_MODEL = {"largevit-cnn": "vit-2m-lkca", "largevit-vit": "vit-2m-lkca"}  # same create_model.py arguments
EAGER = "PyTorch eager"


def imported(name: str, dataset: str, folder: Path, seed: int) -> tuple[Path, dict]:
    """(checkpoint dir, the paper-layout state) of `name` with random weights, through the real import."""
    import torch
    from official_reference import official_state

    from lkca_deploy.official import DATASETS, import_official

    ds = DATASETS[dataset]
    state = official_state(name, ds.img_size, ds.classes, seed)
    src = folder / f"{name}-{dataset}.pth"
    torch.save(state, src)
    return import_official(src, name, dataset, folder / f"{name}-{dataset}", force=True), state


def engines(ckpt: Path, folder: Path, threads: int) -> dict[str, object]:
    from lkca_deploy.backends.build import build_engine
    from lkca_deploy.backends.registry import get_backend
    from lkca_deploy.export import export_model

    runs = {}
    for backend_name, target in TARGETS.items():
        backend = get_backend(backend_name)
        onnx_path = folder / f"{ckpt.name}-{backend_name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the self-check's "no data set here: random inputs" note
            export_model(ckpt, onnx_path, lowering="auto", target=target, check_samples=8)
        artifact = build_engine(onnx_path, backend_name, "fp32",
                                folder / f"{ckpt.name}.{backend_name}.fp32{backend.artifact_suffix}").artifact
        runs[f"{backend_name} fp32"] = backend.load(artifact, threads=threads, **backend.interleaved_load_options)
    return runs


def measure(name: str, args, folder: Path) -> list:
    import torch
    from official_reference import max_relative_error, official_forward

    from lkca_deploy.checkpoint import load_checkpoint

    ckpt, state = imported(name, args.dataset, folder, args.seed)
    model, loaded = load_checkpoint(ckpt, view="conv")
    shape = loaded.spec.input_shape
    x = common.inputs(shape, 8, args.seed)
    with torch.no_grad():
        paper = official_forward(name, state, torch.from_numpy(x)).numpy()
        eager_err = max_relative_error(model(torch.from_numpy(x)), paper)

    def eager(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    runs = {EAGER: eager, **engines(ckpt, folder, args.threads)}
    errors = {label: max_relative_error(np.asarray(run(x)), paper) for label, run in runs.items()}
    row = [name, f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", f"{eager_err:.1e}"]
    for batch in args.batches:
        timed = common.time_interleaved(runs, common.inputs(shape, batch, args.seed), repeats=args.repeats,
                                        budget_per_engine=args.budget)
        best = min((label for label in runs if label != EAGER), key=lambda label: timed[label].ms)
        row += [timed[EAGER].ms, f"{timed[best].ms:.3g} ({best})", common.ratio(timed[EAGER].ms, timed[best].ms)]
    engine_errors = [errors[label] for label in runs if label != EAGER]
    row.insert(3, f"{max(engine_errors):.1e}")
    return row


def main() -> None:
    import torch

    from lkca_deploy.models.zoo import OFFICIAL_LKCA
    from lkca_deploy.official import DATASETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser)
    parser.add_argument("--models", default=",".join(m for m in OFFICIAL_LKCA if m not in SAME_MODEL),
                        help="comma-separated official names (default: every distinct LKCA configuration)")
    parser.add_argument("--dataset", default="CIFAR10", choices=list(DATASETS), help="official data set name")
    parser.set_defaults(budget=0.6, repeats=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    same = [f"{a} = {b}" for a, b in SAME_MODEL.items() if b in names]
    common.print_header(
        f"The paper's LKCA models imported ({args.dataset}, {DATASETS[args.dataset].img_size} px, random weights)",
        args.threads,
        [(f"exactness: max |x - paper| / max |paper| over logits of 8 inputs, float32; engines fp32, best of "
          f"{', '.join(TARGETS)} (lowering auto); {args.repeats} interleaved rounds, {args.budget} s per engine"),
         *([f"one model, one row: {'; '.join(same)}"] if same else [])],
        markdown=args.markdown,
    )
    headers = ["model", "params", "import exactness", "engine exactness"]
    for batch in args.batches:
        headers += [f"b{batch} eager ms", f"b{batch} best engine ms", f"b{batch} speed-up"]
    with common.work_folder(args.work) as folder:
        rows = [measure(name, args, folder) for name in names]
    common.print_table(headers, rows, markdown=args.markdown)


if __name__ == "__main__":
    main()
