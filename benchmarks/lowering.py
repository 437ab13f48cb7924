"""End-to-end latency of each lowering of an exported LKCA model, per backend and batch, against the plain conv.

Every variant is an export_model file (self-checked against PyTorch), built and loaded through the product's own
backends (ONNX Runtime CPU with intra-op spinning off, OpenVINO CPU with the f32 precision hint), and timed in
ONE run with interleaved rounds (measure.latency.interleaved), so drift of a shared machine hits every variant
alike. `auto` is exported per backend for that backend's target. Takes a few minutes:
    python benchmarks/lowering.py --markdown
    python benchmarks/lowering.py --models lkca_vit_tiny --batches 1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BACKENDS = {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino-cpu"}  # backend -> its `auto` target
DEFAULT_MODELS = ("lkca_vit_tiny", "lkca_seg_nano", "lkca_seg_tiny")
BATCH_1_ONLY = ("lkca_seg_tiny",)  # 512 px: batch 32 would take minutes per call on 2 cores
AUTO_WITHIN = 0.05  # the goal: auto never more than 5% slower than the best candidate
AUTO_SPEEDUP_GOAL = 1.3  # and at least 1.3x the plain conv on ONNX Runtime for lkca_vit_tiny at batch 1
BOUND = "no mixer"  # a timing bound, not a candidate: never "best", never auto's pick


@dataclass
class Variant:
    """One exported lowering: the file, or why there is none to time."""

    label: str  # "conv", "matmul", "tiled:11", "auto"
    path: Path | None
    what: str  # what the lowering did, one line
    backend: str | None = None  # auto: the backend whose target it was planned for
    same_as: str | None = None  # an earlier variant with the very same graph: one engine, one measurement
    timed: dict[tuple[str, int], float] = field(default_factory=dict)  # (backend, batch) -> median ms


def export_variants(
    name: str, folder: Path, max_kernel: int, budget_mib: float, samples: int
) -> list[Variant]:
    from lkca_deploy.export import export_model
    from lkca_deploy.lowering.registry import RULES
    from lkca_runtime.errors import UserError

    jobs = [(rule(max_kernel).label, {"max_kernel": max_kernel} if rule.takes_max_kernel else {})
            for rule in RULES.values()]
    jobs += [(f"auto@{backend}", {"target": target}) for backend, target in BACKENDS.items()]
    variants = []
    for label, extra in jobs:
        lowering = label.split(":")[0].split("@")[0]
        out = folder / f"{name}-{label.replace(':', '_').replace('@', '_')}.onnx"
        try:
            result = export_model(
                name,
                out,
                lowering=lowering,
                budget_bytes=int(budget_mib * 2**20),
                check_samples=samples,
                **extra,
            )
        except UserError as err:
            variants.append(Variant(label, None, f"refused: {err}"))
            continue
        report = result.lowering
        skip = label != "conv" and not label.startswith("auto") and report.nothing_lowered
        what = report.summary() + (f"; err {result.max_abs_err:.1e}" if not skip else "")
        backend = label.split("@")[1] if "@" in label else None
        if backend:  # auto: say what it picked, per layer kinds
            what = (
                "picked " + "+".join(sorted({c.strategy for c in report.changes}) or ["conv"]) + "; " + what
            )
        same_as = next(
            (v.label for v in variants if v.path and _graph_digest(v.path) == _graph_digest(out)), None
        )
        if same_as and backend:
            what = f"= {same_as}; {what}"
        variants.append(Variant("auto" if backend else label, None if skip else out, what, backend, same_as))
        log(f"  exported {name} {label}: {what}")
    conv = next(v for v in variants if v.label == "conv")
    variants.append(Variant(BOUND, mixer_free(conv.path, folder / f"{name}-{BOUND}.onnx"),
                            "NOT the model: every large-kernel conv replaced by Identity; conv / this = the most "
                            "any lowering of the mixer could gain"))
    return variants


def mixer_free(conv_path: Path, out: Path) -> Path:
    """The conv export with its grouped large-kernel Convs made Identity: the time of everything but the mixer."""
    import onnx
    from onnx import helper

    from lkca_deploy.lowering.sites import find_conv_sites

    model = onnx.load(str(conv_path))
    for site in find_conv_sites(model):
        if site.kernel and max(site.kernel) > 1:
            model.graph.node[site.index].CopyFrom(
                helper.make_node("Identity", [site.node.input[0]], list(site.node.output), name=site.name)
            )
    onnx.save(model, str(out))
    return out


def _graph_digest(path: Path) -> str:
    """The graph's identity, metadata aside: two exports with equal digests are one engine."""
    import hashlib

    import onnx

    return hashlib.sha256(onnx.load(str(path)).graph.SerializeToString(deterministic=True)).hexdigest()


def tune_picks(name: str, folder: Path, samples: int) -> dict[str, str]:
    """backend -> the candidate `tune` keeps when timing on that backend."""
    from lkca_deploy.export import export_model

    picks = {}
    for backend in BACKENDS:
        result = export_model(
            name,
            folder / f"{name}-tune-{backend}.onnx",
            lowering="tune",
            tune_backend=backend,
            check_samples=samples,
        )
        best = next((row for row in result.tune_table if row.best), None)
        picks[backend] = best.candidate if best else "conv (nothing to tune)"
    return picks


def time_variants(
    variants: list[Variant],
    backend_name: str,
    batch: int,
    input_shape,
    repeats: int,
    threads: int | None,
    budget_s: float,
    folder: Path,
) -> None:
    """Build and load every variant on one backend, then time them interleaved at one batch size."""
    from lkca_deploy.backends.registry import get_backend
    from lkca_deploy.measure.latency import interleaved

    backend = get_backend(backend_name)
    runners = {}
    for v in variants:
        if v.path is None or v.same_as or v.backend not in (None, backend_name):
            continue
        artifact = folder / f"{v.path.stem}-{backend_name}{backend.artifact_suffix}"
        if not artifact.exists():
            backend.build(v.path, artifact, precision="fp32")
        runners[v.label] = backend.load(artifact, threads=threads, **backend.interleaved_load_options)
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    try:
        stats = interleaved(runners, x, repeats, warmup=3, budget_s=budget_s * len(runners))
    finally:
        for runner in runners.values():
            runner.close()
    for v in variants:
        source = v.same_as or v.label
        if source in stats and v.backend in (None, backend_name):
            v.timed[(backend_name, batch)] = stats[source].median_ms


# ---------------------------------------------------------------- tables


def model_table(name: str, variants: list[Variant], columns: list[tuple[str, int]], markdown: bool) -> str:
    head = ["lowering", *(f"{_short(b)} b{n} ms (x conv)" for b, n in columns), "what it did"]
    conv = next(v for v in variants if v.label == "conv")
    rows = []
    for v in variants:
        label = f"auto ({_short(v.backend)})" if v.backend else v.label
        cells = []
        for key in columns:
            if key not in v.timed:
                cells.append("-")
                continue
            ms = v.timed[key]
            cells.append(f"{ms:.2f} ({conv.timed[key] / ms:.2f}x)")
        rows.append([label, *cells, v.what])
    return render(f"{name}", head, rows, markdown)


def verdicts(name: str, variants: list[Variant], columns: list[tuple[str, int]]) -> list[str]:
    """One line per column: what auto picked, how it compares with conv and with the best candidate."""
    lines = []
    for backend, batch in columns:
        key = (backend, batch)
        timed = {v.label: v.timed[key] for v in variants if key in v.timed and v.backend in (None, backend)}
        if "auto" not in timed:
            continue
        bound = timed.pop(BOUND, None)
        best = min((label for label in timed if label != "auto"), key=timed.get)
        behind = timed["auto"] / timed[best] - 1
        auto = next(v for v in variants if v.label == "auto" and v.backend == backend)
        flag = "OK" if behind <= AUTO_WITHIN else f"AUTO IS {behind:.0%} SLOWER THAN {best}"
        picked = auto.what.split(";")[0]
        lines.append(
            f"{name} {_short(backend)} b{batch}: auto ({picked}) {timed['conv'] / timed['auto']:.2f}x conv; "
            f"best {best} {timed['conv'] / timed[best]:.2f}x conv; auto vs best {behind:+.1%}: {flag}"
        )
        if bound is not None:
            lines.append(f"  bound: with no mixer at all the model runs {timed['conv'] / bound:.2f}x conv")
        if name == "lkca_vit_tiny" and backend == "onnxruntime" and batch == 1:
            speedup = timed["conv"] / timed["auto"]
            goal = "MET" if speedup >= AUTO_SPEEDUP_GOAL else "NOT MET"
            lines.append(
                f"  goal auto >= {AUTO_SPEEDUP_GOAL}x conv on ORT CPU, lkca_vit_tiny b1: {goal} ({speedup:.2f}x)"
            )
    return lines


def render(title: str, head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join([title, fmt.format(*head), *(fmt.format(*row) for row in rows)])


def _short(backend: str | None) -> str:
    return {"onnxruntime": "ORT", "openvino": "OV"}.get(backend, str(backend))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per engine (default: the library's)"
    )
    parser.add_argument("--budget-s", type=float, default=1.0, help="timed seconds per variant, all rounds")
    parser.add_argument(
        "--max-kernel",
        type=int,
        default=11,
        help="tile size for `tiled` (default 11, the NPU limit: every grid here is split)",
    )
    parser.add_argument(
        "--matmul-budget-mib", type=float, default=64.0, help="Toeplitz budget for matmul/auto"
    )
    parser.add_argument("--check-samples", type=int, default=2, help="self-check samples per export")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--no-tune", action="store_true", help="skip asking `tune` for its pick")
    parser.add_argument("--markdown", action="store_true", help="markdown tables (for the README)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from lkca_deploy.models.zoo import get_config
    from lkca_runtime.machine import isa_summary, library_versions

    load_before = os.getloadavg()
    out = []
    with tempfile.TemporaryDirectory(prefix="lkca-bench-") as tmp:
        folder = Path(tmp)
        for name in args.models:
            config = get_config(name)
            log(f"{name}: exporting")
            variants = export_variants(
                name, folder, args.max_kernel, args.matmul_budget_mib, args.check_samples
            )
            batches = [1] if name in BATCH_1_ONLY else args.batches
            columns = [(b, n) for b in args.backends for n in batches]
            for backend, batch in columns:
                log(f"{name}: timing {backend} batch {batch}")
                time_variants(
                    variants,
                    backend,
                    batch,
                    (config.in_chans, config.img_size, config.img_size),
                    args.repeats,
                    args.threads,
                    args.budget_s,
                    folder,
                )
            grid = f"{config.grid[0]}x{config.grid[1]}/K{config.kernel[0]}, dim {config.dim}, depth {config.depth}"
            out.append(model_table(f"{name} ({grid})", variants, columns, args.markdown))
            out += verdicts(name, variants, columns)
            if not args.no_tune:
                picks = tune_picks(name, folder, args.check_samples)
                out.append("tune picks: " + ", ".join(f"{_short(b)} {c}" for b, c in picks.items()))
            out.append("")
    versions = library_versions()
    out.append(f"machine: {isa_summary()}")
    out.append(
        "versions: " + ", ".join(f"{k} {versions[k]}" for k in ("onnxruntime", "openvino", "onnx", "torch"))
    )
    out.append(
        f"threads: {args.threads or 'library default'}; ORT intra-op spinning off; OpenVINO f32 hint; "
        f"{args.repeats} interleaved rounds, medians of round medians"
    )
    load_after = os.getloadavg()
    out.append(
        f"load average (1 min) before/after: {load_before[0]:.1f}/{load_after[0]:.1f} "
        f"on {os.cpu_count()} logical cores (others' jobs make absolute times noisy; ratios hold better)"
    )
    print("\n".join(out))


if __name__ == "__main__":
    main()
