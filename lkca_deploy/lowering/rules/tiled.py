"""`tiled`: pad once, then per tile of at most `max_kernel` taps a Slice and an unpadded Conv, summed by Adds.

Works on any grid, dynamic ones too: the slices count back from the end of the axis.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from lkca_deploy.lowering.registry import TILED
from lkca_deploy.lowering.report import NodeChange, kxk
from lkca_deploy.lowering.rule import ConvRule, Rewrite
from lkca_deploy.lowering.sites import ConvSite, even_split
from lkca_deploy.onnx_graph import FreshNames, int64_tensor
from lkca_deploy.targets import DLA_KERNEL_LIMIT
from lkca_runtime.errors import UserError

DEFAULT_MAX_KERNEL = DLA_KERNEL_LIMIT  # the Jetson DLA's conv kernel limit per side
_INT64_MAX = np.iinfo(np.int64).max


class Tiled(ConvRule):
    name = TILED
    help = f"tiles of at most --max-kernel taps (default {DEFAULT_MAX_KERNEL}), Slice + Conv each, summed"
    min_opset = 11  # Slice with its starts/ends as inputs
    takes_max_kernel = True

    def __init__(self, max_kernel: int | None = None):
        self.max_kernel = DEFAULT_MAX_KERNEL if max_kernel is None else max_kernel
        if self.max_kernel < 1:
            raise UserError(f"--max-kernel must be at least 1, got {self.max_kernel}")

    def threshold(self, min_kernel: int | None) -> tuple[int, str]:
        """Tiled lowers exactly the kernels larger than a tile."""
        return self.max_kernel, "max_kernel"

    @property
    def label(self) -> str:
        return f"{self.name}:{self.max_kernel}"

    def command(self) -> str:
        return f"{super().command()} --max-kernel {self.max_kernel}"

    def rewrite(self, site: ConvSite, names: FreshNames, prepared=None) -> Rewrite:
        base, x, (y,) = site.name, site.node.input[0], site.node.output
        row_tiles = even_split(site.kernel[0], self.max_kernel)
        col_tiles = even_split(site.kernel[1], self.max_kernel)
        split = (len(row_tiles) > 1, len(col_tiles) > 1)
        nodes, initializers = [], []
        padded = x
        if any(site.pads):
            top, left, bottom, right = site.pads
            pads = int64_tensor(names.fresh(f"{base}/pads"), [0, 0, top, left, 0, 0, bottom, right])
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
            nodes.append(site.conv_like(names.fresh(tag), inputs, [out], (th, tw), [0, 0, 0, 0]))
            if running is not None:
                summed = y if last else names.fresh(f"{base}/sum_{a}_{b}")
                nodes.append(
                    helper.make_node("Add", [running, out], [summed], name=names.fresh(f"{base}/add_{a}_{b}"))
                )
                out = summed
            running = out
        largest = (max(s for _, s in row_tiles), max(s for _, s in col_tiles))
        reason = f"{kxk(site.kernel)} split into {len(row_tiles)}x{len(col_tiles)} tiles of at most {kxk(largest)}"
        change = NodeChange(
            site.name,
            "lowered",
            self.name,
            reason,
            site.kernel,
            largest,
            tiles=len(tiles),
            weight_bytes=site.weight.nbytes,
        )
        return Rewrite(nodes, initializers, change)


def _tile_slice(padded: str, tag: str, tile, site: ConvSite, split: tuple[bool, bool], names: FreshNames):
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
        int64_tensor(names.fresh(f"{tag}/{what}"), values)
        for what, values in (("starts", starts), ("ends", ends), ("axes", axes))
    ]
    window = names.fresh(f"{tag}/window")
    inputs = [padded, *(c.name for c in consts)]
    return window, [helper.make_node("Slice", inputs, [window], name=names.fresh(f"{tag}/slice"))], consts
