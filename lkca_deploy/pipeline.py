"""The main job: a model -> ONNX lowered per target -> engines per precision -> parity + latency -> a bundle.

Every stage is a package function of its own (train, export_model, build_engine, parity, latency, BundleWriter);
this module only runs them in order, for every backend and precision asked, and writes the bundle atomically.
Backends that are not installed are listed as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lkca_deploy import __version__
from lkca_deploy.backends.build import build_engine
from lkca_deploy.backends.registry import get_backend
from lkca_deploy.bundle import BundleWriter
from lkca_deploy.bundle_readme import device_check_section
from lkca_deploy.calibration import CALIB_SAMPLES
from lkca_deploy.checkpoint import read_checkpoint
from lkca_deploy.compare import compare, load_report
from lkca_deploy.export import INPUT_NAME, OUTPUT_NAME, export_model
from lkca_deploy.interrupts import raise_if_interrupted
from lkca_deploy.lowering.registry import CONV
from lkca_deploy.measure.e2e import write_sample_images
from lkca_deploy.models.zoo import get_config
from lkca_deploy.onnx_meta import TENSORRT_COMPATIBILITY, read_metadata
from lkca_deploy.polygraphy_golden import INPUTS_REL, OUTPUTS_REL, POLYGRAPHY_DIR, write_polygraphy_golden
from lkca_deploy.precision import DEFAULT_MAX_DROP
from lkca_deploy.precision.plan import plan_precision
from lkca_deploy.proof import (
    DEFAULT_DATA,
    EVAL_BATCH,
    EvalContext,
    engine_cost,
    engine_latency,
    engine_parity,
    localise_divergence,
)
from lkca_deploy.ranges import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, check
from lkca_deploy.reports.contract import EngineResult, Report
from lkca_deploy.reports.render import write_report
from lkca_deploy.targets import BACKEND_TARGETS, DEFAULT_TARGET, TARGETS, get_target
from lkca_deploy.train import TrainOptions, default_batch_size, default_epochs, train
from lkca_runtime.backends.registry import BACKENDS
from lkca_runtime.backends.trtexec import SCRIPT_SUFFIX, TensorRTSettings
from lkca_runtime.bundle import engine_name, recipe_name
from lkca_runtime.errors import UserError
from lkca_runtime.golden import GOLDEN_REL, make_golden, pick_samples, tolerance_for, write_golden
from lkca_runtime.metrics import Thresholds
from lkca_runtime.verify_engine import verify_runner

DEFAULT_BACKENDS = BACKENDS  # every backend: those not installed are skipped with their reason
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MODEL = "lkca_vit_nano"


@dataclass
class PipelineOptions:
    backends: Sequence[str] = DEFAULT_BACKENDS
    precisions: Sequence[str] = DEFAULT_PRECISIONS
    lowering: str = "auto"
    batches: Sequence[int] = (1, 32)
    calib_samples: int = CALIB_SAMPLES
    epochs: int | None = None
    data_root: str | None = None
    download: bool = False
    bench_budget_s: float = 1.0
    threads: int | None = None
    force: bool = False
    seed: int = 0
    thresholds: object = None  # lkca_runtime.metrics.Thresholds; None: the defaults
    extra_precisions: dict = field(default_factory=dict)  # backend -> precisions offered only there (bf16)
    cost: bool = True  # load time, peak memory and end-to-end Predictor latency per engine (proof.engine_cost)
    e2e_budget_s: float = 0.5  # seconds of timed Predictor calls per engine
    baseline: str | Path | None = None  # a report.json or bundle to compare the new report against
    compare_thresholds: object = None  # compare.CompareThresholds; None: the defaults
    golden: int = 64  # golden samples stored in the bundle for the device's own check (0: none)
    # INT8 engines: units go back to float until the top-1/mIoU drop on a validation subset of the training split
    # is at most this many points (precision/accuracy_aware.py); None: plain INT8, every unit quantized.
    max_drop: float | None = DEFAULT_MAX_DROP
    max_float_units: int | None = None  # None: a quarter of the units
    # Segmentation engines end at the grid logits: the Predictor upsamples once, to each image's own size
    # (export.py's `logits`); "input" keeps the model's input-size output.
    logits: str = "grid"
    # The target TensorRT's engine recipes are written for (targets.py): tensorrt, or a JetPack line's
    # (jetson-jp5, jetson-jp6.0, jetson-jp6, jetson-jp7); None: BACKEND_TARGETS's.
    target: str | None = None

    def __post_init__(self) -> None:
        if self.target is not None and get_target(self.target).backend != "tensorrt":
            tensorrt = ", ".join(t.name for t in TARGETS.values() if t.backend == "tensorrt")
            raise UserError(f"pipeline --target names the device TensorRT's recipes are written for: one of "
                            f"{tensorrt} (the other backends' targets follow from --backends)")
        for name, valid in (("calib_samples", POSITIVE_INT), ("epochs", POSITIVE_INT), ("threads", POSITIVE_INT),
                            ("bench_budget_s", POSITIVE), ("seed", NON_NEGATIVE_INT)):
            check(name, getattr(self, name), valid)
        if not self.batches:
            raise UserError("batches: give at least one batch size")
        for batch in self.batches:
            check("batches", batch, POSITIVE_INT)


class Stages:
    """A progress display per stage on stderr: what runs, and how long it took."""

    def __init__(self, total: int, echo: Callable[[str], None] | None = None):
        self.total, self.done = total, 0
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))

    def run(self, title: str, fn, *args, **kwargs):
        raise_if_interrupted()
        self.done += 1
        self.echo(f"[{self.done}/{self.total}] {title} ...")
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.echo(f"[{self.done}/{self.total}] {title}: {time.perf_counter() - started:.1f} s")
        return result


def run_pipeline(source: str | Path | None = None, data: str | None = None, out: str | Path = "lkca-bundle",
                 opts: PipelineOptions | None = None, echo: Callable[[str], None] | None = None):
    """Run the whole path and write the bundle at ``out``; returns the Report (also in out/reports/)."""
    opts = opts or PipelineOptions()
    unknown = [b for b in opts.backends if b not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend {unknown[0]!r}; valid: {', '.join(BACKENDS)}")
    # Read before anything runs: a bad baseline fails in a second, and `--out` may be replacing it.
    baseline = load_report(opts.baseline) if opts.baseline is not None else None
    stages = Stages(7, echo)
    with BundleWriter(out, force=opts.force) as bundle, tempfile.TemporaryDirectory(prefix="lkca-work-") as work:
        work = Path(work)
        ckpt_dir = stages.run("model", _model_stage, source, data, bundle.path / "checkpoint", opts)
        bundle.register_dir("checkpoint", "checkpoint")
        ctx = stages.run("reference and calibration data", EvalContext.load, ckpt_dir, data, data_root=opts.data_root,
                         download=opts.download, calib_samples=opts.calib_samples, seed=opts.seed,
                         logits=opts.logits)
        golden = _golden_stage(ctx, bundle, opts)
        exports = stages.run("export and lower", _export_stage, ctx, bundle, opts)
        plan = stages.run("reduced-precision plan", _precision_stage, ctx, exports, opts)
        engines = stages.run("build engines", _build_stage, ctx, exports, work, opts)
        results = stages.run("parity and latency", _measure_stage, ctx, engines, bundle, opts, golden)
        _note_float_parts(results, plan)
        report = stages.run("report and bundle", _finish, ctx, results, bundle, opts, baseline, plan)
    return report


# ------------------------------------------------------------------------------------------------------- stages


def _model_stage(source, data, dest: Path, opts: PipelineOptions) -> Path:
    """A checkpoint inside the bundle: copied from CKPT_DIR, or trained from a zoo name (default lkca_vit_nano)."""
    if source is not None and Path(source).is_dir():
        read_checkpoint(source)  # validates before copying
        shutil.copytree(source, dest)
        return dest
    name = str(source or DEFAULT_MODEL)
    data = data or DEFAULT_DATA[get_config(name).task]
    train(name, data, out=dest, opts=TrainOptions(epochs=default_epochs(data) if opts.epochs is None else opts.epochs,
                                                  batch_size=default_batch_size(data), seed=opts.seed,
                                                  data_root=opts.data_root, download=opts.download))
    (dest / "optimizer.safetensors").unlink(missing_ok=True)  # a deploy bundle does not resume training
    return dest


def _golden_stage(ctx: EvalContext, bundle, opts: PipelineOptions):
    """The golden samples the device re-proves engines with (golden.py), written into the bundle; None for 0."""
    if not opts.golden:
        return None
    golden = make_golden(ctx.x, ctx.labels, ctx.reference, ctx.ckpt.config.task, samples=opts.golden, seed=opts.seed)
    digest = write_golden(golden, bundle.path / GOLDEN_REL)
    bundle.register(GOLDEN_REL, "golden")
    polygraphy = _polygraphy_golden(ctx, golden, bundle, opts)
    bundle.set_extra(golden={"path": GOLDEN_REL, "sha256": digest, "samples": golden.samples, "seed": opts.seed,
                             "polygraphy": polygraphy})
    return golden


def _polygraphy_golden(ctx: EvalContext, golden, bundle, opts: PipelineOptions) -> dict:
    """The golden samples again in Polygraphy's format, with the full reference outputs (polygraphy_golden.py)."""
    import numpy as np


    reference = np.asarray(ctx.reference)[pick_samples(len(ctx.x), opts.golden, opts.seed)]
    info = write_polygraphy_golden(bundle.path / POLYGRAPHY_DIR, golden.x, reference, input_name=INPUT_NAME,
                                   output_name=OUTPUT_NAME, batch=TensorRTSettings("fp32").max_batch)
    for rel in (INPUTS_REL, OUTPUTS_REL):
        bundle.register(rel, "golden")
    return {"inputs": INPUTS_REL, "outputs": OUTPUTS_REL, **info}


def _golden_entry(runner, golden, task: str, precision: str, opts: PipelineOptions) -> dict | None:
    """What an engine achieved on the golden samples here, and the tolerance the device must meet."""
    if golden is None:
        return None
    tolerance = tolerance_for(task, precision, opts.thresholds, golden.samples)
    achieved = verify_runner(runner, golden, precision, tolerance)
    return {"achieved": achieved, "tolerance": tolerance}


def _export_stage(ctx: EvalContext, bundle, opts: PipelineOptions) -> dict[str, tuple[Path, str]]:
    """One ONNX per target the backends need (its lowering planned for that target), plus the plain conv one, and
    one planned for INT8 where the target's INT8 differs (TensorRT's grouped convs: a MatMul mixer instead).

    Returns backend (or "backend:int8") -> (ONNX path, lowering label); _export_for picks one.
    """
    def export(name: str, lowering: str, target: str, precision: str | None = None) -> tuple[Path, str]:
        rel = f"onnx/model.{name}.onnx"
        result = export_model(ctx.ckpt_dir, bundle.path / rel, lowering=lowering, target=target, logits=ctx.logits,
                              precision=precision)
        bundle.register(rel, "onnx")
        return bundle.path / rel, _lowering_label(result)

    if ctx.logits:  # segmentation: how parity (bundle_parity) must read the engines
        bundle.set_extra(logits=ctx.logits)

    exports = {"plain": export(CONV, CONV, DEFAULT_TARGET)}
    for backend in opts.backends:
        target = opts.target if backend == "tensorrt" and opts.target else BACKEND_TARGETS[backend]
        exports[backend] = exports["plain"] if opts.lowering == CONV else export(target, opts.lowering, target)
        if opts.lowering == "auto" and "int8" in opts.precisions and get_target(target).int8_group_multiple:
            exports[f"{backend}:int8"] = export(f"{target}-int8", "auto", target, precision="int8")
    return exports


def _export_for(exports: dict[str, tuple[Path, str]], backend: str, precision: str) -> tuple[Path, str]:
    """The export a backend's engine at `precision` is built from (see _export_stage)."""
    return exports.get(f"{backend}:{precision}", exports[backend])


def _precision_stage(ctx: EvalContext, exports, opts: PipelineOptions):
    """Accuracy-aware INT8 and FP16 headroom decided on the exports and written into their metadata, which
    build_engine obeys for every backend (precision/plan.py)."""
    int8_backends = [b for b in opts.backends if b in exports]
    return plan_precision({label: path for label, (path, _) in exports.items()},
                          search_on=int8_backends[0] if int8_backends else "plain", calib=ctx.calib, data=ctx.data,
                          spec=ctx.ckpt.spec, task=ctx.ckpt.config.task, int8="int8" in opts.precisions,
                          fp16="fp16" in opts.precisions, max_drop=opts.max_drop,
                          max_float_units=opts.max_float_units, calib_samples=opts.calib_samples,
                          calib_seed=opts.seed, data_root=opts.data_root, download=opts.download)


def _note_float_parts(results, plan) -> None:
    """Each reduced-precision engine's report entry says which of its parts run in float, and why."""
    for item, result in results:
        note = plan.float_note(item.source, item.precision) if item.source is not None else None
        if note and result.status != "skipped":
            result.extra["float_parts"] = note


def _lowering_label(result) -> str:
    """The lowering a file holds, e.g. "matmul", "conv", or "tiled+crop" when the plan mixes them."""
    report = result.lowering
    used = sorted({c.strategy for c in report.lowered}) if report is not None else []
    return "+".join(used) or CONV


@dataclass
class _Built:
    backend: str
    precision: str
    lowering: str
    quantizer: str | None
    artifact: Path | None = None
    skipped: str | None = None
    extra_files: list[Path] = field(default_factory=list)  # e.g. TensorRT's trtexec line and calibration cache
    source: Path | None = None  # the export it was built from, with the reduced-precision plan in its metadata
    golden: dict | None = None  # achieved on the golden samples + the device's tolerance


def _build_stage(ctx: EvalContext, exports, work: Path, opts: PipelineOptions) -> list[_Built]:
    built = []
    for backend in opts.backends:
        be = get_backend(backend, require_available=False)
        ok, reason = be.available()
        if not ok and not be.built_on_device:
            built += [_Built(backend, p, _export_for(exports, backend, p)[1], None, skipped=reason)
                      for p in dict.fromkeys(opts.precisions) if p in be.precisions]
            continue
        precisions = [p for p in (*opts.precisions, *opts.extra_precisions.get(backend, ())) if p in be.precisions]
        for precision in dict.fromkeys(precisions):
            onnx_path, lowering = _export_for(exports, backend, precision)
            for quantizer in (be.int8_flavors if precision == "int8" else (None,)):
                folder = work / engine_name({"backend": backend, "precision": precision, "quantizer": quantizer})
                folder.mkdir(parents=True)
                result = build_engine(onnx_path, backend, precision, folder / f"model.{precision}{be.artifact_suffix}",
                                      flavor=quantizer, calib=ctx.calib if precision == "int8" else None)
                # A backend built on the device keeps its device files even when built here: engines do not move.
                keep = list(result.files) if be.built_on_device or not result.artifact else []
                built.append(_Built(backend, precision, lowering, quantizer, result.artifact, result.deferred, keep,
                                    source=onnx_path))
    return built


def _measure_stage(ctx: EvalContext, engines: list[_Built], bundle, opts: PipelineOptions, golden=None):
    results = []
    for item in engines:
        rel_dir = engine_name(vars(item))
        for f in item.extra_files:
            bundle.add_file(f, f"{rel_dir}/{f.name}", _kind_of(f))
        if item.skipped:
            results.append((item, EngineResult.skipped(item.backend, item.precision, item.lowering, item.skipped)))
            continue
        files = bundle.add_artifact(item.artifact, rel_dir, _kind_of(item.artifact))
        with get_backend(item.backend).load(item.artifact, threads=opts.threads) as runner:
            parity = engine_parity(runner, ctx.x, ctx.reference, ctx.labels, ctx.ckpt.config.task, item.precision,
                                   opts.thresholds)
            latency = engine_latency(runner, ctx.x[:EVAL_BATCH], opts.batches, opts.bench_budget_s)
            item.golden = _golden_entry(runner, golden, ctx.ckpt.config.task, item.precision, opts)
            info = dict(runner.info)
        size = sum((bundle.path / f).stat().st_size for f in files if not f.endswith(".json"))
        result = EngineResult(item.backend, item.precision, item.lowering, path=files[0], size_bytes=size,
                              parity=parity, latency=latency,
                              extra={"quantizer": item.quantizer, **info})
        if not parity["passed"]:
            result.blocks, result.first_divergent = localise_divergence(
                ctx, item.backend, item.precision, item.quantizer, lowering=opts.lowering, threads=opts.threads,
                plan_from=item.source)
        results.append((item, result))
    if opts.cost:
        _cost_of_engines(ctx, results, opts)
    return results


def _cost_of_engines(ctx: EvalContext, results, opts: PipelineOptions) -> None:
    """Load time, peak memory and the Predictor's latency per stage of every engine that ran, each in a torch-free
    child process of its own (proof.engine_cost), on test images of the data set written out as PNG files."""
    ran = [(item, result) for item, result in results if result.status != "skipped"]
    if not ran:
        return
    task = ctx.ckpt.config.task
    with tempfile.TemporaryDirectory(prefix="lkca-e2e-") as folder:
        files = write_sample_images(ctx.data, task, folder, data_root=opts.data_root, download=opts.download,
                                    seed=opts.seed)
        for item, result in ran:
            result.cost, result.e2e = engine_cost(item.backend, item.artifact, ctx.x[:EVAL_BATCH], opts.batches,
                                                  threads=opts.threads, images=files, spec=ctx.ckpt.spec, task=task,
                                                  e2e_budget_s=opts.e2e_budget_s)


def _kind_of(path: Path) -> str:
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".trtexec.sh") else path.suffix
    return {".onnx": "onnx", ".xml": "openvino-ir", ".bin": "openvino-weights", ".engine": "tensorrt-engine",
            ".cache": "calibration-cache", ".trtexec.sh": "trtexec", ".sh": "trtexec",
            ".json": "sidecar"}.get(suffix, "sidecar")


def _finish(ctx: EvalContext, results, bundle, opts: PipelineOptions, baseline=None, plan=None):
    config = ctx.ckpt.config
    report = Report.on_this_machine(config.name, config.task, [r for _, r in results], dataset=ctx.data,
                                    thresholds=(opts.thresholds or Thresholds()).to_dict(),
                                    extra={"toolkit_version": __version__, "eval_samples": len(ctx.x),
                                           "calibration_samples": len(ctx.calib),
                                           **(plan.to_dict() if plan is not None else {})})
    if baseline is not None:
        doc, label = baseline
        report.comparison = compare(doc, report.to_dict(), opts.compare_thresholds, base_label=label,
                                    new_label="this run").to_dict()
    write_report(report, bundle.path / "reports")
    bundle.register_dir("reports", "report")
    bundle.set_model(config.name, config.task, config.to_dict(), ctx.ckpt.spec)
    bundle.set_versions(report.versions)
    for item, result in results:
        if result.status == "skipped":
            continue
        bundle.add_engine(item.backend, item.precision, result.path, lowering=item.lowering,
                          quantizer=item.quantizer, passed=result.status == "ok",
                          p50_ms={b: s.p50_ms for b, s in result.latency.items()},
                          **({"golden": item.golden} if item.golden else {}),
                          **({"float_parts": result.extra["float_parts"]} if "float_parts" in result.extra else {}))
    device_builds = [d for d in (_device_build_entry(item, ctx, opts) for item, _ in results if item.extra_files) if d]
    if plan is not None:
        bundle.set_extra(**plan.to_dict())
    bundle.set_extra(data=ctx.data, passed=report.passed)
    rows = compatibility_rows(device_builds)
    if device_builds:
        bundle.set_extra(device_builds=device_builds, compatibility=rows)
    _bundle_readme(bundle, config, device_builds, rows)
    return report


def _bundle_readme(bundle, config, device_builds: list[dict], rows: list[dict]) -> None:
    """README.md: which Jetson each engine recipe parses on, and how a device checks the bundle, with the runtime
    and with Polygraphy (bundle_readme.py)."""
    text = bundle_readme(config.name, rows) if rows else f"# {config.name}: a bundle written by lkca-deploy\n"
    golden = bundle.extra.get("golden") or {}
    text += device_check_section(bundle.path, engines=bundle.engines, device_builds=device_builds,
                                 polygraphy=golden.get("polygraphy"))
    bundle.add_text("README.md", text, "readme")


def _device_build_entry(item: _Built, ctx: EvalContext, opts: PipelineOptions) -> dict | None:
    """How the device builds this engine itself (TensorRT): the baked ONNX, script and calibration cache in the
    bundle, the one TensorRTSettings the script was written from, and the tolerance to prove it with."""
    if item.backend != "tensorrt":
        return None
    rel_dir = engine_name(vars(item))
    names = [f.name for f in item.extra_files]
    # The baked ONNX build_engine wrote beside the engine (<engine stem>.<precision>.onnx).
    onnx = next((n for n in names if n.endswith(f".{item.precision}.onnx")), None)
    if onnx is None:
        return None
    cache = next((n for n in names if n.endswith(".calib.cache")), None)
    golden = min(opts.golden, len(ctx.x)) or None  # the golden set's own size (golden.pick_samples)
    baked = next(f for f in item.extra_files if f.name == onnx)
    stamp = read_metadata(baked).get(TENSORRT_COMPATIBILITY) or {}
    return {
        "backend": item.backend,
        "precision": item.precision,
        "quantizer": item.quantizer,
        "lowering": item.lowering,
        "onnx": f"{rel_dir}/{onnx}",
        "script": f"{rel_dir}/{onnx}{SCRIPT_SUFFIX}",
        "engine": f"{rel_dir}/model.{item.precision}.engine",  # where the script writes it
        "calib_cache": f"{rel_dir}/{cache}" if cache else None,
        "settings": TensorRTSettings(item.precision).to_dict(),
        # the oldest TensorRT whose parser takes the ONNX, and the JetPacks that ship one (build_engine's stamp)
        "min_tensorrt": stamp.get("min_tensorrt"),
        "jetpacks": stamp.get("jetpacks", []),
        "golden": {"tolerance": tolerance_for(ctx.ckpt.config.task, item.precision, opts.thresholds, golden)}
        if golden else None,
    }


def compatibility_rows(device_builds: list[dict]) -> list[dict]:
    """Per engine recipe: the oldest TensorRT that parses its ONNX and the JetPacks it parses on (manifest and
    README; the device refuses a recipe its TensorRT is too old for, jetpack.check_recipe_fits)."""
    return [{"recipe": recipe_name(d), "onnx": d["onnx"],
             "min_tensorrt": d.get("min_tensorrt"), "jetpacks": d.get("jetpacks", [])} for d in device_builds]


def bundle_readme(model: str, rows: list[dict]) -> str:
    """The bundle's README: what it holds for a Jetson and which JetPacks each engine recipe parses on."""
    table = "\n".join(f"| {r['recipe']} | `{r['onnx']}` | {r['min_tensorrt'] or 'none known'} | "
                      f"{', '.join(r['jetpacks']) or 'none'} |" for r in rows)
    return f"""# {model}: a bundle written by lkca-deploy

`manifest.json` lists every file with its sha256. TensorRT engines run only on the GPU and TensorRT that built
them, so for a Jetson this bundle holds a recipe per precision (the ONNX, its trtexec script, a calibration cache
for INT8): build on the device with `sh <recipe>.trtexec.sh` or `lkca-deploy build-device`, then `verify`.

## Which Jetson each engine recipe parses on

| recipe | ONNX | oldest TensorRT | JetPack |
|---|---|---|---|
{table}

A device with an older TensorRT refuses the recipe in one line naming the JetPack to flash, or the
`lkca-deploy pipeline --target` that writes for the JetPack at hand (the same table is `compatibility` in
`manifest.json`).
"""
