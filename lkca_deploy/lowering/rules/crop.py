"""`crop`: drop the kernel taps that can never touch the grid; pads adjusted so the output stays the same."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from lkca_deploy.lowering.registry import CROP
from lkca_deploy.lowering.report import NodeChange, kxk
from lkca_deploy.lowering.rule import ConvRule, Rewrite
from lkca_deploy.lowering.sites import ConvSite, cropped_kernel, useful_taps
from lkca_deploy.onnx_graph import FreshNames


class Crop(ConvRule):
    name = CROP
    help = "drop kernel taps that never touch the grid (static H, W)"
    needs_static_grid = True

    def refuses(self, site: ConvSite) -> str | None:
        problem = super().refuses(site)
        if problem is None and cropped_kernel(site.kernel, site.grid, site.pads, site.dilations) == site.kernel:
            return f"every tap of the {kxk(site.kernel)} kernel touches the {kxk(site.grid)} grid: nothing to crop"
        return problem

    def rewrite(self, site: ConvSite, names: FreshNames, prepared=None) -> Rewrite:
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
        conv = site.conv_like(names.fresh(f"{site.name}/cropped"), inputs, site.node.output, new_kernel, new_pads)
        reason = f"cropped {kxk(site.kernel)} to {kxk(new_kernel)}: the other taps never touch the {kxk(site.grid)} grid"
        change = NodeChange(site.name, "lowered", self.name, reason, site.kernel, new_kernel, weight_bytes=weight.nbytes)
        return Rewrite([conv], [weight_init], change)


def _end_pad(out: int, size: int, pad_begin: int, k: int, d: int) -> int:
    return out - size - pad_begin + d * (k - 1)
