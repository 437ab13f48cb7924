"""What every lowering rule has.

ConvRule: one way to write a large grouped conv (a conv site, lowering/sites.py): what it matches (its flags and
`refuses`), why it refuses a site (a reason string), how it rewrites one (`rewrite`). A rule is a class in its own
module under rules/, registered in lowering/registry.py, which is where the strategy list, the CLI's choices and the
tune candidates come from. (The op forms for older parsers are rules of their own kind: lkca_deploy/forms/.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import onnx

from lkca_deploy.lowering.report import NodeChange, kxk
from lkca_deploy.lowering.sites import ConvSite, not_lowerable
from lkca_deploy.onnx_graph import FreshNames

DEFAULT_MIN_KERNEL = 7  # kernels up to 7x7 are "small": every backend runs them natively and fast


@dataclass
class Rewrite:
    """What a ConvRule writes for one site: new nodes and constants, the report line, and the graph indices of
    the nodes it replaces besides the conv itself (token_spectral takes the mixer's layout nodes too)."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    change: NodeChange
    also_replaced: tuple[int, ...] = ()


class ConvRule:
    """One lowering strategy for grouped convs. Subclasses set `name` and `help` and override `refuses` and
    `rewrite`; the flags below cover the common refusals."""

    name: ClassVar[str]
    help: ClassVar[str]  # one line: what the rule writes (CLI help, docs)
    needs_static_grid: ClassVar[bool] = False  # refuses a site whose (H, W) is dynamic or unknown
    depthwise_only: ClassVar[bool] = False  # refuses a site with more than one channel in or out per group
    min_opset: ClassVar[int] = 0  # the lowest default-domain opset its nodes exist at
    takes_max_kernel: ClassVar[bool] = False  # `max_kernel` is its option (tiled: the largest tile per side)

    def __init__(self, max_kernel: int | None = None):
        del max_kernel  # only rules that take it keep it

    def threshold(self, min_kernel: int | None) -> tuple[int, str]:
        """(side, option name): kernels up to this side are left alone."""
        return (DEFAULT_MIN_KERNEL if min_kernel is None else min_kernel), "min_kernel"

    def why_skip(self, site: ConvSite, min_kernel: int | None = None) -> str | None:
        """Why this rule does not lower `site`, or None when it does."""
        problem = not_lowerable(site)
        if problem is not None:
            return problem
        threshold, bound = self.threshold(min_kernel)
        if max(site.kernel) <= threshold:
            return f"kernel {kxk(site.kernel)} already small ({bound} {threshold})"
        return self.refuses(site)

    def refuses(self, site: ConvSite) -> str | None:
        """Why this rule cannot rewrite a lowerable, large-kernel `site`, or None."""
        if self.depthwise_only and not site.depthwise:
            return f"{self.name} lowers depthwise convs (one input and one output channel per group)"
        if self.needs_static_grid and site.grid is None:
            return (
                f"dynamic or unknown spatial shape: {self.name} needs a static H and W "
                "(export with a fixed image size)"
            )
        return None

    @classmethod
    def prepare(cls, model: onnx.ModelProto, sites: Sequence[ConvSite], budget_bytes: int) -> dict[int, Any]:
        """Before any rewrite, over every site this rule lowers in the pass: what the rewrites need that one site
        does not show (keyed by site index), or a UserError for the pass as a whole (matmul's budget)."""
        del model, sites, budget_bytes
        return {}

    def rewrite(self, site: ConvSite, names: FreshNames, prepared: Any = None) -> Rewrite:
        raise NotImplementedError(f"{self.name} keeps the conv")

    @property
    def label(self) -> str:
        """The rule with its option, as tune candidates and reports write it ("tiled:16")."""
        return self.name

    def command(self) -> str:
        """The `lkca-deploy` command line that applies this rule to a file."""
        return f"lower --strategy {self.name}"
