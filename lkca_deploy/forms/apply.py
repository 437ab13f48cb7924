"""Applying the op forms: a copy of a model with the named forms written in, converted to the opset asked for, and
what changed node by node (`apply_forms`); the nodes an FP16 build must keep FP32 because a form wrote them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain

import onnx

from lkca_deploy.forms.form import FormChange, FormGraph
from lkca_deploy.forms.opsets import convert_opset
from lkca_deploy.forms.registry import FORM_NAMES, form_class
from lkca_deploy.onnx_graph import FreshNames, drop_unused_constants, opset_of, splice
from lkca_runtime.errors import UserError
from lkca_runtime.onnx_io import constant_tensors


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
