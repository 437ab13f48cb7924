"""What one image costs in memory while an ONNX model runs: the most activation bytes alive at once when its nodes
run in graph order, each tensor freed after its last reader. Weights, and what nodes compute from weights alone (an
INT8 weight's DequantizeLinear), are made once whatever the batch and are not counted.

`bench --batches B` checks B times this against the memory available before it allocates anything. It is an
estimate: dimensions shape inference cannot tell (the batch) count as 1, a tensor of unknown shape as nothing, and a
backend plans memory its own way. For the main job's model (lkca_vit_nano, matmul lowering, 32x32; 2026-12-07,
`/usr/bin/time -f %M lkca-deploy bench ARTIFACT --batches 4000 --no-cost` less the same at batch 1) it is 80 KiB per
image; ONNX Runtime's resident memory grew by 236 KiB per image (its arena grows in powers of two), OpenVINO's by
46 KiB. The inputs and outputs alone, counted before, were 8 KiB: in a 1 GiB cgroup a batch of 30,000 was killed by
the kernel where it is now refused in one line.
"""

from __future__ import annotations

import math
from itertools import chain

import onnx
from onnx import helper


def peak_bytes_per_image(model: onnx.ModelProto) -> int:
    sizes = _tensor_bytes(model)
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    last_read = {name: index for index, node in enumerate(graph.node) for name in node.input}
    live = {i.name for i in graph.input if i.name not in weights}
    per_image = set(live)  # tensors computed from an image: the rest is the same for any batch
    for node in graph.node:
        if per_image.intersection(node.input):
            per_image.update(node.output)
    sizes = {name: size for name, size in sizes.items() if name in per_image}
    current = peak = sum(sizes.get(name, 0) for name in live)
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name and name not in live:
                live.add(name)
                current += sizes.get(name, 0)
        peak = max(peak, current)
        for name in set(node.input):
            if name in live and last_read[name] == index and name not in outputs:
                live.discard(name)
                current -= sizes.get(name, 0)
    return peak


def _tensor_bytes(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        inferred = model
    sizes = {}
    graph = inferred.graph
    for value in chain(graph.input, graph.value_info, graph.output):
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape") or not tensor_type.elem_type:
            continue
        count = math.prod(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                          for d in tensor_type.shape.dim)
        sizes[value.name] = count * helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
    return sizes
