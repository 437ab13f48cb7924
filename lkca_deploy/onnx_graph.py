"""Graph plumbing the rules share: fresh names, small constants, splicing nodes in, the default-domain opset."""

from __future__ import annotations

from itertools import chain

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lkca_runtime.errors import UserError

DEFAULT_DOMAINS = ("", "ai.onnx")


class FreshNames:
    """Fresh node and tensor names that never collide with the graph's own."""

    def __init__(self, graph: onnx.GraphProto):
        self.taken = {n.name for n in graph.node}
        self.taken.update(t for n in graph.node for t in chain(n.input, n.output))
        self.taken.update(t.name for t in graph.initializer)
        self.taken.update(v.name for v in chain(graph.input, graph.output, graph.value_info))

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self.taken:
            name, n = f"{base}_{n}", n + 1
        self.taken.add(name)
        return name


def int64_tensor(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def opset_of(model: onnx.ModelProto) -> int:
    """The model's default-domain opset (0 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def require_opset(model: onnx.ModelProto, minimum: int, rule: str) -> None:
    opset = opset_of(model)
    if opset < minimum:
        raise UserError(
            f"{rule} lowering needs ONNX opset >= {minimum}, the model has {opset}: "
            f"convert it (onnx.version_converter.convert_version(model, {minimum})) or re-export"
        )


def splice(graph: onnx.GraphProto, replacements: dict[int, list[onnx.NodeProto]]) -> set[str]:
    """Replace the nodes at the given graph indices (an empty list drops one) in place, keeping graph order.

    Returns the constant-looking inputs the replaced nodes read (all but the first), for drop_unused_constants."""
    stale = {name for i in replacements for name in graph.node[i].input[1:] if name}
    nodes = [replacements.get(i, [node]) for i, node in enumerate(graph.node)]
    del graph.node[:]
    graph.node.extend(n for group in nodes for n in group)
    return stale


def drop_unused_constants(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the old weights (initializers or Constant nodes) the rewrites left without a reader."""
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    stale = candidates - used
    keep = [t for t in graph.initializer if t.name not in stale]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in stale)]
    del graph.node[:]
    graph.node.extend(nodes)
    values = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(values)


def constant_bytes(graph: onnx.GraphProto) -> int:
    tensors = list(graph.initializer) + [
        a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]
    return sum(
        int(np.prod(t.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        for t in tensors
    )
