"""`verify` and `build-device`: prove a bundle's engines on this machine, torch-free.

verify: the chosen engine (or every engine with --all) runs on the bundle's golden samples with numpy and one
backend. Every engine gets a result, none stops the others: passed or failed (its golden check), skipped (its
backend is not installed here), refused (this machine cannot compute it as built, suitability.py) or error (it
raised while loading or running; the message is kept). TensorRT engines are the
ones valid on this device: the bundle's own when it was built on a machine like this, a cached device build, or
one the bundle's trtexec script wrote, adopted into the cache only when it passes.
build-device: build the TensorRT engines here from the bundle's ONNX with the script's settings, then prove them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkca_runtime.backends.registry import backend_status, get_loader
from lkca_runtime.backends.tensorrt import installed_version
from lkca_runtime.bundle import Manifest, engine_name, read_manifest
from lkca_runtime.device_build import BACKEND as TENSORRT
from lkca_runtime.device_build import choose_build, device_builds, provide_engine
from lkca_runtime.errors import UserError
from lkca_runtime.fingerprint import jetson_facts
from lkca_runtime.golden import GoldenSet
from lkca_runtime.jetpack import recipe_refusal
from lkca_runtime.machine import isa_summary, machine_facts
from lkca_runtime.predictor import choose_engine
from lkca_runtime.records import DeviceCache
from lkca_runtime.suitability import refusal
from lkca_runtime.verify_engine import EngineVerdict, golden_info, load_golden, verify_engine, verify_loaded


@dataclass
class BundleVerdict:
    """What `verify` found: one EngineVerdict per engine, and what it was measured with."""

    bundle: str
    golden: dict[str, Any]
    machine: dict[str, Any]
    checks: list[EngineVerdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every engine this machine claims to run passed: none failed or errored (skipped and refused ones are
        listed with their reason, not failed)."""
        return all(c.status not in ("failed", "error") for c in self.checks)

    @property
    def ran(self) -> bool:
        """Whether any engine ran here (a bundle none of whose engines can run is the user's to hear about)."""
        return any(c.status not in ("skipped", "refused") for c in self.checks)

    def exit_code(self) -> int:
        """0 when it passed, 1 when an engine failed or errored; UserError (exit 2) when no engine could run here.
        Called after the result is printed, so the JSON is always there."""
        if not self.ran:
            raise UserError(f"no engine of {self.bundle} can run here: " + "; ".join(dict.fromkeys(
                f"{c.engine}: {c.reason}" if c.status == "refused" else c.reason or "" for c in self.checks)))
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "passed": self.passed, "golden": self.golden, "machine": self.machine,
                "engines": [c.to_dict() for c in self.checks]}


def select_engines(manifest: Manifest, *, backend: str = "auto", precision: str | None = None,
                   engine: str | None = None, all_engines: bool = False) -> list[dict[str, Any]]:
    """--engine NAME, or --all (narrowed by backend/precision), or the engine the Predictor would choose.
    Device builds (TensorRT) count as engines of their own name."""
    listed = [e for e in manifest.engines if e["backend"] != TENSORRT or not device_builds(manifest)]
    candidates = listed + device_builds(manifest)
    if engine is not None:
        found = [e for e in candidates if engine_name(e) == engine]
        if not found:
            names = ", ".join(engine_name(e) for e in candidates) or "none"
            raise UserError(f"the bundle has no engine {engine!r}; it has: {names}")
        return found
    if all_engines:
        return [e for e in candidates if backend in ("auto", e["backend"]) and precision in (None, e["precision"])]
    if backend == TENSORRT and device_builds(manifest):

        return [choose_build(manifest, precision)]
    return [choose_engine(manifest.engines, backend, precision)]


def _verify_tensorrt(bundle_dir: Path, manifest: Manifest, build: dict[str, Any], golden: GoldenSet,
                    cache: DeviceCache) -> EngineVerdict:
    """The engine valid on this device for a recipe, checked now; skipped when none was built here yet."""
    name = engine_name(build)
    installed = installed_version()
    refusal = recipe_refusal(build, installed) if installed else None
    if refusal:  # the ONNX does not parse on this TensorRT: a failure to act on, not a check still to run
        return EngineVerdict(name, TENSORRT, build["precision"], "failed", failures=[refusal])
    try:
        path, entry, check = provide_engine(bundle_dir, manifest, build, golden, cache=cache, adopt_only=True)
    except UserError as why:
        return EngineVerdict(name, TENSORRT, build["precision"], "skipped",
                           reason=f"{why} (or lkca-deploy build-device {bundle_dir})")
    if check is not None:
        return check
    with get_loader(TENSORRT).load(path) as runner:
        return verify_loaded(bundle_dir, manifest, entry, runner, golden, mode="always", cache=cache)


def verify_bundle(bundle_dir: str | Path, *, backend: str = "auto", precision: str | None = None,
                  engine: str | None = None, all_engines: bool = False, threads: int | None = None) -> BundleVerdict:
    """Check engines of a bundle on this machine (see the module doc). UserError for a bundle without golden
    samples, an altered golden or engine file, or an unknown engine name."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    golden = load_golden(bundle_dir, manifest)
    cache = DeviceCache(bundle_dir)
    facts = machine_facts()
    result = BundleVerdict(str(bundle_dir), golden_info(manifest),
                         {"summary": isa_summary(facts), "jetson": jetson_facts(), "versions": facts["versions"]})
    selected = select_engines(manifest, backend=backend, precision=precision, engine=engine,
                              all_engines=all_engines)
    result.checks = [_verify_one(bundle_dir, manifest, e, golden, cache, threads) for e in selected]
    return result


def _verify_one(bundle_dir: Path, manifest: Manifest, engine: dict[str, Any], golden: GoldenSet,
                  cache: DeviceCache, threads: int | None) -> EngineVerdict:
    """One engine's result, whatever happens to it (see the module doc)."""
    name, backend, precision = engine_name(engine), engine["backend"], engine["precision"]
    installed, reason = backend_status(backend)
    if not installed:
        return EngineVerdict(name, backend, precision, "skipped", reason=reason)
    try:
        if backend == TENSORRT and "onnx" in engine:
            return _verify_tensorrt(bundle_dir, manifest, engine, golden, cache)
        why = refusal(bundle_dir, manifest, engine)
        if why is not None:
            return EngineVerdict(name, backend, precision, "refused", reason=why)
        return verify_engine(bundle_dir, manifest, engine, golden, threads=threads, cache=cache)
    except Exception as e:  # noqa: BLE001 -- kept as this engine's result: the others are still checked
        message = " ".join(str(e).split()) or type(e).__name__
        return EngineVerdict(name, backend, precision, "error", reason=f"{type(e).__name__}: {message}")


def build_device_engines(bundle_dir: str | Path, *, precision: str | None = None, all_engines: bool = False,
                         gpu_index: int = 0, echo: Callable[[str], None] | None = None) -> list[EngineVerdict]:
    """Build (or adopt, or find cached) the TensorRT engines for this device and prove each on the golden set."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    installed, reason = backend_status(TENSORRT)
    if not installed:
        raise UserError(reason)
    golden = load_golden(bundle_dir, manifest)
    builds = [b for b in device_builds(manifest) if precision in (None, b["precision"])] if all_engines \
        else [choose_build(manifest, precision)]
    if not builds:
        raise UserError(f"the bundle has no TensorRT ONNX at {precision}")
    cache = DeviceCache(bundle_dir)
    checks = []
    for build in builds:
        _, _, check = provide_engine(bundle_dir, manifest, build, golden, cache=cache, gpu_index=gpu_index, echo=echo)
        if check is None:  # found proven in the cache, or the bundle's own engine fits: check it again now
            checks.append(_verify_tensorrt(bundle_dir, manifest, build, golden, cache))
        else:
            checks.append(check)
    return checks
