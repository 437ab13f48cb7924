"""ONNX Runtime backend: the artifact is the ONNX itself (precision already baked in) plus its sidecar.

`import onnxruntime` below is absolute (Python 3), so this module's own name shadows nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lkca_runtime.backends.base import (
    RunnerBase,
    as_model_input,
    check_options,
    check_threads,
    onnx_precision,
    read_sidecar,
)
from lkca_runtime.errors import UserError
from lkca_runtime.optional import installed, require

NAME = "onnxruntime"
INSTALL_HINT = "ONNX Runtime is not installed: pip install onnxruntime (or onnxruntime-gpu for CUDA/TensorRT)"

# Execution providers per device, in ORT's order of preference; CPU last so unsupported nodes still run.
DEVICE_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
# "all" by default: on x86 it rewrites the large depthwise conv to the blocked NCHWc layout, 8-10x faster than
# im2col + GEMM (docs/backend-limits.md).
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
LOAD_OPTIONS = ("optimization", "allow_spinning")


def providers_for(device: str, available: list[str]) -> list[str]:
    """The providers to open a session with for `device`, refusing a device whose provider is missing."""
    if device not in DEVICE_PROVIDERS:
        raise UserError(f"unknown onnxruntime device {device!r}: choose one of {', '.join(DEVICE_PROVIDERS)}")
    wanted = DEVICE_PROVIDERS[device]
    if wanted[0] not in available:
        raise UserError(
            f"onnxruntime here has no {wanted[0]} (it has {', '.join(available)}): "
            "install onnxruntime-gpu with CUDA/TensorRT, or use device cpu"
        )
    return [p for p in wanted if p in available]


def check_optimization(level: str) -> str:
    if level not in OPTIMIZATION_LEVELS:
        raise UserError(
            f"unknown optimization level {level!r}: choose one of {', '.join(OPTIMIZATION_LEVELS)}"
        )
    return level


def _ort():
    return require("onnxruntime", INSTALL_HINT)


def _session_errors() -> tuple[type[Exception], ...]:
    """What ORT raises for a model it cannot open (its own types, none derived from RuntimeError)."""
    state = require("onnxruntime.capi.onnxruntime_pybind11_state", INSTALL_HINT)

    names = (
        "Fail",
        "InvalidGraph",
        "InvalidArgument",
        "InvalidProtobuf",
        "NotImplemented",
        "NoSuchFile",
        "RuntimeException",
    )
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


class OnnxRuntimeRunner(RunnerBase):
    """One InferenceSession; casts the float32 batch to the model's input type (fp16 models may take fp16)."""

    def __init__(self, session, info: dict[str, Any]):
        self.session = session
        first_input, first_output = session.get_inputs()[0], session.get_outputs()[0]
        self.input_name = first_input.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in first_input.shape)
        self.max_batch = None
        self.info = info
        self._input_dtype = np.float16 if first_input.type == "tensor(float16)" else np.float32
        self._output_name = first_output.name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = as_model_input(x, self.input_shape).astype(self._input_dtype, copy=False)
        (out,) = self.session.run([self._output_name], {self.input_name: x})
        return np.asarray(out, dtype=np.float32)

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name (parity localisation reads the block outputs)."""
        x = as_model_input(x, self.input_shape).astype(self._input_dtype, copy=False)
        names = [o.name for o in self.session.get_outputs()]
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, self.session.run(names, {self.input_name: x}))}

    def close(self) -> None:
        self.session = None


class OnnxRuntimeLoader:
    name = NAME
    precisions = ("fp32", "fp16", "int8")
    artifact_suffix = ".onnx"
    # Sessions timed in turn on few cores slow each other down when ORT threads spin after each run
    # (docs/backend-limits.md): benchmarks and `tune` that interleave load with these.
    interleaved_load_options: ClassVar[dict[str, Any]] = {"allow_spinning": False}

    def available(self) -> tuple[bool, str]:
        ort = installed("onnxruntime")
        if ort is None:
            return False, INSTALL_HINT
        return True, f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"

    def load(
        self, artifact: Path, *, device: str | None = None, threads: int | None = None, **options: Any
    ) -> OnnxRuntimeRunner:
        """Open a session on the built ONNX; `allow_spinning=False` for benchmarks that interleave sessions."""
        check_options(options, LOAD_OPTIONS, "onnxruntime load")
        check_threads(threads)
        facts = read_sidecar(artifact, NAME)
        precision = _computed_precision(Path(artifact), facts)
        device = device or facts["device"]
        optimization = check_optimization(options.get("optimization", facts["options"]["optimization"]))
        allow_spinning = bool(options.get("allow_spinning", True))
        providers = providers_for(device, _ort().get_available_providers())
        session = _session(
            artifact, providers, threads=threads, allow_spinning=allow_spinning, optimization=optimization
        )
        info = {
            "backend": NAME,
            "library_version": _ort().__version__,
            "precision": precision,
            "device": device,
            "providers": session.get_providers(),
            "threads": threads,
            "allow_spinning": allow_spinning,
            "optimization": optimization,
        }
        return OnnxRuntimeRunner(session, info)


def _computed_precision(artifact: Path, facts: dict[str, Any]) -> str:
    """What the artifact computes in, read off its graph, refusing an artifact that reads files its sidecar does
    not hash or whose sidecar names another precision. Without the onnx package (a minimal device) the sidecar,
    whose hash binds it to this very artifact, speaks for it."""
    onnx_io = installed("lkca_runtime.onnx_io")  # imports onnx
    if onnx_io is None:
        return facts["precision"]
    model = onnx_io.load_onnx(artifact, load_external_data=False)
    external = onnx_io.external_data_locations(model)
    if external:
        raise UserError(f"{artifact.name} reads {', '.join(external)}, which its sidecar does not hash: rebuild it "
                        "(lkca-deploy build writes one self-contained file)")
    found = onnx_precision(model)
    if found != facts["precision"]:
        raise UserError(f"{artifact.name} computes in {found}, but its sidecar says {facts['precision']}: rebuild it")
    return found


def _session(
    path: Path,
    providers: list[str],
    *,
    threads: int | None = None,
    allow_spinning: bool = True,
    optimization: str = "all",
):
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Spinning threads keep a core busy after each run; sessions timed in turn on few cores then slow each
    # other down 3x (docs/backend-limits.md), so benchmarks turn it off.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except _session_errors() as err:
        raise UserError(f"onnxruntime cannot open {path.name}: {str(err).splitlines()[0]}") from None
