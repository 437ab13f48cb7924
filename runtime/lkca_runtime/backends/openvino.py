"""OpenVINO backend: ONNX -> IR (model.xml + model.bin) with the inference precision hint kept in the sidecar.

`import openvino` below is absolute (Python 3), so this module's own name shadows nothing.

Precision: fp32 and int8 compile with INFERENCE_PRECISION_HINT f32, because the CPU plugin otherwise computes in
bf16 on CPUs with AVX512_BF16 or AMX and misses FP32 parity (research note); bf16 is a precision of its own, offered
where the CPU has it; fp16 is the FP16 ONNX converted as is; int8 is NNCF post-training quantization of the
converted model, or a Q/DQ ONNX read directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from lkca_deploy.fsutil import publish, sha256_file, staging_dir

NAME = "openvino"
INSTALL_HINT = "OpenVINO is not installed: pip install openvino"
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
NNCF_PRESETS = ("mixed", "performance")
INFERENCE_PRECISIONS = ("f32", "f16", "bf16")
BUILD_OPTIONS = ("performance_hint", "inference_precision", "nncf_preset", "nncf_smooth_quant", "nncf_ignored_nodes")
LOAD_OPTIONS = ("performance_hint",)
# What the ONNX handed to build must already compute in, per precision (precision lives in the ONNX): bf16 is a
# compile-time hint on an fp32 graph; int8 is either a Q/DQ ONNX or an fp32 one that NNCF quantizes here.
ACCEPTED_ONNX = {"fp32": ("fp32",), "fp16": ("fp16",), "bf16": ("fp32",), "int8": ("int8", "fp32")}


def _ov():
    import openvino

    return openvino


# ---------------------------------------------------------------- pure decisions (tested without a device)


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's ISA flags of interest (reports.machine reads them); None where there is no /proc/cpuinfo."""
    from lkca_deploy.reports.machine import parse_cpuinfo

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


def calibration_items(calib: np.ndarray) -> list[np.ndarray]:
    """NNCF wants an iterable of model inputs; one sample per item so subset_size counts samples."""
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    return [calib[i : i + 1] for i in range(len(calib))]


# ---------------------------------------------------------------- runner


class OpenVinoRunner(RunnerBase):
    """One compiled model and one infer request; returns a float32 copy (the request reuses its buffers)."""

    def __init__(self, compiled, info: dict[str, Any]):
        ov = _ov()
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        first = compiled.inputs[0]
        self.input_name = first.any_name
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in first.get_partial_shape())
        self.max_batch = None
        self.info = info
        self._input_dtype = np.float16 if first.get_element_type() == ov.Type.f16 else np.float32

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = as_model_input(x, self.input_shape).astype(self._input_dtype, copy=False)
        self.request.infer({0: x})
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name (parity localisation reads the block outputs)."""
        x = as_model_input(x, self.input_shape).astype(self._input_dtype, copy=False)
        self.request.infer({0: x})
        return {out.get_any_name(): np.array(self.request.get_output_tensor(i).data, dtype=np.float32)
                for i, out in enumerate(self.compiled.outputs)}

    def close(self) -> None:
        self.request = self.compiled = None


# ---------------------------------------------------------------- backend


class OpenVinoBackend(BackendBase):
    name = NAME
    precisions = ("fp32", "fp16", "bf16", "int8")
    int8_flavors = (
        "nncf",
        "qdq",
    )  # NNCF on the IR by default; "qdq": the cpu-flavour Q/DQ ONNX read directly
    artifact_suffix = ".xml"

    def available(self) -> tuple[bool, str]:
        try:
            ov = _ov()
        except ImportError:
            return False, INSTALL_HINT
        return True, f"openvino {ov.get_version()} ({', '.join(ov.Core().available_devices)})"

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
        """Convert to IR at `out` (.xml, with .bin beside), compile once to prove it runs, write the sidecar.

        Options: performance_hint LATENCY|THROUGHPUT (default LATENCY), inference_precision f32|f16|bf16 to
        override the hint chosen from the precision, nncf_preset mixed|performance (int8 via NNCF).
        """
        check_options(options, BUILD_OPTIONS, "openvino build")
        check_precision(precision, self.precisions, NAME)
        onnx_path, out = Path(onnx_path), Path(out)
        if out.suffix != ".xml":
            raise UserError(f"an OpenVINO IR is a .xml file (with its .bin beside it), got {out.name}")
        ov = _ov()
        core = ov.Core()
        device = check_device(device or "CPU", core.available_devices)
        performance_hint = _performance_hint(options.get("performance_hint", "LATENCY"))
        capabilities = _capabilities(core, device)
        if precision == "bf16":
            require_bf16(device, cpu_flags(), capabilities)
        hint = options.get("inference_precision") or inference_precision_hint(precision, capabilities)
        if hint not in INFERENCE_PRECISIONS:
            raise UserError(
                f"unknown inference_precision {hint!r}: choose one of {', '.join(INFERENCE_PRECISIONS)}"
            )

        model = load_onnx(onnx_path)
        found = require_onnx_precision(model, onnx_path, precision, ACCEPTED_ONNX[precision])
        ov_model = _read_onnx(core, onnx_path)
        quantizer = None
        nncf_facts: dict[str, Any] = {}
        if precision == "int8":
            quantizer = "qdq" if found == "int8" else "nncf"
            if quantizer == "nncf":
                preset = options.get("nncf_preset", "mixed")
                smooth_quant = bool(options.get("nncf_smooth_quant", False))
                ignored = list(options.get("nncf_ignored_nodes", ()))
                ov_model = nncf_quantize(
                    ov_model, calib, device=device, preset=preset, smooth_quant=smooth_quant, ignored_nodes=ignored
                )
                nncf_facts = {
                    "preset": preset,
                    "smooth_quant": smooth_quant,
                    "subset_size": len(calib),
                    "model_type": "transformer",
                    **({"ignored_nodes": ignored} if ignored else {}),  # the accuracy-aware float units
                }

        config = _compile_config(core, device, hint, performance_hint)
        effective = _save_and_check(ov_model, out, core, device, config, compress_to_fp16=precision == "fp16")
        write_sidecar(
            out,
            backend=NAME,
            precision=precision,
            source_onnx=onnx_path,
            library_version=ov.get_version(),
            device=device,
            options={
                "inference_precision_hint": config.get("INFERENCE_PRECISION_HINT"),
                "inference_precision_effective": effective,
                "performance_hint": performance_hint,
                "compress_to_fp16": precision == "fp16",
                "quantizer": quantizer,
                "nncf": nncf_facts,
            },
            provenance=provenance,
            weights={"file": out.with_suffix(".bin").name, "sha256": sha256_file(out.with_suffix(".bin"))},
            input=input_facts(model),
        )
        return out

    def load(
        self, artifact: Path, *, device: str | None = None, threads: int | None = None, **options: Any
    ) -> OpenVinoRunner:
        """Compile the IR with the sidecar's precision hint; refuse a device that would compute otherwise."""
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
        hint = facts["options"]["inference_precision_hint"]
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


def nncf_quantize(
    ov_model,
    calib: np.ndarray | None,
    *,
    device: str,
    preset: str = "mixed",
    smooth_quant: bool = False,
    ignored_nodes: Sequence[str] = (),
):
    """NNCF post-training INT8 of an IR; `ignored_nodes` (ONNX node names) stay float.

    model_type TRANSFORMER keeps LayerNorm, residual Add, GELU/Softmax in float (FQ-ViT: quantizing those breaks
    ViTs). Preset MIXED: symmetric weights, asymmetric activations, because GELU and LayerNorm outputs are far from
    symmetric and the x86 int8 path takes unsigned activations at no cost (it is NNCF's own default for
    transformers); PERFORMANCE (symmetric everywhere) is the option for devices that want zero-points of 0.
    SmoothQuant, which TRANSFORMER turns on, is off by default: it is made for LLM activation outliers, and on
    the LKCA test graph here it raised the logits' relative error from 2% to 60% (NNCF 3.4, 32 samples).
    """
    # NNCF's quantizer imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on every CPU box.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    nncf.set_log_level(logging.WARNING)  # not one INFO line per op kept float

    if calib is None or len(calib) == 0:
        raise UserError("int8 needs --calib SOURCE (calibration images) for NNCF")
    if preset not in NNCF_PRESETS:
        raise UserError(f"unknown nncf_preset {preset!r}: choose one of {', '.join(NNCF_PRESETS)}")
    items = calibration_items(calib)
    _fold_constants(ov_model)
    ignored = ov_op_names(ov_model, ignored_nodes) + constant_first_matmuls(ov_model)
    return nncf.quantize(
        ov_model,
        nncf.Dataset(items),
        ignored_scope=nncf.IgnoredScope(names=list(dict.fromkeys(ignored))),
        preset=nncf.QuantizationPreset(preset),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(items),
        target_device=_nncf_target(device),
        advanced_parameters=None
        if smooth_quant
        else AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)  # -1 turns it off
        ),
    )


def _fold_constants(ov_model) -> None:
    """Constant subgraphs become constants: token_spectral builds its Toeplitz blocks as Gathers from small tables,
    and NNCF 3.4 fails (KeyError) on a weight that a Gather feeds into a MatMul."""
    from openvino.passes import ConstantFolding, Manager

    passes = Manager()
    passes.register_pass(ConstantFolding())
    passes.run_passes(ov_model)


def constant_first_matmuls(ov_model) -> list[str]:
    """MatMuls whose first input is a constant: the spectral lowerings' DFT and Toeplitz matrices acting from the
    left (a Linear layer's weight is the second input). NNCF 3.4 gives such a weight scales per row, which the CPU
    plugin refuses to compile for token_spectral's Toeplitz form ("any_of(scale.size(), OC, 1U)"), so they stay
    float: fixed linear maps of the spectrum, where INT8 would cost accuracy more than it saves time."""
    return [
        op.get_friendly_name()
        for op in ov_model.get_ordered_ops()
        if op.get_type_name() == "MatMul" and op.input_value(0).get_node().get_type_name() == "Constant"
    ]


def ov_op_names(ov_model, onnx_nodes: Sequence[str]) -> list[str]:
    """The ops the ONNX frontend made of `onnx_nodes`: one keeps the node's name, a Conv with bias becomes
    "<name>/WithoutBiases" plus an Add named <name>."""
    names = [op.get_friendly_name() for op in ov_model.get_ordered_ops()]
    found, missing = [], []
    for node in dict.fromkeys(onnx_nodes):
        ops = [n for n in names if n == node or n.startswith(node + "/")]
        found += ops
        missing += [] if ops else [node]
    if missing:
        raise UserError(f"OpenVINO's model has no op for the node(s) kept float: {', '.join(sorted(missing))}")
    return list(dict.fromkeys(found))


def _nncf_target(device: str):
    import nncf

    family = device_family(device)
    return getattr(nncf.TargetDevice, family) if family in ("CPU", "GPU", "NPU") else nncf.TargetDevice.ANY


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


def _read_onnx(core, onnx_path: Path):
    """The ONNX as an ov.Model through the ONNX frontend alone.

    Not ov.convert_model: its offline passes changed the results of a trained model's Q/DQ graph (digits top-1
    98.1% -> 82.5%, while ONNX Runtime and Core.read_model on the same file gave 98.1%; OpenVINO 2026.4).
    """
    from openvino import frontend

    failures = (
        frontend.OpConversionFailure,
        frontend.GeneralFailure,
        frontend.OpValidationFailure,
        frontend.NotImplementedFailure,
        RuntimeError,
    )
    try:
        return core.read_model(str(onnx_path))
    except failures as err:
        raise UserError(
            f"OpenVINO cannot convert {onnx_path.name}: {str(err).strip().splitlines()[0]}"
        ) from None


def _save_and_check(
    ov_model, out: Path, core, device: str, config: dict, *, compress_to_fp16: bool
) -> str | None:
    """Save the IR into a temp folder beside `out`, compile it from there, then move .bin and .xml into place.

    Returns the precision the compiled model computes in. The .xml is moved last: it names the artifact.
    """
    with staging_dir(out) as tmp_dir:
        tmp_xml = tmp_dir / out.name
        _ov().save_model(ov_model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        effective = _effective_precision(core.compile_model(str(tmp_xml), device, config))
        publish(tmp_xml.with_suffix(".bin"), out.with_suffix(".bin"))
        publish(tmp_xml, out)
        return effective
