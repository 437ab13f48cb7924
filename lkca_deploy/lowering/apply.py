"""Applying the rules: exact passes for large-kernel grouped (depthwise) convolutions and the LKCA token mixer.

The conv on a fixed grid is a linear map with a known structure, so it can be written several exact ways; each
way is one rule (lowering/rules/, listed in lowering/registry.py). A pass finds the conv sites (lowering/sites.py),
asks each site's rule why it would refuse it, and splices in the rewrites of the rest.

Candidates are stride-1 2-D Conv nodes with group > 1 and a constant weight whose kernel exceeds a threshold.
Every candidate is reported as lowered or skipped, with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import onnx

from lkca_deploy.lowering.registry import rule_for
from lkca_deploy.lowering.report import LoweringReport, NodeChange
from lkca_deploy.lowering.rule import ConvRule
from lkca_deploy.lowering.rules.matmul import DEFAULT_MATMUL_BUDGET
from lkca_deploy.lowering.sites import find_conv_sites, with_conv_names
from lkca_deploy.onnx_graph import (
    FreshNames,
    constant_bytes,
    drop_unused_constants,
    require_opset,
    splice,
)
from lkca_runtime.onnx_io import load_onnx, save_onnx_atomic


def lower_model(
    model: onnx.ModelProto,
    strategy: str,
    *,
    max_kernel: int | None = None,
    min_kernel: int | None = None,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
) -> tuple[onnx.ModelProto, LoweringReport]:
    """A copy of `model` with its large grouped convs rewritten by `strategy`, and a report on each one.

    max_kernel: tiled only, the largest tile per side (default: the DLA kernel limit). min_kernel: lower only
    kernels with a side above it (default 7; tiled lowers exactly the kernels above max_kernel).
    Raises UserError for an unknown strategy and when matmul needs more Toeplitz bytes than `budget_bytes`.
    """
    rule = rule_for(strategy, max_kernel)
    return apply_rules(model, rule, label=strategy, min_kernel=min_kernel, budget_bytes=budget_bytes)


def apply_rules(
    model: onnx.ModelProto,
    rules: ConvRule | Mapping[str, ConvRule],
    *,
    label: str,
    min_kernel: int | None = None,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
) -> tuple[onnx.ModelProto, LoweringReport]:
    """One pass over the model: each grouped conv named in `rules` (or every one, for a single rule) is checked
    against its rule (`why_skip`) and rewritten by it. The matmul budget is spent over the whole pass."""
    for rule in [rules] if isinstance(rules, ConvRule) else rules.values():
        if rule.min_opset:
            require_opset(model, rule.min_opset, rule.name)
    model = with_conv_names(model)
    graph = model.graph
    before = constant_bytes(graph)
    decisions = []
    for site in find_conv_sites(model):
        rule = rules if isinstance(rules, ConvRule) else rules.get(site.name)
        if rule is not None:
            decisions.append((site, rule, rule.why_skip(site, min_kernel)))
    prepared: dict[int, object] = {}
    for kind in dict.fromkeys(type(rule) for _, rule, problem in decisions if problem is None):
        sites = [site for site, rule, problem in decisions if problem is None and type(rule) is kind]
        prepared.update(kind.prepare(model, sites, budget_bytes))

    report = LoweringReport(label)
    names = FreshNames(graph)
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for site, rule, problem in decisions:
        if problem is not None:
            report.changes.append(NodeChange(site.name, "skipped", rule.name, problem, kernel=site.kernel))
            continue
        rewrite = rule.rewrite(site, names, prepared.get(site.index))
        replacements.update({index: [] for index in rewrite.also_replaced})
        replacements[site.index] = rewrite.nodes
        graph.initializer.extend(rewrite.initializers)
        report.changes.append(rewrite.change)

    if replacements:
        # The constants the replaced nodes read (weights, reshape shapes): dropped where nothing else reads them
        drop_unused_constants(graph, splice(graph, replacements))
        onnx.checker.check_model(model)
    report.extra_weight_bytes = constant_bytes(graph) - before
    return model, report


def lower_file(src: str | os.PathLike, dst: str | os.PathLike, strategy: str, **kwargs) -> LoweringReport:
    """Load `src` (validated), lower it, write `dst` atomically (even when nothing was lowered)."""
    model, report = lower_model(load_onnx(src), strategy, **kwargs)
    save_onnx_atomic(model, Path(dst))
    return report
