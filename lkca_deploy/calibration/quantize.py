"""Precision baked into the ONNX: FP16 casts, INT8 Q/DQ in two flavours, TensorRT calibration caches.

An FP16 or INT8 model is an ONNX file that every backend consumes as it is (TensorRT 11 builds only strongly typed
networks). The INT8 flavours differ only where the targets' fast paths differ:

- ``tensorrt``: signed int8 activations and weights, zero-point 0 everywhere, weights per channel, biases left in
  float (TensorRT takes no other Q/DQ). ONNX Runtime running this model shows what the TensorRT engine computes.
- ``cpu``: the same placement with uint8 (asymmetric) activations, ONNX Runtime's x86 fast path.

TensorRT 8 (JetPack 5.1, 6.0) refuses a DequantizeLinear that reads an INT8 initializer ("only activation types
allowed as input to this layer", docs/jetson.md): for it the weights are float initializers, each behind a
QuantizeLinear with the same scale (``weight_form="float"``, `float_weights_with_qdq`), which computes the same
values. The target decides (targets.int8_weight_form).

Both put Q/DQ on the inputs of the INT8 ops only, and on an output only where another INT8 op reads it (the value
projection feeding the Toeplitz MatMul): ONNX Runtime then runs each MatMul as one integer kernel with a float
output (MatMulIntegerToFloat; QLinearMatMul for that projection). Quantizing every output as well (ORT's default)
left lkca_vit_tiny no faster than FP32 at batch 1 (1.01x: a requantize and a dequantize around every MatMul)
against 1.57x without it (2.15x against 1.66x at batch 32; benchmarks/precision.py).

Only Conv, MatMul and Gemm carry INT8. LayerNorm, Softmax, GELU (Erf and the Div/Mul/Add of an exported GELU) and
residual Adds stay float, as NNCF's transformer mode and ModelOpt do: FQ-ViT shows ViT accuracy collapsing when
LayerNorm is quantized. Every function returns a ModelProto; saving it (atomically) is the caller's job.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from lkca_deploy.calibration import DEFAULT_METHOD
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_write_text
from lkca_runtime.onnx_io import InputSpec, graph_inputs

Flavor = Literal["cpu", "tensorrt"]
Method = Literal["minmax", "entropy", "percentile"]
FLAVORS: tuple[str, ...] = ("cpu", "tensorrt")
WEIGHT_FORMS: tuple[str, ...] = ("int8", "float")  # INT8 initializers, or float ones behind a QuantizeLinear
METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")

QUANTIZED_OP_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
# FP16 LayerNorm overflow is TensorRT's most reported transformer failure; normalisations stay FP32.
FP16_KEEP_FP32_OP_TYPES: tuple[str, ...] = ("LayerNormalization", "GroupNormalization", "InstanceNormalization")
# Ops that must never read a fake-quantized tensor in the tensorrt flavour.
FLOAT_ONLY_READERS: tuple[str, ...] = ("LayerNormalization", "Softmax")

# minmax: the methods differ by about one test image on a trained nano, and it is 10x faster than entropy
# (table and source: docs/backend-limits.md, "Calibration methods").

# Histogram calibrators keep every calibrated tensor of a collect call in memory: feed them in chunks.
_SAMPLES_PER_COLLECT = 128


# --------------------------------------------------------------------------------------------------------------- FP16


def to_fp16(
    model: onnx.ModelProto,
    keep_fp32_op_types: Sequence[str] = FP16_KEEP_FP32_OP_TYPES,
    keep_fp32_nodes: Sequence[str] = (),
) -> onnx.ModelProto:
    """Weights and compute in FP16; `keep_fp32_op_types` and the nodes named in `keep_fp32_nodes` (and their
    inputs, cast before them) stay FP32. precision/headroom.py names the nodes whose tensors FP16 cannot hold.

    Graph inputs and outputs stay float32 with casts at the edges, so callers feed and read the same arrays as for
    the FP32 model.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    source = _copy(model)
    # Exporters leave float32 types in value_info; once tensors turn FP16 they contradict the graph. Shape inference
    # inside the converter rebuilds them.
    del source.graph.value_info[:]
    converted = convert_float_to_float16(
        source,
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *keep_fp32_op_types],
        node_block_list=list(keep_fp32_nodes),
    )
    _restore_fp32_weights(converted, model)
    _skip_fp16_round_trips(converted.graph)
    # The converter appends its edge casts at the end of the node list; ONNX wants producers first.
    OnnxModel.graph_topological_sort(converted.graph)
    onnx.checker.check_model(converted)
    return converted


def _restore_fp32_weights(converted: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Weights read only through a cast to FP32 (a kept node's scale and bias) get their FP32 values back.

    The converter stores them as FP16 plus a Cast, which rounds LayerNorm's gamma and beta for nothing.
    """
    graph = converted.graph
    fp32_originals = {t.name: t for t in original.graph.initializer if t.data_type == TensorProto.FLOAT}
    initializers = {t.name: t for t in graph.initializer}
    readers = _readers(graph)
    for cast in [n for n in graph.node if n.op_type == "Cast" and _attribute(n, "to") == TensorProto.FLOAT]:
        weight = cast.input[0]
        if weight not in fp32_originals or weight not in initializers or len(readers[weight]) != 1:
            continue
        initializers[weight].CopyFrom(fp32_originals[weight])
        _rename_input(graph, cast.output[0], weight)
        graph.node.remove(cast)
        stale = [vi for vi in graph.value_info if vi.name in (weight, cast.output[0])]
        for vi in stale:
            graph.value_info.remove(vi)


def _skip_fp16_round_trips(graph: onnx.GraphProto) -> None:
    """A node kept FP32 that reads another one's output reads it in FP32, not through a Cast to FP16 and back.

    The converter casts every kept node's output to FP16 and back before the next kept node, which turns a value
    kept FP32 because it does not fit FP16 (precision/headroom.py) into inf.
    """
    producers = {out: node for node in graph.node for out in node.output}
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type != "Cast" or _attribute(node, "to") != TensorProto.FLOAT:
            continue
        to_fp16 = producers.get(node.input[0])
        if (to_fp16 is not None and to_fp16.op_type == "Cast" and _attribute(to_fp16, "to") == TensorProto.FLOAT16
                and types.get(to_fp16.input[0]) == TensorProto.FLOAT):
            _rename_input(graph, node.output[0], to_fp16.input[0])
    outputs = {o.name for o in graph.output}
    while unread := [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in
                     {i for reader in graph.node for i in reader.input} | outputs]:
        for node in unread:
            graph.node.remove(node)


# --------------------------------------------------------------------------------------------------------------- INT8


@dataclass(frozen=True)
class QuantizeResult:
    """A QDQ model, the calibrated range of every float tensor, and the nodes kept in float on request."""

    model: onnx.ModelProto
    ranges: dict[str, tuple[float, float]]
    excluded_nodes: list[str]


@dataclass(frozen=True)
class Calibration:
    """One flavour's calibrated ranges (ORT's TensorsData): quantize_int8 takes it instead of calibrating again.

    The ranges do not depend on which nodes stay float, so a search over float units calibrates once.
    """

    flavor: str
    method: str
    tensor_ranges: object
    samples: int

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        return _plain_ranges(self.tensor_ranges)


def calibrate(
    model: onnx.ModelProto,
    calib: np.ndarray,
    *,
    flavor: Flavor,
    method: Method = DEFAULT_METHOD,
    percentile: float = 99.99,
    batch_size: int = 32,
) -> Calibration:
    """The ranges quantize_int8 computes on `calib` (preprocessed float32 samples of the one input)."""
    _require_choice("flavor", flavor, FLAVORS)
    _require_choice("method", method, METHODS)
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    named = with_node_names(model)
    spec = _single_input(named)
    samples = _validated_samples(calib, spec)
    with tempfile.TemporaryDirectory(prefix="lkca-calib-") as work_dir:
        work = Path(work_dir)
        source = work / "model.onnx"
        onnx.save_model(named, source)
        tensor_ranges = _calibrate(source, spec.name, samples, method, percentile, flavor, batch_size, work)
    return Calibration(flavor, method, tensor_ranges, len(samples))


def quantize_int8(
    model: onnx.ModelProto,
    calib: np.ndarray | None,
    *,
    flavor: Flavor,
    method: Method = DEFAULT_METHOD,
    percentile: float = 99.99,
    keep_fp: Sequence[str] = (),
    batch_size: int = 32,
    calibration: Calibration | None = None,
    weight_form: str = "int8",
) -> QuantizeResult:
    """INT8 Q/DQ on Conv, MatMul and Gemm, calibrated on `calib` (preprocessed float32 samples of the one input).

    The ranges are computed once and feed both the QDQ model and `write_trt_calibration_cache`. With minmax and
    percentile they cover every float tensor, not only the quantized ones, so a TensorRT implicit-INT8 build (DLA)
    finds a scale for each layer; with entropy only the inputs and outputs of Conv, MatMul and Gemm.
    `keep_fp` names nodes or op types kept in float on top of the defaults. `calibration` (from `calibrate`, same
    flavour) stands for calib, method, percentile and batch_size. `weight_form` "float": the weights as float
    initializers behind a QuantizeLinear (TensorRT 8), see float_weights_with_qdq.
    """
    _require_choice("flavor", flavor, FLAVORS)
    _require_choice("weight form", weight_form, WEIGHT_FORMS)
    named = with_node_names(model)
    excluded = nodes_matching(named, keep_fp)
    if calibration is None:
        calibration = calibrate(named, calib, flavor=flavor, method=method, percentile=percentile,
                                batch_size=batch_size)
    elif calibration.flavor != flavor:
        raise ValueError(f"a {calibration.flavor} calibration cannot quantize the {flavor} flavour")

    with tempfile.TemporaryDirectory(prefix="lkca-int8-") as work_dir:
        work = Path(work_dir)
        source = work / "model.onnx"
        onnx.save_model(named, source)
        options = _quantizer_options(flavor, named)
        quantized = _quantize_with_ranges(
            source, calibration.tensor_ranges, flavor, calibration.method, excluded, options, work
        )
    _float_readers_read_float(quantized.graph, excluded)
    if weight_form == "float":
        quantized = float_weights_with_qdq(quantized)
    onnx.checker.check_model(quantized)
    return QuantizeResult(quantized, calibration.ranges, excluded)


def float_weights_with_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every DequantizeLinear that reads an INT8 initializer reads instead QuantizeLinear(the dequantized float
    weight, the same scale and zero-point, the same axis): TensorRT 8 takes only that form.

    The values are the same: for w = q * s (float32, |q| <= 127) round(w / s) is q again, so the Q/DQ pair gives back
    exactly the weights the INT8 initializer held.
    """
    out = _copy(model)
    graph = out.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        source = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is None or source.data_type != TensorProto.INT8:
            nodes.append(node)
            continue
        scale = numpy_helper.to_array(initializers[node.input[1]])
        axis = _attribute(node, "axis")
        quantized = numpy_helper.to_array(source)
        shape = [1] * quantized.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis if axis is not None else 1] = scale.size
        weight = (quantized.astype(np.float32) * scale.reshape(shape)).astype(np.float32)
        float_name, requantized = f"{source.name}_float", f"{source.name}_requantized"
        graph.initializer.append(numpy_helper.from_array(weight, float_name))
        if len(node.input) < 3 or not node.input[2]:  # without a zero-point QuantizeLinear would give uint8
            zero_point = f"{source.name}_zero_point"
            graph.initializer.append(numpy_helper.from_array(np.zeros(scale.shape, np.int8), zero_point))
            del node.input[2:]
            node.input.append(zero_point)
        nodes.append(onnx.helper.make_node(
            "QuantizeLinear", [float_name, *node.input[1:]], [requantized], name=f"{node.name}_weight_quantize",
            **({"axis": axis} if axis is not None else {}),
        ))
        node.input[0] = requantized
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.data_type == TensorProto.INT8 and t.name not in read]:
        graph.initializer.remove(tensor)
    return out


def nodes_matching(model: onnx.ModelProto, names_or_op_types: Sequence[str]) -> list[str]:
    """Names of the nodes whose name or op type is listed; an entry that matches nothing is a user error."""
    wanted = set(names_or_op_types)
    matched = [n.name for n in model.graph.node if n.name in wanted or n.op_type in wanted]
    present = {n.name for n in model.graph.node} | {n.op_type for n in model.graph.node}
    unknown = sorted(wanted - present)
    if unknown:
        raise UserError(
            f"keep-fp entries {unknown} match no node name or op type in the model; "
            "list node names or op types (e.g. Conv, MatMul) that exist in it"
        )
    return matched


def _quantize_with_ranges(source, tensor_ranges, flavor, method, excluded, options, work) -> onnx.ModelProto:
    """ORT's quantize_static fed the ranges computed beforehand (through its range cache), not calibrating again."""
    from onnxruntime.quantization import QuantFormat, quantize_static, save_tensors_data

    ranges_file = work / "ranges.json"
    save_tensors_data(tensor_ranges, ranges_file)
    activation_type, weight_type = _quant_types(flavor)
    with _quiet_ort_quantization():
        quantize_static(
            source,
            work / "int8.onnx",
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            per_channel=True,
            # reduce_range (7-bit weights) only helps x86 CPUs without VNNI; it costs precision everywhere else.
            reduce_range=False,
            activation_type=activation_type,
            weight_type=weight_type,
            nodes_to_exclude=list(excluded),
            calibrate_method=_calibration_method(method),
            extra_options=options,
            calibration_cache_path=ranges_file,
        )
    return onnx.load(work / "int8.onnx")


def _calibrate(source, input_name, samples, method, percentile, flavor, batch_size, work):
    """Runs ORT's calibrator over `samples` in batches and returns its TensorsData (ranges by tensor name)."""
    from onnxruntime.quantization import create_calibrator

    # 2048 histogram bins searched down to 128 quantized bins, as TensorRT's entropy calibrator does; ORT's entropy
    # default (128 and 128) leaves nothing to search and returns the min-max range.
    options = {"symmetric": flavor == "tensorrt", "percentile": percentile, "num_bins": 2048, "num_quantized_bins": 128}
    calibrator = create_calibrator(
        source,
        # Every float tensor (see quantize_int8), except for entropy: ORT's threshold search costs about half a
        # second per tensor, so it calibrates only the inputs and outputs of the ops that carry INT8.
        list(QUANTIZED_OP_TYPES) if method == "entropy" else None,
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=_calibration_method(method),
        extra_options=options,
    )
    chunk = max(batch_size, _SAMPLES_PER_COLLECT // batch_size * batch_size)
    with _quiet_ort_quantization():
        for start in range(0, len(samples), chunk):
            calibrator.collect_data(_BatchReader(input_name, samples[start : start + chunk], batch_size))
        return calibrator.compute_data()


@contextlib.contextmanager
def _quiet_ort_quantization() -> Iterator[None]:
    """ORT's calibrators print progress to stdout (which would corrupt a CLI's JSON output) and its quantizer
    logs a pre-processing advice whose optimisations would put ORT-only ops into a model meant for every backend."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


class _BatchReader:
    """ORT CalibrationDataReader over one array: feeds it in batches."""

    def __init__(self, input_name: str, samples: np.ndarray, batch_size: int):
        self._feeds: Iterator[dict[str, np.ndarray]] = (
            {input_name: samples[i : i + batch_size]} for i in range(0, len(samples), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _quantizer_options(flavor: str, model: onnx.ModelProto) -> dict:
    return {
        "WeightSymmetric": True,
        "ActivationSymmetric": flavor == "tensorrt",
        # Per-channel scales along a MatMul weight's output columns: its last axis, also for a (G, N, N) Toeplitz.
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": -1},
        # Biases stay float (TensorRT takes int8 Q/DQ only), and a Conv/MatMul output is quantized only where the
        # next INT8 op reads it, so LayerNorm and Softmax never read a dequantized tensor.
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),
        # A batched weight, such as the per-head Toeplitz (G, N, N), gets one scale: ORT fuses DQ -> MatMul into
        # MatMulIntegerToFloat, which rejects per-column scales on a weight of rank > 2 and fails at run time.
        "TensorQuantOverrides": {name: [{"symmetric": True}] for name in _batched_matmul_weights(model)},
    }


def _batched_matmul_weights(model: onnx.ModelProto) -> list[str]:
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    return sorted({n.input[1] for n in model.graph.node if n.op_type == "MatMul" and ranks.get(n.input[1], 0) > 2})


def _float_readers_read_float(graph: onnx.GraphProto, excluded: Sequence[str]) -> None:
    """Nodes that stay float read the float tensor, not its fake-quantized copy.

    ORT gives one Q/DQ pair to every reader of a quantized tensor, so a residual Add or a LayerNorm sharing its
    input with a MatMul would read int8-rounded values.
    """
    producers = {out: node for node in graph.node for out in node.output}
    int8_nodes = {n.name for n in graph.node if n.op_type in QUANTIZED_OP_TYPES and n.name not in set(excluded)}
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # a weight: its DQ reads an initializer
        for node in graph.node:
            if node.name not in int8_nodes and node is not dq:
                _replace_inputs(node, dq.output[0], q.input[0])
    _drop_unread_qdq(graph)


def _drop_unread_qdq(graph: onnx.GraphProto) -> None:
    """Removes Q/DQ nodes nobody reads any more, then the scales and zero-points only they used."""
    outputs = {o.name for o in graph.output}
    freed: set[str] = set()
    for op_type in ("DequantizeLinear", "QuantizeLinear"):
        read = {name for node in graph.node for name in node.input} | outputs
        for node in [n for n in graph.node if n.op_type == op_type and n.output[0] not in read]:
            freed.update(node.input[1:])
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | outputs
    for initializer in [t for t in graph.initializer if t.name in freed and t.name not in read]:
        graph.initializer.remove(initializer)


def _plain_ranges(tensor_ranges) -> dict[str, tuple[float, float]]:
    return {
        name: (float(np.min(data.range_value[0])), float(np.max(data.range_value[1])))
        for name, data in tensor_ranges.data.items()
    }


def _quant_types(flavor: str) -> tuple:
    """(activation type, weight type): signed int8 both for TensorRT, uint8 activations for ORT's x86 kernels."""
    from onnxruntime.quantization import QuantType

    return (QuantType.QInt8 if flavor == "tensorrt" else QuantType.QUInt8), QuantType.QInt8


def _calibration_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]


def _validated_samples(calib: np.ndarray, spec: InputSpec) -> np.ndarray:
    calib = np.asarray(calib)
    dims = spec.shape
    expected = ["N", *(d if d is not None else "?" for d in dims[1:])]
    fits = calib.ndim == len(dims) and all(d is None or d == n for d, n in zip(dims[1:], calib.shape[1:]))
    if not fits or len(calib) == 0:
        raise UserError(
            f"calibration data has shape {calib.shape}; the model's input {spec.name!r} takes "
            f"({', '.join(map(str, expected))}) with at least one sample"
        )
    return np.ascontiguousarray(calib, dtype=np.float32)


def _single_input(model: onnx.ModelProto) -> InputSpec:
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise UserError(f"INT8 calibration needs a model with one input; this one has {[i.name for i in inputs]}")
    return inputs[0]


def with_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every node has a unique name: exclusion lists and reports refer to nodes by name."""
    named = _copy(model)
    taken = {n.name for n in named.graph.node if n.name}
    for index, node in enumerate(named.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)
    return named


# ----------------------------------------------------------------------------------------------------- flavour check


def check_qdq_flavor(model: onnx.ModelProto, flavor: Flavor) -> list[str]:
    """Ways in which `model` breaks the flavour's Q/DQ rules; empty when it follows them.

    tensorrt: every QuantizeLinear/DequantizeLinear is int8 with zero-point 0, weights are per channel (axis and a
    scale vector; a batched MatMul weight of rank > 2 may have one scale), no LayerNormalization or Softmax reads a
    dequantized tensor. cpu: activations are uint8, weights int8 (biases int32), the same float-only readers.
    """
    _require_choice("flavor", flavor, FLAVORS)
    graph = model.graph
    constants = _constant_values(graph)
    readers = _readers(graph)
    rules = _tensorrt_qdq_problems if flavor == "tensorrt" else _cpu_qdq_problems
    problems = []
    for node in (n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        is_weight = node.op_type == "DequantizeLinear" and node.input[0] in constants
        problems += rules(node, is_weight, constants, readers.get(node.output[0], []))
    return problems + _float_only_readers_of_dequantized(graph)


def _tensorrt_qdq_problems(node, is_weight, constants, readers) -> list[str]:
    quant_type, zero_point = _quantized_type_and_zero_point(node, constants)
    problems = []
    if quant_type != np.int8:
        problems.append(f"{node.name}: {node.op_type} is {np.dtype(quant_type).name}, TensorRT needs int8")
    if zero_point is not None and np.any(zero_point != 0):
        problems.append(f"{node.name}: {node.op_type} has a non-zero zero-point")
    if is_weight and not _is_per_channel(node, constants, readers):
        problems.append(f"{node.name}: weight {node.input[0]} is not quantized per channel")
    return problems


def _cpu_qdq_problems(node, is_weight, constants, readers) -> list[str]:
    quant_type, _ = _quantized_type_and_zero_point(node, constants)
    if not is_weight and quant_type != np.uint8:
        return [f"{node.name}: activation {node.op_type} is {np.dtype(quant_type).name}, not uint8"]
    if is_weight and quant_type not in (np.int8, np.int32):  # int32: a bias, which ORT's QLinearConv takes
        return [f"{node.name}: weight {node.input[0]} is {np.dtype(quant_type).name}, not int8"]
    return []


def _float_only_readers_of_dequantized(graph: onnx.GraphProto) -> list[str]:
    producers = {out: node for node in graph.node for out in node.output}
    problems = []
    for node in (n for n in graph.node if n.op_type in FLOAT_ONLY_READERS):
        dequantized = [i for i in node.input if i in producers and producers[i].op_type == "DequantizeLinear"]
        if dequantized:
            problems.append(f"{node.name}: {node.op_type} reads dequantized tensor(s) {dequantized}")
    return problems


def _is_per_channel(dequantize, constants, readers) -> bool:
    weight, scale = constants[dequantize.input[0]], constants.get(dequantize.input[1])
    if weight.ndim <= 1 or (weight.ndim > 2 and readers and all(r.op_type == "MatMul" for r in readers)):
        return True  # biases, and batched MatMul weights (see _quantizer_options), need no channel axis
    axis = _attribute(dequantize, "axis")
    return scale is not None and scale.ndim == 1 and axis is not None and len(scale) == weight.shape[axis]


def _quantized_type_and_zero_point(node, constants) -> tuple[type, np.ndarray | None]:
    """The integer type of a Q/DQ (from its zero-point; uint8 when absent, as ONNX says) and the zero-point."""
    if node.op_type == "DequantizeLinear" and node.input[0] in constants:
        data = constants[node.input[0]]
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return data.dtype.type, zero_point
    if len(node.input) > 2 and node.input[2]:
        zero_point = constants.get(node.input[2])
        return (zero_point.dtype.type if zero_point is not None else np.uint8), zero_point
    output_dtype = _attribute(node, "output_dtype")
    if node.op_type == "QuantizeLinear" and output_dtype:
        return onnx.helper.tensor_dtype_to_np_dtype(output_dtype).type, None
    return np.uint8, None


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            tensor = _attribute(node, "value")
            if tensor is not None:
                values[node.output[0]] = numpy_helper.to_array(tensor)
    return values


# ------------------------------------------------------------------------------------------ TensorRT calibration cache


def trt_cache_header(tensorrt_version: str, algorithm: str = "EntropyCalibration2") -> str:
    """The first line TensorRT expects in a calibration cache, e.g. "10.3.0" -> "TRT-100300-EntropyCalibration2".

    TensorRT rejects a cache whose header names another version or algorithm and then tries to recalibrate.
    """
    try:
        major, minor, patch = (int(part) for part in (tensorrt_version.split(".") + ["0", "0"])[:3])
    except ValueError:
        raise UserError(f"TensorRT version {tensorrt_version!r} is not like 10.3.0") from None
    # NvInferVersion.h: TensorRT 10 and later count major * 10000, earlier releases major * 1000.
    number = major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch
    return f"TRT-{number}-{algorithm}"


def write_trt_calibration_cache(
    ranges: dict[str, tuple[float, float]],
    path: str | Path,
    *,
    version_header: str = "TRT-8600-EntropyCalibration2",
) -> Path:
    """Writes TensorRT's text calibration cache: the header, then `name: <big-endian float32 scale in hex>`.

    The scale is symmetric int8: max(|lo|, |hi|) / 127. The file is written beside `path` and renamed into place.
    """
    lines = [version_header]
    lines += [f"{name}: {struct.pack('>f', _int8_scale(lo, hi)).hex()}" for name, (lo, hi) in ranges.items()]
    return atomic_write_text(Path(path), "\n".join(lines) + "\n")


def read_trt_calibration_cache(path: str | Path) -> dict[str, float]:
    """Scales by tensor name from a TensorRT text calibration cache."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read TensorRT calibration cache {path}: {error}") from None
    if not lines or not lines[0].startswith("TRT-"):
        raise UserError(f"{path} is not a TensorRT calibration cache: its first line should start with 'TRT-'")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        name, _, hex_scale = line.rpartition(": ")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(hex_scale))[0]
        except (ValueError, struct.error):
            raise UserError(f"{path}:{number}: expected 'tensor: <8 hex digits>', got {line!r}") from None
    return scales


def _int8_scale(lo: float, hi: float) -> float:
    amax = max(abs(lo), abs(hi))
    return amax / 127.0 if amax > 0 else 1.0  # an all-zero tensor: any scale works, ORT uses 1 too


# ------------------------------------------------------------------------------------------------------ graph helpers


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _attribute(node: onnx.NodeProto, name: str):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return None


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _replace_inputs(node: onnx.NodeProto, old: str, new: str) -> None:
    for index, name in enumerate(node.input):
        if name == old:
            node.input[index] = new


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        _replace_inputs(node, old, new)


def _require_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
