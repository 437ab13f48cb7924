"""Prove a bundle's engines on this machine against the golden samples the bundle carries: numpy and one backend,
no PyTorch and no data set. Used by `lkca-deploy verify` and by the Predictor before it serves.

A check runs the engine on the golden inputs, compares with the stored PyTorch FP32 reference (golden.py) and
judges against the tolerance the manifest recorded for that engine at build time. Results are recorded in the
device cache (records.py) under the engine's file hash and this machine's fingerprint (fingerprint.py), so
a Predictor checks an engine once per machine.

"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lkca_runtime.backends.base import run_batched, static_batch
from lkca_runtime.backends.registry import get_loader
from lkca_runtime.bundle import Manifest, engine_files, engine_name, inside, require_hashes
from lkca_runtime.errors import UserError
from lkca_runtime.fingerprint import machine_fingerprint
from lkca_runtime.golden import GoldenSet, judge_outputs, read_golden, tolerance_for
from lkca_runtime.records import DeviceCache

VERIFY_MODES = ("first-use", "always", "off")
GOLDEN_BATCH = 32  # golden samples run at once where the engine takes any batch


def engine_id(manifest: Manifest, engine: dict[str, Any]) -> str:
    """The engine's name and the hash of its artifact: a changed engine file is a new engine to prove. A device-
    built engine carries its own (name and build key)."""
    if engine.get("cache_identity"):
        return engine["cache_identity"]
    entry = manifest.artifact(engine["artifact"]) or {}
    return f"{engine_name(engine)}@{str(entry.get('sha256', 'unlisted'))[:16]}"


@dataclass
class EngineVerdict:
    """One engine's golden check on this machine."""

    engine: str
    backend: str
    precision: str
    status: str  # passed | failed | skipped (backend not installed) | refused (cannot run here) | error (raised)
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    tolerance: dict[str, float] = field(default_factory=dict)
    at_build: dict[str, Any] | None = None  # what it achieved on the same samples when the bundle was built
    reason: str | None = None  # why it was skipped or refused, or what it raised
    cached: bool = False  # taken from the device cache, not run now
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def refusal(self) -> str:
        """One line: which engine, what it measured, what it needed."""
        return (
            f"engine {self.engine} failed its golden check on this machine: {'; '.join(self.failures)} "
            f"(pass verify='off' to serve it anyway)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the golden set and tolerances


def golden_info(manifest: Manifest) -> dict[str, Any] | None:
    """The manifest's golden entry {path, sha256, samples, seed}, or None for a bundle built without one."""
    info = manifest.extra.get("golden")
    return info if isinstance(info, dict) and info.get("path") else None


def load_golden(bundle_dir: str | Path, manifest: Manifest) -> GoldenSet:
    """The bundle's golden set, its hash checked against the manifest; UserError when absent or altered."""
    info = golden_info(manifest)
    if info is None:
        raise UserError(
            f"bundle {bundle_dir} has no golden samples: rebuild it with lkca-deploy pipeline --golden N"
        )
    entry = manifest.artifact(info["path"])
    if entry is None:
        raise UserError(f"bundle {bundle_dir} does not list its golden file {info['path']}: rebuild the bundle")
    golden = read_golden(inside(Path(bundle_dir), info["path"]), entry["sha256"])
    if golden.task != manifest.task:
        raise UserError(f"golden file {info['path']} is for {golden.task}, the bundle is {manifest.task}")
    return golden


def engine_tolerance(manifest: Manifest, engine: dict[str, Any], golden: GoldenSet) -> dict[str, float]:
    """The tolerance recorded with the engine; the default thresholds' where none was (device-built engines)."""
    recorded = (engine.get("golden") or {}).get("tolerance")
    if isinstance(recorded, dict) and recorded:
        return {k: float(v) for k, v in recorded.items()}
    return tolerance_for(manifest.task, engine["precision"], None, golden.samples)


# ---------------------------------------------------------------- running a check


def verify_runner(runner, golden: GoldenSet, precision: str, tolerance: dict[str, float]) -> dict[str, Any]:
    """Run a loaded engine on the golden inputs and judge it: golden.judge_outputs's dict."""
    static = static_batch(runner)
    outputs = run_batched(runner, golden.x, step=static or runner.max_batch or GOLDEN_BATCH, static=static)
    return judge_outputs(golden, outputs, precision, tolerance)


def _verdict_from(engine: dict[str, Any], result: dict[str, Any], tolerance, seconds: float, cached: bool):
    metrics = {k: v for k, v in result.items() if k not in ("passed", "failures")}
    return EngineVerdict(
        engine=engine_name(engine),
        backend=engine["backend"],
        precision=engine["precision"],
        status="passed" if result.get("passed") else "failed",
        metrics=metrics,
        failures=list(result.get("failures", [])),
        tolerance=dict(tolerance),
        at_build=(engine.get("golden") or {}).get("achieved"),
        cached=cached,
        seconds=seconds,
    )


def verify_loaded(
    bundle_dir: str | Path,
    manifest: Manifest,
    engine: dict[str, Any],
    runner,
    golden: GoldenSet,
    *,
    mode: str = "always",
    cache: DeviceCache | None = None,
    identity: str | None = None,
) -> EngineVerdict:
    """Check an engine already loaded as `runner`. mode "first-use": a result recorded for this engine and
    machine fingerprint is returned without running; "always": run and record. `identity`: the cache name of
    the engine (default engine_id)."""
    cache = cache or DeviceCache(bundle_dir)
    identity = identity or engine_id(manifest, engine)
    fingerprint = machine_fingerprint(engine["backend"])
    tolerance = engine_tolerance(manifest, engine, golden)
    if mode == "first-use":
        recorded = cache.load_result(identity, fingerprint)
        if recorded is not None:
            return _verdict_from(engine, recorded["result"], tolerance, 0.0, cached=True)
    started = time.perf_counter()
    result = verify_runner(runner, golden, engine["precision"], tolerance)
    check = _verdict_from(engine, result, tolerance, time.perf_counter() - started, cached=False)
    try:
        cache.record_result(identity, fingerprint, {**result, "seconds": check.seconds})
    except UserError as e:  # an unwritable cache costs a re-check next time, never a refusal
        import warnings

        warnings.warn(f"golden check not recorded: {e}", stacklevel=2)
    return check


def verify_engine(
    bundle_dir: str | Path,
    manifest: Manifest,
    engine: dict[str, Any],
    golden: GoldenSet,
    *,
    threads: int | None = None,
    device: str | None = None,
    cache: DeviceCache | None = None,
) -> EngineVerdict:
    """Load one engine of the bundle (files checked against the manifest first) and check it now."""
    bundle_dir = Path(bundle_dir)
    require_hashes(bundle_dir, manifest, engine_files(manifest, engine))
    artifact = inside(bundle_dir, engine["artifact"])
    with get_loader(engine["backend"]).load(artifact, device=device, threads=threads) as runner:
        return verify_loaded(bundle_dir, manifest, engine, runner, golden, mode="always", cache=cache)


