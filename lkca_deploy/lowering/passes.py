"""Exact ONNX graph passes for large-kernel grouped (depthwise) convolutions: the LKCA token mixer.

The conv on a fixed grid is a linear map with a known structure, so it can be written several exact ways; each
strategy is one small pass over any ONNX model:

    conv    keep the Conv; only report what is there
    crop    drop kernel taps that can never touch the grid (needs a static H, W); pads adjusted to match
    matmul  the attention view: a constant Toeplitz per head + MatMul (needs a static H, W; weighs heads*N^4)
    tiled   pad once, then per tile of at most `max_kernel` taps a Slice + unpadded Conv, summed by Adds
    spectral  depthwise only: DFT matrices as four small MatMuls around a complex product per head
            (lowering/spectral.py; needs a static H, W; large grids, where the Toeplitz is too big)
    token_spectral  spectral for the whole LKCA mixer: where tokens reach the conv by Transpose + Reshape and go
            back the same way, those layout nodes go too; a real DFT along H and per head a Toeplitz product
            along W act on the token layout (lowering/token_spectral.py); any other depthwise conv is lowered
            as by `spectral`

Candidates are stride-1 2-D Conv nodes with group > 1 and a constant weight whose kernel exceeds a threshold.
Every candidate is reported as lowered or skipped, with the reason.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lkca_deploy.lowering import spectral, token_spectral
from lkca_deploy.targets import DLA_KERNEL_LIMIT
from lkca_runtime.errors import UserError
from lkca_runtime.onnx_io import constant_tensors, load_onnx, save_onnx_atomic, static_shapes

STRATEGIES = ("conv", "crop", "matmul", "tiled", "spectral", "token_spectral")
DEFAULT_MIN_KERNEL = 7  # kernels up to 7x7 are "small": every backend runs them natively and fast
DEFAULT_MAX_KERNEL = DLA_KERNEL_LIMIT  # tiled default: the Jetson DLA's conv kernel limit per side
DEFAULT_MATMUL_BUDGET = 64 * 2**20
_INT64_MAX = np.iinfo(np.int64).max


# ---------------------------------------------------------------- report


@dataclass
class NodeChange:
    """What a pass did to one grouped conv."""

    node: str
    action: str  # "lowered" | "skipped"
    strategy: str
    reason: str
    kernel: tuple[int, int] | None = None
    new_kernel: tuple[int, int] | None = None  # crop: the cropped kernel; tiled: the largest tile
    tiles: int | None = None
    heads: int | None = None  # matmul: distinct kernel blocks, the Toeplitz's first dimension
    weight_bytes: int = 0  # bytes of the constants this rewrite added


@dataclass
class LoweringReport:
    strategy: str
    changes: list[NodeChange] = field(default_factory=list)
    extra_weight_bytes: int = 0  # constants after minus before (negative when crop shrinks the kernels)

    @property
    def lowered(self) -> list[NodeChange]:
        return [c for c in self.changes if c.action == "lowered"]

    @property
    def skipped(self) -> list[NodeChange]:
        return [c for c in self.changes if c.action == "skipped"]

    @property
    def nothing_lowered(self) -> bool:
        return not self.lowered

    def summary(self) -> str:
        """One line for humans: what was lowered, or plainly that nothing was and why."""
        if not self.changes:
            return "nothing to lower: the model has no grouped or depthwise Conv"
        if self.nothing_lowered:
            reasons = sorted({c.reason for c in self.changes})
            return f"nothing to lower: {len(self.changes)} grouped conv(s) skipped ({'; '.join(reasons)})"
        return (
            f"{self.strategy}: lowered {len(self.lowered)} of {len(self.changes)} grouped conv(s), "
            f"{_signed_bytes(self.extra_weight_bytes)} of weights"
        )

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "lowered": len(self.lowered),
            "skipped": len(self.skipped),
            "extra_weight_bytes": self.extra_weight_bytes,
            "summary": self.summary(),
            "changes": [asdict(c) for c in self.changes],
        }


def format_bytes(n_bytes: float) -> str:
    """MiB, or KiB below 0.1 MiB so small figures do not print as 0.0."""
    if 0 < abs(n_bytes) < 0.1 * 2**20:
        return f"{n_bytes / 2**10:.1f} KiB"
    return f"{n_bytes / 2**20:.1f} MiB"


def _signed_bytes(n_bytes: int) -> str:
    return ("+" if n_bytes >= 0 else "-") + format_bytes(abs(n_bytes))


# ---------------------------------------------------------------- what a grouped conv looks like


@dataclass
class ConvSite:
    """A grouped Conv node with everything the passes need, read once."""

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
            _out_size(self.grid[0], self.kernel[0], self.dilations[0], self.pads[0], self.pads[2]),
            _out_size(self.grid[1], self.kernel[1], self.dilations[1], self.pads[1], self.pads[3]),
        )


def _out_size(size: int, k: int, d: int, pad_begin: int, pad_end: int) -> int:
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
                name=_site_name(node, index),
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
    out = _out_size(size, k, d, pad_begin, pad_end)
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
    """The kernel the crop pass leaves (pads default to 'same' padding, k//2 each side)."""
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


# ---------------------------------------------------------------- the passes


@dataclass(frozen=True)
class Rule:
    """How one conv is lowered: a strategy, and for `tiled` the largest tile per side."""

    strategy: str
    max_kernel: int | None = None


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
    if strategy not in STRATEGIES:
        raise UserError(f"unknown lowering strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy == "tiled":
        max_kernel = DEFAULT_MAX_KERNEL if max_kernel is None else max_kernel
        if max_kernel < 1:
            raise UserError(f"--max-kernel must be at least 1, got {max_kernel}")
    return apply_rules(model, Rule(strategy, max_kernel), label=strategy, min_kernel=min_kernel,
                       budget_bytes=budget_bytes)


def apply_rules(
    model: onnx.ModelProto,
    rules: Rule | Mapping[str, Rule],
    *,
    label: str,
    min_kernel: int | None = None,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
) -> tuple[onnx.ModelProto, LoweringReport]:
    """One pass over the model: each grouped conv named in `rules` (or every one, for a single Rule) is checked
    against its rule (`why_skip`) and rewritten by it. The matmul budget is spent over the whole pass."""
    if any(rule.strategy == "tiled" for rule in _rules_in(rules)):
        _require_opset(model, 11, "tiled")
    model = with_conv_names(model)
    graph = model.graph
    before = _constant_bytes(graph)
    decisions = []
    for site in find_conv_sites(model):
        rule = rules if isinstance(rules, Rule) else rules.get(site.name)
        if rule is not None:
            decisions.append((site, rule, why_skip(site, rule.strategy, _threshold(rule, min_kernel))))
    _check_matmul_budget(
        [site for site, rule, problem in decisions if problem is None and rule.strategy == "matmul"], budget_bytes
    )

    report = LoweringReport(label)
    names = _Names(graph)
    mixers = token_spectral.find_mixers(
        model, [site for site, rule, problem in decisions if problem is None and rule.strategy == "token_spectral"]
    )
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for site, rule, problem in decisions:
        if problem is not None:
            report.changes.append(NodeChange(site.name, "skipped", rule.strategy, problem, kernel=site.kernel))
            continue
        if rule.strategy == "token_spectral":
            nodes, initializers, change, replaced = _rewrite_token_spectral(site, mixers[site.index], names)
        else:
            nodes, initializers, change = _REWRITES[rule.strategy](site, names, rule.max_kernel)
            replaced = (site.index,)
        replacements.update({index: [] for index in replaced})
        replacements[site.index] = nodes
        graph.initializer.extend(initializers)
        report.changes.append(change)

    if replacements:
        # The constants the replaced nodes read (weights, reshape shapes): dropped below where nothing else reads them
        stale = {name for i in replacements for name in graph.node[i].input[1:] if name}
        nodes = [replacements.get(i, [node]) for i, node in enumerate(graph.node)]
        del graph.node[:]
        graph.node.extend(n for group in nodes for n in group)
        _drop_unused_constants(graph, stale)
        onnx.checker.check_model(model)
    report.extra_weight_bytes = _constant_bytes(graph) - before
    return model, report


def _rules_in(rules: Rule | Mapping[str, Rule]) -> list[Rule]:
    return [rules] if isinstance(rules, Rule) else list(rules.values())


def _threshold(rule: Rule, min_kernel: int | None) -> int:
    """Kernels up to this side are left alone: the tile size for tiled, else min_kernel (default 7)."""
    if rule.strategy == "tiled":
        return DEFAULT_MAX_KERNEL if rule.max_kernel is None else rule.max_kernel
    return DEFAULT_MIN_KERNEL if min_kernel is None else min_kernel


def lower_file(src: str | os.PathLike, dst: str | os.PathLike, strategy: str, **kwargs) -> LoweringReport:
    """Load `src` (validated), lower it, write `dst` atomically (even when nothing was lowered)."""
    model, report = lower_model(load_onnx(src), strategy, **kwargs)
    save_onnx_atomic(model, Path(dst))
    return report


def not_lowerable(site: ConvSite) -> str | None:
    """Why no strategy can rewrite `site` at all, or None."""
    if site.kernel is None:
        return "not a 2-D convolution"
    if any(s != 1 for s in site.strides):
        return f"stride {tuple(site.strides)}: only stride-1 convs are lowered"
    if site.weight is None:
        return site.weight_problem
    return None


def why_skip(site: ConvSite, strategy: str, threshold: int) -> str | None:
    """Why `site` is not lowered by `strategy`, or None when it is."""
    problem = not_lowerable(site)
    if problem is not None:
        return problem
    if max(site.kernel) <= threshold:
        bound = "max_kernel" if strategy == "tiled" else "min_kernel"
        return f"kernel {_kxk(site.kernel)} already small ({bound} {threshold})"
    if strategy == "conv":
        return "strategy conv keeps the Conv as it is"
    if strategy in ("spectral", "token_spectral") and not site.depthwise:
        return f"{strategy} lowers depthwise convs (one input and one output channel per group)"
    if strategy in ("crop", "matmul", "spectral", "token_spectral") and site.grid is None:
        return (
            f"dynamic or unknown spatial shape: {strategy} needs a static H and W "
            "(export with a fixed image size)"
        )
    if (
        strategy == "crop"
        and cropped_kernel(site.kernel, site.grid, site.pads, site.dilations) == site.kernel
    ):
        return (
            f"every tap of the {_kxk(site.kernel)} kernel touches the {_kxk(site.grid)} grid: nothing to crop"
        )
    return None


def _kxk(pair: tuple[int, int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def _require_opset(model: onnx.ModelProto, minimum: int, strategy: str) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < minimum:
        raise UserError(
            f"{strategy} lowering needs ONNX opset >= {minimum}, the model has {opset}: "
            f"convert it (onnx.version_converter.convert_version(model, {minimum})) or re-export"
        )


def _check_matmul_budget(sites: list[ConvSite], budget_bytes: int) -> None:
    total = sum(matmul_nbytes(site) for site in sites)
    if total > budget_bytes:
        raise UserError(
            f"matmul lowering needs {format_bytes(total)} of Toeplitz weights, "
            f"over the {format_bytes(budget_bytes)} budget; "
            "raise --matmul-budget or use conv/crop/tiled"
        )


def matmul_nbytes(site: ConvSite) -> int:
    """The Toeplitz bytes the matmul lowering of `site` adds (static grid only)."""
    cout, cin_g = site.weight.shape[:2]
    (h, w), (ho, wo) = site.grid, site.out_grid
    blocks = kernel_blocks(site.weight, site.group)
    return toeplitz_nbytes(blocks, cin_g, cout // site.group, h * w, ho * wo, site.weight.itemsize)


_Rewrite = tuple[list[onnx.NodeProto], list[onnx.TensorProto], NodeChange]


def _rewrite_crop(site: ConvSite, names: _Names, _max_kernel: int | None) -> _Rewrite:
    (kh, kw), (h, w), (dh, dw) = site.kernel, site.grid, site.dilations
    top, left, bottom, right = site.pads
    r0, r1 = useful_taps(kh, dh, top, bottom, h)
    c0, c1 = useful_taps(kw, dw, left, right, w)
    weight = np.ascontiguousarray(site.weight[:, :, r0 : r1 + 1, c0 : c1 + 1])
    new_kernel = weight.shape[2], weight.shape[3]
    (ho, wo), new_top, new_left = site.out_grid, top - r0 * dh, left - c0 * dw
    new_pads = [
        new_top,
        new_left,
        _end_pad(ho, h, new_top, new_kernel[0], dh),
        _end_pad(wo, w, new_left, new_kernel[1], dw),
    ]
    weight_init = numpy_helper.from_array(weight, names.fresh(f"{site.name}/cropped_weight"))
    inputs = [site.node.input[0], weight_init.name, *site.node.input[2:]]
    conv = _conv_node(
        site, names.fresh(f"{site.name}/cropped"), inputs, site.node.output, new_kernel, new_pads
    )
    reason = (
        f"cropped {_kxk(site.kernel)} to {_kxk(new_kernel)}: "
        f"the other taps never touch the {_kxk(site.grid)} grid"
    )
    change = NodeChange(
        site.name, "lowered", "crop", reason, site.kernel, new_kernel, weight_bytes=weight.nbytes
    )
    return [conv], [weight_init], change


def _end_pad(out: int, size: int, pad_begin: int, k: int, d: int) -> int:
    return out - size - pad_begin + d * (k - 1)


def _rewrite_matmul(site: ConvSite, names: _Names, _max_kernel: int | None) -> _Rewrite:
    weight, group = site.weight, site.group
    cout, cin_g = weight.shape[:2]
    cout_g = cout // group
    (h, w), (ho, wo) = site.grid, site.out_grid
    blocks = kernel_blocks(weight, group)
    per_block = weight.reshape(blocks, group // blocks, cout_g, cin_g, *site.kernel)[:, 0]
    toeplitz = _toeplitz(per_block, site.grid, site.out_grid, site.pads, site.dilations)
    base, x, (y,) = site.name, site.node.input[0], site.node.output
    t_init = numpy_helper.from_array(toeplitz, names.fresh(f"{base}/toeplitz"))
    # Batch as -1, everything else a static int: reading C from the runtime shape would pin the batch.
    tokens_shape = _int64(names.fresh(f"{base}/tokens_shape"), [-1, blocks, group // blocks, cin_g * h * w])
    grid_shape = _int64(names.fresh(f"{base}/grid_shape"), [-1, cout, ho, wo])
    tokens, mixed = names.fresh(f"{base}/tokens"), names.fresh(f"{base}/mixed")
    bias_name = site.node.input[2] if len(site.node.input) > 2 else ""
    unbiased = names.fresh(f"{base}/unbiased") if bias_name else y
    nodes = [
        helper.make_node("Reshape", [x, tokens_shape.name], [tokens], name=names.fresh(f"{base}/to_tokens")),
        helper.make_node(
            "MatMul", [tokens, t_init.name], [mixed], name=names.fresh(f"{base}/toeplitz_matmul")
        ),
        helper.make_node(
            "Reshape", [mixed, grid_shape.name], [unbiased], name=names.fresh(f"{base}/to_grid")
        ),
    ]
    initializers = [t_init, tokens_shape, grid_shape]
    if bias_name:
        bias_chw = names.fresh(f"{base}/bias_chw")
        if site.bias is not None:
            initializers.append(numpy_helper.from_array(site.bias.reshape(cout, 1, 1), bias_chw))
        else:  # a computed bias: reshape it in the graph
            bias_shape = _int64(names.fresh(f"{base}/bias_shape"), [cout, 1, 1])
            initializers.append(bias_shape)
            nodes.append(
                helper.make_node(
                    "Reshape",
                    [bias_name, bias_shape.name],
                    [bias_chw],
                    name=names.fresh(f"{base}/bias_reshape"),
                )
            )
        nodes.append(helper.make_node("Add", [unbiased, bias_chw], [y], name=names.fresh(f"{base}/bias")))
    reason = (
        f"Toeplitz {tuple(toeplitz.shape)} ({format_bytes(toeplitz.nbytes)}), "
        f"one per head of {group // blocks} group(s)"
    )
    change = NodeChange(
        site.name, "lowered", "matmul", reason, site.kernel, heads=blocks, weight_bytes=toeplitz.nbytes
    )
    return nodes, initializers, change


def _toeplitz(per_block, grid, out_grid, pads, dilations) -> np.ndarray:
    """(blocks, cin_g*H*W, cout_g*Ho*Wo): T[b, (c,r,s), (o,i,j)] = W[b,o,c,u,v] where r = i + u*dh - top."""
    blocks, cout_g, cin_g, kh, kw = per_block.shape
    rows = _shift(kh, dilations[0], pads[0], grid[0], out_grid[0])  # (kh, H, Ho)
    cols = _shift(kw, dilations[1], pads[1], grid[1], out_grid[1])  # (kw, W, Wo)
    # Two tensordots (BLAS) keep the intermediate small; every entry is one weight or zero, so it is exact.
    by_rows = np.tensordot(per_block.astype(np.float32), rows, axes=([3], [0]))  # (b, o, c, kw, H, Ho)
    full = np.tensordot(by_rows, cols, axes=([3], [0]))  # (b, o, c, H, Ho, W, Wo)
    full = full.transpose(0, 2, 3, 5, 1, 4, 6)  # (b, c, H, W, o, Ho, Wo)
    n_in, n_out = grid[0] * grid[1], out_grid[0] * out_grid[1]
    return np.ascontiguousarray(full.reshape(blocks, cin_g * n_in, cout_g * n_out).astype(per_block.dtype))


def _shift(k: int, d: int, pad_begin: int, size: int, out: int) -> np.ndarray:
    """S[u, r, i] = 1 where input row r feeds output row i through tap u."""
    shift = np.zeros((k, size, out), dtype=np.float32)
    for u in range(k):
        for i in range(out):
            r = i + u * d - pad_begin
            if 0 <= r < size:
                shift[u, r, i] = 1.0
    return shift


def _rewrite_tiled(site: ConvSite, names: _Names, max_kernel: int) -> _Rewrite:
    base, x, (y,) = site.name, site.node.input[0], site.node.output
    row_tiles, col_tiles = even_split(site.kernel[0], max_kernel), even_split(site.kernel[1], max_kernel)
    split = (len(row_tiles) > 1, len(col_tiles) > 1)
    nodes, initializers = [], []
    padded = x
    if any(site.pads):
        top, left, bottom, right = site.pads
        pads = _int64(names.fresh(f"{base}/pads"), [0, 0, top, left, 0, 0, bottom, right])
        padded = names.fresh(f"{base}/padded")
        nodes.append(helper.make_node("Pad", [x, pads.name], [padded], name=names.fresh(f"{base}/pad")))
        initializers.append(pads)
    bias = site.node.input[2:3]
    tiles = [((a, b), (rows, cols)) for a, rows in enumerate(row_tiles) for b, cols in enumerate(col_tiles)]
    running = None
    for n, ((a, b), tile) in enumerate(tiles):
        tag, last = f"{base}/tile_{a}_{b}", n == len(tiles) - 1
        window, slice_nodes, slice_consts = _tile_slice(padded, tag, tile, site, split, names)
        nodes += slice_nodes
        initializers += slice_consts
        (u0, th), (v0, tw) = tile
        weight = numpy_helper.from_array(
            np.ascontiguousarray(site.weight[:, :, u0 : u0 + th, v0 : v0 + tw]), names.fresh(f"{tag}/weight")
        )
        initializers.append(weight)
        out = names.fresh(f"{tag}/out")
        inputs = [window, weight.name, *(bias if n == 0 else [])]  # the bias once
        nodes.append(_conv_node(site, names.fresh(tag), inputs, [out], (th, tw), [0, 0, 0, 0]))
        if running is not None:
            summed = y if last else names.fresh(f"{base}/sum_{a}_{b}")
            nodes.append(
                helper.make_node("Add", [running, out], [summed], name=names.fresh(f"{base}/add_{a}_{b}"))
            )
            out = summed
        running = out
    largest = (max(s for _, s in row_tiles), max(s for _, s in col_tiles))
    reason = (
        f"{_kxk(site.kernel)} split into {len(row_tiles)}x{len(col_tiles)} tiles of at most {_kxk(largest)}"
    )
    change = NodeChange(
        site.name,
        "lowered",
        "tiled",
        reason,
        site.kernel,
        largest,
        tiles=len(tiles),
        weight_bytes=site.weight.nbytes,
    )
    return nodes, initializers, change


def _tile_slice(padded: str, tag: str, tile, site: ConvSite, split: tuple[bool, bool], names: _Names):
    """(window tensor, Slice nodes, constants): the part of the padded input one tile's unpadded conv reads.

    Ends count back from the end of the axis, so the slice works whatever the grid size (dynamic H, W).
    """
    starts, ends, axes = [], [], []
    for axis, (start, size), k, d, is_split in zip((2, 3), tile, site.kernel, site.dilations, split):
        if not is_split:
            continue  # one tile spans this axis: it reads the whole padded extent
        from_end = (k - start - size) * d
        axes.append(axis)
        starts.append(start * d)
        ends.append(-from_end if from_end else _INT64_MAX)
    if not axes:
        return padded, [], []
    consts = [
        _int64(names.fresh(f"{tag}/{what}"), values)
        for what, values in (("starts", starts), ("ends", ends), ("axes", axes))
    ]
    window = names.fresh(f"{tag}/window")
    inputs = [padded, *(c.name for c in consts)]
    return window, [helper.make_node("Slice", inputs, [window], name=names.fresh(f"{tag}/slice"))], consts


def _rewrite_spectral(site: ConvSite, names: _Names, _max_kernel: int | None) -> _Rewrite:
    """The depthwise conv as DFT matmuls around a pointwise complex product (see lowering/spectral.py)."""
    weight, channels = site.weight, site.weight.shape[0]
    blocks = kernel_blocks(weight, site.group)  # heads: one spectrum per head, broadcast over its channels
    (h, w), (ho, wo) = site.grid, site.out_grid
    ph, pw = spectral.periods(site.grid, site.out_grid)
    bins = pw // 2 + 1
    kernels = weight.reshape(blocks, channels // blocks, *site.kernel)[:, 0]
    spectrum = spectral.kernel_spectrum(kernels, site.grid, site.out_grid, site.pads[:2], site.dilations)
    spectrum = spectrum.transpose(0, 2, 1)[:, None, :, None, :]  # (heads, 1, F, 1, Ph): [re | im] axis next
    base, x, (y,) = site.name, site.node.input[0], site.node.output
    dtype = weight.dtype

    def const(tag: str, array: np.ndarray) -> str:
        tensor = numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), names.fresh(f"{base}/{tag}"))
        initializers.append(tensor)
        return tensor.name

    def shape(tag: str, dims: list[int]) -> str:
        initializers.append(_int64(names.fresh(f"{base}/{tag}"), [-1, *dims]))  # batch -1: stays dynamic
        return initializers[-1].name

    def node(op: str, inputs: list[str], tag: str, output: str | None = None, **attrs) -> str:
        output = output or names.fresh(f"{base}/{tag}")
        nodes.append(helper.make_node(op, inputs, [output], name=names.fresh(f"{base}/{tag}"), **attrs))
        return output

    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    swap = numpy_helper.from_array(np.array([1, 0], np.int64), names.fresh(f"{base}/swap"))
    initializers.append(swap)
    t = node("MatMul", [x, const("dft_w", spectral.forward_w(w, pw))], "dft_w")  # (B, C, H, 2F)
    t = node("Reshape", [t, shape("split_w", [channels, h, 2, bins])], "split_w")
    t = node("Transpose", [t], "rows_last", perm=[0, 1, 4, 3, 2])  # (B, C, F, 2, H)
    t = node("Reshape", [t, shape("join_h", [channels, bins, 2 * h])], "join_h")
    t = node("MatMul", [t, const("dft_h", spectral.forward_h(h, ph))], "dft_h")  # (B, C, F, 2Ph)
    t = node("Reshape", [t, shape("heads", [blocks, channels // blocks, bins, 2, ph])], "heads")
    swapped = node("Gather", [t, swap.name], "swap_re_im", axis=4)
    # (a + ib)(kr + i ki) = [a kr - b ki | b kr + a ki]: [a | b] * [kr | kr] + [b | a] * [-ki | ki]
    same = node("Mul", [t, const("spectrum_re", np.concatenate([spectrum.real] * 2, axis=3))], "times_re")
    cross = node("Mul", [swapped, const("spectrum_im", np.concatenate([-spectrum.imag, spectrum.imag], axis=3))],
                 "times_im")
    t = node("Add", [same, cross], "product")
    t = node("Reshape", [t, shape("join_ph", [channels, bins, 2 * ph])], "join_ph")
    t = node("MatMul", [t, const("idft_h", spectral.inverse_h(ph, ho))], "idft_h")  # (B, C, F, 2Ho)
    t = node("Reshape", [t, shape("split_h", [channels, bins, 2, ho])], "split_h")
    t = node("Transpose", [t], "bins_last", perm=[0, 1, 4, 3, 2])  # (B, C, Ho, 2, F)
    t = node("Reshape", [t, shape("join_w", [channels, ho, 2 * bins])], "join_w")
    bias_name = site.node.input[2] if len(site.node.input) > 2 else ""
    if site.bias is not None:
        # A constant bias enters as the zero-frequency bin (pw * b inverts to b everywhere): an Add after the
        # last MatMul makes OpenVINO's CPU plugin fuse it as a per-column bias and fail (2026.4).
        dc = np.zeros((channels, 1, 2 * bins))
        dc[:, 0, 0] = pw * site.bias
        t = node("Add", [t, const("bias_dc", dc)], "bias")
    computed_bias = bias_name and site.bias is None  # rare (not in exports): a plain Add after the last MatMul
    t = node("MatMul", [t, const("idft_w", spectral.inverse_w(pw, wo))], "idft_w", None if computed_bias else y)
    if computed_bias:  # reshape it in the graph and add it at the end
        bias_shape = _int64(names.fresh(f"{base}/bias_shape"), [channels, 1, 1])
        initializers.append(bias_shape)
        node("Add", [t, node("Reshape", [bias_name, bias_shape.name], "bias_chw")], "bias", y)
    extra = sum(int(np.prod(i.dims)) * dtype.itemsize for i in initializers if i.data_type != onnx.TensorProto.INT64)
    reason = (
        f"DFT matmuls with periods {ph}x{pw} and {blocks} kernel spectra ({format_bytes(extra)}), exact: "
        "no wrap-around"
    )
    change = NodeChange(site.name, "lowered", "spectral", reason, site.kernel, heads=blocks, weight_bytes=extra)
    return nodes, initializers, change


def _rewrite_token_spectral(site: ConvSite, mixer, names: _Names):
    """(nodes, constants, change, replaced node indices): the whole mixer where the graph around the conv is the
    token-layout pattern (lowering/token_spectral.py); else the conv alone, as `spectral` lowers it."""
    if isinstance(mixer, str):
        nodes, initializers, change = _rewrite_spectral(site, names, None)
        change.reason = f"the conv alone: {mixer}; {change.reason}"
        return nodes, initializers, change, (site.index,)
    heads = kernel_blocks(site.weight, site.group)
    rewrite = token_spectral.rewrite_mixer(site, mixer, heads, names)
    reason = (
        f"the whole mixer in token layout, no Transpose: {rewrite.what} ({format_bytes(rewrite.weight_bytes)}; "
        f"{format_bytes(rewrite.runtime_bytes)} once the runtime has built them), exact: no wrap-around"
    )
    change = NodeChange(site.name, "lowered", "token_spectral", reason, site.kernel, heads=heads,
                        weight_bytes=rewrite.weight_bytes)
    return rewrite.nodes, rewrite.initializers, change, mixer.nodes


_REWRITES = {
    "crop": _rewrite_crop,
    "matmul": _rewrite_matmul,
    "tiled": _rewrite_tiled,
    "spectral": _rewrite_spectral,
}


# ---------------------------------------------------------------- graph plumbing


class _Names:
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


def _conv_node(site: ConvSite, name, inputs, outputs, kernel, pads) -> onnx.NodeProto:
    return helper.make_node(
        "Conv",
        inputs,
        outputs,
        name=name,
        kernel_shape=list(kernel),
        pads=list(pads),
        strides=[1, 1],
        dilations=list(site.dilations),
        group=site.group,
    )


def _int64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def with_conv_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose unnamed Conv nodes carry the names reports use for them ("Conv_<index>")."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for index, node in enumerate(copy.graph.node):
        if node.op_type == "Conv" and not node.name:
            node.name = _site_name(node, index)
    return copy


def _site_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"Conv_{index}"


def _drop_unused_constants(graph: onnx.GraphProto, candidates: set[str]) -> None:
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


def _constant_bytes(graph: onnx.GraphProto) -> int:
    tensors = list(graph.initializer) + [
        a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]
    return sum(
        int(np.prod(t.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        for t in tensors
    )
