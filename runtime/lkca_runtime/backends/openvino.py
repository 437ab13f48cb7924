"""OpenVINO backend: ONNX -> IR (model.xml + model.bin) with the inference precision hint kept in the sidecar.

`import openvino` below is absolute (Python 3), so this module's own name shadows nothing.

Precision: fp32 and int8 compile with INFERENCE_PRECISION_HINT f32, because the CPU plugin otherwise computes in
bf16 on CPUs with AVX512_BF16 or AMX and misses FP32 parity (docs/backend-limits.md); bf16 is a precision of its own, offered
where the CPU has it; fp16 is the FP16 ONNX converted as is; int8 is NNCF post-training quantization of the
converted model, or a Q/DQ ONNX read directly.
"""

from __future__ import annotations

import platform
import queue
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lkca_runtime.backends.base import (
    PRECISIONS,
    RunnerBase,
    as_model_input,
    check_options,
    check_threads,
    read_sidecar,
)
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import sha256_file
from lkca_runtime.machine import parse_cpuinfo
from lkca_runtime.optional import installed, require

NAME = "openvino"
INSTALL_HINT = "OpenVINO is not installed: pip install openvino"
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
INFERENCE_PRECISIONS = ("f32", "f16", "bf16")
LOAD_OPTIONS = ("performance_hint",)


def _ov():
    return require("openvino", INSTALL_HINT)


# ---------------------------------------------------------------- pure decisions (tested without a device)


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's ISA flags of interest (lkca_runtime.machine reads them); None where there is no /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    return frozenset(parse_cpuinfo(cpuinfo)["isa_flags"]) if "flags" in cpuinfo else None


def cpu_has_bf16(flags: frozenset[str] | None, capabilities: tuple[str, ...] = ()) -> bool:
    """Native bf16 math: AVX512_BF16 or AMX; without /proc/cpuinfo, trust the plugin's own capability list."""
    if flags is None:
        return "BF16" in capabilities
    return "avx512_bf16" in flags or "amx_bf16" in flags


def require_bf16(device: str, flags: frozenset[str] | None, capabilities: tuple[str, ...] = ()) -> None:
    if device_family(device) != "CPU":
        raise UserError(f"bf16 is offered on the OpenVINO CPU device only, not {device}: use fp16 there")
    if not cpu_has_bf16(flags, capabilities):
        raise UserError(
            "bf16 needs a CPU with avx512_bf16 or amx_bf16, and this one has neither "
            "(OpenVINO would emulate it slowly): use fp32 or int8"
        )


def inference_precision_hint(precision: str, capabilities: tuple[str, ...]) -> str:
    """The INFERENCE_PRECISION_HINT a precision compiles with on a device with these OPTIMIZATION_CAPABILITIES.

    fp16 asks for f16 only where the device has FP16 math: this CPU plugin silently turns an f16 request into
    bf16 (read back here), so elsewhere the FP16 graph runs in f32, at least as exact as fp16.
    int8 keeps the float parts (LayerNorm, residuals) in f32, like the Q/DQ reference it is compared with.
    """
    if precision == "bf16":
        return "bf16"
    if precision == "fp16" and "FP16" in capabilities:
        return "f16"
    return "f32"


# OpenVINO's CPU plugin on Arm cannot create the f16 MatMul primitive of these models at batch > 1 (2026.4.1 on
# Neoverse-N1: "could not create a primitive descriptor for the matmul primitive", or an empty output); it matches
# openvinotoolkit/openvino#37180 (an f16 MatMul with a fused post-op on ARM). f32 computes right at every batch.
_F16_MATMUL_BROKEN_ARCHES = ("aarch64", "arm64")


def load_hint(precision: str, built_hint: str | None, capabilities: tuple[str, ...],
              arch: str | None = None) -> tuple[str | None, str | None]:
    """(the INFERENCE_PRECISION_HINT to compile with on this device, or None and why it cannot run it here).

    bf16 needs the device's own bf16 arithmetic (x86 AVX512_BF16 or AMX; OpenVINO offers none on Arm CPUs): the
    plugin would otherwise compute in f32, which is not the engine the bundle proved. An fp16 engine built to
    compute in f16 is decided here as the build decides it (inference_precision_hint): f16 where this device has
    FP16 arithmetic, else f32, at least as exact as the fp16 graph; on Arm CPUs f32 as well, since f16 MatMuls
    fail there at batch > 1 (_F16_MATMUL_BROKEN_ARCHES). Every other hint is kept as built. `arch`: default this
    machine's.
    """
    arch = (arch or platform.machine()).lower()
    if precision == "bf16" and "BF16" not in capabilities:
        return None, (
            f"bf16 needs bf16 arithmetic and OpenVINO's CPU plugin offers none here (its capabilities: "
            f"{' '.join(capabilities) or 'none reported'}; x86 with avx512_bf16 or AMX has it)"
        )
    if precision == "fp16" and built_hint == "f16":
        if arch in _F16_MATMUL_BROKEN_ARCHES:
            return "f32", None
        return inference_precision_hint(precision, capabilities), None
    return built_hint, None


def device_family(device: str) -> str:
    return device.split(".")[0].upper()


def check_device(device: str, available: list[str]) -> str:
    """`device` normalised to OpenVINO's spelling ('cpu' -> 'CPU'), refused when this machine lacks it."""
    normalised = device.upper()
    families = {device_family(d) for d in available}
    if normalised not in available and normalised not in families:
        raise UserError(
            f"OpenVINO device {device!r} is not available here: choose one of {', '.join(available)}"
        )
    return normalised


# ---------------------------------------------------------------- runner


class OpenVinoRunner(RunnerBase):
    """One compiled model and a pool of infer requests; returns a float32 copy (a request reuses its buffers).

    Safe to call from many threads: an infer request runs one inference at a time ("Infer Request is busy"
    otherwise) and its output buffer is overwritten by the next one, so each call borrows an idle request (a new
    one when every request is busy), copies its output and returns it. Requests made stay in the pool: as many as
    calls ever ran at once. The compiled model itself is thread-safe (OpenVINO's CompiledModel)."""

    def __init__(self, compiled, info: dict[str, Any]):
        ov = _ov()
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._idle = queue.SimpleQueue()
        self._idle.put(self.request)
        first = compiled.inputs[0]
        self.input_name = first.any_name
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in first.get_partial_shape())
        self.max_batch = None
        self.info = info
        self._input_dtype = np.float16 if first.get_element_type() == ov.Type.f16 else np.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = as_model_input(x, self.input_shape).astype(self._input_dtype, copy=False)
        with self._borrowed() as request:
            request.infer({0: x})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name (parity localisation reads the block outputs)."""
        x = as_model_input(x, self.input_shape).astype(self._input_dtype, copy=False)
        with self._borrowed() as request:
            request.infer({0: x})
            return {out.get_any_name(): np.array(request.get_output_tensor(i).data, dtype=np.float32)
                    for i, out in enumerate(self.compiled.outputs)}

    @contextmanager
    def _borrowed(self):
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            yield request
        finally:
            self._idle.put(request)

    def close(self) -> None:
        self.request = self.compiled = None
        self._idle = queue.SimpleQueue()


# ---------------------------------------------------------------- backend


class OpenVinoLoader:
    name = NAME
    precisions = PRECISIONS  # every one, bf16 where the CPU has it
    artifact_suffix = ".xml"

    def available(self) -> tuple[bool, str]:
        ov = installed("openvino")
        if ov is None:
            return False, INSTALL_HINT
        return True, f"openvino {ov.get_version()} ({', '.join(ov.Core().available_devices)})"

    def refusal(self, artifact: Path, *, device: str | None = None) -> str | None:
        """Why this machine cannot run the engine as it was built (load_hint), or None."""
        facts = read_sidecar(Path(artifact), NAME)
        core = _ov().Core()
        device = check_device(device or facts["device"], core.available_devices)
        return load_hint(facts["precision"], facts["options"]["inference_precision_hint"],
                         _capabilities(core, device))[1]

    def load(
        self, artifact: Path, *, device: str | None = None, threads: int | None = None, **options: Any
    ) -> OpenVinoRunner:
        """Compile the IR with the precision hint this device takes for it (load_hint); refuse a device that would
        compute otherwise."""
        check_options(options, LOAD_OPTIONS, "openvino load")
        check_threads(threads)
        artifact = Path(artifact)
        facts = read_sidecar(artifact, NAME)
        weights = artifact.with_name(facts["weights"]["file"])
        if not weights.is_file() or sha256_file(weights) != facts["weights"]["sha256"]:
            raise UserError(f"{weights} is missing or does not match {artifact.name}'s sidecar: rebuild it")
        ov = _ov()
        core = ov.Core()
        device = check_device(device or facts["device"], core.available_devices)
        performance_hint = _performance_hint(
            options.get("performance_hint", facts["options"]["performance_hint"])
        )
        hint, refused = load_hint(facts["precision"], facts["options"]["inference_precision_hint"],
                                  _capabilities(core, device))
        if refused:
            raise UserError(f"{artifact.name} cannot run on {device} here: {refused}")
        config = _compile_config(core, device, hint, performance_hint)
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(str(artifact), device, config)
        effective = _effective_precision(compiled)
        if hint is not None and effective != hint:
            raise UserError(
                f"{artifact.name} was built to compute in {hint}, but {device} here computes in {effective}: "
                "rebuild it on this machine (lkca-deploy build --backend openvino)"
            )
        info = {
            "backend": NAME,
            "library_version": ov.get_version(),
            "precision": facts["precision"],
            "device": device,
            "inference_precision": effective,
            "performance_hint": performance_hint,
            "threads": threads,
            "quantizer": facts["options"]["quantizer"],
        }
        return OpenVinoRunner(compiled, info)


def _performance_hint(value: str) -> str:
    value = str(value).upper()
    if value not in PERFORMANCE_HINTS:
        raise UserError(f"unknown performance_hint {value!r}: choose one of {', '.join(PERFORMANCE_HINTS)}")
    return value


def _capabilities(core, device: str) -> tuple[str, ...]:
    try:
        return tuple(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:  # a plugin that does not report them
        return ()


def _compile_config(core, device: str, hint: str | None, performance_hint: str) -> dict[str, Any]:
    config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint}
    # Set the precision hint only where the plugin knows it (the NPU plugin, for one, may not).
    if hint is not None and "INFERENCE_PRECISION_HINT" in core.get_property(device, "SUPPORTED_PROPERTIES"):
        config["INFERENCE_PRECISION_HINT"] = hint
    return config


def _effective_precision(compiled) -> str | None:
    try:
        return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except RuntimeError:
        return None


