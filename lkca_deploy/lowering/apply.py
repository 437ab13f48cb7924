"""Applying the rules: exact passes for large-kernel grouped (depthwise) convolutions, the LKCA token mixer, and
the op forms an older parser reads (`apply_forms`).

The conv on a fixed grid is a linear map with a known structure, so it can be written several exact ways; each
way is one rule (lowering/rules/, listed in lowering/registry.py). A pass finds the conv sites (lowering/sites.py),
asks each site's rule why it would refuse it, and splices in the rewrites of the rest.

Candidates are stride-1 2-D Conv nodes with group > 1 and a constant weight whose kernel exceeds a threshold.
Every candidate is reported as lowered or skipped, with the reason.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import onnx

from lkca_deploy.lowering.graph import (
    FreshNames,
    constant_bytes,
    drop_unused_constants,
    opset_of,
    require_opset,
    splice,
)
from lkca_deploy.lowering.opsets import convert_opset
from lkca_deploy.lowering.registry import FORM_NAMES, form_class, rule_for
from lkca_deploy.lowering.report import LoweringReport, NodeChange
from lkca_deploy.lowering.rule import ConvRule, FormChange, FormGraph
from lkca_deploy.lowering.rules.matmul import DEFAULT_MATMUL_BUDGET
from lkca_deploy.lowering.sites import find_conv_sites, with_conv_names
from lkca_runtime.errors import UserError
from lkca_runtime.onnx_io import constant_tensors, load_onnx, save_onnx_atomic


def lower_model(
    model: onnx.ModelProto,
    strategy: str,
    *,
    max_kernel: int | None = None,
    min_kernel: int | None = None,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
) -> tuple[onnx.ModelProto, LoweringReport]:
    """A copy of `model` with its large grouped convs rewritten by `strategy`, and a report on each one.

    max_kernel: tiled only, the largest tile per side (default: the DLA kernel limit). min_kernel: lower only
    kernels with a side above it (default 7; tiled lowers exactly the kernels above max_kernel).
    Raises UserError for an unknown strategy and when matmul needs more Toeplitz bytes than `budget_bytes`.
    """
    rule = rule_for(strategy, max_kernel)
    return apply_rules(model, rule, label=strategy, min_kernel=min_kernel, budget_bytes=budget_bytes)


def apply_rules(
    model: onnx.ModelProto,
    rules: ConvRule | Mapping[str, ConvRule],
    *,
    label: str,
    min_kernel: int | None = None,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
) -> tuple[onnx.ModelProto, LoweringReport]:
    """One pass over the model: each grouped conv named in `rules` (or every one, for a single rule) is checked
    against its rule (`why_skip`) and rewritten by it. The matmul budget is spent over the whole pass."""
    for rule in [rules] if isinstance(rules, ConvRule) else rules.values():
        if rule.min_opset:
            require_opset(model, rule.min_opset, rule.name)
    model = with_conv_names(model)
    graph = model.graph
    before = constant_bytes(graph)
    decisions = []
    for site in find_conv_sites(model):
        rule = rules if isinstance(rules, ConvRule) else rules.get(site.name)
        if rule is not None:
            decisions.append((site, rule, rule.why_skip(site, min_kernel)))
    prepared: dict[int, object] = {}
    for kind in dict.fromkeys(type(rule) for _, rule, problem in decisions if problem is None):
        sites = [site for site, rule, problem in decisions if problem is None and type(rule) is kind]
        prepared.update(kind.prepare(model, sites, budget_bytes))

    report = LoweringReport(label)
    names = FreshNames(graph)
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for site, rule, problem in decisions:
        if problem is not None:
            report.changes.append(NodeChange(site.name, "skipped", rule.name, problem, kernel=site.kernel))
            continue
        rewrite = rule.rewrite(site, names, prepared.get(site.index))
        replacements.update({index: [] for index in rewrite.also_replaced})
        replacements[site.index] = rewrite.nodes
        graph.initializer.extend(rewrite.initializers)
        report.changes.append(rewrite.change)

    if replacements:
        # The constants the replaced nodes read (weights, reshape shapes): dropped where nothing else reads them
        drop_unused_constants(graph, splice(graph, replacements))
        onnx.checker.check_model(model)
    report.extra_weight_bytes = constant_bytes(graph) - before
    return model, report


def lower_file(src: str | os.PathLike, dst: str | os.PathLike, strategy: str, **kwargs) -> LoweringReport:
    """Load `src` (validated), lower it, write `dst` atomically (even when nothing was lowered)."""
    model, report = lower_model(load_onnx(src), strategy, **kwargs)
    save_onnx_atomic(model, Path(dst))
    return report


# ---------------------------------------------------------------- op forms for older runtimes


@dataclass
class FormReport:
    """What apply_forms did: one change per matching node, and the opset before and after."""

    changes: list[FormChange] = field(default_factory=list)
    opset_before: int = 0
    opset_after: int = 0

    @property
    def rewritten(self) -> list[FormChange]:
        return [c for c in self.changes if c.action == "rewritten"]

    def summary(self) -> str:
        counts = Counter(c.rule for c in self.rewritten)
        done = ", ".join(f"{rule} x{n}" for rule, n in counts.items()) or "nothing rewritten"
        opset = f"opset {self.opset_before}" + (
            f" -> {self.opset_after}" if self.opset_after != self.opset_before else ""
        )
        return f"graph forms: {done}; {opset}"

    def to_dict(self) -> dict:
        return {
            "summary": self.summary(),
            "opset_before": self.opset_before,
            "opset_after": self.opset_after,
            "changes": [asdict(c) for c in self.changes],
        }


def apply_forms(
    model: onnx.ModelProto, names: Sequence[str], opset: int | None = None
) -> tuple[onnx.ModelProto, FormReport]:
    """A copy of `model` with the named op forms (registry.FORMS, applied in that table's order) and written at
    default-domain `opset` (None: the model's own), and what changed.

    Converting to an older opset brings that opset's own forms along (reduce_axes_attribute below 18). UserError
    when a form needs a lower opset than `opset`, or when `opset` cannot express the graph."""
    before = opset_of(model)
    target = before if opset is None else opset
    chosen = {name: form_class(name)() for name in names}
    # A form that is the older opset's own (Reduce axes as the attribute) goes with every conversion to it: onnx's
    # converter keeps noop_with_empty_axes on ReduceMean 18 -> 17 (onnx 1.23), an attribute opset 17 lacks.
    for name in FORM_NAMES:
        form = form_class(name)
        if form.max_opset is not None and target <= form.max_opset < before:
            chosen.setdefault(name, form())
    rules = [chosen[name] for name in FORM_NAMES if name in chosen]
    for rule in rules:
        if rule.max_opset is not None and target > rule.max_opset:
            raise UserError(f"graph form {rule.name} is an opset <= {rule.max_opset} form; the file asks for {target}")
    report = FormReport(opset_before=before, opset_after=before)
    if not rules and target == before:
        return model, report
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    elem_types, ranks = _tensor_types(copy)
    context = FormGraph(FreshNames(graph), constant_tensors(graph), elem_types, ranks, before)
    for rule in rules:
        replacements: dict[int, list[onnx.NodeProto]] = {}
        for index, node in enumerate(graph.node):
            if not rule.matches(node):
                continue
            label = node.name or node.output[0]
            reason = rule.why_not(node, context)
            if reason is not None:
                report.changes.append(FormChange(label, rule.name, "kept", reason))
                continue
            replacements[index] = rule.rewrite(node, context)
            written = [n.name for n in replacements[index]]
            report.changes.append(FormChange(label, rule.name, "rewritten", rule.help, written))
        graph.initializer.extend(context.added)
        context.added.clear()
        if replacements:
            drop_unused_constants(graph, splice(graph, replacements))
    hint = "".join(
        f" or apply graph form {name}" for name in FORM_NAMES if name not in chosen
        and any(node.op_type in form_class(name).op_types for node in graph.node)
    )
    copy = convert_opset(copy, target, hint=hint)
    onnx.checker.check_model(copy)
    report.opset_after = opset_of(copy)
    return copy, report


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes an FP16 build must keep in FP32: those written by a form that says so (layernorm_decomposed),
    found by the `/<rule>/` their names carry."""
    marks = [f"/{name}/" for name in FORM_NAMES if form_class(name).keep_fp32]
    return [node.name for node in model.graph.node if any(mark in node.name for mark in marks)]


def _tensor_types(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """(name -> element type, name -> rank) where ONNX shape inference knows them."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        inferred = model
    graph = inferred.graph
    types, ranks = {}, {}
    for value in chain(graph.input, graph.value_info, graph.output):
        tensor_type = value.type.tensor_type
        types[value.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            ranks[value.name] = len(tensor_type.shape.dim)
    for tensor in graph.initializer:
        types[tensor.name], ranks[tensor.name] = tensor.data_type, len(tensor.dims)
    return types, ranks
