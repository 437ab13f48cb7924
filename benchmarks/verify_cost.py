"""What serving a bundle only whole costs (docs/reliability.md): bundle.require_whole (no unlisted file,
every size, every sha256) against checking the chosen engine's files only, and the Predictor's whole load.

Interleaved rounds, medians; the machine's facts and load are printed beside the table.

    python benchmarks/verify_cost.py lkca-bundle
    python benchmarks/verify_cost.py lkca-bundle --backend openvino --rounds 9 --markdown
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from lkca_runtime.bundle import engine_files, read_manifest, require_hashes, require_whole
    from lkca_runtime.predictor import Predictor, choose_engine

    manifest = read_manifest(args.bundle)
    engine = choose_engine(manifest.engines, args.backend, args.precision)
    files = [p for p in args.bundle.rglob("*") if p.is_file()]
    steps = {
        "whole bundle (require_whole)": lambda: require_whole(args.bundle, manifest),
        "engine files only (the old check)": lambda: require_hashes(args.bundle, manifest,
                                                                      engine_files(manifest, engine)),
        "Predictor load (whole check + engine)": lambda: Predictor(
            args.bundle, backend=args.backend, precision=args.precision, verify="off").close(),
    }
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):  # interleaved: every step sees the same machine state
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            samples[name].append((time.perf_counter() - start) * 1e3)
    size = sum(f.stat().st_size for f in files) / 2**20
    title = f"Serving {args.bundle} only whole: {len(files)} files, {size:.1f} MiB"
    common.print_header(title, common.usable_cores(),
                        [f"engine: {engine['artifact']}; {args.rounds} interleaved rounds, medians"],
                        markdown=args.markdown)
    common.print_table(["step", "median ms", "min ms"],
                       [[name, f"{statistics.median(v):.1f}", f"{min(v):.1f}"] for name, v in samples.items()],
                       markdown=args.markdown)


if __name__ == "__main__":
    main()
