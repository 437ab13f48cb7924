"""The lowering rules' one table: the strategy names, their order, and the class behind each. The strategy list,
the CLI's choices, the tune candidates and the names the planner, the checks and the pipeline use all come from
here. A new rule is a module under rules/, its name and one line in RULES here, and its test.

The table names each class by its module, imported on first use: the CLI reads the names at startup, and the
rules import onnx and numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lkca_runtime.errors import UserError

if TYPE_CHECKING:
    from lkca_deploy.lowering.rule import ConvRule

CONV, CROP, MATMUL, TILED, SPECTRAL, TOKEN_SPECTRAL = "conv", "crop", "matmul", "tiled", "spectral", "token_spectral"
MATMUL_BUDGET_MIB = 64  # most Toeplitz weights the matmul lowering may add to a model, by default

# Conv lowerings, in the order lists and help show them: name -> "module:Class"
RULES = {
    CONV: "lkca_deploy.lowering.rules.conv:KeepConv",
    CROP: "lkca_deploy.lowering.rules.crop:Crop",
    MATMUL: "lkca_deploy.lowering.rules.matmul:Matmul",
    TILED: "lkca_deploy.lowering.rules.tiled:Tiled",
    SPECTRAL: "lkca_deploy.lowering.rules.spectral:Spectral",
    TOKEN_SPECTRAL: "lkca_deploy.lowering.rules.token_spectral:TokenSpectral",
}
STRATEGIES = tuple(RULES)


def rule_class(strategy: str) -> type[ConvRule]:
    if strategy not in RULES:
        raise UserError(f"unknown lowering strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    return _load(RULES[strategy])


def rule_for(strategy: str, max_kernel: int | None = None) -> ConvRule:
    """The rule named `strategy`, with its option (`max_kernel`: tiled's largest tile; the others ignore it)."""
    return rule_class(strategy)(max_kernel)


def tune_candidates() -> tuple[str, ...]:
    """What `tune` times by default: every strategy with its default option (tiled at the DLA limit)."""
    return tuple(rule_for(name).label for name in STRATEGIES)


def _load(where: str) -> type:
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)
