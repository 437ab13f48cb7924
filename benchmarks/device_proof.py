"""What the proof on the device costs: `lkca-deploy verify BUNDLE --all` end to end (a fresh process, as a user
runs it), and a Predictor's load with its first-use golden check against a later load that finds the check recorded.

Every measurement runs in a fresh child process (torch is checked to be absent from sys.modules there), in
interleaved rounds; the table gives medians. The device cache is emptied before each first-use load.

    python benchmarks/device_proof.py lkca-bundle
    python benchmarks/device_proof.py lkca-bundle --repeats 5 --backend openvino --markdown
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

# Runs in the child: load the Predictor (which checks on first use), then report the check and the times.
LOAD = """
import json, sys, time
started = time.perf_counter()
from lkca_deploy.runtime import Predictor
imported = time.perf_counter()
p = Predictor(sys.argv[1], backend=sys.argv[2], precision=sys.argv[3] or None)
loaded = time.perf_counter()
v = p.verification
print(json.dumps({"engine": p.engine["artifact"], "import_s": imported - started, "load_s": loaded - imported,
                  "checked": v is not None and not v.cached, "check_s": v.seconds if v else 0.0,
                  "torch": "torch" in sys.modules}))
"""


def run_verify(bundle: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lkca_deploy.cli", "verify", str(bundle), "--all", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"verify failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    return wall


def run_load(bundle: Path, backend: str, precision: str) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LOAD, str(bundle), backend, precision],
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"Predictor failed: {proc.stderr.strip()}")
    doc = json.loads(proc.stdout)
    if doc["torch"]:
        raise SystemExit("torch was imported by the Predictor")
    return {**doc, "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="", help="engine precision (default: the Predictor's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    from lkca_runtime.records import beside_bundle

    with tempfile.TemporaryDirectory(prefix="lkca-proof-") as tmp:
        bundle = Path(tmp) / "bundle"  # a copy: the benchmark empties its device cache
        shutil.copytree(args.bundle, bundle)
        cache = beside_bundle(bundle)
        rows = {"verify": [], "first": [], "later": []}
        checks = []
        for _ in range(args.repeats):
            shutil.rmtree(cache, ignore_errors=True)
            rows["verify"].append(run_verify(bundle))
            shutil.rmtree(cache, ignore_errors=True)
            first = run_load(bundle, args.backend, args.precision)
            later = run_load(bundle, args.backend, args.precision)
            assert first["checked"] and not later["checked"], (first, later)
            rows["first"].append(first)
            rows["later"].append(later)
            checks.append(first["check_s"])
    common.print_header("The proof on the device (medians of interleaved rounds, fresh processes)",
                        common.usable_cores(),
                        [f"bundle: {args.bundle}; Predictor engine: {first['engine']}; rounds: {args.repeats}"],
                        markdown=args.markdown)

    def med(values) -> float:
        return statistics.median(values)

    table = [
        ("lkca-deploy verify BUNDLE --all (process wall)", f"{med(rows['verify']):.2f}", "-"),
        ("Predictor load, first use (golden check runs)", f"{med(r['load_s'] for r in rows['first']):.3f}",
         f"{med(checks):.3f}"),
        ("Predictor load, later (check found recorded)", f"{med(r['load_s'] for r in rows['later']):.3f}", "0"),
    ]
    common.print_table(("what", "seconds", "of which the golden check"), table, markdown=args.markdown)


if __name__ == "__main__":
    main()
