"""`auto`: pick a lowering per conv from the targets table (targets.py) and a small cost model.

The table's numbers are measured on this project's CPUs plus the vendors' documented limits
(docs/backend-limits.md); planning/tune.py replaces them with a measurement on the machine at hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import onnx

from lkca_deploy.lowering.apply import apply_rules
from lkca_deploy.lowering.registry import CONV, CROP, MATMUL, SPECTRAL, TILED, TOKEN_SPECTRAL, rule_for
from lkca_deploy.lowering.report import LoweringReport, NodeChange, format_bytes
from lkca_deploy.lowering.rule import DEFAULT_MIN_KERNEL
from lkca_deploy.lowering.rules.matmul import DEFAULT_MATMUL_BUDGET
from lkca_deploy.lowering.sites import cropped_kernel, find_conv_sites, matmul_nbytes, not_lowerable
from lkca_deploy.targets import get_target
from lkca_runtime.onnx_io import graph_inputs


@dataclass(frozen=True)
class Plan:
    strategy: str
    max_kernel: int | None
    reason: str
    node: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def choose_lowering(
    target: str,
    grid: tuple[int, int] | None,
    kernel: tuple[int, int],
    channels: int,
    heads: int | None = None,
    batch_static: bool = False,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
    *,
    pads: tuple[int, int, int, int] | None = None,
    dilations: tuple[int, int] = (1, 1),
    itemsize: int = 4,
    toeplitz_bytes: int | None = None,
    depthwise: bool = True,
    precision: str | None = None,
) -> Plan:
    """The lowering for one depthwise conv on `target` (grid None: dynamic spatial shape).

    heads: contiguous channel blocks sharing one kernel (default: every channel its own). toeplitz_bytes
    overrides the depthwise estimate heads*N^2*itemsize (plan_model passes the exact figure). precision: what the
    engine will compute in, when the caller knows (None: unknown, the choice for any precision); at "int8" a
    target whose INT8 grouped convs want wider groups (targets.py) gets a MatMul mixer where one fits.
    """
    caps = get_target(target)
    if max(kernel) <= min(DEFAULT_MIN_KERNEL, caps.kernel_limit or DEFAULT_MIN_KERNEL):
        return Plan(CONV, None, f"{kernel[0]}x{kernel[1]} is a small kernel: every target runs it natively")
    if caps.kernel_limit is not None:
        return _fit_kernel_limit(target, caps.kernel_limit, grid, kernel, pads, dilations, batch_static)

    def toeplitz_need() -> int:
        tokens = grid[0] * grid[1]
        return toeplitz_bytes if toeplitz_bytes is not None else (heads or channels) * tokens * tokens * itemsize

    if precision == "int8" and caps.int8_group_multiple and depthwise:
        return _int8_matmul_mixer(target, caps.int8_group_multiple, grid, toeplitz_need, budget_bytes)
    if caps.matmul_max_tokens and grid is not None and grid[0] * grid[1] <= caps.matmul_max_tokens:
        need = toeplitz_need()
        where = f"at {grid[0]}x{grid[1]} the Toeplitz matmul beats the conv on {target}"
        if need <= budget_bytes:
            return Plan(MATMUL, None, f"{where} ({format_bytes(need)} of Toeplitz weights)")
        return Plan(
            CONV,
            None,
            f"{where}, but it needs {format_bytes(need)}, over the {format_bytes(budget_bytes)} budget",
        )
    if caps.spectral_over_tokens and grid is not None and grid[0] * grid[1] > caps.spectral_over_tokens:
        if depthwise:
            # token_spectral: the mixer's layout Transposes go too (1.5-1.6x spectral on ORT, 1.1-1.2x on OpenVINO
            # at 32x32, benchmarks/segmentation_speed.py); at 16x16 and below the Toeplitz matmul wins at batch 1.
            return Plan(TOKEN_SPECTRAL, None,
                        f"at {grid[0]}x{grid[1]} DFT and Toeplitz matmuls on the token layout beat the conv on {target}")
        return Plan(CONV, None, f"at {grid[0]}x{grid[1]} spectral would win, but it lowers depthwise convs only")
    return Plan(CONV, None, caps.conv_note)


def _int8_matmul_mixer(target, multiple, grid, toeplitz_need, budget_bytes) -> Plan:
    """INT8 where grouped convs want `multiple` channels per group: the depthwise conv has no documented INT8
    kernel there (docs/tensorrt.md), a MatMul has one. The Toeplitz when it fits the budget, else DFT matmuls."""
    why = (
        f"INT8 on {target}: its INT8 grouped convs are documented for multiples of {multiple} channels per group, "
        "a depthwise conv has 1"
    )
    if grid is None:
        return Plan(CONV, None, f"{why}, but the grid is dynamic: export a fixed image size for a MatMul mixer")
    need = toeplitz_need()
    if need <= budget_bytes:
        return Plan(MATMUL, None, f"{why}: the Toeplitz MatMul runs in INT8 ({format_bytes(need)} of weights)")
    return Plan(
        SPECTRAL,
        None,
        f"{why}: the Toeplitz needs {format_bytes(need)}, over the {format_bytes(budget_bytes)} budget, "
        "so DFT MatMuls instead",
    )


def _fit_kernel_limit(target, limit, grid, kernel, pads, dilations, batch_static) -> Plan:
    static_note = (
        "" if batch_static or target != "jetson-dla" else "; the DLA needs static shapes: fix the batch"
    )
    if max(kernel) <= limit:
        return Plan(CONV, None, f"{kernel[0]}x{kernel[1]}: {get_target(target).conv_note}{static_note}")
    if grid is not None:
        cropped = cropped_kernel(kernel, grid, pads, dilations)
        if max(cropped) <= limit:
            return Plan(
                CROP,
                None,
                f"cropped to the {grid[0]}x{grid[1]} grid the kernel is {cropped[0]}x{cropped[1]}, "
                f"within {target}'s {limit}-tap limit{static_note}",
            )
    return Plan(
        TILED,
        limit,
        f"{kernel[0]}x{kernel[1]} exceeds {target}'s {limit}-tap limit: "
        f"tiles of at most {limit}{static_note}",
    )


def plan_model(
    model: onnx.ModelProto,
    target: str,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
    precision: str | None = None,
) -> list[Plan]:
    """One plan per grouped conv; matmul picks share one budget, spent in graph order. precision: see
    choose_lowering."""
    get_target(target)
    batch_static = all(spec.shape[:1] != (None,) for spec in graph_inputs(model))
    plans, left = [], budget_bytes
    for site in find_conv_sites(model):
        problem = not_lowerable(site)
        if problem is not None:
            plans.append(Plan(CONV, None, f"{problem}: kept", site.name))
            continue
        toeplitz = matmul_nbytes(site) if site.grid is not None else None
        plan = choose_lowering(
            target,
            site.grid,
            site.kernel,
            int(site.weight.shape[0]),
            batch_static=batch_static,
            budget_bytes=left,
            pads=site.pads,
            dilations=site.dilations,
            itemsize=site.weight.itemsize,
            toeplitz_bytes=toeplitz,
            depthwise=site.depthwise,
            precision=precision,
        )
        if plan.strategy == MATMUL:
            left -= toeplitz
        plans.append(Plan(plan.strategy, plan.max_kernel, plan.reason, site.name))
    return plans


def apply_plan(
    model: onnx.ModelProto, plans: Sequence[Plan], budget_bytes: int = DEFAULT_MATMUL_BUDGET
) -> tuple[onnx.ModelProto, LoweringReport]:
    """Lower each planned node with its planned rule, in one pass; planned convs are reported as kept."""
    rules = {p.node: rule_for(p.strategy, p.max_kernel) for p in plans if p.strategy != CONV}
    model, report = apply_rules(model, rules, label="auto", min_kernel=0, budget_bytes=budget_bytes)
    changes = {change.node: change for change in report.changes}
    changes.update((p.node, NodeChange(p.node, "skipped", CONV, p.reason)) for p in plans if p.strategy == CONV)
    ordered = [changes[plan.node] for plan in plans if plan.node in changes]
    return model, LoweringReport("auto", ordered, report.extra_weight_bytes)


def lower_auto(
    model: onnx.ModelProto,
    target: str,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
    precision: str | None = None,
) -> tuple[onnx.ModelProto, LoweringReport, list[Plan]]:
    """plan_model then apply_plan: the `auto` strategy (precision: see choose_lowering)."""
    plans = plan_model(model, target, budget_bytes, precision)
    lowered, report = apply_plan(model, plans, budget_bytes)
    return lowered, report, plans
