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

from .backends.registry import BACKENDS
from .errors import UserError
from .proof import (
    DEFAULT_DATA,
    EVAL_BATCH,
    EvalContext,
    engine_latency,
    engine_parity,
    localise_divergence,
)
from .targets import BACKEND_TARGETS

DEFAULT_BACKENDS = BACKENDS  # every backend: those not installed are skipped with their reason
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MODEL = "lkca_vit_nano"


@dataclass
class PipelineOptions:
    backends: Sequence[str] = DEFAULT_BACKENDS
    precisions: Sequence[str] = DEFAULT_PRECISIONS
    lowering: str = "auto"
    batches: Sequence[int] = (1, 32)
    calib_samples: int = 512
    epochs: int | None = None
    data_root: str | None = None
    download: bool = False
    bench_budget_s: float = 1.0
    threads: int | None = None
    force: bool = False
    seed: int = 0
    thresholds: object = None  # reports.parity.Thresholds; None: the defaults
    extra_precisions: dict = field(default_factory=dict)  # backend -> precisions offered only there (bf16)
    baseline: str | Path | None = None  # a report.json or bundle to compare the new report against
    compare_thresholds: object = None  # reports.compare.CompareThresholds; None: the defaults


class Stages:
    """A progress display per stage on stderr: what runs, and how long it took."""

    def __init__(self, total: int, echo: Callable[[str], None] | None = None):
        self.total, self.done = total, 0
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))

    def run(self, title: str, fn, *args, **kwargs):
        self.done += 1
        self.echo(f"[{self.done}/{self.total}] {title} ...")
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.echo(f"[{self.done}/{self.total}] {title}: {time.perf_counter() - started:.1f} s")
        return result


def run_pipeline(source: str | Path | None = None, data: str | None = None, out: str | Path = "lkca-bundle",
                 opts: PipelineOptions | None = None, echo: Callable[[str], None] | None = None):
    """Run the whole path and write the bundle at ``out``; returns the Report (also in out/reports/)."""
    from .bundle import BundleWriter
    from .reports.compare import load_report

    opts = opts or PipelineOptions()
    unknown = [b for b in opts.backends if b not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend {unknown[0]!r}; valid: {', '.join(BACKENDS)}")
    # Read before anything runs: a bad baseline fails in a second, and `--out` may be replacing it.
    baseline = load_report(opts.baseline) if opts.baseline is not None else None
    stages = Stages(6, echo)
    with BundleWriter(out, force=opts.force) as bundle, tempfile.TemporaryDirectory(prefix="lkca-work-") as work:
        work = Path(work)
        ckpt_dir = stages.run("model", _model_stage, source, data, bundle.path / "checkpoint", opts)
        bundle.register_dir("checkpoint", "checkpoint")
        ctx = stages.run("reference and calibration data", EvalContext.load, ckpt_dir, data, data_root=opts.data_root,
                         download=opts.download, calib_samples=opts.calib_samples, seed=opts.seed)
        exports = stages.run("export and lower", _export_stage, ctx, bundle, opts)
        engines = stages.run("build engines", _build_stage, ctx, exports, work, opts)
        results = stages.run("parity and latency", _measure_stage, ctx, engines, bundle, opts)
        report = stages.run("report and bundle", _finish, ctx, results, bundle, opts, baseline)
    return report


# ------------------------------------------------------------------------------------------------------- stages


def _model_stage(source, data, dest: Path, opts: PipelineOptions) -> Path:
    """A checkpoint inside the bundle: copied from CKPT_DIR, or trained from a zoo name (default lkca_vit_nano)."""
    from .checkpoint import read_checkpoint
    from .models.zoo import get_config
    from .train import TrainOptions, default_batch_size, default_epochs, train

    if source is not None and Path(source).is_dir():
        read_checkpoint(source)  # validates before copying
        shutil.copytree(source, dest)
        return dest
    name = str(source or DEFAULT_MODEL)
    data = data or DEFAULT_DATA[get_config(name).task]
    train(name, data, out=dest, opts=TrainOptions(epochs=opts.epochs or default_epochs(data),
                                                  batch_size=default_batch_size(data), seed=opts.seed,
                                                  data_root=opts.data_root, download=opts.download))
    (dest / "optimizer.safetensors").unlink(missing_ok=True)  # a deploy bundle does not resume training
    return dest


def _export_stage(ctx: EvalContext, bundle, opts: PipelineOptions) -> dict[str, tuple[Path, str]]:
    """One ONNX per target the backends need (its lowering planned for that target), plus the plain conv one.

    Returns backend -> (ONNX path, lowering label).
    """
    from .export import export_model

    def export(name: str, lowering: str, target: str) -> tuple[Path, str]:
        rel = f"onnx/model.{name}.onnx"
        result = export_model(ctx.ckpt_dir, bundle.path / rel, lowering=lowering, target=target)
        bundle.register(rel, "onnx")
        return bundle.path / rel, _lowering_label(result)

    exports = {"plain": export("conv", "conv", "onnxruntime-cpu")}
    for backend in opts.backends:
        target = BACKEND_TARGETS[backend]
        exports[backend] = exports["plain"] if opts.lowering == "conv" else export(target, opts.lowering, target)
    return exports


def _lowering_label(result) -> str:
    """The lowering a file holds, e.g. "matmul", "conv", or "tiled+crop" when the plan mixes them."""
    report = result.lowering
    used = sorted({c.strategy for c in report.lowered}) if report is not None else []
    return "+".join(used) or "conv"


@dataclass
class _Built:
    backend: str
    precision: str
    lowering: str
    quantizer: str | None
    artifact: Path | None = None
    skipped: str | None = None
    extra_files: list[Path] = field(default_factory=list)  # e.g. TensorRT's trtexec line and calibration cache


def _build_stage(ctx: EvalContext, exports, work: Path, opts: PipelineOptions) -> list[_Built]:
    from .backends.build import build_engine
    from .backends.registry import get_backend

    built = []
    for backend in opts.backends:
        be = get_backend(backend, require_available=False)
        ok, reason = be.available()
        if not ok and not be.built_on_device:
            built += [_Built(backend, p, exports[backend][1], None, skipped=reason)
                      for p in dict.fromkeys(opts.precisions) if p in be.precisions]
            continue
        onnx_path, lowering = exports[backend]
        precisions = [p for p in (*opts.precisions, *opts.extra_precisions.get(backend, ())) if p in be.precisions]
        for precision in dict.fromkeys(precisions):
            for quantizer in (be.int8_flavors if precision == "int8" else (None,)):
                folder = work / backend / f"{precision}{'-' + quantizer if quantizer else ''}"
                folder.mkdir(parents=True)
                result = build_engine(onnx_path, backend, precision, folder / f"model.{precision}{be.artifact_suffix}",
                                      flavor=quantizer, calib=ctx.calib if precision == "int8" else None)
                built.append(_Built(backend, precision, lowering, quantizer, result.artifact, result.deferred,
                                    [] if result.artifact else list(result.files)))
    return built


def _measure_stage(ctx: EvalContext, engines: list[_Built], bundle, opts: PipelineOptions):
    from .backends.registry import get_backend
    from .reports.render import EngineResult

    results = []
    for item in engines:
        rel_dir = f"{item.backend}/{item.precision}{'-' + item.quantizer if item.quantizer else ''}"
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
            info = dict(runner.info)
        size = sum((bundle.path / f).stat().st_size for f in files if not f.endswith(".json"))
        result = EngineResult(item.backend, item.precision, item.lowering, path=files[0], size_bytes=size,
                              parity=parity, latency=latency,
                              extra={"quantizer": item.quantizer, **info})
        if not parity["passed"]:
            result.blocks, result.first_divergent = localise_divergence(
                ctx, item.backend, item.precision, item.quantizer, lowering=opts.lowering, threads=opts.threads)
        results.append((item, result))
    return results


def _kind_of(path: Path) -> str:
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".trtexec.sh") else path.suffix
    return {".onnx": "onnx", ".xml": "openvino-ir", ".bin": "openvino-weights", ".engine": "tensorrt-engine",
            ".cache": "calibration-cache", ".trtexec.sh": "trtexec", ".sh": "trtexec",
            ".json": "sidecar"}.get(suffix, "sidecar")


def _finish(ctx: EvalContext, results, bundle, opts: PipelineOptions, baseline=None):
    from . import __version__
    from .reports.compare import compare
    from .reports.parity import Thresholds
    from .reports.render import Report, write_report

    config = ctx.ckpt.config
    report = Report.on_this_machine(config.name, config.task, [r for _, r in results], dataset=ctx.data,
                                    thresholds=(opts.thresholds or Thresholds()).to_dict(),
                                    extra={"toolkit_version": __version__, "eval_samples": len(ctx.x),
                                           "calibration_samples": len(ctx.calib)})
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
                          p50_ms={b: s.p50_ms for b, s in result.latency.items()})
    bundle.set_extra(data=ctx.data, passed=report.passed)
    return report
