"""Proving engines: the PyTorch FP32 reference on the evaluation split, parity and latency of any runner, what an
engine costs beyond that (load time, peak memory, end-to-end Predictor latency), and localising where a failing
engine first diverges. Used by the pipeline and by `parity` / `bench`.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lkca_deploy.backends.build import build_engine
from lkca_deploy.backends.registry import get_backend
from lkca_deploy.calibration.sources import load_calibration
from lkca_deploy.checkpoint import load_checkpoint
from lkca_deploy.data import load_arrays
from lkca_deploy.export import export_model, logits_module, logits_size
from lkca_deploy.measure.cost import measure_cost
from lkca_deploy.measure.e2e import EndToEnd, write_sample_images
from lkca_deploy.measure.footprint import peak_bytes_per_image
from lkca_deploy.measure.latency import sweep
from lkca_deploy.precision.plan import carry_plan
from lkca_deploy.reports.contract import EngineResult, Report
from lkca_deploy.targets import BACKEND_TARGETS
from lkca_runtime.backends.base import run_batched, sidecar_path, static_batch
from lkca_runtime.bundle import MANIFEST, check_engine_precision, read_manifest, require_whole
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import json_loads
from lkca_runtime.limits import check_fits, gib
from lkca_runtime.metrics import Thresholds, first_divergent_block, parity_meter, with_verdict
from lkca_runtime.onnx_io import load_onnx

EVAL_BATCH = 32
LOCALISE_SAMPLES = 64
DEFAULT_DATA = {"classification": "digits", "segmentation": "digit-scenes"}
E2E_BUDGET_S = 0.5  # seconds of timed Predictor calls per engine: enough for a p99 of ~100+ calls on small models


@dataclass
class EvalContext:
    """What every later stage reads: the checkpoint, its data, the PyTorch FP32 reference and calibration samples."""

    ckpt_dir: Path
    ckpt: object
    data: str
    x: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    calib: np.ndarray
    model: object  # the PyTorch FP32 reference (conv view)
    logits: str | None = None  # segmentation: where the engines' logits end (export's `logits`); None: input size

    @classmethod
    def load(cls, ckpt_dir: Path, data: str | None = None, *, data_root: str | None = None, download: bool = False,
             calib_samples: int = 0, seed: int = 0, logits: str | None = None) -> EvalContext:
        """The evaluation split (never used for calibration) and, when calib_samples > 0, that many calibration
        samples from the training split. logits: the engines' output as export_model's `logits` option says
        ("grid": the reference is PyTorch's grid logits too; parity upsamples both to the labels)."""
        import torch


        model, ckpt = load_checkpoint(ckpt_dir, view="conv")
        data = data or ckpt.meta.get("data") or DEFAULT_DATA[ckpt.config.task]
        x, labels = load_arrays(data, "test", ckpt.spec, data_root, download)
        logits = logits if ckpt.config.task == "segmentation" else None  # classifiers have one kind of logits
        net = logits_module(model, logits_size(model, ckpt.config.task, logits))
        with torch.no_grad():
            reference = np.concatenate([net(torch.from_numpy(x[i : i + EVAL_BATCH])).numpy()
                                        for i in range(0, len(x), EVAL_BATCH)])
        calib = np.zeros((0, *ckpt.spec.input_shape), np.float32)
        if calib_samples > 0:
            cal = load_calibration(data, ckpt.spec, samples=calib_samples, seed=seed,
                                   data_root=data_root, download=download)
            for message in cal.warnings:
                print(f"warning: {message}", file=sys.stderr)
            calib = cal.array
        return cls(ckpt_dir, ckpt, data, x, labels, reference, calib, model, logits)

    def reference_blocks(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            return {f"block_{i}": t.numpy() for i, t in enumerate(self.model.forward_blocks(torch.from_numpy(x)))}


def engine_logits(runner, x: np.ndarray) -> np.ndarray:
    """Run a runner over an array in batches its engine accepts (a static batch is padded)."""
    static = static_batch(runner)
    return run_batched(runner, x, step=static or EVAL_BATCH, static=static)


def engine_parity(runner, x, reference, labels, task: str, precision: str, thresholds=None) -> dict:
    meter = parity_meter(task)
    meter.update(engine_logits(runner, x), reference, labels)
    return with_verdict(meter.result(), precision, task, thresholds)


def engine_latency(runner, sample: np.ndarray, batches: Sequence[int], budget_s: float) -> dict:
    """The one latency protocol (reports.latency) on real preprocessed inputs at each batch size."""
    static = static_batch(runner)
    batches = [static] if static else list(batches)

    def make_input(b: int) -> np.ndarray:
        reps = -(-b // len(sample))
        return np.ascontiguousarray(np.concatenate([sample] * reps)[:b])

    return sweep(make_input, runner, batches, budget_s=budget_s)


LOCALISE_SAMPLES = 64


def localise_divergence(ctx: EvalContext, backend: str, precision: str, quantizer: str | None = None, *,
                        lowering: str = "auto", threads: int | None = None, plan_from: Path | None = None):
    """Where a failing engine first diverges: the same engine built from an export whose transformer blocks are
    extra outputs, compared block by block with PyTorch (cheaper than marking every tensor, which runs out of
    memory on transformers). plan_from: the export the engine was built from, whose reduced-precision plan (float
    units, FP16 headroom) the block export then follows. Returns (per-block errors, first divergent block) or
    (None, None) if unsupported."""
    with tempfile.TemporaryDirectory(prefix="lkca-blocks-") as tmp:
        tmp = Path(tmp)
        onnx_path = export_model(ctx.ckpt_dir, tmp / "blocks.onnx", lowering=lowering, logits=ctx.logits,
                                 target=BACKEND_TARGETS[backend], precision=precision, block_outputs=True).path
        if plan_from is not None:
            carry_plan(plan_from, onnx_path)
        be = get_backend(backend)
        built = build_engine(onnx_path, backend, precision, tmp / f"blocks{be.artifact_suffix}",
                             flavor=quantizer, calib=ctx.calib if precision == "int8" else None)
        x = ctx.x[:LOCALISE_SAMPLES]
        with be.load(built.artifact, threads=threads) as runner:
            outs = runner.run_all(x)
    engine = {k: v for k, v in outs.items() if k.startswith("block_")}
    return first_divergent_block(engine, ctx.reference_blocks(x))


def bundle_parity(bundle_dir: str | Path, data: str | None = None, thresholds=None, data_root: str | None = None,
                  download: bool = False, threads: int | None = None, localise: bool = True):
    """Re-prove every engine of a bundle against its own checkpoint in PyTorch FP32; returns a Report."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    require_whole(bundle_dir, manifest)  # the checkpoint, the reference of every verdict, included
    ctx = EvalContext.load(bundle_dir / "checkpoint", data, data_root=data_root, download=download,
                           logits=manifest.extra.get("logits"))
    task, results = manifest.task, []
    for e in manifest.engines:
        with get_backend(e["backend"]).load(bundle_dir / e["artifact"], threads=threads) as runner:
            check_engine_precision(e, runner.info.get("precision"))
            parity = engine_parity(runner, ctx.x, ctx.reference, ctx.labels, task, e["precision"], thresholds)
        results.append(EngineResult(e["backend"], e["precision"], e.get("lowering", "conv"), path=e["artifact"],
                                    parity=parity, extra={"quantizer": e.get("quantizer")}))
    return Report.on_this_machine(manifest.model["name"], task, results, dataset=ctx.data,
                                  thresholds=(thresholds or Thresholds()).to_dict())


def engine_cost(backend: str, artifact: str | Path, sample: np.ndarray | None, batches: Sequence[int], *,
                threads: int | None = None, images: Sequence[str | Path] = (), spec=None, task: str | None = None,
                class_names: Sequence[str] | None = None, e2e_budget_s: float = E2E_BUDGET_S):
    """(EngineCost, EndToEnd | None) of one engine: load time and peak memory in a torch-free child process of its
    own (measure/cost.py) and, given image files and the PreprocessSpec, the Predictor's latency per stage on them
    at batch 1 in the same child (measure/e2e.py). The engine loads as the Predictor loads it (default options)."""
    request = None
    if images:
        request = {"files": [str(f) for f in images], "spec": spec.to_dict(), "task": task or spec.task,
                   "class_names": list(class_names or spec.class_names), "budget_s": e2e_budget_s}
    cost, e2e = measure_cost(backend, artifact, sample=sample, batches=batches, threads=threads, e2e=request)
    return cost, (EndToEnd.from_dict(e2e) if e2e else None)


def _bundle_images(bundle_dir: Path, manifest, folder: Path) -> tuple[list[Path], str | None]:
    """Test images of the data set a bundle was proven on, as files; ([], why not) where it cannot be read here."""
    data = manifest.extra.get("data")
    if not data:
        return [], f"{bundle_dir} does not name its data set"
    try:
        return write_sample_images(data, manifest.task, folder / bundle_dir.name), None
    except UserError as e:
        return [], f"no end-to-end timings for {bundle_dir}: {e}"


def bench_artifacts(paths: Sequence[str | Path], batches: Sequence[int] = (1, 32), threads: int | None = None,
                    budget_s: float = 2.0, cost: bool = True) -> list[dict]:
    """Latency of artifacts (files with a sidecar) or of every engine of bundles, on random inputs of their shape.

    With `cost`, each row also holds "cost" (load time, peak memory) and, for a bundle's engines, "e2e" (the
    Predictor per stage on its data set's test images, where that data set can be read here; else "e2e_note")."""
    targets: list[tuple[str, Path, str, Path | None]] = []  # (backend, artifact, precision, bundle)
    for path in map(Path, paths):
        if path.is_dir():
            require_whole(path, read_manifest(path))
            targets += [(e["backend"], path / e["artifact"], e["precision"], path)
                        for e in read_manifest(path).engines]
            continue
        try:
            facts = json_loads(sidecar_path(path).read_text())
        except (OSError, ValueError):
            raise UserError(f"{path} is neither a bundle nor an artifact with a sidecar (build it with "
                            "lkca-deploy build)") from None
        targets.append((facts["backend"], path, facts.get("precision", "?"), None))
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="lkca-bench-") as tmp:
        images: dict[Path, tuple[list[Path], str | None]] = {}
        for backend, artifact, precision, bundle in targets:
            be = get_backend(backend)
            with be.load(artifact, threads=threads, **be.interleaved_load_options) as runner:
                shape = [d if isinstance(d, int) else 1 for d in runner.input_shape]
                per_image, counted = _bytes_per_image(artifact, bundle, shape)
                check_fits(max(batches) * per_image, f"--batches {max(batches)} on {artifact.name} ({gib(per_image)} "
                           f"per image: {counted})", "give smaller --batches")
                sample = rng.standard_normal((EVAL_BATCH, *shape[1:])).astype(np.float32)
                latency = engine_latency(runner, sample, batches, budget_s)
                row = {"backend": backend, "precision": precision, "artifact": str(artifact),
                       "latency": {b: s.to_dict() for b, s in latency.items()}, "info": runner.info}
            if cost:
                row.update(_bench_cost(backend, artifact, sample, batches, threads, bundle, images, Path(tmp)))
            rows.append(row)
    return rows


def _bytes_per_image(artifact: Path, bundle: Path | None, shape: list[int]) -> tuple[float, str]:
    """(bytes one image takes while the engine runs, what was counted): its graph's activations where the ONNX it
    was built from is at hand, else its input and as many output bytes."""
    graph = _source_onnx(artifact, bundle)
    if graph is not None:
        return peak_bytes_per_image(load_onnx(graph, load_external_data=False)), f"activations of {graph.name}"
    return 4.0 * float(np.prod(shape[1:])) * 2, f"inputs {'x'.join(map(str, shape[1:]))}, float32, and as many outputs"


def _source_onnx(artifact: Path, bundle: Path | None) -> Path | None:
    """The ONNX graph an engine computes: the artifact itself, or the export it was built from (in the onnx/ folder
    of the bundle holding it, or where the sidecar says it was)."""
    if artifact.suffix == ".onnx":
        return artifact
    try:
        facts = json_loads(sidecar_path(artifact).read_text())
    except (OSError, ValueError):
        return None
    origin = (facts.get("provenance") or {}).get("origin_onnx")
    bundle = bundle or next((p for p in artifact.resolve().parents if (p / MANIFEST).is_file()), None)
    candidates = [bundle / "onnx" / origin] if bundle is not None and origin else []
    candidates += [Path(facts["source_onnx"])] if facts.get("source_onnx") else []
    return next((c for c in candidates if c.is_file()), None)


def _bench_cost(backend, artifact, sample, batches, threads, bundle, images, tmp: Path) -> dict:
    files, note, manifest = [], None, None
    if bundle is not None:
        manifest = read_manifest(bundle)
        if bundle not in images:
            images[bundle] = _bundle_images(bundle, manifest, tmp)
        files, note = images[bundle]
    spent, e2e = engine_cost(backend, artifact, sample, batches, threads=threads, images=files,
                             spec=manifest.spec if manifest else None, task=manifest.task if manifest else None,
                             class_names=manifest.class_names if manifest else None)
    return {"cost": spent.to_dict(), "e2e": e2e.to_dict() if e2e else None, **({"e2e_note": note} if note else {})}
