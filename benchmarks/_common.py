"""What the benchmark scripts share: their arguments, the machine lines printed beside every table, table printing,
a work folder, and the checkpoints they time (random weights for speed, lkca_vit_nano trained on digits for accuracy).

Every script times its engines in ONE run with interleaved rounds (measure.latency.interleaved) and reports the
median of the per-round medians; ONNX Runtime sessions run with intra-op spinning off (docs/backend-limits.md:
with spinning threads, sessions timed in turn on 2 cores ran 3x slower).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Libraries whose versions matter to the numbers (lkca_runtime.machine reads them from package metadata).
VERSION_KEYS = ("onnxruntime", "openvino", "nncf", "torch", "onnx", "numpy")
ACCURACY_MODEL, ACCURACY_DATA = "lkca_vit_nano", "digits"


# ---------------------------------------------------------------- arguments


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"batches are comma-separated integers, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"batches must be positive integers, got {text!r}")
    return batches


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def add_common_arguments(parser: argparse.ArgumentParser, *, model: str = "lkca_vit_tiny") -> None:
    parser.add_argument("--model", default=model, help=f"zoo model, random weights (default {model})")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint directory instead of --model")
    parser.add_argument(
        "--batches", type=parse_batches, default=(1, 32), help="comma-separated (default 1,32)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--budget", type=float, default=2.0, help="timed seconds per engine per batch, all rounds (default 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=usable_cores(), help="threads per engine (default: cores)"
    )
    parser.add_argument(
        "--work", type=Path, help="keep ONNX files, engines and checkpoints here (default: temp)"
    )
    parser.add_argument("--markdown", action="store_true", help="print markdown tables (for the README)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="also CPU ms per call (process CPU time, all threads): a loaded machine inflates wall time, not this; "
        "compare engines by it at --threads 1",
    )
    parser.add_argument("--seed", type=int, default=0)


@contextlib.contextmanager
def work_folder(path: Path | None) -> Iterator[Path]:
    """`path` (created, kept) or a temporary folder removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="lkca-bench-") as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------- output


def machine_lines(threads: int) -> list[str]:
    """CPU and ISA (which decide whether INT8/BF16 pay), the INT8 hint, library versions, threads."""
    from lkca_runtime.machine import int8_hint, isa_summary, machine_facts

    facts = machine_facts()
    versions = facts["versions"]
    libs = ", ".join(f"{k} {versions[k]}" for k in VERSION_KEYS if versions.get(k))
    return [
        f"CPU: {isa_summary(facts)}",
        f"INT8: {int8_hint(facts)}",
        f"Libraries: {libs}; python {facts['python']}",
        f"Threads per engine: {threads}; load average now: {_load_average()}",
    ]


def _load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def print_header(title: str, threads: int, notes: Sequence[str] = (), *, markdown: bool) -> None:
    lead = "### " if markdown else ""
    print(f"\n{lead}{title}\n")
    for line in [*machine_lines(threads), *notes]:
        print(f"- {line}" if markdown else line)
    print()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, markdown: bool) -> None:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    if markdown:
        print("| " + " | ".join(cells[0]) + " |")
        print("|" + "|".join("---" for _ in headers) + "|")
        for row in cells[1:]:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        for n, row in enumerate(cells):
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))
    print()


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def ratio(numerator: float | None, denominator: float | None) -> str:
    """'1.52x', or '-' when either side is missing."""
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    ms: float  # median of the per-round medians of wall time: the number engines are ranked by
    cpu_ms: float | None = None  # median process CPU time per call, when asked for

    def basis(self, cpu_time: bool) -> float:
        """What ratios compare: CPU time when asked for (a loaded machine inflates wall time), else wall time."""
        return self.cpu_ms if cpu_time and self.cpu_ms is not None else self.ms


class _CpuTimed:
    """A run that also records the process CPU time of each call (CLOCK_PROCESS_CPUTIME_ID, nanoseconds)."""

    def __init__(self, run: Callable):
        self.run, self.samples = run, []

    def __call__(self, x):
        start = time.process_time_ns()
        out = self.run(x)
        self.samples.append((time.process_time_ns() - start) / 1e6)
        return out


def time_interleaved(
    runs: Mapping[str, Callable],
    x: np.ndarray,
    *,
    repeats: int,
    budget_per_engine: float,
    cpu_time: bool = False,
) -> dict[str, Timing]:
    """name -> Timing, all engines timed in the same interleaved rounds (measure.latency.interleaved)."""
    from lkca_deploy.measure.latency import interleaved

    timed = {name: _CpuTimed(run) for name, run in runs.items()} if cpu_time else dict(runs)
    results = interleaved(timed, x, repeats=repeats, budget_s=budget_per_engine * len(runs), warmup=5)
    return {
        name: Timing(r.median_ms, float(np.median(timed[name].samples)) if cpu_time else None)
        for name, r in results.items()
    }


def batched(run, x: np.ndarray, size: int = 64) -> np.ndarray:
    """run() over `x` in chunks of `size` (the exported engines take a dynamic batch), outputs concatenated."""
    return np.concatenate(
        [np.asarray(run(np.ascontiguousarray(x[i : i + size]))) for i in range(0, len(x), size)]
    )


def inputs(shape: Sequence[int], batch: int, seed: int = 0) -> np.ndarray:
    """A seeded float32 batch of preprocessed-looking inputs (normalised images are roughly standard normal)."""
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


# ---------------------------------------------------------------- checkpoints


def random_checkpoint(name: str, out: Path, seed: int = 0) -> Path:
    """A checkpoint of zoo model `name` with EVERY weight random, biases and LayerNorm affines included.

    A freshly initialised model has zero biases and unit LayerNorm weights, which the exporter's simplifier folds
    away (Adds disappear, LayerNorms share one initializer); a trained model keeps them, so timing the fresh one
    would flatter every engine built from an ONNX. Speed does not depend on the values, only on their being there.
    """
    import torch

    from lkca_deploy.checkpoint import save_checkpoint
    from lkca_deploy.export import default_spec
    from lkca_deploy.models.zoo import create_model, get_config

    if (out / "config.json").is_file():
        return out
    config = get_config(name)
    model = create_model(name, view="conv", seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            # weights keep their init scale; zero biases and unit LayerNorm weights stop being special
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return save_checkpoint(out, model, config, default_spec(config), {"data": None, "note": "random weights"})


def trained_checkpoint(folder: Path, epochs: int | None = None, seed: int = 0) -> Path:
    """lkca_vit_nano trained on digits (about a minute on 2 cores), reused when `folder` already holds it."""
    from lkca_deploy.train import TrainOptions, default_epochs, train

    out = folder / f"{ACCURACY_MODEL}-{ACCURACY_DATA}"
    if not (out / "config.json").is_file():
        epochs = epochs or default_epochs(ACCURACY_DATA)
        warn(
            f"training {ACCURACY_MODEL} on {ACCURACY_DATA} for {epochs} epochs into {out} (pass --checkpoint to skip)"
        )
        train(
            ACCURACY_MODEL,
            ACCURACY_DATA,
            out=out,
            opts=TrainOptions(epochs=epochs, seed=seed, progress=False),
        )
    return out


def speed_source(args: argparse.Namespace, folder: Path) -> Path:
    """The checkpoint to time: --checkpoint, else --model with random weights."""
    if args.checkpoint is not None:
        return args.checkpoint
    return random_checkpoint(args.model, folder / f"{args.model}-random", args.seed)


def model_input_shape(source: Path) -> tuple[int, int, int]:
    """(C, H, W) a checkpoint's model takes."""
    from lkca_deploy.checkpoint import read_checkpoint

    spec = read_checkpoint(source).spec
    return (spec.channels, *spec.input_size)
