"""`matmul`: the attention view of the conv, a constant Toeplitz per head and one MatMul (static H, W).

The Toeplitz weighs heads * N^4 entries (N the grid side), so the pass as a whole has a byte budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lkca_deploy.lowering.registry import MATMUL, MATMUL_BUDGET_MIB
from lkca_deploy.lowering.report import NodeChange, format_bytes
from lkca_deploy.lowering.rule import ConvRule, Rewrite
from lkca_deploy.lowering.sites import ConvSite, kernel_blocks, matmul_nbytes
from lkca_deploy.onnx_graph import FreshNames, int64_tensor
from lkca_runtime.errors import UserError

DEFAULT_MATMUL_BUDGET = MATMUL_BUDGET_MIB * 2**20


class Matmul(ConvRule):
    name = MATMUL
    help = "a constant Toeplitz per head and a MatMul (static H, W; weighs heads*N^4)"
    needs_static_grid = True

    @classmethod
    def prepare(cls, model: onnx.ModelProto, sites: Sequence[ConvSite], budget_bytes: int) -> dict:
        total = sum(matmul_nbytes(site) for site in sites)
        if total > budget_bytes:
            raise UserError(
                f"matmul lowering needs {format_bytes(total)} of Toeplitz weights, "
                f"over the {format_bytes(budget_bytes)} budget; "
                "raise --matmul-budget or use conv/crop/tiled"
            )
        return {}

    def rewrite(self, site: ConvSite, names: FreshNames, prepared=None) -> Rewrite:
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
        tokens_shape = int64_tensor(names.fresh(f"{base}/tokens_shape"), [-1, blocks, group // blocks, cin_g * h * w])
        grid_shape = int64_tensor(names.fresh(f"{base}/grid_shape"), [-1, cout, ho, wo])
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
                bias_shape = int64_tensor(names.fresh(f"{base}/bias_shape"), [cout, 1, 1])
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
            site.name, "lowered", self.name, reason, site.kernel, heads=blocks, weight_bytes=toeplitz.nbytes
        )
        return Rewrite(nodes, initializers, change)


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
