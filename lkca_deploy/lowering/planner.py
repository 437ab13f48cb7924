"""Pick a lowering per target: `auto` from a capability table and a small cost model, `tune` by timing.

The table starts from research/backend-limits.md (measured on this project's CPUs plus the vendors' documented
limits); `tune` replaces it with a measurement on the machine at hand. Both reuse lowering.lower_model, so
every rewrite has exactly one implementation.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from lkca_deploy.errors import UserError
from lkca_deploy.lowering.passes import (
    DEFAULT_MATMUL_BUDGET,
    DEFAULT_MIN_KERNEL,
    STRATEGIES,
    LoweringReport,
    NodeChange,
    cropped_kernel,
    find_conv_sites,
    format_bytes,
    kernel_blocks,
    lower_model,
    toeplitz_nbytes,
    with_conv_names,
)

TARGETS = ("tensorrt", "jetson-dla", "openvino-cpu", "openvino-gpu", "openvino-npu", "onnxruntime-cpu")
DEFAULT_TUNE_CANDIDATES = ("conv", "crop", "matmul", "spectral", "tiled:32")


@dataclass(frozen=True)
class Capability:
    """What one target does with a large depthwise conv, as far as the lowering choice goes."""

    kernel_limit: int | None  # largest conv kernel side the hardware runs; None: no limit
    matmul_max_tokens: int  # grids of at most this many tokens run the Toeplitz matmul faster; 0: never
    conv_note: str  # why the conv is the choice when nothing else applies
    spectral_over_tokens: int = 0  # depthwise convs on grids of more than this many tokens: DFT matmuls; 0: never


CAPABILITIES: dict[str, Capability] = {
    # End to end, benchmarks/lowering.py on a 2-core AVX-512 EPYC. Per-head Toeplitz matmul over conv: ORT 1.2x at
    # 8x8, 1.3-1.5x at 16x16; OpenVINO 1.1x at 8x8 and 16x16. Spectral (DFT matmuls) loses to both up to 16x16
    # (8x8: 0.8x conv) and wins at 32x32/K63 (lkca_seg_tiny b1, 1 thread): ORT 1.9x conv, OpenVINO 1.3x conv,
    # with 0.5 MiB of constants per layer where the Toeplitz needs 48 MiB. 24x24 is unmeasured: `tune` it.
    "onnxruntime-cpu": Capability(
        None, 256, "grid dynamic: the conv (NCHWc at full optimization); `tune` measures here", 256
    ),
    "openvino-cpu": Capability(
        None, 256, "grid dynamic: OpenVINO's depthwise conv", 256
    ),
    "openvino-gpu": Capability(None, 0, "OpenVINO GPU runs the large depthwise conv natively"),
    "tensorrt": Capability(None, 0, "TensorRT runs the conv; at small grids matmul may win: try `tune`"),
    "jetson-dla": Capability(32, 0, "the kernel fits the DLA's 32-tap limit"),
    "openvino-npu": Capability(11, 0, "the kernel fits the NPU's 11-tap limit"),
}


@dataclass(frozen=True)
class Plan:
    strategy: str
    max_kernel: int | None
    reason: str
    node: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_target(target: str) -> Capability:
    if target not in CAPABILITIES:
        raise UserError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    return CAPABILITIES[target]


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
) -> Plan:
    """The lowering for one depthwise conv on `target` (grid None: dynamic spatial shape).

    heads: contiguous channel blocks sharing one kernel (default: every channel its own). toeplitz_bytes
    overrides the depthwise estimate heads*N^2*itemsize (plan_model passes the exact figure).
    """
    caps = check_target(target)
    if max(kernel) <= min(DEFAULT_MIN_KERNEL, caps.kernel_limit or DEFAULT_MIN_KERNEL):
        return Plan("conv", None, f"{kernel[0]}x{kernel[1]} is a small kernel: every target runs it natively")
    if caps.kernel_limit is not None:
        return _fit_kernel_limit(target, caps.kernel_limit, grid, kernel, pads, dilations, batch_static)
    if caps.matmul_max_tokens and grid is not None and grid[0] * grid[1] <= caps.matmul_max_tokens:
        tokens = grid[0] * grid[1]
        need = (
            toeplitz_bytes if toeplitz_bytes is not None else (heads or channels) * tokens * tokens * itemsize
        )
        where = f"at {grid[0]}x{grid[1]} the Toeplitz matmul beats the conv on {target}"
        if need <= budget_bytes:
            return Plan("matmul", None, f"{where} ({format_bytes(need)} of Toeplitz weights)")
        return Plan(
            "conv",
            None,
            f"{where}, but it needs {format_bytes(need)}, over the {format_bytes(budget_bytes)} budget",
        )
    if caps.spectral_over_tokens and grid is not None and grid[0] * grid[1] > caps.spectral_over_tokens:
        if depthwise:
            return Plan("spectral", None, f"at {grid[0]}x{grid[1]} the DFT matmuls beat the conv on {target}")
        return Plan("conv", None, f"at {grid[0]}x{grid[1]} spectral would win, but it lowers depthwise convs only")
    return Plan("conv", None, caps.conv_note)


def _fit_kernel_limit(target, limit, grid, kernel, pads, dilations, batch_static) -> Plan:
    static_note = (
        "" if batch_static or target != "jetson-dla" else "; the DLA needs static shapes: fix the batch"
    )
    if max(kernel) <= limit:
        return Plan("conv", None, f"{kernel[0]}x{kernel[1]}: {CAPABILITIES[target].conv_note}{static_note}")
    if grid is not None:
        cropped = cropped_kernel(kernel, grid, pads, dilations)
        if max(cropped) <= limit:
            return Plan(
                "crop",
                None,
                f"cropped to the {grid[0]}x{grid[1]} grid the kernel is {cropped[0]}x{cropped[1]}, "
                f"within {target}'s {limit}-tap limit{static_note}",
            )
    return Plan(
        "tiled",
        limit,
        f"{kernel[0]}x{kernel[1]} exceeds {target}'s {limit}-tap limit: "
        f"tiles of at most {limit}{static_note}",
    )


def plan_model(model: onnx.ModelProto, target: str, budget_bytes: int = DEFAULT_MATMUL_BUDGET) -> list[Plan]:
    """One plan per grouped conv; matmul picks share one budget, spent in graph order."""
    check_target(target)
    batch_static = _batch_is_static(model)
    plans, left = [], budget_bytes
    for site in find_conv_sites(model):
        if site.kernel is None or site.weight is None or any(s != 1 for s in site.strides):
            why = "not a stride-1 2-D conv with a constant weight: kept"
            plans.append(Plan("conv", None, why, site.name))
            continue
        toeplitz = None
        if site.grid is not None:
            cout, cin_g = site.weight.shape[:2]
            (h, w), (ho, wo) = site.grid, site.out_grid
            blocks = kernel_blocks(site.weight, site.group)
            toeplitz = toeplitz_nbytes(
                blocks, cin_g, cout // site.group, h * w, ho * wo, site.weight.itemsize
            )
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
        )
        if plan.strategy == "matmul":
            left -= toeplitz
        plans.append(Plan(plan.strategy, plan.max_kernel, plan.reason, site.name))
    return plans


def apply_plan(
    model: onnx.ModelProto, plans: Sequence[Plan], budget_bytes: int = DEFAULT_MATMUL_BUDGET
) -> tuple[onnx.ModelProto, LoweringReport]:
    """Lower each planned node with its strategy (one lower_model call per strategy and tile size)."""
    model = with_conv_names(model)  # unnamed convs keep the names the plans gave them across rewrites
    changes: dict[str, NodeChange] = {}
    groups: dict[tuple[str, int | None], list[str]] = {}
    for plan in plans:
        if plan.strategy == "conv":
            changes[plan.node] = NodeChange(plan.node, "skipped", "conv", plan.reason)
        else:
            groups.setdefault((plan.strategy, plan.max_kernel), []).append(plan.node)
    extra = 0
    for (strategy, max_kernel), nodes in groups.items():
        model, report = lower_model(
            model, strategy, max_kernel=max_kernel, min_kernel=0, budget_bytes=budget_bytes, only=set(nodes)
        )
        changes.update((change.node, change) for change in report.changes)
        extra += report.extra_weight_bytes
    ordered = [changes[plan.node] for plan in plans if plan.node in changes]
    return model, LoweringReport("auto", ordered, extra)


def lower_auto(
    model: onnx.ModelProto, target: str, budget_bytes: int = DEFAULT_MATMUL_BUDGET
) -> tuple[onnx.ModelProto, LoweringReport, list[Plan]]:
    """plan_model then apply_plan: the `auto` strategy."""
    plans = plan_model(model, target, budget_bytes)
    lowered, report = apply_plan(model, plans, budget_bytes)
    return lowered, report, plans


def _batch_is_static(model: onnx.ModelProto) -> bool:
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            return False
    return True


# ---------------------------------------------------------------- tune


@dataclass
class TuneRow:
    candidate: str  # "tiled:32"
    strategy: str
    max_kernel: int | None
    status: str  # "timed" | "refused" | "inexact" | "same as conv"
    reason: str = ""
    max_abs_error: float | None = None
    median_s: float | None = None
    best: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def parse_candidate(candidate: str) -> tuple[str, int | None]:
    """'tiled:16' -> ('tiled', 16); 'matmul' -> ('matmul', None)."""
    strategy, _, size = candidate.partition(":")
    if strategy not in STRATEGIES:
        raise UserError(
            f"unknown lowering {candidate!r}: choose from {', '.join(STRATEGIES)} (tiled:N for tiles)"
        )
    if size and not size.isdigit():
        raise UserError(f"bad tile size in {candidate!r}: write it like tiled:32")
    return strategy, int(size) if size else None


def tune_lowering(
    model: onnx.ModelProto,
    candidates: Iterable[str],
    time_fn: Callable[[onnx.ModelProto], float],
    repeats: int = 5,
    *,
    budget_bytes: int = DEFAULT_MATMUL_BUDGET,
    inputs: dict[str, np.ndarray] | None = None,
    rtol: float = 1e-4,
    seed: int = 0,
) -> tuple[onnx.ModelProto, list[TuneRow]]:
    """The fastest exact lowering of `model` among `candidates`, and a table of what each did.

    Each candidate is built (those over the matmul budget are refused, not fatal), checked against the model
    itself with onnxruntime on random inputs (max |diff| <= rtol * max |output|), then timed with `time_fn`
    (seconds per run) interleaved round-robin `repeats` times so drift on a noisy machine hits all alike.
    When no candidate changes the model, the model itself comes back untimed.
    """
    feeds = inputs if inputs is not None else random_inputs(model, seed)
    reference = run_onnxruntime(model, feeds)
    rows, built = [], []
    for candidate in candidates:
        strategy, max_kernel = parse_candidate(candidate)
        row = TuneRow(candidate, strategy, max_kernel, "timed")
        rows.append(row)
        try:
            lowered, report = lower_model(model, strategy, max_kernel=max_kernel, budget_bytes=budget_bytes)
        except UserError as err:
            row.status, row.reason = "refused", str(err)
            continue
        if strategy != "conv" and report.nothing_lowered:
            row.status, row.reason = "same as conv", report.summary()
            continue
        row.reason = report.summary()
        row.max_abs_error = _max_abs_error(reference, run_onnxruntime(lowered, feeds))
        scale = max(float(np.max(np.abs(r))) for r in reference) or 1.0
        if row.max_abs_error > rtol * scale:
            row.status = "inexact"
            continue
        built.append((row, lowered))
    if not built:
        if any(row.status == "inexact" for row in rows):
            raise RuntimeError(f"no candidate lowering reproduced the model's outputs: {rows}")
        return with_conv_names(model), rows
    times: dict[int, list[float]] = {id(row): [] for row, _ in built}
    for _ in range(repeats):
        for row, lowered in built:
            times[id(row)].append(float(time_fn(lowered)))
    for row, _ in built:
        row.median_s = statistics.median(times[id(row)])
    best_row, best_model = min(built, key=lambda pair: pair[0].median_s)
    best_row.best = True
    return best_model, rows


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float inputs of the model's shapes, 1 for every dynamic dimension."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _max_abs_error(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(np.asarray(r, np.float64) - o))) for r, o in zip(reference, outputs))
