"""`conv`: keep the Conv as it is; the pass only reports what is there."""

from __future__ import annotations

from lkca_deploy.lowering.registry import CONV
from lkca_deploy.lowering.rule import ConvRule
from lkca_deploy.lowering.sites import ConvSite


class KeepConv(ConvRule):
    name = CONV
    help = "keep the Conv; only report what is there"

    def refuses(self, site: ConvSite) -> str | None:
        return "strategy conv keeps the Conv as it is"
