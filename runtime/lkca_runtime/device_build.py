"""TensorRT engines built where they run, then proven before they serve.

A TensorRT engine runs only on the GPU model, TensorRT version (and driver) that built it, so the bundle carries
what the device needs instead: the baked TensorRT ONNX, its calibration cache and trtexec script, and under
`device_builds` in the manifest the one TensorRTSettings the script was written from. On the device,
`provide_engine`:

1. uses the bundle's own engine when the machine that built it is this one (same GPU and TensorRT);
2. else a cached engine whose key (GPU, compute capability, TensorRT version, driver, the ONNX's hash and the
   settings) is exactly this machine's (records.py; any other key is never loaded);
3. else adopts the engine the trtexec script wrote at the bundle's engine path (moving it out of the bundle, which
   is served only as its manifest lists it), or builds one from the ONNX with the same settings, and keeps it
   only when it passes the golden check (verify_engine.py).

Needs TensorRT (and CUDA) only when it loads or builds; the decisions are plain functions, tested without a GPU.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from lkca_runtime.backends.base import (
    PRECISIONS,
    input_facts,
    load_onnx,
    onnx_precision,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from lkca_runtime.backends.registry import get_loader
from lkca_runtime.backends.tensorrt import current_gpu_facts
from lkca_runtime.backends.trtexec import (
    BUILD_OPTIONS,
    COMPAT_FACTS,
    TensorRTSettings,
    engine_mismatches,
    parse_device,
    precision_plan,
)
from lkca_runtime.bundle import Manifest, engine_name, inside, require_hashes
from lkca_runtime.errors import UserError
from lkca_runtime.fingerprint import fingerprint_key, jetson_facts
from lkca_runtime.fsutil import sha256_file
from lkca_runtime.golden import GoldenSet
from lkca_runtime.jetpack import check_recipe_fits
from lkca_runtime.machine import machine_facts
from lkca_runtime.records import DeviceCache
from lkca_runtime.verify_engine import EngineVerdict, verify_loaded

BACKEND = "tensorrt"
# Without timings the most exact engine wins, as in the runtime's choice.


def device_builds(manifest: Manifest, backend: str = BACKEND) -> list[dict[str, Any]]:
    """The manifest's recipes for engines the device builds itself."""
    builds = manifest.extra.get("device_builds") or []
    return [b for b in builds if isinstance(b, dict) and b.get("backend") == backend and b.get("onnx")]


def choose_build(manifest: Manifest, precision: str | None = None) -> dict[str, Any]:
    """The recipe for `precision` (default: the most exact one the bundle has)."""
    builds = device_builds(manifest)
    if not builds:
        raise UserError(
            "the bundle holds no TensorRT ONNX to build an engine from: rebuild it with "
            "lkca-deploy pipeline --backends ...,tensorrt"
        )
    if precision is None:
        return min(builds, key=lambda b: PRECISIONS.index(b["precision"]) if b["precision"] in PRECISIONS else len(PRECISIONS))
    found = [b for b in builds if b["precision"] == precision]
    if not found:
        offered = ", ".join(b["precision"] for b in builds)
        raise UserError(f"the bundle has no TensorRT ONNX at {precision}; it has: {offered}")
    return found[0]


# ---------------------------------------------------------------- facts and keys (pure)


def gpu_driver(gpu_index: int = 0, *, gpus: list[dict[str, Any]] | None = None, root: str | Path = "/") -> str | None:
    """The GPU driver version from nvidia-smi; on a Jetson, where the driver ships with L4T, 'L4T <release>'."""
    rows = machine_facts()["gpus"] if gpus is None else gpus
    if gpu_index < len(rows) and rows[gpu_index].get("driver") not in (None, "", "N/A", "[N/A]"):
        return rows[gpu_index]["driver"]
    jetson = jetson_facts(root)
    return f"L4T {jetson['l4t']}" if jetson and jetson.get("l4t") else None


def build_key(build: dict[str, Any], here: dict[str, Any], onnx_sha256: str) -> dict[str, Any]:
    """Everything a device-built engine depends on: any difference means another engine."""
    return {
        "gpu_name": here.get("gpu_name"),
        "compute_capability": here.get("compute_capability"),
        "tensorrt_version": here.get("tensorrt_version"),
        "driver": here.get("driver"),
        "onnx_sha256": onnx_sha256,
        "settings": build.get("settings") or {},
    }


def build_arguments(build: dict[str, Any], bundle_dir: Path, folder: Path) -> tuple[Path, str | None, dict[str, Any]]:
    """(ONNX, device, keyword options) for TensorRTBackend.build from the recipe's settings: the calibration
    cache read from the bundle, the timing cache kept beside the engine being built."""
    settings = TensorRTSettings.from_dict(build.get("settings") or {"precision": build["precision"]})
    options = {k: getattr(settings, k) for k in BUILD_OPTIONS}
    options["calib_cache"] = str(inside(bundle_dir, build["calib_cache"])) if settings.calib_cache else None
    options["timing_cache"] = str(folder / (settings.timing_cache or f"model.{settings.precision}.timing.cache"))
    device = f"dla:{settings.dla_core}" if settings.dla_core is not None else None
    return inside(bundle_dir, build["onnx"]), device, {k: v for k, v in options.items() if v is not None}


def script_engine(bundle_dir: Path, manifest: Manifest, build: dict[str, Any]) -> Path | None:
    """The engine the bundle's trtexec script wrote on this device: at the recipe's engine path, and not the
    bundle's own listed file (that one was built elsewhere and is judged by its sidecar)."""
    path = inside(bundle_dir, build["engine"])
    if not path.is_file():
        return None
    listed = manifest.artifact(build["engine"])
    return None if listed is not None and listed["sha256"] == sha256_file(path) else path


def bundle_engine_here(bundle_dir: Path, manifest: Manifest, build: dict[str, Any],
                       here: dict[str, Any]) -> dict[str, Any] | None:
    """The bundle's own engine for this recipe when its sidecar says it was built on a GPU and TensorRT like
    these (a pipeline run on the device itself, or on an identical one)."""
    for engine in manifest.engines:
        if engine["backend"] != BACKEND or engine_name(engine) != engine_name(build):
            continue
        try:
            facts = read_sidecar(inside(bundle_dir, engine["artifact"]), BACKEND)
        except UserError:
            continue
        if not engine_mismatches(facts.get("target", {}), here):
            return engine
    return None


# ---------------------------------------------------------------- on the device (TensorRT needed)


def here_facts(gpu_index: int = 0) -> dict[str, Any]:
    """This GPU's name and compute capability, the TensorRT version and the driver."""
    return {**current_gpu_facts(gpu_index), "driver": gpu_driver(gpu_index)}


def _write_adopted_sidecar(engine: Path, onnx_path: Path, build: dict[str, Any], here: dict[str, Any],
                           device: str | None) -> None:
    """trtexec writes no sidecar: describe the engine it built from the recipe and this machine's facts."""
    settings = TensorRTSettings.from_dict(build.get("settings") or {"precision": build["precision"]})
    model = load_onnx(onnx_path)
    plan = precision_plan(settings.precision, str(here["tensorrt_version"]), onnx_precision=onnx_precision(model),
                          calib_cache=settings.calib_cache is not None, dla=settings.dla_core is not None)
    gpu_index, dla_core = parse_device(device)
    write_sidecar(
        engine,
        backend=BACKEND,
        precision=settings.precision,
        source_onnx=onnx_path,
        library_version=str(here["tensorrt_version"]),
        device=f"dla:{dla_core}" if dla_core is not None else f"cuda:{gpu_index}",
        options={"strongly_typed": plan.strongly_typed, "builder_flags": list(plan.flags),
                 "quantization": plan.quantization},
        settings=settings.to_dict(),
        provenance={"built_by": "the bundle's trtexec script", "adopted_by": "lkca-deploy verify"},
        target={k: here.get(k) for k in COMPAT_FACTS},
        input=input_facts(model),
    )


def provide_engine(
    bundle_dir: str | Path,
    manifest: Manifest,
    build: dict[str, Any],
    golden: GoldenSet,
    *,
    cache: DeviceCache | None = None,
    gpu_index: int = 0,
    adopt_only: bool = False,
    echo=None,
) -> tuple[Path | None, dict[str, Any], EngineVerdict | None]:
    """(engine file, its engine entry, the golden check run now; None when a cached or the bundle's own engine
    was taken, whose check is the caller's (first-use)).

    A new engine (built here, or written by the trtexec script) is checked on the golden samples and cached only
    when it passes; when it fails the file is None and the check says why. `adopt_only`: never build, only adopt
    a script-built engine (UserError when there is none). A recipe whose ONNX needs a newer TensorRT than this
    device's is refused (UserError naming the JetPack to use, jetpack.py)."""
    bundle_dir = Path(bundle_dir)
    cache = cache or DeviceCache(bundle_dir)
    echo = echo or (lambda _line: None)
    files = [build["onnx"], *([build["calib_cache"]] if build.get("calib_cache") else [])]
    require_hashes(bundle_dir, manifest, files)
    here = here_facts(gpu_index)
    check_recipe_fits(build, here.get("tensorrt_version"))  # one line naming the JetPack to use
    key = build_key(build, here, manifest.artifact(build["onnx"])["sha256"])
    name = engine_name(build)
    entry = {**{k: build[k] for k in ("backend", "precision", "quantizer", "lowering") if k in build},
             "golden": build.get("golden"), "device_built": True, "cache_identity": f"{name}@{_key_name(key)}"}
    own = bundle_engine_here(bundle_dir, manifest, build, here)
    if own is not None:
        return inside(bundle_dir, own["artifact"]), own, None
    found = cache.find_engine(name, key)
    if found is not None:
        engine = found / f"model.{build['precision']}.engine"
        return engine, {**entry, "artifact": str(engine)}, None
    backend = get_loader(BACKEND)
    with tempfile.TemporaryDirectory(prefix="lkca-trt-") as tmp:
        onnx_path, device, options = build_arguments(build, bundle_dir, Path(tmp))
        engine = Path(tmp) / f"model.{build['precision']}.engine"
        written = script_engine(bundle_dir, manifest, build)
        if written is not None:
            echo(f"adopting {written} (written by the bundle's trtexec script) if it passes the golden check")
            shutil.copyfile(written, engine)
            _write_adopted_sidecar(engine, onnx_path, build, here, device)
            origin = "trtexec script"
        elif adopt_only:
            raise UserError(f"no engine at {build['engine']}: run sh {build['script']} on this device first")
        else:
            echo(f"building the TensorRT {build['precision']} engine for {here['gpu_name']} "
                 f"(TensorRT {here['tensorrt_version']}) from {build['onnx']} ...")
            backend.build(onnx_path, engine, precision=build["precision"], device=device, **options)
            origin = "lkca-deploy build-device"
        with backend.load(engine, device=device) as runner:
            check = verify_loaded(bundle_dir, manifest, {**entry, "artifact": str(engine)}, runner, golden,
                                 mode="always", cache=cache)
        if not check.passed:
            echo(f"the {origin} engine failed its golden check and was not kept")
            return None, entry, check
        stored = cache.store_engine(name, key, [engine, sidecar_path(engine)],
                                    extra={"origin": origin, "check": check.to_dict()})
        if written is not None:  # adopted: out of the bundle, which is served only as its manifest lists it
            _remove_script_output(bundle_dir, manifest, written)
    engine = stored / engine.name
    return engine, {**entry, "artifact": str(engine)}, check


def _remove_script_output(bundle_dir: Path, manifest: Manifest, engine: Path) -> None:
    """Delete what the trtexec script wrote into the bundle (the engine, its timing cache) once the engine is
    adopted into the device cache; files the manifest lists are never touched."""
    for path in (engine, engine.with_name(f"{engine.stem}.timing.cache")):
        rel = path.relative_to(bundle_dir).as_posix()
        if path.is_file() and manifest.artifact(rel) is None:
            path.unlink()


def _key_name(key: dict[str, Any]) -> str:
    return fingerprint_key(key)
