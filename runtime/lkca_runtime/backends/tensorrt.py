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

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lkca_runtime.backends.base import (
    RunnerBase,
    as_model_input,
    check_options,
    input_facts,
    load_onnx,
    read_sidecar,
    require_onnx_precision,
    write_sidecar,
)
from lkca_runtime.backends.trtexec import (
    NAME,
    PRECISIONS,
    BatchProfile,
    PrecisionPlan,
    TensorRTSettings,
    check_engine_compatible,
    fp32_layer_names,
    min_tensorrt_of,
    parse_device,
    precision_plan,
    profile_shapes,
)
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_write_bytes
from lkca_runtime.jetpack import check_recipe_fits, parse_version
from lkca_runtime.optional import installed, require

if TYPE_CHECKING:
    from lkca_runtime.onnx_io import InputSpec

INSTALL_HINT = (
    "TensorRT is not installed: pip install tensorrt (or pip install lkca-deploy[tensorrt] with the toolkit) on "
    "x86, or JetPack's TensorRT on a Jetson"
)
CUDA_HINT = "running TensorRT from Python needs cuda-python (pip install cuda-python) or PyTorch with CUDA"
LOAD_OPTIONS = ()


def _trt():
    return require("tensorrt", INSTALL_HINT)


def installed_version() -> str | None:
    """The TensorRT version installed here, or None."""
    trt = installed("tensorrt")
    return None if trt is None else trt.__version__


# ---------------------------------------------------------------- CUDA (cuda-python, else torch)


def _cudart():
    """cuda-python's runtime bindings (cuda.bindings.runtime from 12.6, cuda.cudart before), or None."""
    return installed("cuda.bindings.runtime") or installed("cuda.cudart")


def _cuda_call(result):
    rt = _cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        message = rt.cudaGetErrorString(err)[1].decode()
        raise UserError(f"CUDA failed ({err.name}: {message}): TensorRT needs an NVIDIA GPU with its driver")
    return values[0] if len(values) == 1 else values


def current_gpu_facts(gpu_index: int = 0) -> dict[str, str]:
    """This machine's GPU name and compute capability, plus the TensorRT version when it is installed."""
    runtime = _cudart()
    if runtime is None:
        gpu_name, capability = _torch_gpu(gpu_index)
    else:
        props = _cuda_call(runtime.cudaGetDeviceProperties(gpu_index))
        gpu_name = (
            props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
        )
        capability = f"{props.major}.{props.minor}"
    return {"gpu_name": gpu_name, "compute_capability": capability, "tensorrt_version": installed_version()}


def _torch_gpu(gpu_index: int) -> tuple[str, str]:
    torch = require("torch", CUDA_HINT)
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
        self.torch = torch = require("torch", CUDA_HINT)
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
    if _cudart() is None:
        _torch_gpu(gpu_index)  # raises the right UserError when torch cannot help either
        return TorchCudaMemory(gpu_index)
    return CudaPythonMemory(gpu_index)


# ---------------------------------------------------------------- runner


class TensorRTRunner(RunnerBase):
    """One execution context with device buffers sized for the profile's largest batch (TensorRT 10/11 API)."""

    def __init__(self, engine, memory, info: dict[str, Any]):
        trt = _trt()
        self.engine, self.memory, self.info = engine, memory, info
        self._lock = threading.Lock()
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise UserError(
                f"this engine takes {len(inputs)} inputs; lkca-deploy runs one-input image models"
            )
        self.input_name, self._outputs = inputs[0], outputs
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
        return self._run(x, self._outputs[:1])[self._outputs[0]]

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(x, self._outputs)

    def _run(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        # One execution context and one set of device buffers: calls from several threads take turns.
        with self._lock:
            return self._run_locked(x, names)

    def _run_locked(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        x = as_model_input(x, self.input_shape, self.max_batch)
        x = np.ascontiguousarray(x, dtype=self._dtypes[self.input_name])
        self.context.set_input_shape(self.input_name, x.shape)
        self.memory.to_device(self._pointers[self.input_name], x)
        if not self.context.execute_async_v3(self.memory.stream_handle):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log above)")
        outs = {}
        for name in names:
            outs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), self._dtypes[name])
            self.memory.to_host(outs[name], self._pointers[name])
        self.memory.synchronize()
        return {name: out.astype(np.float32, copy=False) for name, out in outs.items()}

    def close(self) -> None:
        self.context = self.engine = None
        self.memory.close()


# ---------------------------------------------------------------- backend


class TensorRTLoader:
    name = NAME
    precisions = PRECISIONS
    artifact_suffix = ".engine"
    built_on_device = True  # engines run only where they were built: the device builds it from our files

    def available(self) -> tuple[bool, str]:
        trt = installed("tensorrt")
        if trt is None:
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

        `device`: cuda[:N] or dla:N (DLA with GPU fallback). Options: those of TensorRTSettings (min_batch/
        opt_batch/max_batch: dynamic batch profile, default 1/1/32, static at opt_batch on DLA; workspace_mib;
        timing_cache, a file read and updated; calib_cache, TensorRT 10 implicit INT8 from an fp32 ONNX;
        allow_tf32). `calib` is unused: INT8 comes baked as Q/DQ or as a calibration cache.
        """
        settings = TensorRTSettings.from_options(precision, device, **options)
        trt = _trt()
        onnx_path, out = Path(onnx_path), Path(out)
        gpu_index, dla_core = parse_device(device)
        model = load_onnx(onnx_path)
        calib_cache = settings.file(settings.calib_cache, out.parent)
        timing_cache = settings.file(settings.timing_cache, out.parent)
        accepted = ("int8", "fp32") if precision == "int8" and calib_cache else (precision,)
        found = require_onnx_precision(model, onnx_path, precision, accepted)
        check_recipe_fits({"min_tensorrt": min_tensorrt_of(model), "precision": precision, "onnx": onnx_path.name},
                          trt.__version__)
        plan = precision_plan(
            precision,
            trt.__version__,
            onnx_precision=found,
            calib_cache=calib_cache is not None,
            dla=dla_core is not None,
        )
        from lkca_runtime.onnx_io import input_spec

        spec = input_spec(model)
        here = current_gpu_facts(gpu_index)
        plan_bytes = _build_serialized(
            trt,
            onnx_path,
            plan,
            spec,
            settings.profile(),
            dla_core=dla_core,
            calib_cache=calib_cache,
            timing_cache=timing_cache,
            workspace_mib=settings.workspace_mib,
            allow_tf32=settings.allow_tf32,
            fp32_layers=fp32_layer_names(model) if precision == "fp16" else [],
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
            },
            settings=settings.with_files_named_beside(out.parent).to_dict(),
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
    fp32_layers: list[str] = (),
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(
            f"TensorRT cannot parse {onnx_path.name}: {errors[0] if errors else 'unknown error'}{more}"
        )

    config = builder.create_builder_config()
    if fp32_layers and not plan.strongly_typed:  # trt-api: <11 (weak typing only)
        _keep_fp32(trt, network, config, set(fp32_layers))
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    for flag in plan.flags:  # trt-api: <11 uses BuilderFlag.INT8 BuilderFlag.FP16 (weak typing: empty on 11)
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
        if plan.quantization == "implicit":  # trt-api: <11 (precision_plan refuses implicit INT8 on 11)
            config.set_calibration_profile(optimization_profile)
    if plan.quantization == "implicit":  # trt-api: <11 (calibrators were removed in 11)
        config.int8_calibrator = _cache_calibrator(trt, calib_cache)
    cache = _attach_timing_cache(config, timing_cache)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(cache.serialize())))
    return bytes(memoryview(serialized))


def _network_flags(trt, plan: PrecisionPlan) -> int:
    """Strongly typed on 11; explicit batch below 10, whose ONNX parser refuses an implicit-batch network (10 has
    only explicit batch and deprecates the flag)."""
    if plan.strongly_typed:  # trt-api: >=11 (precision_plan: strongly typed on 11 only)
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if parse_version(trt.__version__)[0] < 10:  # trt-api: <10 uses NetworkDefinitionCreationFlag.EXPLICIT_BATCH
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def _keep_fp32(trt, network, config, names: set[str]) -> None:
    """Weak typing may run any layer in FP16 under the FP16 flag: the layers of the nodes the FP16 ONNX keeps FP32
    are pinned to FP32 and the builder told to obey (trtexec's --precisionConstraints=obey --layerPrecisions)."""
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name in names:
            layer.precision = trt.float32
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


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
