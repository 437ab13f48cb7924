"""ONNX Runtime backend: the artifact is the ONNX itself (precision already baked in) plus its sidecar.

`import onnxruntime` below is absolute (Python 3), so this module's own name shadows nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lkca_deploy.backends.base import (
    BackendBase,
    RunnerBase,
    as_model_input,
    check_options,
    check_precision,
    check_threads,
    input_facts,
    load_onnx,
    read_sidecar,
    require_onnx_precision,
    write_sidecar,
)
from lkca_deploy.errors import UserError
from lkca_deploy.fsutil import atomic_output

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
BUILD_OPTIONS = ("optimization",)
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
    import onnxruntime

    return onnxruntime


def _session_errors() -> tuple[type[Exception], ...]:
    """What ORT raises for a model it cannot open (its own types, none derived from RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

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


class OnnxRuntimeBackend(BackendBase):
    name = NAME
    precisions = ("fp32", "fp16", "int8")
    int8_flavors = ("cpu", "tensorrt")  # "tensorrt" shows on CPU what a TensorRT INT8 engine will compute
    artifact_suffix = ".onnx"
    # Sessions timed in turn on few cores slow each other down when ORT threads spin after each run
    # (docs/backend-limits.md): benchmarks and `tune` that interleave load with these.
    interleaved_load_options: ClassVar[dict[str, Any]] = {"allow_spinning": False}

    def available(self) -> tuple[bool, str]:
        try:
            ort = _ort()
        except ImportError:
            return False, INSTALL_HINT
        return True, f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"

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
        """Copy the ONNX to `out` (unless it is already there), check that it opens, write the sidecar.

        `calib` is unused: an INT8 ONNX for onnxruntime already holds its Q/DQ nodes.
        """
        check_options(options, BUILD_OPTIONS, "onnxruntime build")
        check_precision(precision, self.precisions, NAME)
        device = device or "cpu"
        optimization = check_optimization(options.get("optimization", "all"))
        providers = providers_for(device, _ort().get_available_providers())
        onnx_path, out = Path(onnx_path), Path(out)
        model = load_onnx(onnx_path)
        require_onnx_precision(model, onnx_path, precision, (precision,))
        external = _external_data(onnx_path)
        if external or onnx_path.resolve() != out.resolve():
            # The artifact is one file: external data (read from onnx_path's folder) is written inline, so the
            # artifact runs wherever it is copied and its sidecar's hash covers every byte the session reads.
            with atomic_output(out, size_hint=model.ByteSize()) as tmp:
                if external:
                    _save_inline(model, tmp, onnx_path)
                else:
                    tmp.write_bytes(onnx_path.read_bytes())
                _session(tmp, providers, optimization=optimization)  # a model that cannot open is no artifact
        else:
            _session(out, providers, optimization=optimization)
        write_sidecar(
            out,
            backend=NAME,
            precision=precision,
            source_onnx=onnx_path,
            library_version=_ort().__version__,
            device=device,
            options={"optimization": optimization},
            provenance=provenance,
            input=input_facts(model),
        )
        return out

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


def _external_data(path: Path) -> list[str]:
    from lkca_deploy.onnx_io import external_data_locations, load_onnx

    return external_data_locations(load_onnx(path, load_external_data=False))


def _save_inline(model, tmp: Path, source: Path) -> None:
    import onnx

    if model.ByteSize() >= 2**31:  # protobuf's limit for one file
        raise UserError(f"{source} holds {model.ByteSize() / 2**30:.1f} GiB of weights in external data: an "
                        "onnxruntime artifact is one file, which protobuf caps at 2 GiB")
    onnx.save_model(model, str(tmp))


def _computed_precision(artifact: Path, facts: dict[str, Any]) -> str:
    """What the artifact computes in, read off its graph, refusing an artifact that reads files its sidecar does
    not hash or whose sidecar names another precision. Without the onnx package (a minimal device) the sidecar,
    whose hash binds it to this very artifact, speaks for it."""
    try:
        from lkca_deploy.backends.base import onnx_precision
        from lkca_deploy.onnx_io import external_data_locations, load_onnx
    except ImportError:
        return facts["precision"]
    model = load_onnx(artifact, load_external_data=False)
    external = external_data_locations(model)
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
    # other down 3x (research note), so benchmarks turn it off.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except _session_errors() as err:
        raise UserError(f"onnxruntime cannot open {path.name}: {str(err).splitlines()[0]}") from None
