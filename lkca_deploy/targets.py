"""Everything the project knows about each target, in one table: its limits, which lowering suits it, which
backend builds for it, and which static checks (check.py) apply. The planner, the checks, export and the pipeline
read it; none keeps a list or a limit of its own. Sources of the numbers: docs/backend-limits.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from lkca_runtime.errors import UserError

# TensorRT "DLA supported layers and restrictions" (docs/backend-limits.md): per-side limits of a DLA convolution.
DLA_KERNEL_LIMIT = 32
DLA_LIMITS = {
    "kernel": DLA_KERNEL_LIMIT,
    "pad": DLA_KERNEL_LIMIT - 1,
    "stride": 8,
    "dilation": 32,
    "groups": 8192,
    "channels": 8192,
}
DLA_SUBGRAPHS_PER_CORE = 16
# The OpenVINO NPU compiler's hardware conv kernel limit (docs/backend-limits.md).
NPU_KERNEL_LIMIT = 11


@dataclass(frozen=True)
class Target:
    """One place a model runs: the hardware's limits and what the toolkit does about them."""

    name: str
    backend: str  # the backend that builds engines for it
    kernel_limit: int | None  # largest conv kernel side the hardware runs; None: no limit
    matmul_max_tokens: int  # grids of at most this many tokens run the Toeplitz matmul faster; 0: never
    conv_note: str  # why the conv is the choice when nothing else applies
    spectral_over_tokens: int = 0  # depthwise convs on grids of more than this many tokens: DFT matmuls; 0: never
    # INT8 grouped convs want channels per group to be a multiple of this (0: no such rule). TensorRT's
    # IConvolutionLayer::setNbGroups documents 4 (docs/tensorrt.md): a depthwise conv has 1.
    int8_group_multiple: int = 0
    checks: tuple[str, ...] = ()  # the lints of check.py that apply, by name
    # ONNX opsets (default domain) it reads, lowest and highest; None: no documented ceiling, so the newest opset
    # the installed onnx package defines (a higher one is no released opset). Sources: docs/backend-limits.md.
    opsets: tuple[int, int | None] = (1, None)
    # A segmentation head's bilinear Resize to the input size as two MatMuls (lowering/upsample.py): measured
    # faster on the CPU backends (ONNX Runtime 1.8x, OpenVINO 1.15x at 150 x 32 x 32 -> 512 x 512).
    upsample_matmuls: bool = False
    max_opset: int | None = None
    graph_forms: tuple[str, ...] = ()


_TENSORRT_CHECKS = ("opset_range", "standard_ops", "tensorrt_parser", "qdq_zero_points", "int8_grouped_convs")
TENSORRT_OPSETS = (9, 25)  # the TensorRT 11.x ONNX parser
ONNXRUNTIME_OPSETS = (7, 28)  # ONNX Runtime 1.32, as it says when loading a model outside them
_TENSORRT_INT8_GROUP_MULTIPLE = 4

# Lowering choices: end to end, benchmarks/lowering.py on a 2-core AVX-512 EPYC (README "Measured here"). The
# per-head Toeplitz matmul beats the conv on both CPU backends up to 16x16 (ORT 1.2x at 8x8, 1.3-1.5x at 16x16;
# OpenVINO 1.1x); the spectral lowering loses below 16x16 and wins at 32x32/K63 (ORT 1.6-1.9x, OpenVINO 1.1-1.3x).
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "tensorrt", "tensorrt", None, 0, "TensorRT runs the conv; at small grids matmul may win: try `tune`",
            checks=_TENSORRT_CHECKS, int8_group_multiple=_TENSORRT_INT8_GROUP_MULTIPLE, opsets=TENSORRT_OPSETS,
        ),
        Target(
            "jetson-dla", "tensorrt", DLA_KERNEL_LIMIT, 0, f"the kernel fits the DLA's {DLA_KERNEL_LIMIT}-tap limit",
            checks=(*_TENSORRT_CHECKS, "static_inputs", "dla_placement"),
            int8_group_multiple=_TENSORRT_INT8_GROUP_MULTIPLE, opsets=TENSORRT_OPSETS,
        ),
        Target(
            "openvino-cpu", "openvino", None, 256, "grid dynamic: OpenVINO's depthwise conv", 256,
            checks=("opset_range", "standard_ops", "openvino_dft"), upsample_matmuls=True,
        ),
        Target(
            "openvino-gpu", "openvino", None, 0, "OpenVINO GPU runs the large depthwise conv natively",
            checks=("opset_range", "standard_ops", "openvino_dft", "huge_filters"),
        ),
        Target(
            "openvino-npu", "openvino", NPU_KERNEL_LIMIT, 0,
            f"the kernel fits the NPU's {NPU_KERNEL_LIMIT}-tap limit",
            checks=("opset_range", "standard_ops", "openvino_dft", "kernel_limit"),
        ),
        Target(
            "onnxruntime-cpu", "onnxruntime", None, 256,
            "grid dynamic: the conv (NCHWc at full optimization); `tune` measures here", 256,
            checks=("opset_range", "standard_ops", "onnxruntime_cpu"), opsets=ONNXRUNTIME_OPSETS,
            upsample_matmuls=True,
        ),
    )
}
TARGET_NAMES = tuple(TARGETS)

# The target each backend's engines are exported for when the caller names only a backend.
BACKEND_TARGETS = {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino-cpu", "tensorrt": "tensorrt"}
DEFAULT_TARGET = BACKEND_TARGETS["onnxruntime"]  # what `export` and the pipeline's plain export plan for


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UserError(f"unknown target {name!r}: choose one of {', '.join(TARGET_NAMES)}")
    return TARGETS[name]


def default_target(backend: str) -> str:
    return BACKEND_TARGETS[backend]
