"""Throughput of one Predictor shared by 1, 2 and 8 threads (the concurrency model of runtime.Predictor): each
thread calls `p(image)` on its own images; every answer is checked against the serial one while timing.

Interleaved rounds (every thread count once per round), medians of images per second; the machine's facts and
load are printed beside the table. Engine threads per call: --engine-threads (default: the backend's own).

    python benchmarks/predictor_threads.py lkca-bundle --backend openvino
    python benchmarks/predictor_threads.py lkca-bundle --backend onnxruntime --threads 1,2,8 --calls 400
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=common.parse_batches, default=(1, 2, 8), help="Thread counts.")
    parser.add_argument("--calls", type=int, default=200, help="Predictor calls per measurement.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engine-threads", type=int, default=None)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from lkca_deploy.runtime import Predictor

    with Predictor(args.bundle, backend=args.backend, precision=args.precision, threads=args.engine_threads,
                   verify="off") as p:
        channels, height, width = p.spec.input_shape
        rng = np.random.default_rng(0)
        shape = (height, width) if channels == 1 else (height, width, 3)
        images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(64)]
        serial = [_key(p(image)) for image in images]
        per_second: dict[int, list[float]] = {t: [] for t in args.threads}
        wrong = 0
        for _ in range(args.rounds):  # interleaved: every thread count sees the same machine state
            for threads in args.threads:
                jobs = [i % len(images) for i in range(args.calls)]
                start = time.perf_counter()
                with ThreadPoolExecutor(threads) as pool:
                    answers = list(pool.map(lambda i: (i, _key(p(images[i]))), jobs))
                per_second[threads].append(args.calls / (time.perf_counter() - start))
                wrong += sum(answer != serial[i] for i, answer in answers)
        engine = p.info
    title = f"One Predictor shared by threads: {engine['backend']} {engine['precision']} ({engine['artifact']})"
    note = (f"{args.calls} calls of one image per measurement, {args.rounds} interleaved rounds, medians; "
            f"answers that differ from the serial ones: {wrong}")
    common.print_header(title, args.engine_threads or common.usable_cores(), [note], markdown=args.markdown)
    base = statistics.median(per_second[args.threads[0]])
    common.print_table(["threads", "images/s (median)", "min", "max", f"x {args.threads[0]} thread(s)"],
                       [[t, f"{statistics.median(v):.0f}", f"{min(v):.0f}", f"{max(v):.0f}",
                         f"{statistics.median(v) / base:.2f}"] for t, v in per_second.items()],
                       markdown=args.markdown)


def _key(answer):
    """An answer comparable across calls: labels with their scores, or the mask's bytes."""
    return answer.tobytes() if isinstance(answer, np.ndarray) else tuple(answer)


if __name__ == "__main__":
    main()
