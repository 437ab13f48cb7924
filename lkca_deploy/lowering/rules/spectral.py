"""`spectral`: a depthwise conv as DFT matrices, four small MatMuls around a complex product per head.

The math (periods, kernel spectra, the DFT matrices) is lowering/spectral.py; this rule writes the nodes. For
large grids, where the matmul rule's Toeplitz is too big. Exact: the periods leave no wrap-around.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lkca_deploy.lowering import spectral as dft
from lkca_deploy.lowering.registry import SPECTRAL
from lkca_deploy.lowering.report import NodeChange, format_bytes
from lkca_deploy.lowering.rule import ConvRule, Rewrite
from lkca_deploy.lowering.sites import ConvSite, kernel_blocks
from lkca_deploy.onnx_graph import FreshNames, int64_tensor


class Spectral(ConvRule):
    name = SPECTRAL
    help = "depthwise only: DFT matrices as MatMuls around a complex product per head (static H, W)"
    needs_static_grid = True
    depthwise_only = True

    def rewrite(self, site: ConvSite, names: FreshNames, prepared=None) -> Rewrite:
        nodes, initializers, extra, blocks, (ph, pw) = spectral_nodes(site, names)
        reason = (
            f"DFT matmuls with periods {ph}x{pw} and {blocks} kernel spectra ({format_bytes(extra)}), exact: "
            "no wrap-around"
        )
        change = NodeChange(site.name, "lowered", self.name, reason, site.kernel, heads=blocks, weight_bytes=extra)
        return Rewrite(nodes, initializers, change)


def spectral_nodes(site: ConvSite, names: FreshNames):
    """(nodes, constants, float bytes added, heads, periods): the depthwise conv as DFT matmuls around a pointwise
    complex product."""
    weight, channels = site.weight, site.weight.shape[0]
    blocks = kernel_blocks(weight, site.group)  # heads: one spectrum per head, broadcast over its channels
    (h, w), (ho, wo) = site.grid, site.out_grid
    ph, pw = dft.periods(site.grid, site.out_grid)
    bins = pw // 2 + 1
    kernels = weight.reshape(blocks, channels // blocks, *site.kernel)[:, 0]
    spectrum = dft.kernel_spectrum(kernels, site.grid, site.out_grid, site.pads[:2], site.dilations)
    spectrum = spectrum.transpose(0, 2, 1)[:, None, :, None, :]  # (heads, 1, F, 1, Ph): [re | im] axis next
    base, x, (y,) = site.name, site.node.input[0], site.node.output
    dtype = weight.dtype

    def const(tag: str, array: np.ndarray) -> str:
        tensor = numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), names.fresh(f"{base}/{tag}"))
        initializers.append(tensor)
        return tensor.name

    def shape(tag: str, dims: list[int]) -> str:
        initializers.append(int64_tensor(names.fresh(f"{base}/{tag}"), [-1, *dims]))  # batch -1: stays dynamic
        return initializers[-1].name

    def node(op: str, inputs: list[str], tag: str, output: str | None = None, **attrs) -> str:
        output = output or names.fresh(f"{base}/{tag}")
        nodes.append(helper.make_node(op, inputs, [output], name=names.fresh(f"{base}/{tag}"), **attrs))
        return output

    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    swap = numpy_helper.from_array(np.array([1, 0], np.int64), names.fresh(f"{base}/swap"))
    initializers.append(swap)
    t = node("MatMul", [x, const("dft_w", dft.forward_w(w, pw))], "dft_w")  # (B, C, H, 2F)
    t = node("Reshape", [t, shape("split_w", [channels, h, 2, bins])], "split_w")
    t = node("Transpose", [t], "rows_last", perm=[0, 1, 4, 3, 2])  # (B, C, F, 2, H)
    t = node("Reshape", [t, shape("join_h", [channels, bins, 2 * h])], "join_h")
    t = node("MatMul", [t, const("dft_h", dft.forward_h(h, ph))], "dft_h")  # (B, C, F, 2Ph)
    t = node("Reshape", [t, shape("heads", [blocks, channels // blocks, bins, 2, ph])], "heads")
    swapped = node("Gather", [t, swap.name], "swap_re_im", axis=4)
    # (a + ib)(kr + i ki) = [a kr - b ki | b kr + a ki]: [a | b] * [kr | kr] + [b | a] * [-ki | ki]
    same = node("Mul", [t, const("spectrum_re", np.concatenate([spectrum.real] * 2, axis=3))], "times_re")
    cross = node("Mul", [swapped, const("spectrum_im", np.concatenate([-spectrum.imag, spectrum.imag], axis=3))],
                 "times_im")
    t = node("Add", [same, cross], "product")
    t = node("Reshape", [t, shape("join_ph", [channels, bins, 2 * ph])], "join_ph")
    t = node("MatMul", [t, const("idft_h", dft.inverse_h(ph, ho))], "idft_h")  # (B, C, F, 2Ho)
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
    t = node("MatMul", [t, const("idft_w", dft.inverse_w(pw, wo))], "idft_w", None if computed_bias else y)
    if computed_bias:  # reshape it in the graph and add it at the end
        bias_shape = int64_tensor(names.fresh(f"{base}/bias_shape"), [channels, 1, 1])
        initializers.append(bias_shape)
        node("Add", [t, node("Reshape", [bias_name, bias_shape.name], "bias_chw")], "bias", y)
    extra = sum(int(np.prod(i.dims)) * dtype.itemsize for i in initializers if i.data_type != onnx.TensorProto.INT64)
    return nodes, initializers, extra, blocks, (ph, pw)
