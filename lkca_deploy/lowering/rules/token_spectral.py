"""`token_spectral`: spectral for the whole LKCA mixer, in token layout.

Where tokens reach the conv by Transpose + Reshape and go back the same way, those layout nodes go too: a real DFT
along H and per head a Toeplitz product along W act on the token layout (the math and the pattern match are
lowering/token_spectral.py). Any other depthwise conv is lowered alone, as by `spectral`.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from lkca_deploy.lowering import token_spectral as mixers
from lkca_deploy.lowering.registry import TOKEN_SPECTRAL
from lkca_deploy.lowering.report import NodeChange, format_bytes
from lkca_deploy.lowering.rule import Rewrite
from lkca_deploy.lowering.rules.spectral import Spectral
from lkca_deploy.lowering.sites import ConvSite, kernel_blocks
from lkca_deploy.onnx_graph import FreshNames


class TokenSpectral(Spectral):
    name = TOKEN_SPECTRAL
    help = "spectral for the whole mixer: its layout Transposes go too, DFT and Toeplitz MatMuls on the tokens"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, sites: Sequence[ConvSite], budget_bytes: int) -> dict:
        """Each site's token-layout mixer, or why the graph around its conv is not one."""
        return mixers.find_mixers(model, sites)

    def rewrite(self, site: ConvSite, names: FreshNames, prepared=None) -> Rewrite:
        mixer = prepared
        if isinstance(mixer, str):
            alone = Spectral().rewrite(site, names)  # reported as what it is: spectral
            alone.change.reason = f"the conv alone: {mixer}; {alone.change.reason}"
            return alone
        heads = kernel_blocks(site.weight, site.group)
        rewrite = mixers.rewrite_mixer(site, mixer, heads, names)
        reason = (
            f"the whole mixer in token layout, no Transpose: {rewrite.what} ({format_bytes(rewrite.weight_bytes)}; "
            f"{format_bytes(rewrite.runtime_bytes)} once the runtime has built them), exact: no wrap-around"
        )
        change = NodeChange(site.name, "lowered", self.name, reason, site.kernel, heads=heads,
                            weight_bytes=rewrite.weight_bytes)
        others = tuple(i for i in mixer.nodes if i != site.index)
        return Rewrite(rewrite.nodes, rewrite.initializers, change, others)
