"""Everything the project knows about each target, in one table: its limits, which lowering suits it, which
backend builds for it, and which static checks (check.py) apply. The planner, the checks, export and the pipeline
read it; none keeps a list or a limit of its own. Sources of the numbers: docs/backend-limits.md; of the TensorRT
releases and the JetPacks that ship them: docs/jetson.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from lkca_runtime.errors import UserError
from lkca_runtime.jetpack import JETPACK_LINES, release_of

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
    # the installed onnx package defines (a higher one is no released opset). Export writes no opset above the
    # highest. Sources: docs/backend-limits.md.
    opsets: tuple[int, int | None] = (1, None)
    # A segmentation head's bilinear Resize to the input size as two MatMuls (forms/upsample.py): measured
    # faster on the CPU backends (ONNX Runtime 1.8x, OpenVINO 1.15x at 150 x 32 x 32 -> 512 x 512).
    upsample_matmuls: bool = False
    # The TensorRT releases it means (keys of TENSORRT_RELEASES, oldest first): check reads their parser tables.
    tensorrt: tuple[str, ...] = ()
    graph_forms: tuple[str, ...] = ()


# onnx-tensorrt's operator support table (its operators page at release/10.0-GA and 10.1-GA; docs/jetson.md): what is
# not listed fails the parse.
_TENSORRT_10_OPS_TABLE = """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
    CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
    Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
    GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If
    ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
    LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization
    Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
    QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
    ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
    Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
    Unsqueeze Upsample Where Xor
"""
TENSORRT_10_OPS = frozenset(_TENSORRT_10_OPS_TABLE.split())
# The same table at release/8.6-GA lists these five as N (or not at all), at release/8.5-GA three more.
TENSORRT_8_6_OPS = TENSORRT_10_OPS - {"CastLike", "DeformConv", "Gelu", "Hardmax", "Mish"}
TENSORRT_8_5_OPS = TENSORRT_8_6_OPS - {"GroupNormalization", "IsInf", "LayerNormalization"}


@dataclass(frozen=True)
class TensorRTRelease:
    """What one TensorRT release's ONNX parser takes (docs/jetson.md, "What each TensorRT parses")."""

    version: str  # the oldest version of the release that a JetPack ships (or the release itself)
    opsets: tuple[int, int]  # default-domain opsets its parser reads
    ops: frozenset[str]
    # Reduce ops other than ReduceSum read `axes` as an input (opset 18 form); 8.x ignores it (reduces every axis).
    reduce_axes_input: bool
    # A DequantizeLinear may read an INT8 initializer; 8.x refuses ("only activation types allowed as input").
    int8_weight_initializers: bool
    dla: bool  # places layers on a Jetson's DLA
    source: str  # the operator table it comes from

    @property
    def label(self) -> str:
        return f"TensorRT {self.version}"


TENSORRT_RELEASES: dict[str, TensorRTRelease] = {
    "8.5": TensorRTRelease("8.5.2", (1, 17), TENSORRT_8_5_OPS, False, False, True, "onnx-tensorrt 8.5-GA"),
    "8.6": TensorRTRelease("8.6.2", (1, 17), TENSORRT_8_6_OPS, False, False, True, "onnx-tensorrt 8.6-GA"),
    "10.3": TensorRTRelease("10.3.0", (9, 20), TENSORRT_10_OPS, True, True, True, "onnx-tensorrt 10.x"),
    "10.13": TensorRTRelease("10.13.3", (9, 24), TENSORRT_10_OPS, True, True, False, "onnx-tensorrt 10.x"),
    "11.4": TensorRTRelease("11.4.1", (9, 24), TENSORRT_10_OPS, True, True, True, "onnx-tensorrt 10.x"),
}
TENSORRT_RELEASE_NAMES = tuple(TENSORRT_RELEASES)


def tensorrt_ceiling(releases: tuple[str, ...]) -> int:
    """The highest opset every one of `releases` reads."""
    return min(TENSORRT_RELEASES[r].opsets[1] for r in releases)


def tensorrt_range(releases: tuple[str, ...]) -> str:
    """'TensorRT 10.13.3-11.4.1' / 'TensorRT 8.5.2'."""
    versions = [TENSORRT_RELEASES[r].version for r in releases]
    return "TensorRT " + (versions[0] if len(versions) == 1 else f"{versions[0]}-{versions[-1]}")


_TENSORRT_CHECKS = ("opset_range", "standard_ops", "tensorrt_parser", "qdq_zero_points", "int8_grouped_convs")
# `tensorrt`: TensorRT 10.3 and later (x86 and JetPack 6.1 on); `jetson-dla`: the TensorRT releases with a DLA that
# the trtexec script writes for (JetPack 6.1/6.2's 10.3, JetPack 7.2.2's 11.4.1).
_TENSORRT_GPU = ("10.3", "10.13", "11.4")
_TENSORRT_DLA = ("10.3", "11.4")
ONNXRUNTIME_OPSETS = (7, 28)  # ONNX Runtime 1.32, as it says when loading a model outside them
_TENSORRT_INT8_GROUP_MULTIPLE = 4
# What each TensorRT 8 release cannot parse, rewritten in the export (op forms, forms/registry.py).
_TENSORRT_8_5_FORMS = ("gelu_erf", "reduce_axes_attribute", "layernorm_decomposed")
_TENSORRT_8_6_FORMS = ("gelu_erf", "reduce_axes_attribute")


def _tensorrt_target(name: str, releases: tuple[str, ...], conv_note: str, **kwargs) -> Target:
    """A TensorRT target: its opsets and parser tables from `releases` (TENSORRT_RELEASES)."""
    ceiling = tensorrt_ceiling(releases)
    low = max(TENSORRT_RELEASES[r].opsets[0] for r in releases)
    return Target(
        name, "tensorrt", kwargs.pop("kernel_limit", None), 0, conv_note,
        checks=kwargs.pop("checks", _TENSORRT_CHECKS), int8_group_multiple=_TENSORRT_INT8_GROUP_MULTIPLE,
        opsets=(low, ceiling), tensorrt=releases, **kwargs,
    )


def _jetpack_target(name: str, releases: tuple[str, ...], forms: tuple[str, ...] = ()) -> Target:
    lines = [line.label for line in JETPACK_LINES if line.target == name]
    return _tensorrt_target(
        name, releases, f"JetPack {' / '.join(lines)}'s {tensorrt_range(releases)} runs the conv", graph_forms=forms,
    )


# Lowering choices: end to end, benchmarks/lowering.py on a 2-core AVX-512 EPYC (README "Measured here"). The
# per-head Toeplitz matmul beats the conv on both CPU backends up to 16x16 (ORT 1.2x at 8x8, 1.3-1.5x at 16x16;
# OpenVINO 1.1x); the spectral lowering loses below 16x16 and wins at 32x32/K63 (ORT 1.6-1.9x, OpenVINO 1.1-1.3x).
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        _tensorrt_target(
            "tensorrt", _TENSORRT_GPU, "TensorRT runs the conv; at small grids matmul may win: try `tune`",
        ),
        _tensorrt_target(
            "jetson-dla", _TENSORRT_DLA, f"the kernel fits the DLA's {DLA_KERNEL_LIMIT}-tap limit",
            kernel_limit=DLA_KERNEL_LIMIT, checks=(*_TENSORRT_CHECKS, "static_inputs", "dla_placement"),
        ),
        _jetpack_target("jetson-jp5", ("8.5",), _TENSORRT_8_5_FORMS),
        _jetpack_target("jetson-jp6.0", ("8.6",), _TENSORRT_8_6_FORMS),
        _jetpack_target("jetson-jp6", ("10.3",)),
        _jetpack_target("jetson-jp7", ("10.13", "11.4")),
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


def min_tensorrt(target: str) -> str | None:
    """The oldest TensorRT version `target` means, or None for a target TensorRT does not build."""
    releases = get_target(target).tensorrt
    return TENSORRT_RELEASES[releases[0]].version if releases else None


def int8_weight_form(target: str | None) -> str:
    """How a Q/DQ INT8 export holds its weights for `target`: "int8" initializers, or "float" initializers behind a
    QuantizeLinear where one of the TensorRT releases it means refuses INT8 initializers (TensorRT 8)."""
    known = TARGETS.get(target or "")
    releases = known.tensorrt if known else ()
    return "float" if any(not TENSORRT_RELEASES[r].int8_weight_initializers for r in releases) else "int8"


def tensorrt_release_for(version: str) -> TensorRTRelease | None:
    """The table row of the release TensorRT `version` belongs to (None: a release the table does not know)."""
    return TENSORRT_RELEASES.get(release_of(version))


def which_jetson_table() -> str:
    """README's "Which Jetson" table, written from JETPACK_LINES and the targets (tests/test_jetson.py keeps the
    README equal to it): per JetPack line its TensorRT, the target that writes for it, and what that export holds."""
    rows = ["| JetPack | Jetson | TensorRT | Python | DLA | `--target` | export | INT8 weights |",
            "|---|---|---|---|---|---|---|---|"]
    for line in JETPACK_LINES:
        target = TARGETS[line.target]
        tensorrt = line.tensorrt if line.tensorrt == line.newest_tensorrt else f"{line.tensorrt}-{line.newest_tensorrt}"
        forms = ", ".join(target.graph_forms) or "as traced"
        weights = "float + QuantizeLinear" if int8_weight_form(target.name) == "float" else "INT8 initializers"
        rows.append(f"| {line.label} | {line.devices} | {tensorrt} | {line.python} | {line.dla or 'none'} | "
                    f"`{target.name}` | opset <= {target.opsets[1]}; {forms} | {weights} |")
    return "\n".join(rows)
