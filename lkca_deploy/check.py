"""Static checks of an ONNX model against what a target can run, each finding with the fix to apply.

No backend is imported: the rules are tables from the vendors' documents (sources in
docs/backend-limits.md and docs/jetson.md): onnx-tensorrt's operator support table per TensorRT release (the
releases a target means: targets.TENSORRT_RELEASES), TensorRT "DLA supported layers and restrictions", the
OpenVINO NPU compiler's conv kernel limit, and what was measured on CPUs here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lkca_deploy.lowering.registry import CONV, CROP, MATMUL, TILED, rule_for
from lkca_deploy.lowering.sites import ConvSite, find_conv_sites
from lkca_deploy.planning.planner import choose_lowering
from lkca_deploy.targets import (
    DLA_LIMITS,
    DLA_SUBGRAPHS_PER_CORE,
    TENSORRT_RELEASES,
    TensorRTRelease,
    get_target,
    tensorrt_range,
)
from lkca_runtime.backends.trtexec import DLA_RELEASES
from lkca_runtime.jetpack import compatibility
from lkca_runtime.onnx_io import constant_tensors, graph_inputs, static_shapes

# TensorRT "DLA supported layers and restrictions": ONNX ops whose TensorRT layer has a DLA implementation.
# Shuffle (Reshape/Transpose), MatMul, normalization and reductions have none, so they run on the GPU.
_DLA_ACTIVATIONS = {"Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "PRelu"}
_DLA_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum"}
_DLA_ANY_SHAPE = {
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LRN",
    "Resize",
    "Equal",
    "Greater",
    "Less",
    "Abs",
    "Sin",
    "Cos",
    "Atan",
}
_NEUTRAL = {"Constant", "Identity"}  # no layer of their own: folded or aliased by the builder

_OP_FIXES = {
    "DFT": f"export with the conv view ({rule_for(CONV).command()}); the FFT view is for training only",
    "STFT": f"export with the conv view ({rule_for(CONV).command()})",
    "Einsum": f"{rule_for(MATMUL).command()} (plain MatMul) or re-export without einsum",
}
# Reduce ops whose `axes` became an input at opset 13 (ReduceSum, which TensorRT 8 reads) or 18 (the others).
_REDUCE_AXES_ATTRIBUTE_OPS = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSumSquare",
}


@dataclass
class Finding:
    severity: str  # "error" (target fails) | "warning" (runs, but badly) | "info"
    node: str
    op: str
    problem: str
    fix: str = ""


@dataclass
class CheckReport:
    target: str
    findings: list[Finding] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "ok": self.ok,
            "stats": self.stats,
            "findings": [asdict(f) for f in self.findings],
        }

    def format_text(self, max_nodes: int = 3) -> str:
        """Human lines; findings that differ only by node are folded into one line with a count."""
        counts = Counter(f.severity for f in self.findings)
        verdict = "OK" if self.ok else "FAILED"
        tally = ", ".join(f"{counts[s]} {s}(s)" for s in ("error", "warning", "info") if counts[s])
        extras = "".join(f"; {k.replace('_', ' ')}: {v}" for k, v in self.stats.items())
        lines = [f"{self.target}: {verdict} ({tally or 'no findings'}{extras})"]
        folded: dict[tuple, list[str]] = {}
        for f in self.findings:
            folded.setdefault((f.severity, f.op, f.problem, f.fix), []).append(f.node)
        for (severity, op, problem, fix), nodes in folded.items():
            shown = ", ".join(nodes[:max_nodes]) + (
                f", ... ({len(nodes)} nodes)" if len(nodes) > max_nodes else ""
            )
            lines.append(f"  {severity:<7} {op} [{shown}]: {problem}" + (f" -> fix: {fix}" if fix else ""))
        return "\n".join(lines)


def check_model(model: onnx.ModelProto, target: str, allow_gpu_fallback: bool = False) -> CheckReport:
    """Every rule of `target` (targets.py) over the main graph; `.ok` is False when the model cannot run there."""
    spec = get_target(target)
    context = _Context(model)
    report = CheckReport(target)
    for name in spec.checks:
        if name == "dla_placement":
            findings, stats = _dla_placement(context, allow_gpu_fallback)
            report.stats.update(stats)
        elif name == "kernel_limit":
            findings = _kernel_limit(context, target, spec.kernel_limit, f"{target}'s hardware conv")
        elif name == "int8_grouped_convs":
            findings = _int8_grouped_convs(context, target, spec.int8_group_multiple)
        elif name == "opset_range":
            findings = _opset_range(context, target, spec.opsets, spec.tensorrt)
        elif name == "tensorrt_parser":
            findings = _tensorrt_parser(context, target, spec.tensorrt)
        else:
            findings = _RULES[name](context)
        report.findings += findings
    return report


class _Context:
    """The model's facts every rule reads, computed once."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.nodes = list(model.graph.node)
        self.shapes = static_shapes(model)
        self.constants = constant_tensors(model.graph)
        self.convs = {site.index: site for site in find_conv_sites(model, grouped_only=False)}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def name(self, index: int) -> str:
        """The node's name, or the stand-in lowering reports use ("Conv_12")."""
        return self.nodes[index].name or f"{self.nodes[index].op_type}_{index}"

    def rank(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return None if shape is None else len(shape)

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        found = next((a for a in node.attribute if a.name == name), None)
        return default if found is None else helper.get_attribute_value(found)


def _is_default_domain(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


# ---------------------------------------------------------------- every target


def _opset_range(ctx: _Context, target: str, opsets: tuple[int, int | None],
                 releases: tuple[str, ...] = ()) -> Iterable[Finding]:
    """The model's opset must be one the target reads: an opset-99 model passed every other lint and failed
    only inside the backend's build."""
    low, high = opsets[0], opsets[1] or onnx.defs.onnx_opset_version()
    if not low <= ctx.opset <= high:
        fix = (f"export --target {target} (it writes opset {high})" if releases else
               f"re-export with --opset {min(max(20, low), high)} (lkca-deploy export), or convert the model "
               "with onnx.version_converter")
        reader = f"{_oldest_refusing(releases, ctx.opset)} ({target})" if releases else target
        yield Finding("error", "model", "opset", f"opset {ctx.opset} is outside what {reader} reads "
                      f"(opsets {low}..{high})", fix)


def _oldest_refusing(releases: tuple[str, ...], opset: int) -> str:
    """'TensorRT 8.5.2': the oldest of `releases` whose parser does not read `opset`."""
    for name in releases:
        release = TENSORRT_RELEASES[name]
        if not release.opsets[0] <= opset <= release.opsets[1]:
            return release.label
    return tensorrt_range(releases)


def _standard_ops(ctx: _Context) -> Iterable[Finding]:
    for index, node in enumerate(ctx.nodes):
        if _is_default_domain(node) and not onnx.defs.has(node.op_type):
            yield Finding(
                "error", ctx.name(index), node.op_type, "not a standard ONNX operator", "re-export the model"
            )


# ---------------------------------------------------------------- TensorRT and the DLA


def _tensorrt_parser(ctx: _Context, target: str, releases: tuple[str, ...]) -> Iterable[Finding]:
    """What the ONNX parser of each TensorRT release the target means refuses or misreads, naming the oldest
    release that does (its operator table, reduce-axes form and INT8 weight form: targets.TENSORRT_RELEASES)."""
    for index, node in enumerate(ctx.nodes):
        if not _is_default_domain(node):
            yield Finding(
                "error",
                ctx.name(index),
                node.op_type,
                f"custom-domain op ({node.domain}) needs a TensorRT plugin",
                "export without runtime-specific fusions (save the ONNX before onnxruntime optimizes it)",
            )
            continue
        for name in releases:
            problem = _release_problem(ctx, node, TENSORRT_RELEASES[name])
            if problem is not None:
                text, fix = problem
                yield Finding("error", ctx.name(index), node.op_type, f"{TENSORRT_RELEASES[name].label} "
                              f"({target}) {text}", fix or f"export --target {target}")
                break


def _release_problem(ctx: _Context, node: onnx.NodeProto, release: TensorRTRelease) -> tuple[str, str] | None:
    """(what `release`'s parser does with `node`, the fix) or None when it parses it as ONNX means it."""
    if node.op_type not in release.ops and onnx.defs.has(node.op_type):
        return (f"has no importer for it ({release.source} operator table)",
                _OP_FIXES.get(node.op_type, ""))
    if (not release.reduce_axes_input and node.op_type in _REDUCE_AXES_ATTRIBUTE_OPS and len(node.input) > 1
            and node.input[1]):
        return "ignores its axes input (opset 18 form) and reduces every axis: the axes must be an attribute", ""
    if not release.int8_weight_initializers and node.op_type == "DequantizeLinear" and _int8_constant(ctx, node):
        return ("refuses a DequantizeLinear reading an INT8 initializer (only activation types allowed as input)",
                "quantize for this target: weights as float initializers behind a QuantizeLinear")
    return None


def _int8_constant(ctx: _Context, node: onnx.NodeProto) -> bool:
    tensor = ctx.constants.get(node.input[0])
    return tensor is not None and tensor.data_type == onnx.TensorProto.INT8


def tensorrt_compatibility(model: onnx.ModelProto) -> dict:
    """Which TensorRT releases parse `model` (every release of targets.TENSORRT_RELEASES whose opsets, operator
    table and forms it fits), the oldest version among them and the JetPacks that ship them."""
    ctx = _Context(model)
    parses = []
    for name, release in TENSORRT_RELEASES.items():
        fits_opset = release.opsets[0] <= ctx.opset <= release.opsets[1]
        if fits_opset and not any(_release_problem(ctx, node, release) for node in ctx.nodes
                                  if _is_default_domain(node)):
            parses.append(name)
    oldest = TENSORRT_RELEASES[parses[0]].version if parses else None
    return {**compatibility(oldest, parses), "tensorrt": [TENSORRT_RELEASES[n].version for n in parses]}


def _qdq_zero_points(ctx: _Context) -> Iterable[Finding]:
    """TensorRT quantizes symmetrically to signed int8: every Q/DQ zero-point must be an int8 zero."""
    fix = "quantize with the tensorrt INT8 flavour (signed int8, zero-point 0)"
    for index, node in enumerate(ctx.nodes):
        if (
            node.op_type not in ("QuantizeLinear", "DequantizeLinear")
            or len(node.input) < 3
            or not node.input[2]
        ):
            continue
        tensor = ctx.constants.get(node.input[2])
        if tensor is None:
            yield Finding(
                "warning", ctx.name(index), node.op_type, "zero-point is computed: cannot verify it is 0"
            )
            continue
        zero_point = numpy_helper.to_array(tensor)
        if np.any(zero_point != 0):
            yield Finding(
                "error", ctx.name(index), node.op_type, "non-zero zero-point (TensorRT needs 0)", fix
            )
        elif zero_point.dtype == np.uint8:
            yield Finding(
                "error", ctx.name(index), node.op_type, "uint8 zero-point (TensorRT takes int8)", fix
            )


def _int8_grouped_convs(ctx: _Context, target: str, multiple: int) -> Iterable[Finding]:
    """A grouped conv that reads a DequantizeLinear is asked to run in INT8; TensorRT documents INT8 grouped convs
    only for channels per group in multiples of `multiple` (docs/tensorrt.md, which also says what is unknown)."""
    producers = {out: node for node in ctx.nodes for out in node.output}
    for index, node in enumerate(ctx.nodes):
        group = int(ctx.attr(node, "group", 1))
        source = producers.get(node.input[0]) if node.input else None
        if node.op_type != "Conv" or group <= 1 or source is None or source.op_type != "DequantizeLinear":
            continue
        dims = _weight_dims(ctx, node.input[1], producers)
        if dims is None:
            continue
        per_group_in, per_group_out = dims[1], dims[0] // group
        if per_group_in % multiple == 0 and per_group_out % multiple == 0:
            continue
        fix = (
            "keep this conv in fp16 on the DLA, or run on the GPU (target tensorrt) with a MatMul mixer"
            if target == "jetson-dla"
            else "make the mixer a MatMul before quantizing: export --lowering auto --target tensorrt "
            f"--precision int8, or {rule_for(MATMUL).command()}"
        )
        yield Finding(
            "warning",
            ctx.name(index),
            "Conv",
            f"INT8 {'depthwise' if per_group_in == per_group_out == 1 else 'grouped'} conv with "
            f"{per_group_in}/{per_group_out} input/output channel(s) per group: TensorRT documents INT8 grouped "
            f"convs for multiples of {multiple} only (IConvolutionLayer::setNbGroups), so no INT8 kernel is "
            "documented for it (it may run in float between the Q/DQ, or fail to build)",
            fix,
        )


def _weight_dims(ctx: _Context, name: str, producers: dict) -> tuple[int, ...] | None:
    """The weight's shape: a constant, the constant a DequantizeLinear reads, or the inferred shape."""
    source = producers.get(name)
    if name not in ctx.constants and source is not None and source.op_type == "DequantizeLinear":
        name = source.input[0]
    if name in ctx.constants:
        return tuple(ctx.constants[name].dims)
    shape = ctx.shapes.get(name)
    return tuple(shape) if shape is not None and None not in shape else None


def _static_inputs(ctx: _Context) -> Iterable[Finding]:
    for spec in graph_inputs(ctx.model):
        if spec.symbols:
            yield Finding(
                "error",
                spec.name,
                "input",
                f"dynamic dimension(s) {', '.join(spec.symbols)}: the DLA builds one shape",
                "export with a static batch and image size",
            )


def _dla_placement(ctx: _Context, allow_gpu_fallback: bool) -> tuple[list[Finding], dict]:
    """Which nodes the DLA runs, the others as GPU fallbacks, and how many DLA subgraphs that leaves."""
    findings = []
    folded = _build_time_constants(ctx)
    on_dla: list[int] = []
    fallbacks = 0
    for index, node in enumerate(ctx.nodes):
        if node.op_type in _NEUTRAL or all(t in folded for t in node.output):
            continue
        problem = _dla_problem(ctx, index)
        if problem is None:
            on_dla.append(index)
            continue
        fallbacks += 1
        problem_text, fix = problem
        if allow_gpu_fallback:
            findings.append(
                Finding("info", ctx.name(index), node.op_type, f"runs on the GPU: {problem_text}", fix)
            )
        else:
            findings.append(
                Finding(
                    "error",
                    ctx.name(index),
                    node.op_type,
                    f"falls back to the GPU: {problem_text}",
                    fix or "allow GPU fallback (--allow-gpu-fallback)",
                )
            )
    subgraphs = count_dla_subgraphs(ctx.nodes, on_dla)
    if subgraphs > DLA_SUBGRAPHS_PER_CORE:
        findings.append(
            Finding(
                "error",
                "(graph)",
                "-",
                f"{subgraphs} DLA subgraphs, over the {DLA_SUBGRAPHS_PER_CORE} a DLA core can load",
                "remove the GPU-only ops between DLA layers, or run the model on the GPU (target tensorrt)",
            )
        )
    stats = {
        "dla_nodes": len(on_dla),
        "gpu_fallback_nodes": fallbacks,
        "dla_subgraphs": subgraphs,
        "dla_subgraph_cap": DLA_SUBGRAPHS_PER_CORE,
        "dla_needs": DLA_RELEASES,  # which TensorRT can place anything on the DLA (docs/tensorrt.md)
    }
    return findings, stats


def count_dla_subgraphs(nodes: list[onnx.NodeProto], on_dla: Iterable[int]) -> int:
    """Connected components of DLA nodes linked by direct tensor edges: each becomes one DLA loadable."""
    members = set(on_dla)
    parent = {i: i for i in members}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    for i in members:
        for tensor in nodes[i].input:
            j = producer.get(tensor)
            if j in members:
                parent[root(i)] = root(j)
    return len({root(i) for i in members})


def _build_time_constants(ctx: _Context) -> set[str]:
    """Tensors the builder folds before placement: constants, shapes, and anything computed only from them."""
    known = set(ctx.constants) | {t.name for t in ctx.graph.initializer}
    for node in ctx.nodes:
        if node.op_type in ("Shape", "Size") or all(t in known for t in node.input if t):
            known.update(node.output)
    return known


def _dla_problem(ctx: _Context, index: int) -> tuple[str, str] | None:
    """(why the DLA cannot run node `index`, the fix) or None when it can."""
    node = ctx.nodes[index]
    op = node.op_type
    four_d = ctx.rank(node.output[0]) in (None, 4)
    if op == "Conv":
        return _dla_conv_problem(ctx.convs[index])
    if op in _DLA_ACTIVATIONS | _DLA_ELEMENTWISE:
        return (
            None
            if four_d
            else (f"{op} on a rank-{ctx.rank(node.output[0])} tensor: the DLA is 2-D (NCHW) only", "")
        )
    if op in _DLA_ANY_SHAPE:
        return None
    if op == "Concat":
        axis = ctx.attr(node, "axis", 1)
        return None if four_d and axis in (1, -3) else ("Concat off the channel axis", "")
    if op == "Softmax":
        axis = ctx.attr(node, "axis", -1)
        return None if four_d and axis in (1, -3) else ("Softmax off the channel axis of an NCHW tensor", "")
    if op == "Pad":
        return (
            None
            if ctx.attr(node, "mode", b"constant") in (b"constant", "constant")
            else ("non-constant Pad", "")
        )
    if op == "Slice":
        steps = ctx.constants.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if steps is not None and np.any(numpy_helper.to_array(steps) != 1):
            return "strided Slice", ""
        return None
    if op in ("QuantizeLinear", "DequantizeLinear"):
        return (  # docs/tensorrt.md, section 3: which Q/DQ patterns 11.4.1 puts on the DLA is not documented
            ("TensorRT 10 gives the DLA INT8 from a calibration cache, not Q/DQ (11.4.1 and later take the "
             "network's types, Q/DQ included, for patterns it does not document)"),
            "on TensorRT 10 build INT8 for the DLA with a calibration cache",
        )
    return f"the DLA has no {op} layer", ""


def _dla_conv_problem(site: ConvSite) -> tuple[str, str] | None:
    if site.kernel is None:
        return "not a 2-D convolution", ""
    limits = DLA_LIMITS
    if max(site.kernel) > limits["kernel"]:
        kernel = f"{site.kernel[0]}x{site.kernel[1]}"
        return f"kernel {kernel} outside the DLA's [1, {limits['kernel']}]", _kernel_fix(site, "jetson-dla")
    pad_problem = [
        p for p, k in zip(site.pads, site.kernel * 2) if not 0 <= p <= limits["pad"] or p >= k
    ]  # pads are (top, left, bottom, right), kernel (kh, kw) repeated to match
    if pad_problem:
        return f"padding {site.pads} outside [0, {limits['pad']}] or not smaller than the kernel", (
            f"pad explicitly before the conv (a Pad node) or {rule_for(TILED).command()}"
        )
    if any(not 1 <= s <= limits["stride"] for s in site.strides):
        return f"stride {site.strides} outside [1, {limits['stride']}]", ""
    if any(not 1 <= d <= limits["dilation"] for d in site.dilations):
        return f"dilation {site.dilations} outside [1, {limits['dilation']}]", ""
    if site.group > limits["groups"]:
        return f"{site.group} groups, over the DLA's {limits['groups']}", ""
    if site.weight is not None and site.weight.shape[0] > limits["channels"]:
        return f"{site.weight.shape[0]} output channels, over the DLA's {limits['channels']}", ""
    return None


def _kernel_fix(site: ConvSite, target: str) -> str:
    plan = choose_lowering(target, site.grid, site.kernel, 1, pads=site.pads, dilations=site.dilations)
    return rule_for(plan.strategy, plan.max_kernel).command()


# ---------------------------------------------------------------- OpenVINO and ONNX Runtime


def _kernel_limit(ctx: _Context, target: str, limit: int, what: str) -> Iterable[Finding]:
    for site in ctx.convs.values():
        if site.kernel is not None and max(site.kernel) > limit:
            yield Finding(
                "error",
                site.name,
                "Conv",
                f"kernel {site.kernel[0]}x{site.kernel[1]} over {what} limit of {limit}",
                _kernel_fix(site, target),
            )


def _huge_filters(ctx: _Context) -> Iterable[Finding]:
    for site in ctx.convs.values():
        if site.kernel is not None and site.kernel[0] * site.kernel[1] > 1024:
            yield Finding(
                "warning",
                site.name,
                "Conv",
                f"{site.kernel[0]}x{site.kernel[1]} = {site.kernel[0] * site.kernel[1]} taps: "
                "some OpenVINO GPU "
                "releases send filters over 1024 taps to a slow reference kernel",
                f"{rule_for(CROP).command()} (static grid) or {rule_for(TILED, DLA_LIMITS['kernel']).command()}",
            )


def _openvino_dft(ctx: _Context) -> Iterable[Finding]:
    for index, node in enumerate(ctx.nodes):
        if node.op_type == "DFT" and _is_default_domain(node):
            if ctx.opset >= 20:
                yield Finding(
                    "error", ctx.name(index), "DFT", "OpenVINO misreads opset-20 DFT", _OP_FIXES["DFT"]
                )
            else:
                yield Finding(
                    "warning", ctx.name(index), "DFT", "DFT runs on a slow reference kernel", _OP_FIXES["DFT"]
                )


def _onnxruntime_cpu(ctx: _Context) -> Iterable[Finding]:
    slow = {
        "DFT": "about 400x slower than the conv it replaces",
        "Einsum": "about 9x slower than the same MatMul",
    }
    for index, node in enumerate(ctx.nodes):
        if node.op_type in slow and _is_default_domain(node):
            yield Finding(
                "warning", ctx.name(index), node.op_type, slow[node.op_type], _OP_FIXES[node.op_type]
            )
        elif node.domain not in ("", "ai.onnx", "com.microsoft", "ai.onnx.ml"):
            yield Finding(
                "error",
                ctx.name(index),
                node.op_type,
                f"custom-domain op ({node.domain})",
                "register its custom-op library with the session, or re-export without it",
            )


# The lints a target's `checks` name (targets.py); those that take more than the model are called directly above.
_RULES = {
    "standard_ops": _standard_ops,
    "qdq_zero_points": _qdq_zero_points,
    "static_inputs": _static_inputs,
    "openvino_dft": _openvino_dft,
    "huge_filters": _huge_filters,
    "onnxruntime_cpu": _onnxruntime_cpu,
}
