"""What TensorRT will do, decided without TensorRT: version dispatch, precision plan, profile shapes, and the one
settings object every TensorRT build is made from (the Python build, the trtexec line and script, the rebuild
hint, the sidecar and the bundle manifest all read the same TensorRTSettings).

Pure functions: tested on machines where TensorRT cannot be installed. Facts and their sources: docs/tensorrt.md.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from lkca_runtime.backends.base import check_options, check_precision, load_onnx, onnx_precision
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_write_text
from lkca_runtime.jetpack import advice, describe_recipe, dla_releases, parse_version

NAME = "tensorrt"
PRECISIONS = ("fp32", "fp16", "int8")

SCRIPT_SUFFIX = ".trtexec.sh"
# The script knows only the major version it finds; each line is written for the first release of that major
# that runs on a Jetson with DLA (JetPack 6.1/6.2: 10.3; JetPack 7.2.2: 11.4.1; docs/jetson.md). 11.0-11.3 have
# no DLA at all. TensorRT 8 (JetPack 5.1, 6.0) gets its own line when the export was made for it.
SCRIPT_VERSIONS = {"11": "11.4.1", "10": "10.3.0"}


# ---------------------------------------------------------------- version dispatch (pure)


def strongly_typed_only(version: str) -> bool:
    """TensorRT 11 removed weak typing: every network is strongly typed."""
    return parse_version(version)[0] >= 11


# Which TensorRT releases place layers on a Jetson's DLA (docs/tensorrt.md, section 3; docs/jetson.md): said by
# check, the script and the refusal below.
DLA_RELEASES = dla_releases()


def dla_supported(version: str) -> bool:
    """DLA: TensorRT 8.x and up to 10.7 (JetPack 5.1 to 6.2), none in 10.8-11.3 (JetPack 7.0-7.2; 11.4.0: Windows
    on ARM only), back from 11.4.1 (AGX Orin, JetPack 7.2.2)."""
    v = parse_version(version)
    return v < (10, 8) or v >= (11, 4, 1)


@dataclass(frozen=True)
class PrecisionPlan:
    strongly_typed: bool
    flags: tuple[str, ...]  # BuilderFlag names, e.g. ("INT8", "FP16"); trtexec spells them --int8 --fp16
    quantization: str | None  # "explicit" (Q/DQ in the ONNX), "implicit" (calibration cache) or None


def precision_plan(
    precision: str, version: str, *, onnx_precision: str, calib_cache: bool = False, dla: bool = False
) -> PrecisionPlan:
    """How TensorRT `version` builds `precision` from an ONNX that computes in `onnx_precision`."""
    if dla and not dla_supported(version):
        raise UserError(f"TensorRT {version} cannot place layers on a Jetson's DLA: use the GPU, or {DLA_RELEASES}")
    if dla and precision == "fp32":
        raise UserError("DLA runs fp16 or int8 only: build with --precision fp16 or int8")
    if precision == "int8" and onnx_precision == "fp32":
        if strongly_typed_only(version):
            raise UserError(
                f"TensorRT {version} has no implicit INT8 calibration: give it the Q/DQ ONNX that build_engine bakes"
            )
        if not calib_cache:
            raise UserError("int8 from an fp32 ONNX needs a TensorRT calibration cache (calib_cache=...)")
        # Layers without a scale fall back to fp16 rather than fp32; DLA cannot run fp32 at all.
        return PrecisionPlan(False, ("INT8", "FP16"), "implicit")
    if strongly_typed_only(version):
        return PrecisionPlan(True, (), "explicit" if precision == "int8" else None)
    if precision == "int8":
        if dla:
            raise UserError(
                "DLA on TensorRT 10 takes INT8 from a calibration cache, not Q/DQ: build with the fp32 ONNX and "
                "calib_cache (build_engine does this for device dla:N)"
            )
        # INT8 alone: the float parts (LayerNorm, residuals) stay fp32, as in the Q/DQ graph ORT runs.
        return PrecisionPlan(False, ("INT8",), "explicit")
    return PrecisionPlan(False, ("FP16",) if precision == "fp16" else (), None)


def parse_device(device: str | None) -> tuple[int, int | None]:
    """'cuda', 'cuda:1', 'gpu' or 'dla:0' -> (GPU index, DLA core or None)."""
    text = (device or "cuda").lower()
    kind, _, index = text.partition(":")
    if kind not in ("cuda", "gpu", "dla") or (index and not index.isdigit()) or (kind == "dla" and not index):
        raise UserError(f"unknown TensorRT device {device!r}: use cuda, cuda:N or dla:N")
    if kind == "dla":
        return 0, int(index)
    return int(index or 0), None


# ---------------------------------------------------------------- profile shapes (pure)


@dataclass(frozen=True)
class BatchProfile:
    min: int = 1
    opt: int = 1
    max: int = 32

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise UserError(
                f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}"
            )

    def static(self) -> BatchProfile:
        """DLA runs static shapes only: every bound at the optimum."""
        return BatchProfile(self.opt, self.opt, self.opt)


def batch_profile(
    min_batch: int = 1, opt_batch: int = 1, max_batch: int = 32, *, dla: bool = False
) -> BatchProfile:
    profile = BatchProfile(min_batch, opt_batch, max_batch)
    return profile.static() if dla else profile


def profile_shapes(
    input_shape: tuple[int | None, ...], profile: BatchProfile
) -> dict[str, tuple[int, ...]] | None:
    """min/opt/max input shapes for a dynamic batch; None when the input is fully static."""
    batch, *rest = input_shape
    if any(d is None for d in rest):
        raise UserError(
            f"TensorRT profiles here vary the batch only, but the input {tuple(input_shape)} has other dynamic "
            "dimensions: re-export with a fixed image size"
        )
    if batch is not None:
        return None
    return {k: (getattr(profile, k), *rest) for k in ("min", "opt", "max")}


# ---------------------------------------------------------------- build settings


@dataclass(frozen=True)
class TensorRTSettings:
    """How one engine is built. Cache files are paths relative to the engine's folder (or absolute)."""

    precision: str
    dla_core: int | None = None  # None: the GPU; N: DLA core N with GPU fallback
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 32
    workspace_mib: int | None = None
    allow_tf32: bool = False  # off: fp32 stays fp32 (TF32 rounds matmuls to a 10-bit mantissa)
    calib_cache: str | None = None  # TensorRT 10 implicit INT8 from an fp32 ONNX (DLA)
    timing_cache: str | None = None

    def __post_init__(self):
        check_precision(self.precision, PRECISIONS, NAME)
        self.profile()  # refuses an impossible batch profile now, not at build time

    @classmethod
    def from_options(cls, precision: str, device: str | None = None, **options: Any) -> TensorRTSettings:
        """From a build call's keyword options (BUILD_OPTIONS); `device` cuda[:N] or dla:N."""
        check_options(options, BUILD_OPTIONS, "tensorrt build")
        paths = {k: str(options[k]) for k in ("calib_cache", "timing_cache") if options.get(k)}
        rest = {k: v for k, v in options.items() if k not in ("calib_cache", "timing_cache")}
        return cls(precision, dla_core=parse_device(device)[1], **rest, **paths)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorRTSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def profile(self) -> BatchProfile:
        return batch_profile(self.min_batch, self.opt_batch, self.max_batch, dla=self.dla_core is not None)

    def file(self, name: str | None, folder: Path) -> Path | None:
        """A cache path resolved against the engine's folder."""
        return Path(folder) / name if name else None

    def with_files_named_beside(self, folder: Path) -> TensorRTSettings:
        """The same settings with cache paths that lie in `folder` written as bare names (bundles move)."""
        def rel(name: str | None) -> str | None:
            if not name:
                return None
            path = Path(folder) / name
            return path.name if path.resolve().parent == Path(folder).resolve() else str(path.resolve())

        return replace(self, calib_cache=rel(self.calib_cache), timing_cache=rel(self.timing_cache))


BUILD_OPTIONS = tuple(f.name for f in fields(TensorRTSettings) if f.name not in ("precision", "dla_core"))


# ---------------------------------------------------------------- trtexec


def trtexec_command(
    onnx_path: Path,
    settings: TensorRTSettings,
    *,
    engine_path: Path,
    tensorrt_version: str = "10",
    relative_to: Path | None = None,
) -> str:
    """The trtexec line that builds `engine_path` from `onnx_path` with TensorRT `tensorrt_version`.

    It builds what `TensorRTBackend.build` builds from the same settings, TF32 included (trtexec turns TF32 on
    unless told --noTF32). Paths are written relative to `relative_to` when given (a script that cd's to its
    own folder); cache names in the settings are resolved against the engine's folder.
    """
    from lkca_runtime.onnx_io import input_spec

    model = load_onnx(onnx_path)
    spec = input_spec(model)
    folder = Path(engine_path).parent
    calib_cache = settings.file(settings.calib_cache, folder)
    timing_cache = settings.file(settings.timing_cache, folder)
    plan = precision_plan(
        settings.precision,
        tensorrt_version,
        onnx_precision=onnx_precision(model),
        calib_cache=calib_cache is not None,
        dla=settings.dla_core is not None,
    )

    def path(p: Path) -> str:
        return os.path.relpath(Path(p).resolve(), Path(relative_to).resolve()) if relative_to else str(p)

    args = ["trtexec", f"--onnx={path(onnx_path)}", f"--saveEngine={path(engine_path)}"]
    args += ["--stronglyTyped"] if plan.strongly_typed else [f"--{flag.lower()}" for flag in plan.flags]
    if plan.quantization == "implicit":
        args.append(f"--calib={path(calib_cache)}")
    if settings.dla_core is not None:
        args += [f"--useDLACore={settings.dla_core}", "--allowGPUFallback"]
    shapes = profile_shapes(spec.shape, settings.profile())
    if shapes:
        args += [f"--{k}Shapes={spec.name}:{'x'.join(map(str, shape))}" for k, shape in shapes.items()]
    if timing_cache is not None:
        args.append(f"--timingCacheFile={path(timing_cache)}")
    if settings.workspace_mib is not None:
        args.append(f"--memPoolSize=workspace:{int(settings.workspace_mib)}")
    fp32_layers = fp32_layer_names(model) if not plan.strongly_typed and settings.precision == "fp16" else []
    if fp32_layers:  # weak typing may run them in FP16 whatever the ONNX's casts say: obey the ONNX's plan
        args += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in fp32_layers)]
    if not settings.allow_tf32:
        args.append("--noTF32")
    return " ".join(shlex.quote(a) for a in args)


# metadata_props keys build_engine writes into the ONNX a device builds from (JSON values).
TENSORRT_COMPATIBILITY = "tensorrt_compatibility"  # min_tensorrt, the TensorRT versions and JetPacks that parse it
FP16_FP32_NODES = "fp16_fp32_nodes"  # nodes of an FP16 ONNX that a weakly typed TensorRT build must keep FP32


def _metadata_json(model, key: str):
    text = next((p.value for p in model.metadata_props if p.key == key), None)
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return None


def fp32_layer_names(model) -> list[str]:
    """The nodes of an FP16 ONNX that build_engine kept FP32 (its metadata): TensorRT names their layers alike."""
    names = _metadata_json(model, FP16_FP32_NODES)
    return [str(n) for n in names] if isinstance(names, list) else []


def min_tensorrt_of(model) -> str | None:
    """The oldest TensorRT whose parser takes the ONNX, as build_engine stamped it (None: not stamped)."""
    stamp = _metadata_json(model, TENSORRT_COMPATIBILITY)
    return stamp.get("min_tensorrt") if isinstance(stamp, dict) else None


def write_trtexec_script(onnx_path: Path, settings: TensorRTSettings, *, engine_path: Path | None = None) -> Path:
    """Write `<onnx>.trtexec.sh`: a ready command for building the engine on the target (a Jetson) itself.

    It holds the TensorRT 10 and 11 lines (and a TensorRT 8 line when the ONNX parses there) and picks by the
    TensorRT it finds (or $TRT_VERSION / $TRT_MAJOR); a TensorRT older than the one the ONNX was made for is
    refused in one line naming the JetPack to use, and a line that cannot exist for a version (implicit INT8 on
    11, Q/DQ INT8 on DLA with 10) prints why; both exit 2. Without a timing cache in the settings, the script keeps
    one beside the engine.
    """
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    if settings.timing_cache is None:
        settings = replace(settings, timing_cache=f"{engine_path.stem}.timing.cache")
    needed = min_tensorrt_of(load_onnx(onnx_path))
    versions = script_versions(needed)
    lines = {major: _script_line(onnx_path, settings, engine_path, version) for major, version in versions.items()}
    what = describe_recipe({"precision": settings.precision, "onnx": onnx_path.name})
    gate = "" if not needed else f"""if [ -n "$TRT_VERSION" ] && [ "$(printf '%s\\n' {needed} "$TRT_VERSION" | sort -V | head -n 1)" != {needed} ]; then
  echo {shlex.quote(f"{what} needs TensorRT {needed} or later, this device has TensorRT ")}"$TRT_VERSION"{shlex.quote(": " + advice(needed))} >&2
  exit 2
fi
"""
    older = (f"""elif [ "$TRT_MAJOR" -ge 10 ]; then
  {lines["10"]}
else
  {lines["8"]}""" if "8" in lines else f"""else
  {lines["10"]}""")
    dla_note = f"\n# DLA core {settings.dla_core}: needs {DLA_RELEASES}." if settings.dla_core is not None else ""
    script = f"""#!/bin/sh
# Builds {engine_path.name} from {onnx_path.name} ({settings.precision}) on THIS device: a TensorRT engine runs only
# on the GPU model and TensorRT version that built it. Written by lkca-deploy. Needs trtexec
# (JetPack: /usr/src/tensorrt/bin/trtexec). Set TRT_VERSION (e.g. 8.5.2) or TRT_MAJOR to skip the detection.{dla_note}
set -eu
cd "$(dirname "$0")"
PATH="$PATH:/usr/src/tensorrt/bin"
TRT_VERSION="${{TRT_VERSION:-$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)}}"
TRT_MAJOR="${{TRT_MAJOR:-${{TRT_VERSION%%.*}}}}"
TRT_MAJOR="${{TRT_MAJOR:-10}}"
{gate}if [ "$TRT_MAJOR" -ge 11 ]; then
  {lines["11"]}
{older}
fi
"""
    target = Path(f"{onnx_path}{SCRIPT_SUFFIX}")
    atomic_write_text(target, script)
    target.chmod(target.stat().st_mode | 0o111)
    return target


def script_versions(needed: str | None) -> dict[str, str]:
    """major -> the TensorRT version a script line is written for: SCRIPT_VERSIONS, plus the TensorRT 8 the ONNX
    was made for when it parses there (`needed`: min_tensorrt_of the ONNX)."""
    versions = dict(SCRIPT_VERSIONS)
    if needed and parse_version(needed)[0] < 10:
        versions[str(parse_version(needed)[0])] = needed
    return versions


def _script_line(onnx_path: Path, settings: TensorRTSettings, engine_path: Path, version: str) -> str:
    try:
        command = trtexec_command(
            onnx_path, settings, engine_path=engine_path, tensorrt_version=version, relative_to=onnx_path.parent
        )
        return "exec " + command
    except UserError as why:
        major = version.split(".")[0]
        return f"echo {shlex.quote(f'TensorRT {major}: {why}')} >&2; exit 2"


# ---------------------------------------------------------------- engine compatibility

COMPAT_FACTS = ("gpu_name", "compute_capability", "tensorrt_version")


def engine_mismatches(built: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """What differs between the machine that built an engine and this one, in words."""
    labels = {"gpu_name": "GPU", "compute_capability": "compute capability", "tensorrt_version": "TensorRT"}
    return [
        f"{labels[key]} {built.get(key)!s} (built) vs {here.get(key)!s} (here)"
        for key in COMPAT_FACTS
        if str(built.get(key)) != str(here.get(key))
    ]


def check_engine_compatible(facts: dict[str, Any], here: dict[str, Any], artifact: Path) -> None:
    """Refuse an engine built elsewhere, before TensorRT deserializes it, and say how to rebuild it here."""
    differences = engine_mismatches(facts.get("target", {}), here)
    if differences:
        raise UserError(
            f"{Path(artifact).name} was built on another device ({'; '.join(differences)}): engines run only "
            f"where they were built, so build on this device: {rebuild_hint(facts, Path(artifact), here)}"
        )


def rebuild_hint(facts: dict[str, Any], artifact: Path, here: dict[str, Any]) -> str:
    """The script beside the engine's ONNX when it is there, else the trtexec line, for this TensorRT."""
    onnx_path = artifact.parent / facts["source_onnx"]
    script = Path(f"{onnx_path}{SCRIPT_SUFFIX}")
    if script.is_file():
        return f"sh {script}"
    try:
        settings = TensorRTSettings.from_dict(facts.get("settings") or {"precision": facts["precision"]})
        return trtexec_command(
            onnx_path, settings, engine_path=artifact, tensorrt_version=str(here.get("tensorrt_version") or "10")
        )
    except UserError:  # the ONNX is gone or does not suit this TensorRT: say what to do, not what failed
        return f"lkca-deploy build --backend tensorrt --precision {facts['precision']} from the model's ONNX"
