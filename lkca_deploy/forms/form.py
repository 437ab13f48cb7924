"""What every op form has: one ONNX op written in the form an older runtime parses (Gelu as Erf, Reduce axes as an
attribute): what op it matches, why it leaves a node as it is, how it rewrites one. A form is a class in its own
module here, registered in forms/registry.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import onnx

from lkca_deploy.onnx_graph import FreshNames


@dataclass
class FormChange:
    """What a form rule did to one node."""

    node: str
    rule: str
    action: str  # "rewritten" | "kept"
    reason: str
    new_nodes: list[str] = field(default_factory=list)


class FormRule:
    """One op written in the form an older runtime parses. Subclasses set `name`, `help` and `op_types` and
    override `why_not` and `rewrite`; `keep_fp32`: the nodes it writes must stay FP32 in an FP16 build."""

    name: ClassVar[str]
    help: ClassVar[str]
    op_types: ClassVar[tuple[str, ...]]
    keep_fp32: ClassVar[bool] = False
    max_opset: ClassVar[int | None] = None  # the form is valid up to this opset only (the file is converted)

    def matches(self, node: onnx.NodeProto) -> bool:
        return node.op_type in self.op_types and node.domain in ("", "ai.onnx")

    def why_not(self, node: onnx.NodeProto, graph: FormGraph) -> str | None:
        """Why this matching node is left as it is, or None."""
        del node, graph
        return None

    def rewrite(self, node: onnx.NodeProto, graph: FormGraph) -> list[onnx.NodeProto]:
        """The nodes that compute `node`'s outputs (constants go to graph.add_constant)."""
        raise NotImplementedError

    def node_name(self, node: onnx.NodeProto, graph: FormGraph, tag: str) -> str:
        """A fresh name for a node this rule writes: `<original>/<rule>/<tag>`, so fp32_nodes() can find it."""
        return graph.names.fresh(f"{node.name or node.output[0]}/{self.name}/{tag}")


@dataclass
class FormGraph:
    """What a form rule reads and adds to besides the node: fresh names, constants, element types, the opset."""

    names: FreshNames
    constants: dict[str, onnx.TensorProto]
    elem_types: dict[str, int]  # tensor name -> onnx.TensorProto data type, where known
    ranks: dict[str, int]
    opset: int
    added: list[onnx.TensorProto] = field(default_factory=list)

    def add_constant(self, tensor: onnx.TensorProto) -> str:
        self.added.append(tensor)
        self.constants[tensor.name] = tensor
        return tensor.name
