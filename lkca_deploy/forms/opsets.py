"""Writing a graph at a given default-domain opset, or saying in one line why it cannot be."""

from __future__ import annotations

import onnx
import onnx.version_converter
from onnx.defs import SchemaError, get_schema

from lkca_deploy.onnx_graph import DEFAULT_DOMAINS, opset_of
from lkca_runtime.errors import UserError


def missing_ops(model: onnx.ModelProto, opset: int) -> dict[str, int]:
    """Op type -> the first opset that has it, for each default-domain op of the main graph that `opset` lacks."""
    missing = {}
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS or node.op_type in missing:
            continue
        try:
            get_schema(node.op_type, opset, "")
        except SchemaError:
            missing[node.op_type] = get_schema(node.op_type, "").since_version
    return missing


def convert_opset(model: onnx.ModelProto, opset: int, *, hint: str = "") -> onnx.ModelProto:
    """`model` written at default-domain opset `opset` (onnx.version_converter), or a UserError naming the ops
    that opset lacks or what the converter could not adapt. `hint`: how the caller could get there (one clause)."""
    if opset_of(model) == opset:
        return model
    missing = missing_ops(model, opset)
    if missing:
        ops = ", ".join(f"{op} (opset {since})" for op, since in sorted(missing.items()))
        raise UserError(f"opset {opset} cannot express {ops}: export at a newer opset{hint}")
    try:
        converted = onnx.version_converter.convert_version(model, opset)
    except (RuntimeError, onnx.checker.ValidationError) as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UserError(f"the graph cannot be written at opset {opset}: {detail}{hint}") from None
    if opset_of(converted) != opset:  # the converter never says so itself
        raise UserError(f"the graph cannot be written at opset {opset}: it stays at {opset_of(converted)}{hint}")
    return converted
