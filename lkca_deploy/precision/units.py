"""The INT8 ops of an exported graph grouped into units a person can name: the patch embedding, each block's mixer
and MLP, the head.

The exported graph keeps no module scopes (nodes are named like node_MatMul_7 once simplified), and parameter
names are no guide either: the exporter merges identical initializers, so an untrained model's zero biases all
carry one name (blocks.0.mlp.0.bias). The residual stream is the guide. A residual Add reads a tensor and a
branch computed from it (x + f(x)); the main chain of them splits the graph into the nodes before the first
branch (patch embedding), one branch per residual Add, and what follows the last one (head). A pre-norm ViT block
(models/vit.py) has two branches, its mixer then its MLP, so branch i is blocks.{i//2}.mixer or .mlp. A mixer unit
holds the value projection, the large-kernel op in whatever lowering (conv, Toeplitz or DFT MatMuls) and the output
projection: all that a rescaled value channel passes through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from lkca_deploy.calibration.quantize import QUANTIZED_OP_TYPES, with_node_names
from lkca_runtime.errors import UserError

_ADDS = ("Add", "Sum")


@dataclass(frozen=True)
class Unit:
    """A named group of INT8-carrying nodes (Conv, MatMul, Gemm), in graph order."""

    name: str  # patch_embed, blocks.2.mixer, blocks.2.mlp, head; residual.3 outside a two-branch block layout
    kind: str  # patch embedding, mixer, MLP, head, branch; op for a node outside them all (named by itself)
    nodes: tuple[str, ...]


def find_units(model: onnx.ModelProto) -> list[Unit]:
    """The units of `model` in graph order; node names as quantize_int8 sees them (unnamed nodes get its names)."""
    graph = with_node_names(model).graph
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    ancestors = _ancestors(nodes, producer)  # bit i set: node i feeds this node (itself included)
    chain = _residual_chain(nodes, producer, ancestors)
    names = _branch_names(len(chain))

    def bits(tensor: str) -> int:
        return ancestors[producer[tensor]] if tensor in producer else 0

    first_stream = bits(chain[0][0]) if chain else 0
    last = producer[chain[-1][2]] if chain else None
    units: dict[str, tuple[str, list[str]]] = {}
    for i, node in enumerate(nodes):
        if node.op_type not in QUANTIZED_OP_TYPES:
            continue
        mine = 1 << i
        name, kind = node.name, "op"
        for (stream, branch, _), (branch_name, branch_kind) in zip(chain, names):
            if bits(branch) & mine and not bits(stream) & mine:
                name, kind = branch_name, branch_kind
                break
        else:
            if first_stream & mine:
                name, kind = "patch_embed", "patch embedding"
            elif last is not None and ancestors[i] >> last & 1:
                name, kind = "head", "head"
        units.setdefault(name, (kind, []))[1].append(node.name)
    return [Unit(name, kind, tuple(members)) for name, (kind, members) in units.items()]


def nodes_of(units: Sequence[Unit], names: Sequence[str]) -> list[str]:
    """The node names of the named units, in graph order; a name that is no unit is a user error."""
    by_name = {u.name: u for u in units}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UserError(f"unknown unit(s) {', '.join(unknown)}; the model's units: {', '.join(by_name)}")
    wanted = set(names)
    return [node for u in units if u.name in wanted for node in u.nodes]


def _ancestors(nodes: list[onnx.NodeProto], producer: dict[str, int]) -> list[int]:
    """Per node, a bit set of the nodes it depends on, itself included (nodes are in topological order)."""
    ancestors: list[int] = []
    for i, node in enumerate(nodes):
        bits = 1 << i
        for name in node.input:
            if name in producer:
                bits |= ancestors[producer[name]]
        ancestors.append(bits)
    return ancestors


def _residual_chain(nodes, producer, ancestors) -> list[tuple[str, str, str]]:
    """(stream, branch, output) of each residual Add on the main chain, in order.

    A residual Add reads two computed tensors, one of which feeds the other. The chain starts at the first one and
    goes on through those that read the previous one's output: residual Adds inside a branch stay in it.
    """
    chain: list[tuple[str, str, str]] = []
    for node in nodes:
        if node.op_type not in _ADDS or len(node.input) != 2 or not all(i in producer for i in node.input):
            continue
        a, b = (producer[i] for i in node.input)
        if a == b:
            continue
        if ancestors[b] >> a & 1:
            stream, branch = node.input[0], node.input[1]
        elif ancestors[a] >> b & 1:
            stream, branch = node.input[1], node.input[0]
        else:
            continue  # two siblings (a lowering's partial sums), not x + f(x)
        if not chain or stream == chain[-1][2]:
            chain.append((stream, branch, node.output[0]))
    return chain


def _branch_names(count: int) -> list[tuple[str, str]]:
    """Two branches per block (mixer, MLP) as in models/vit.py; any other count is named by position."""
    if count % 2:
        return [(f"residual.{i}", "branch") for i in range(count)]
    return [(f"blocks.{i // 2}.{'mixer' if i % 2 == 0 else 'mlp'}", "mixer" if i % 2 == 0 else "MLP")
            for i in range(count)]
