"""`upsample_as_matmuls`: a bilinear Resize to a fixed larger size as two MatMuls with constant matrices.

A segmentation head that ends at the input's size upsamples its (N, K, h, w) grid logits with one Resize. Bilinear
resizing is separable and linear, so it is X @ Rw^T (along W) and then Rh @ (.) (along H), with Rw, Rh the
(out, in) interpolation matrices (masks.bilinear_matrix: half-pixel centres, two taps per row). For
lkca_seg_tiny's 150 x 32 x 32 -> 150 x 512 x 512 on 2 threads, ONNX Runtime's Resize took 26.8 ms and the two
MatMuls 14.8 ms; OpenVINO 36.5 and 31.7 ms (benchmarks/segmentation_speed.py shows it end to end). The two agree
within float rounding (7e-7 there). Only what the toolkit's heads export is rewritten: mode linear, half-pixel
coordinates, no antialias, N and C kept, a static size no smaller than the input's.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from lkca_deploy.onnx_meta import read_metadata
from lkca_runtime.masks import bilinear_matrix
from lkca_runtime.onnx_io import static_shapes

_HALF_PIXEL = (b"half_pixel", b"pytorch_half_pixel")  # the same for any output length above 1


def upsample_as_matmuls(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """(a copy of `model` with every such Resize rewritten, the names of the Resize nodes it rewrote)."""
    shapes = static_shapes(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, rewritten = [], []
    for node in out.graph.node:
        sizes = _sizes(node, shapes)
        if sizes is None:
            nodes.append(node)
            continue
        (h, w), (height, width) = sizes
        base = node.name or node.output[0]
        rw_t = numpy_helper.from_array(bilinear_matrix(width, w).T.copy(), f"{base}/upsample_w")
        rh = numpy_helper.from_array(bilinear_matrix(height, h), f"{base}/upsample_h")
        out.graph.initializer.extend([rw_t, rh])
        along_w = f"{base}/along_w"
        nodes += [
            helper.make_node("MatMul", [node.input[0], rw_t.name], [along_w], name=f"{base}/upsample_w"),
            helper.make_node("MatMul", [rh.name, along_w], [node.output[0]], name=f"{base}/upsample_h"),
        ]
        rewritten.append(base)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, rewritten


def _sizes(node: onnx.NodeProto, shapes: dict) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((h, w), (H, W)) of a Resize this pass rewrites, None for any other node."""
    if node.op_type != "Resize" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if (
        attrs.get("mode", b"nearest") != b"linear"
        or attrs.get("coordinate_transformation_mode", b"half_pixel") not in _HALF_PIXEL
        or attrs.get("antialias", 0)
        or attrs.get("keep_aspect_ratio_policy", b"stretch") != b"stretch"
        or (len(node.input) > 4 and node.input[4])  # axes: the whole shape is the default, and the only one seen
    ):
        return None
    source, result = shapes.get(node.input[0]), shapes.get(node.output[0])
    if source is None or result is None or len(source) != 4 or len(result) != 4:
        return None
    # C must stay as it is; N too, but a dynamic batch is None on both sides (no head resizes across images)
    if tuple(source[:2]) != tuple(result[:2]):
        return None
    (h, w), (height, width) = source[2:], result[2:]
    if not all(isinstance(d, int) and d > 0 for d in (h, w, height, width)) or height < h or width < w:
        return None
    return (h, w), (height, width)


def upsample_nodes(model: onnx.ModelProto) -> list[str]:
    """The MatMuls this pass wrote into an export (its metadata names the Resize nodes replaced). INT8 builds keep
    them float, as the Resize was: they interpolate the logits, they are no layer to quantize."""
    replaced = (read_metadata(model).get("lowering") or {}).get("upsample_matmuls") or []
    wanted = {f"{base}/upsample_{axis}" for base in replaced for axis in ("w", "h")}
    return [n.name for n in model.graph.node if n.name in wanted]
