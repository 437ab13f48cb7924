"""Conv sites: the grouped Conv nodes the lowering rules rewrite, read once with their geometry.

A site is a Conv with group > 1 in the main graph: its constant weight and bias, 2-D kernel, pads (auto_pad
resolved), strides, dilations and the static (H, W) it reads, when shape inference knows it. The geometry below
(which taps touch the grid, tile splits, Toeplitz sizes, kernel heads) is shared by the rules, the planner and the
target checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lkca_runtime.onnx_io import constant_tensors, static_shapes


@dataclass
class ConvSite:
    """A grouped Conv node with everything the rules need, read once."""

    index: int  # position in graph.node
    node: onnx.NodeProto
    name: str  # the node's name, or a readable stand-in when it has none
    weight: np.ndarray | None  # None when the weight is not a constant
    weight_problem: str | None
    bias: np.ndarray | None  # None when absent or computed
    kernel: tuple[int, int] | None  # None when not a 2-D conv
    pads: tuple[int, int, int, int]  # top, left, bottom, right (auto_pad resolved)
    strides: tuple[int, ...]
    dilations: tuple[int, int]
    group: int
    grid: tuple[int, int] | None  # static (H, W) of the input; None when unknown or dynamic

    @property
    def depthwise(self) -> bool:
        """One input and one output channel per group (the LKCA mixer; what `spectral` lowers)."""
        return self.weight.shape[:2] == (self.group, 1)

    @property
    def out_grid(self) -> tuple[int, int] | None:
        if self.grid is None or self.kernel is None:
            return None
        return (
            out_size(self.grid[0], self.kernel[0], self.dilations[0], self.pads[0], self.pads[2]),
            out_size(self.grid[1], self.kernel[1], self.dilations[1], self.pads[1], self.pads[3]),
        )

    def conv_like(self, name: str, inputs: list[str], outputs: list[str], kernel, pads) -> onnx.NodeProto:
        """A stride-1 Conv with this site's dilations and groups and the given kernel and pads."""
        return helper.make_node(
            "Conv",
            inputs,
            outputs,
            name=name,
            kernel_shape=list(kernel),
            pads=list(pads),
            strides=[1, 1],
            dilations=list(self.dilations),
            group=self.group,
        )


def out_size(size: int, k: int, d: int, pad_begin: int, pad_end: int) -> int:
    return size + pad_begin + pad_end - d * (k - 1)


def find_conv_sites(model: onnx.ModelProto, *, grouped_only: bool = True) -> list[ConvSite]:
    """Every Conv with group > 1 (every Conv, with grouped_only=False) in the main graph, in graph order."""
    graph = model.graph
    constants = constant_tensors(graph)
    shapes = static_shapes(model)
    sites = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        group = int(attrs.get("group", 1))
        if grouped_only and group <= 1:
            continue
        weight, problem = _conv_weight(node, constants, graph)
        kernel = _kernel_of(weight.shape if weight is not None else shapes.get(node.input[1]), attrs)
        dilations = tuple(attrs.get("dilations", [1, 1]))
        site_kernel = kernel if kernel is not None and len(dilations) == 2 else None
        input_shape = shapes.get(node.input[0])
        grid = None
        if input_shape is not None and len(input_shape) == 4 and None not in input_shape[2:]:
            grid = (input_shape[2], input_shape[3])
        sites.append(
            ConvSite(
                index=index,
                node=node,
                name=site_name(node, index),
                weight=weight,
                weight_problem=problem,
                bias=_constant_input(node, 2, constants),
                kernel=site_kernel,
                pads=_resolve_pads(attrs, site_kernel, dilations) if site_kernel else (0, 0, 0, 0),
                strides=tuple(attrs.get("strides", [1] * len(dilations))),
                dilations=dilations if len(dilations) == 2 else (1, 1),
                group=group,
                grid=grid,
            )
        )
    return sites


def not_lowerable(site: ConvSite) -> str | None:
    """Why no rule can rewrite `site` at all, or None."""
    if site.kernel is None:
        return "not a 2-D convolution"
    if any(s != 1 for s in site.strides):
        return f"stride {tuple(site.strides)}: only stride-1 convs are lowered"
    if site.weight is None:
        return site.weight_problem
    return None


def with_conv_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose unnamed Conv nodes carry the names reports use for them ("Conv_<index>")."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for index, node in enumerate(copy.graph.node):
        if node.op_type == "Conv" and not node.name:
            node.name = site_name(node, index)
    return copy


def site_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"Conv_{index}"


def _kernel_of(weight_shape: tuple | None, attrs: dict) -> tuple[int, int] | None:
    """(kh, kw) from the weight's shape, else the kernel_shape attribute; None when not 2-D or unknown."""
    if weight_shape is not None and None not in weight_shape:
        shape = tuple(weight_shape[2:])
    else:
        shape = tuple(attrs.get("kernel_shape", ()))
    return (int(shape[0]), int(shape[1])) if len(shape) == 2 else None


def _resolve_pads(
    attrs: dict, kernel: tuple[int, int], dilations: tuple[int, int]
) -> tuple[int, int, int, int]:
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
        return int(top), int(left), int(bottom), int(right)
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    # At stride 1, SAME pads dilation*(k-1) in total whatever the grid, so no shape is needed.
    totals = [d * (k - 1) for k, d in zip(kernel, dilations)]
    small = [t // 2 for t in totals]
    big = [t - t // 2 for t in totals]
    begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    return begin[0], begin[1], end[0], end[1]


def _constant_input(node: onnx.NodeProto, position: int, constants: dict) -> np.ndarray | None:
    name = node.input[position] if len(node.input) > position else ""
    return numpy_helper.to_array(constants[name]) if name in constants else None


def _conv_weight(node, constants, graph) -> tuple[np.ndarray | None, str | None]:
    name = node.input[1]
    if name in constants:
        return numpy_helper.to_array(constants[name]), None
    if any(value.name == name for value in graph.input):
        return None, "weight is a graph input (not a constant)"
    return None, "weight is not a constant (computed in the graph)"


# ---------------------------------------------------------------- geometry, shared with planner and targets


def useful_taps(k: int, d: int, pad_begin: int, pad_end: int, size: int) -> tuple[int, int]:
    """First and last tap (inclusive) along one axis that touch the grid for at least one output.

    Tap u reads rows u*d - pad_begin + i for outputs i in [0, out): it matters only if they meet [0, size).
    The range is widened where needed so the cropped conv keeps non-negative pads and the same output size.
    """
    out = out_size(size, k, d, pad_begin, pad_end)
    lo = max(0, -(-(pad_begin - out + 1) // d))
    hi = min(k - 1, (size - 1 + pad_begin) // d)
    lo = min(lo, pad_begin // d)  # new begin pad = pad_begin - lo*d must stay >= 0
    new_begin = pad_begin - lo * d
    # new end pad = out - size - new_begin + d*(hi - lo) must stay >= 0 too
    hi = max(hi, lo, lo + -(-(size + new_begin - out) // d))
    return lo, hi


def cropped_kernel(
    kernel: tuple[int, int],
    grid: tuple[int, int],
    pads: tuple[int, int, int, int] | None = None,
    dilations: tuple[int, int] = (1, 1),
) -> tuple[int, int]:
    """The kernel the crop rule leaves (pads default to 'same' padding, k//2 each side)."""
    if pads is None:
        pads = (
            kernel[0] // 2,
            kernel[1] // 2,
            kernel[0] - 1 - kernel[0] // 2,
            kernel[1] - 1 - kernel[1] // 2,
        )
    rows = useful_taps(kernel[0], dilations[0], pads[0], pads[2], grid[0])
    cols = useful_taps(kernel[1], dilations[1], pads[1], pads[3], grid[1])
    return rows[1] - rows[0] + 1, cols[1] - cols[0] + 1


def even_split(k: int, max_k: int) -> list[tuple[int, int]]:
    """(start, size) tiles covering k taps with at most max_k each, as even as possible (63/32 -> 32, 31)."""
    n = math.ceil(k / max_k)
    sizes = [k // n + (1 if i < k % n else 0) for i in range(n)]
    starts = [sum(sizes[:i]) for i in range(n)]
    return list(zip(starts, sizes))


def toeplitz_nbytes(
    blocks: int, cin_g: int, cout_g: int, tokens_in: int, tokens_out: int, itemsize: int
) -> int:
    """Bytes of the matmul lowering's constant: (blocks, cin_g * N_in, cout_g * N_out)."""
    return blocks * cin_g * tokens_in * cout_g * tokens_out * itemsize


def kernel_blocks(weight: np.ndarray, group: int) -> int:
    """The fewest contiguous blocks of groups that share one kernel (the heads of an LKCA layer)."""
    per_group = weight.reshape(group, -1)
    for blocks in (b for b in range(1, group + 1) if group % b == 0):
        split = per_group.reshape(blocks, group // blocks, -1)
        if np.array_equal(split, np.broadcast_to(split[:, :1], split.shape)):
            return blocks
    return group


def matmul_nbytes(site: ConvSite) -> int:
    """The Toeplitz bytes the matmul lowering of `site` adds (static grid only)."""
    cout, cin_g = site.weight.shape[:2]
    (h, w), (ho, wo) = site.grid, site.out_grid
    blocks = kernel_blocks(site.weight, site.group)
    return toeplitz_nbytes(blocks, cin_g, cout // site.group, h * w, ho * wo, site.weight.itemsize)
