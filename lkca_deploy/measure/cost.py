"""What an engine costs beyond its p50: load time and peak memory, each engine measured in a child process of its own.

Why a child process per engine: a Python process's resident set does not shrink back after an engine is closed
(allocators keep freed pages, libraries keep thread pools and plugin state), so engines measured one after another
in one process would carry the earlier ones' memory into the later ones' figures. Each engine is instead measured by
`python -m lkca_deploy.measure.cost` in a subprocess (not multiprocessing's spawn, which would re-import the
caller's __main__, torch included). The child imports numpy, the backend module and its library, nothing else of
the caller's, as a deployed app would; it reports whether torch was imported (it never is).

What the child does, in order:
1. Imports the backend's library (`Backend.available()`) and the toolkit's ONNX reader (onnx_io, which loads may
   use to check a graph); `library_mb` is the resident set those imports added, paid once per process.
2. Resets the kernel's resident-set high-water mark to the current resident set (writes 5 to /proc/self/clear_refs,
   Linux >= 4.0), so the imports' own transient peak cannot hide the engine's, and reads the resident set: the
   baseline. Where that reset is refused the high-water mark so far stands in (`peak_method` says "hwm"), which
   under-counts when the imports peaked higher than the engine does.
3. `load_ms`: `Backend.load(artifact)`: the sidecar and hash checks plus the ORT session, OpenVINO compile or
   TensorRT deserialize; `first_result_ms`: that plus the first batch-1 run (a fresh process's wait for its first
   answer). One sample each, in a fresh process, with the artifact in the page cache (it was just built or hashed):
   a cold disk adds its read time.
4. `runs` calls at each batch size (the engine's activations at the largest batch are part of what it costs), then
   reads the high-water mark (VmHWM): `peak_mb` = VmHWM - baseline, the memory the engine added while loaded and
   running; `process_peak_mb` = VmHWM itself (python + numpy + library + engine).
5. Optionally, the end-to-end Predictor timings of e2e.py on image files, after the peak was read, so they do not
   move it.
Host memory only: a TensorRT engine's GPU memory is not in these figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from lkca_deploy.backends.registry import get_backend
from lkca_deploy.measure.e2e import measure_e2e
from lkca_runtime.backends.base import read_sidecar
from lkca_runtime.errors import UserError
from lkca_runtime.optional import installed
from lkca_runtime.predictor import Predictor
from lkca_runtime.spec import PreprocessSpec

RUNS = 5  # calls per batch size while the peak is watched
TIMEOUT_S = 600.0
_MIB = 1024.0  # /proc/self/status reports kB
_CLEAR_REFS_RESET_PEAK = b"5"  # proc(5): "Reset the peak resident set size to the current resident set size"


@dataclass(frozen=True)
class EngineCost:
    """One engine's load time (ms) and resident memory (MiB), measured in a fresh child process."""

    load_ms: float  # Backend.load: artifact on disk -> engine ready
    first_result_ms: float  # load + the first batch-1 run
    peak_mb: float  # high-water mark the engine added over the resident set just before loading
    process_peak_mb: float  # the child's whole high-water mark
    library_mb: float  # resident set that importing the backend library added (paid once per process)
    batches: tuple[int, ...] = (1,)
    runs: int = RUNS
    peak_method: str = "clear_refs"  # "clear_refs": peak reset before loading; "hwm": the import peak could hide it

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batches"] = list(self.batches)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineCost:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["batches"] = tuple(values.get("batches", (1,)))
        return cls(**values)


def measure_cost(
    backend: str,
    artifact: str | Path,
    *,
    sample: np.ndarray | None = None,
    batches: Sequence[int] = (1,),
    runs: int = RUNS,
    threads: int | None = None,
    device: str | None = None,
    options: Mapping[str, Any] | None = None,
    e2e: Mapping[str, Any] | None = None,
    timeout_s: float = TIMEOUT_S,
) -> tuple[EngineCost, dict[str, Any] | None]:
    """Load `artifact` with `backend` in a child process and return (its cost, e2e.py's dict or None).

    `sample`: real preprocessed inputs (N, C, H, W) tiled to each batch size; random normal ones of the engine's
    input shape when None. A static-batch engine runs only its own batch. `options` go to Backend.load.
    `e2e`: {"files": [image paths], "spec": PreprocessSpec.to_dict(), "task", "class_names", and measure_e2e's
    keyword arguments (warmup, iters, budget_s, min_iters)} to time the Predictor on those files in the same child.
    A UserError in the child (say, the backend is not installed) is raised here with its one line.
    """
    if runs < 1 or not batches or any(b < 1 for b in batches):
        raise ValueError(f"need runs >= 1 and positive batch sizes (got {runs}, {list(batches)})")
    request = {
        "backend": backend,
        "artifact": str(Path(artifact).resolve()),
        "batches": [int(b) for b in batches],
        "runs": int(runs),
        "threads": threads,
        "device": device,
        "options": dict(options or {}),
        "e2e": dict(e2e) if e2e else None,
    }
    with tempfile.TemporaryDirectory(prefix="lkca-cost-") as tmp:
        if sample is not None:
            request["sample"] = str(Path(tmp) / "sample.npy")
            np.save(request["sample"], np.ascontiguousarray(sample, dtype=np.float32), allow_pickle=False)
        proc = subprocess.run(
            [sys.executable, "-m", "lkca_deploy.measure.cost", json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=_child_env(),
        )
    last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    if proc.returncode == 2:
        raise UserError(last.removeprefix("error: "))
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {Path(artifact).name} in a child process failed: {last}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return EngineCost.from_dict(result["cost"]), result.get("e2e")


def _child_env() -> dict[str, str]:
    """This environment, with the folder holding lkca_deploy first on the path: the child imports this very copy."""
    paths = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


# ---------------------------------------------------------------- the child (torch-free)


def _status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM), or None where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_kb() -> int:
    rss = _status_kb("VmRSS")
    return rss if rss is not None else _maxrss_kb()


def _peak_kb() -> int:
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else _maxrss_kb()


def _maxrss_kb() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, kB on Linux


def _reset_peak() -> str:
    """Make the high-water mark the current resident set; says which method the peak figure then rests on."""
    try:
        with open("/proc/self/clear_refs", "wb") as f:
            f.write(_CLEAR_REFS_RESET_PEAK)
        return "clear_refs"
    except OSError:
        return "hwm"


def _inputs(sample: np.ndarray, batches: Sequence[int]) -> dict[int, np.ndarray]:
    reps = -(-max(batches) // len(sample))
    tiled = np.concatenate([sample] * reps)
    return {b: np.ascontiguousarray(tiled[:b]) for b in batches}


def _static_batch(runner) -> int | None:
    shape = runner.input_shape
    return shape[0] if shape and isinstance(shape[0], int) else None


def _engine_input_shape(request: Mapping[str, Any]) -> tuple[int, ...]:
    """The input shape from the artifact's sidecar (every backend's build writes it), batch dimension dropped.

    Read before loading so the inputs are not counted in the engine's memory; read_sidecar's UserErrors name a
    missing artifact or one built for another backend."""
    facts = read_sidecar(Path(request["artifact"]), request["backend"])
    return tuple(int(d) for d in facts["input"]["shape"][1:])


def _import_onnx_reader() -> None:
    """The onnx package, where installed: a module import is the process's one-off cost, not the engine's."""
    installed("lkca_runtime.onnx_io")  # None on a device without the onnx package: loads then trust the sidecar


def child_main(request: Mapping[str, Any]) -> dict[str, Any]:
    """Steps 1-5 of the module docstring; returns {"cost": EngineCost dict, "e2e": dict | None, "torch_imported"}."""
    before_import = _rss_kb()
    backend = get_backend(request["backend"])  # UserError when not installed; imports the library
    _import_onnx_reader()
    library_kb = _rss_kb() - before_import
    if request.get("sample"):
        sample = np.load(request["sample"], allow_pickle=False)
    else:
        shape = _engine_input_shape(request)
        sample = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    inputs = _inputs(sample, [1, *request["batches"]])

    method = _reset_peak()
    baseline = _rss_kb()
    started = time.perf_counter()
    runner = backend.load(
        Path(request["artifact"]), device=request.get("device"), threads=request.get("threads"),
        **request.get("options", {}),
    )
    loaded = time.perf_counter()
    static = _static_batch(runner)
    batches = [static] if static else list(request["batches"])
    if static:
        inputs = _inputs(sample, [static])
    runner(inputs[static or 1])
    first = time.perf_counter()
    for b in batches:
        for _ in range(request["runs"]):
            runner(inputs[b])
    peak = _peak_kb()
    cost = EngineCost(
        load_ms=(loaded - started) * 1e3,
        first_result_ms=(first - started) * 1e3,
        peak_mb=max(peak - baseline, 0) / _MIB,
        process_peak_mb=peak / _MIB,
        library_mb=library_kb / _MIB,
        batches=tuple(batches),
        runs=request["runs"],
        peak_method=method,
    )
    e2e = _child_e2e(runner, request["e2e"]) if request.get("e2e") else None
    runner.close()
    if "torch" in sys.modules:  # the figures would then include torch's memory, which a device never pays
        raise RuntimeError("the cost child imported torch")
    return {"cost": cost.to_dict(), "e2e": e2e, "torch_imported": "torch" in sys.modules}


def _child_e2e(runner, spec: Mapping[str, Any]) -> dict[str, Any]:
    predictor = Predictor.around(
        runner, PreprocessSpec.from_dict(spec["spec"]), spec["task"], class_names=spec.get("class_names")
    )
    timing = {k: spec[k] for k in ("warmup", "iters", "budget_s", "min_iters") if k in spec}
    return measure_e2e(predictor, [Path(f) for f in spec["files"]], **timing).to_dict()


def _main(argv: Sequence[str]) -> int:
    try:
        result = child_main(json.loads(argv[0]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
