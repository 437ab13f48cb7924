"""TensorRT backend (10.x and 11.x): ONNX -> serialized engine + sidecar, and a trtexec script for the device.

TensorRT is optional: nothing here imports it at module level, so this module imports everywhere; everything
that needs it says so in a UserError. The decisions (version dispatch, precision flags, profile shapes, trtexec
line, engine compatibility) are pure functions, tested where TensorRT cannot be installed.

Versions: TensorRT 11 builds strongly typed networks only (no FP16/INT8 builder flags, no calibrator): precision
comes from the ONNX types and Q/DQ nodes. TensorRT 10 keeps the weak-typing flags, used here for the FP16 ONNX,
explicit Q/DQ INT8, and implicit INT8 from a calibration cache, which DLA on TensorRT 10 needs.
Engines run only on the GPU model and TensorRT version that built them, so `load` compares the sidecar with this
machine before it deserializes anything, and says how to rebuild on the device.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lkca_deploy.backends.base import (
    InputSpec,
    as_model_input,
    atomic_write_bytes,
    atomic_write_text,
    check_options,
    check_precision,
    input_facts,
    load_onnx,
    onnx_input_spec,
    onnx_precision,
    read_sidecar,
    require_onnx_precision,
    write_sidecar,
)
from lkca_deploy.errors import UserError

NAME = "tensorrt"
INSTALL_HINT = (
    "TensorRT is not installed: pip install lkca-deploy[tensorrt] (x86) or use JetPack's TensorRT on a Jetson"
)
CUDA_HINT = "running TensorRT from Python needs cuda-python (pip install cuda-python) or PyTorch with CUDA"
PRECISIONS = ("fp32", "fp16", "int8")
BUILD_OPTIONS = (
    "min_batch",
    "opt_batch",
    "max_batch",
    "workspace_mib",
    "timing_cache",
    "calib_cache",
    "allow_tf32",
)
LOAD_OPTIONS = ()
COMPAT_FACTS = ("gpu_name", "compute_capability", "tensorrt_version")
SCRIPT_SUFFIX = ".trtexec.sh"
# The script knows only the major version it finds; each line is written for the first release of that major
# that runs on a Jetson with DLA (JetPack 6: 10.3; JetPack 7.2.2: 11.4.1). 11.0-11.3 have no DLA at all.
SCRIPT_VERSIONS = {"11": "11.4.1", "10": "10.3.0"}


def _trt():
    try:
        import tensorrt
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return tensorrt


def installed_version() -> str | None:
    """The TensorRT version installed here, or None."""
    try:
        return _trt().__version__
    except UserError:
        return None


# ---------------------------------------------------------------- version dispatch (pure)


def parse_version(version: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); stops at the first part that is not a number ('11.0.0rc1' -> (11, 0))."""
    parts = []
    for part in str(version).split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    if not parts:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return tuple(parts)


def strongly_typed_only(version: str) -> bool:
    """TensorRT 11 removed weak typing: every network is strongly typed."""
    return parse_version(version)[0] >= 11


def dla_supported(version: str) -> bool:
    """DLA: up to TensorRT 10.7 (JetPack 6), none in 11.0-11.3, back from 11.4.1 (AGX Orin, JetPack >= 7.2.2)."""
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
        raise UserError(
            f"TensorRT {version} has no DLA support (none in 11.0-11.3): use the GPU or TensorRT 10"
        )
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


# ---------------------------------------------------------------- trtexec (pure)


def trtexec_command(
    onnx_path: Path,
    precision: str,
    *,
    engine_path: Path,
    tensorrt_version: str = "10",
    calib_cache: Path | None = None,
    dla_core: int | None = None,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 32,
    timing_cache: Path | None = None,
    workspace_mib: int | None = None,
    allow_tf32: bool = False,
    relative_to: Path | None = None,
) -> str:
    """The trtexec line that builds `engine_path` from `onnx_path` with TensorRT `tensorrt_version`.

    It builds what `TensorRTBackend.build` builds, TF32 included (trtexec turns TF32 on unless told --noTF32).
    Paths are written relative to `relative_to` when given (a script that cd's to its own folder).
    """
    check_precision(precision, PRECISIONS, NAME)
    model = load_onnx(onnx_path)
    spec = onnx_input_spec(model)
    plan = precision_plan(
        precision,
        tensorrt_version,
        onnx_precision=onnx_precision(model),
        calib_cache=calib_cache is not None,
        dla=dla_core is not None,
    )

    def path(p: Path) -> str:
        return os.path.relpath(Path(p).resolve(), Path(relative_to).resolve()) if relative_to else str(p)

    args = ["trtexec", f"--onnx={path(onnx_path)}", f"--saveEngine={path(engine_path)}"]
    args += ["--stronglyTyped"] if plan.strongly_typed else [f"--{flag.lower()}" for flag in plan.flags]
    if plan.quantization == "implicit":
        args.append(f"--calib={path(calib_cache)}")
    if dla_core is not None:
        args += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    shapes = profile_shapes(
        spec.shape, batch_profile(min_batch, opt_batch, max_batch, dla=dla_core is not None)
    )
    if shapes:
        args += [f"--{k}Shapes={spec.name}:{'x'.join(map(str, shape))}" for k, shape in shapes.items()]
    if timing_cache is not None:
        args.append(f"--timingCacheFile={path(timing_cache)}")
    if workspace_mib is not None:
        args.append(f"--memPoolSize=workspace:{int(workspace_mib)}")
    if not allow_tf32:
        args.append("--noTF32")
    return " ".join(shlex.quote(a) for a in args)


def write_trtexec_script(
    onnx_path: Path,
    precision: str,
    *,
    engine_path: Path | None = None,
    calib_cache: Path | None = None,
    dla_core: int | None = None,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 32,
    timing_cache: Path | None = None,
    workspace_mib: int | None = None,
) -> Path:
    """Write `<onnx>.trtexec.sh`: a ready command for building the engine on the target (a Jetson) itself.

    It holds the TensorRT 10 and 11 lines and picks by the TensorRT it finds (or $TRT_MAJOR); a line that
    cannot exist for a version (implicit INT8 on 11, Q/DQ INT8 on DLA with 10) prints why and exits 2.
    """
    onnx_path = Path(onnx_path)
    folder = onnx_path.parent
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    settings = {
        "engine_path": engine_path,
        "calib_cache": calib_cache,
        "dla_core": dla_core,
        "min_batch": min_batch,
        "opt_batch": opt_batch,
        "max_batch": max_batch,
        "timing_cache": timing_cache if timing_cache else folder / f"{engine_path.stem}.timing.cache",
        "workspace_mib": workspace_mib,
        "relative_to": folder,
    }
    lines = {
        major: _script_line(onnx_path, precision, version, settings)
        for major, version in SCRIPT_VERSIONS.items()
    }
    script = f"""#!/bin/sh
# Builds {engine_path.name} from {onnx_path.name} ({precision}) on THIS device: a TensorRT engine runs only on
# the GPU model and TensorRT version that built it. Written by lkca-deploy. Needs trtexec
# (JetPack: /usr/src/tensorrt/bin/trtexec). Set TRT_MAJOR=10 or 11 to skip the detection.
set -eu
cd "$(dirname "$0")"
PATH="$PATH:/usr/src/tensorrt/bin"
TRT_MAJOR="${{TRT_MAJOR:-$(python3 -c 'import tensorrt; print(tensorrt.__version__.split(".")[0])' 2>/dev/null || echo 10)}}"
if [ "$TRT_MAJOR" -ge 11 ]; then
  {lines["11"]}
else
  {lines["10"]}
fi
"""
    target = Path(f"{onnx_path}{SCRIPT_SUFFIX}")
    atomic_write_text(target, script)
    target.chmod(0o755)
    return target


def _script_line(onnx_path: Path, precision: str, version: str, settings: dict[str, Any]) -> str:
    try:
        return "exec " + trtexec_command(onnx_path, precision, tensorrt_version=version, **settings)
    except UserError as why:
        major = version.split(".")[0]
        return f"echo {shlex.quote(f'TensorRT {major}: {why}')} >&2; exit 2"


# ---------------------------------------------------------------- engine compatibility (pure)


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
    options = facts.get("options", {})
    profile = options.get("profile") or {}
    try:
        return trtexec_command(
            onnx_path,
            facts["precision"],
            engine_path=artifact,
            tensorrt_version=str(here.get("tensorrt_version") or "10"),
            calib_cache=_beside(artifact, options.get("calib_cache")),
            dla_core=options.get("dla_core"),
            min_batch=profile.get("min", 1),
            opt_batch=profile.get("opt", 1),
            max_batch=profile.get("max", 32),
            timing_cache=_beside(artifact, options.get("timing_cache")),
            workspace_mib=options.get("workspace_mib"),
            allow_tf32=bool(options.get("tf32", False)),
        )
    except UserError:  # the ONNX is gone or does not suit this TensorRT: say what to do, not what failed
        return f"lkca-deploy build --backend tensorrt --precision {facts['precision']} from the model's ONNX"


def _beside(artifact: Path, name: str | None) -> Path | None:
    return artifact.parent / name if name else None


# ---------------------------------------------------------------- CUDA (cuda-python, else torch)


def _cudart():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart as runtime  # older cuda-python
    return runtime


def _cuda_call(result):
    rt = _cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        message = rt.cudaGetErrorString(err)[1].decode()
        raise UserError(f"CUDA failed ({err.name}: {message}): TensorRT needs an NVIDIA GPU with its driver")
    return values[0] if len(values) == 1 else values


def current_gpu_facts(gpu_index: int = 0) -> dict[str, str]:
    """This machine's GPU name and compute capability, plus the TensorRT version when it is installed."""
    try:
        _cudart()
    except ImportError:
        gpu_name, capability = _torch_gpu(gpu_index)
    else:
        props = _cuda_call(_cudart().cudaGetDeviceProperties(gpu_index))
        gpu_name = (
            props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
        )
        capability = f"{props.major}.{props.minor}"
    return {"gpu_name": gpu_name, "compute_capability": capability, "tensorrt_version": installed_version()}


def _torch_gpu(gpu_index: int) -> tuple[str, str]:
    try:
        import torch
    except ImportError:
        raise UserError(CUDA_HINT) from None
    if not torch.cuda.is_available():
        raise UserError("no CUDA GPU visible to PyTorch here: TensorRT needs an NVIDIA GPU with its driver")
    major, minor = torch.cuda.get_device_capability(gpu_index)
    return torch.cuda.get_device_name(gpu_index), f"{major}.{minor}"


class CudaPythonMemory:
    """Device buffers and a stream through cuda-python's runtime bindings."""

    def __init__(self, gpu_index: int):
        self.rt = _cudart()
        _cuda_call(self.rt.cudaSetDevice(gpu_index))
        self.stream = _cuda_call(self.rt.cudaStreamCreate())
        self.stream_handle = int(self.stream)
        self._buffers: list[int] = []

    def alloc(self, nbytes: int) -> int:
        ptr = int(_cuda_call(self.rt.cudaMalloc(max(nbytes, 1))))
        self._buffers.append(ptr)
        return ptr

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _cuda_call(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream))

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_call(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream))

    def synchronize(self) -> None:
        _cuda_call(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for ptr in self._buffers:
            self.rt.cudaFree(ptr)
        self._buffers.clear()
        self.rt.cudaStreamDestroy(self.stream)


class TorchCudaMemory:
    """The same through PyTorch's CUDA tensors, for machines with torch but no cuda-python."""

    def __init__(self, gpu_index: int):
        import torch

        self.torch = torch
        self.device = torch.device("cuda", gpu_index)
        self.stream = torch.cuda.Stream(self.device)
        self.stream_handle = self.stream.cuda_stream
        self._buffers: dict[int, Any] = {}

    def alloc(self, nbytes: int) -> int:
        tensor = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device=self.device)
        self._buffers[tensor.data_ptr()] = tensor
        return tensor.data_ptr()

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            self._buffers[ptr][: host.nbytes].copy_(self.torch.from_numpy(host.reshape(-1).view(np.uint8)))

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        with self.torch.cuda.stream(self.stream):
            host.reshape(-1).view(np.uint8)[:] = self._buffers[ptr][: host.nbytes].cpu().numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self._buffers.clear()


def device_memory(gpu_index: int):
    try:
        _cudart()
    except ImportError:
        _torch_gpu(gpu_index)  # raises the right UserError when torch cannot help either
        return TorchCudaMemory(gpu_index)
    return CudaPythonMemory(gpu_index)


# ---------------------------------------------------------------- runner


class TensorRTRunner:
    """One execution context with device buffers sized for the profile's largest batch (TensorRT 10/11 API)."""

    def __init__(self, engine, memory, info: dict[str, Any]):
        trt = _trt()
        self.engine, self.memory, self.info = engine, memory, info
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise UserError(
                f"this engine takes {len(inputs)} inputs; lkca-deploy runs one-input image models"
            )
        self.input_name, self._output_name = inputs[0], outputs[0]
        shape = tuple(engine.get_tensor_shape(self.input_name))
        self.input_shape = tuple(None if d < 0 else d for d in shape)
        largest = tuple(engine.get_tensor_profile_shape(self.input_name, 0)[2]) if -1 in shape else shape
        self.max_batch = largest[0]
        self.context.set_input_shape(self.input_name, largest)
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._pointers = {}
        for name in names:
            nbytes = int(np.prod(tuple(self.context.get_tensor_shape(name)))) * self._dtypes[name].itemsize
            self._pointers[name] = memory.alloc(nbytes)
            self.context.set_tensor_address(name, self._pointers[name])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = as_model_input(x, self.input_shape, self.max_batch)
        x = np.ascontiguousarray(x, dtype=self._dtypes[self.input_name])
        self.context.set_input_shape(self.input_name, x.shape)
        self.memory.to_device(self._pointers[self.input_name], x)
        if not self.context.execute_async_v3(self.memory.stream_handle):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log above)")
        out = np.empty(
            tuple(self.context.get_tensor_shape(self._output_name)), self._dtypes[self._output_name]
        )
        self.memory.to_host(out, self._pointers[self._output_name])
        self.memory.synchronize()
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self.context = self.engine = None
        self.memory.close()


# ---------------------------------------------------------------- backend


class TensorRTBackend:
    name = NAME
    precisions = PRECISIONS
    int8_flavors = ("tensorrt",)
    artifact_suffix = ".engine"

    def available(self) -> tuple[bool, str]:
        try:
            trt = _trt()
        except UserError:
            return False, INSTALL_HINT
        return True, f"tensorrt {trt.__version__}"

    def build(
        self,
        onnx_path: Path,
        out: Path,
        *,
        precision: str,
        calib: np.ndarray | None = None,
        device: str | None = None,
        provenance: dict[str, Any] | None = None,
        **options: Any,
    ) -> Path:
        """Parse the ONNX, build a serialized engine at `out`, write the sidecar with this GPU's facts.

        `device`: cuda[:N] or dla:N (DLA with GPU fallback). Options: min_batch/opt_batch/max_batch (dynamic
        batch profile, default 1/1/32; static at opt_batch on DLA), workspace_mib, timing_cache (a file, read and
        updated), calib_cache (TensorRT 10 implicit INT8 from an fp32 ONNX), allow_tf32 (off: fp32 stays fp32).
        `calib` is unused: INT8 comes baked as Q/DQ or as a calibration cache.
        """
        check_options(options, BUILD_OPTIONS, "tensorrt build")
        check_precision(precision, PRECISIONS, NAME)
        trt = _trt()
        onnx_path, out = Path(onnx_path), Path(out)
        gpu_index, dla_core = parse_device(device)
        model = load_onnx(onnx_path)
        calib_cache = Path(options["calib_cache"]) if options.get("calib_cache") else None
        accepted = ("int8", "fp32") if precision == "int8" and calib_cache else (precision,)
        found = require_onnx_precision(model, onnx_path, precision, accepted)
        plan = precision_plan(
            precision,
            trt.__version__,
            onnx_precision=found,
            calib_cache=calib_cache is not None,
            dla=dla_core is not None,
        )
        profile = batch_profile(
            options.get("min_batch", 1),
            options.get("opt_batch", 1),
            options.get("max_batch", 32),
            dla=dla_core is not None,
        )
        spec = onnx_input_spec(model)
        here = current_gpu_facts(gpu_index)
        timing_cache = Path(options["timing_cache"]) if options.get("timing_cache") else None
        plan_bytes = _build_serialized(
            trt,
            onnx_path,
            plan,
            spec,
            profile,
            dla_core=dla_core,
            calib_cache=calib_cache,
            timing_cache=timing_cache,
            workspace_mib=options.get("workspace_mib"),
            allow_tf32=bool(options.get("allow_tf32", False)),
        )
        atomic_write_bytes(out, plan_bytes)
        write_sidecar(
            out,
            backend=NAME,
            precision=precision,
            source_onnx=onnx_path,
            library_version=trt.__version__,
            device=f"dla:{dla_core}" if dla_core is not None else f"cuda:{gpu_index}",
            options={
                "strongly_typed": plan.strongly_typed,
                "builder_flags": list(plan.flags),
                "quantization": plan.quantization,
                "dla_core": dla_core,
                "profile": vars(profile) if profile_shapes(spec.shape, profile) else None,
                "workspace_mib": options.get("workspace_mib"),
                "timing_cache": _name_beside(timing_cache, out),
                "calib_cache": _name_beside(calib_cache, out),
                "tf32": bool(options.get("allow_tf32", False)),
            },
            provenance=provenance,
            target=here,
            input=input_facts(model),
        )
        return out

    def load(
        self, artifact: Path, *, device: str | None = None, threads: int | None = None, **options: Any
    ) -> TensorRTRunner:
        """Check the sidecar against this GPU and TensorRT, then deserialize. `threads` does not apply."""
        check_options(options, LOAD_OPTIONS, "tensorrt load")
        trt = _trt()
        artifact = Path(artifact)
        facts = read_sidecar(artifact, NAME)
        gpu_index, dla_core = parse_device(device or facts["device"])
        check_engine_compatible(facts, current_gpu_facts(gpu_index), artifact)
        memory = device_memory(gpu_index)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if dla_core is not None:
            runtime.DLA_core = dla_core
        engine = runtime.deserialize_cuda_engine(artifact.read_bytes())
        if engine is None:
            memory.close()
            raise UserError(
                f"TensorRT could not deserialize {artifact.name} (see its log above): rebuild it here"
            )
        info = {
            "backend": NAME,
            "library_version": trt.__version__,
            "precision": facts["precision"],
            "device": f"dla:{dla_core}" if dla_core is not None else f"cuda:{gpu_index}",
            "gpu_name": facts["target"]["gpu_name"],
            "quantization": facts["options"]["quantization"],
        }
        return TensorRTRunner(engine, memory, info)


def _build_serialized(
    trt,
    onnx_path: Path,
    plan: PrecisionPlan,
    spec: InputSpec,
    profile: BatchProfile,
    *,
    dla_core: int | None,
    calib_cache: Path | None,
    timing_cache: Path | None,
    workspace_mib: int | None,
    allow_tf32: bool,
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(
            f"TensorRT cannot parse {onnx_path.name}: {errors[0] if errors else 'unknown error'}{more}"
        )

    config = builder.create_builder_config()
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    # TF32, on by default, rounds fp32 matmuls and convs to a 10-bit mantissa: that is not fp32 parity.
    if not allow_tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    shapes = profile_shapes(spec.shape, profile)
    if shapes:
        optimization_profile = builder.create_optimization_profile()
        optimization_profile.set_shape(spec.name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(optimization_profile)
        if plan.quantization == "implicit":
            config.set_calibration_profile(optimization_profile)
    if plan.quantization == "implicit":
        config.int8_calibrator = _cache_calibrator(trt, calib_cache)
    cache = _attach_timing_cache(config, timing_cache)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(cache.serialize())))
    return bytes(memoryview(serialized))


def _attach_timing_cache(config, path: Path | None):
    """Reuse a timing cache file; a cache from another device or version is set aside, not trusted."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    # A corrupt file gives no cache at all (None), one from another device or version fails to attach.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _cache_calibrator(trt, cache_path: Path):
    """A TensorRT 10 calibrator that only hands back an existing cache: the ranges were computed offline."""
    if not cache_path.is_file():
        raise UserError(f"calibration cache {cache_path} does not exist: bake int8 with build_engine first")
    cache = cache_path.read_bytes()

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None  # no data: with a valid cache TensorRT never asks

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data):
            return None

    return CacheCalibrator()


def _name_beside(path: Path | None, artifact: Path) -> str | None:
    """A file's name when it lies beside the engine (the usual case), else its full path."""
    if path is None:
        return None
    return path.name if path.resolve().parent == artifact.resolve().parent else str(path.resolve())
