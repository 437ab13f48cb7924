"""OpenVINO backend, build side: ONNX -> IR (model.xml + model.bin), INT8 by NNCF or from a Q/DQ ONNX, with the
inference precision hint kept in the sidecar. Loading and running are the device runtime's
(lkca_runtime.backends.openvino, which says why fp32 pins the hint to f32).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lkca_deploy.backends.base import BackendBase
from lkca_runtime.backends.base import (
    check_options,
    check_precision,
    input_facts,
    load_onnx,
    require_onnx_precision,
    write_sidecar,
)
from lkca_runtime.backends.openvino import (
    INFERENCE_PRECISIONS,
    NAME,
    OpenVinoLoader,
    _capabilities,
    _compile_config,
    _effective_precision,
    _ov,
    _performance_hint,
    check_device,
    cpu_flags,
    device_family,
    inference_precision_hint,
    require_bf16,
)
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import publish, sha256_file, staging_dir


class OpenVinoBackend(OpenVinoLoader, BackendBase):
    int8_flavors = (
        "nncf",
        "qdq",
    )  # NNCF on the IR by default; "qdq": the cpu-flavour Q/DQ ONNX read directly
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


NNCF_PRESETS = ("mixed", "performance")


BUILD_OPTIONS = ("performance_hint", "inference_precision", "nncf_preset", "nncf_smooth_quant", "nncf_ignored_nodes")


# What the ONNX handed to build must already compute in, per precision (precision lives in the ONNX): bf16 is a
# compile-time hint on an fp32 graph; int8 is either a Q/DQ ONNX or an fp32 one that NNCF quantizes here.
ACCEPTED_ONNX = {"fp32": ("fp32",), "fp16": ("fp16",), "bf16": ("fp32",), "int8": ("int8", "fp32")}


def calibration_items(calib: np.ndarray) -> list[np.ndarray]:
    """NNCF wants an iterable of model inputs; one sample per item so subset_size counts samples."""
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    return [calib[i : i + 1] for i in range(len(calib))]


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
