"""What every backend shares: the Backend and Runner interfaces, JSON sidecars, ONNX facts.

A backend is three verbs: `build` turns an ONNX (precision already baked in) into an artifact with a JSON sidecar
beside it, `load` turns that artifact into a Runner, and a Runner maps a float32 NCHW batch to float32 logits.
Callers (CLI, reports, predictor) only ever see these names; which module serves them is the registry's business.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import atomic_write_text, json_loads, sha256_file

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
SIDECAR_FORMAT = 1


@runtime_checkable
class Runner(Protocol):
    """A loaded model: float32 NCHW in, float32 out. A context manager: `with backend.load(...) as runner:`."""

    input_name: str
    input_shape: tuple[int | None, ...]  # None where a dimension is dynamic (usually the batch)
    max_batch: int | None  # largest batch it accepts; None for any
    info: dict[str, Any]  # how it runs (providers, threads, precision hint): reports print it

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The first output (the logits)."""

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name (parity localisation reads the block outputs)."""
    def close(self) -> None: ...
    def __enter__(self): ...
    def __exit__(self, *exc: object) -> None: ...


class RunnerBase:
    """The context-manager half of Runner, for every backend's runner."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- sidecars


def sidecar_path(artifact: Path) -> Path:
    return Path(f"{artifact}.json")


def read_sidecar(artifact: Path, backend: str) -> dict[str, Any]:
    """The sidecar of `artifact`, checked to belong to `backend` and (by hash) to this very artifact file."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise UserError(
            f"{artifact} does not exist: build it first (lkca-deploy build ... --backend {backend})"
        )
    path = sidecar_path(artifact)
    try:
        facts = json_loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{artifact} has no sidecar {path.name}: rebuild it with lkca-deploy build") from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON: rebuild {artifact.name} with lkca-deploy build") from None
    if not isinstance(facts, dict) or facts.get("backend") != backend:
        found = facts.get("backend") if isinstance(facts, dict) else None
        raise UserError(
            f"{artifact} was built for backend {found!r}, not {backend!r}: load it with that backend"
        )
    if facts.get("artifact_sha256") != sha256_file(artifact):
        raise UserError(
            f"{artifact} does not match its sidecar {path.name} (replaced or rebuilt halfway): rebuild it"
        )
    return facts


# ---------------------------------------------------------------- argument checks


def check_precision(precision: str, supported: tuple[str, ...], backend: str) -> str:
    if precision not in supported:
        raise UserError(
            f"precision {precision!r} is not offered by {backend}: choose one of {', '.join(supported)}"
        )
    return precision


def check_options(options: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise UserError(f"unknown option(s) {', '.join(unknown)} for {what}: valid ones are {valid}")


def check_threads(threads: int | None) -> None:
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UserError(f"threads must be a positive integer, got {threads!r}")


# ---------------------------------------------------------------- ONNX facts


# ---------------------------------------------------------------- runner helpers


def as_model_input(
    x: np.ndarray, input_shape: tuple[int | None, ...], max_batch: int | None = None
) -> np.ndarray:
    """`x` as a C-contiguous float32 batch, checked against the model's input shape."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != len(input_shape):
        raise UserError(f"input has shape {x.shape}, the model takes {_shape_text(input_shape)}")
    for got, want in zip(x.shape, input_shape):
        if want is not None and got != want:
            raise UserError(f"input has shape {x.shape}, the model takes {_shape_text(input_shape)}")
    if max_batch is not None and x.shape[0] > max_batch:
        raise UserError(
            f"batch {x.shape[0]} exceeds this engine's largest batch {max_batch}: split the batch"
        )
    return x


def static_batch(runner: Runner) -> int | None:
    """The batch size an engine was built for, or None when its batch axis is dynamic."""
    shape = runner.input_shape
    return shape[0] if shape and isinstance(shape[0], int) else None


def run_batched(
    run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *, step: int, static: int | None = None
) -> np.ndarray:
    """`run` over `x` in batches of `step`; for an engine built for a static batch `static`, the last batch is
    padded with zeros to that size and the padding's outputs are dropped. An engine that returns fewer rows than
    it was given raises RuntimeError: a backend can fail that way without an exception of its own (OpenVINO's
    fp16 MatMul on Arm, docs/device-proof.md)."""
    outputs = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        n = len(chunk)
        if static and n < static:
            chunk = np.concatenate([chunk, np.zeros((static - n, *chunk.shape[1:]), chunk.dtype)])
        out = run(np.ascontiguousarray(chunk))
        if len(out) < n:
            raise RuntimeError(f"the engine returned output {tuple(out.shape)} for a batch of {len(chunk)}")
        outputs.append(out[:n])
    return np.concatenate(outputs)


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def write_sidecar(
    artifact: Path,
    *,
    backend: str,
    precision: str,
    source_onnx: Path,
    library_version: str,
    device: str,
    options: dict[str, Any],
    provenance: dict[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write `<artifact>.json` after the artifact itself, so a sidecar always describes a complete artifact."""
    artifact = Path(artifact)
    facts = {
        "format": SIDECAR_FORMAT,
        "backend": backend,
        "precision": precision,
        "artifact": artifact.name,
        "artifact_sha256": sha256_file(artifact),
        "source_onnx": _portable_path(Path(source_onnx), artifact.parent),
        "source_onnx_sha256": sha256_file(source_onnx),
        "library_version": library_version,
        "device": device,
        "options": options,
        "provenance": provenance or {},
        **extra,
    }
    atomic_write_text(sidecar_path(artifact), json.dumps(facts, indent=2, sort_keys=True) + "\n")
    return sidecar_path(artifact)


def _portable_path(path: Path, base: Path) -> str:
    """Relative to the artifact's folder when it lies beside it (bundles move), else absolute."""
    path, base = path.resolve(), base.resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def load_onnx(path: Path):
    """The ModelProto at `path`, or a UserError that says why it cannot be one (one loader: onnx_io's)."""
    from lkca_runtime.onnx_io import load_onnx as load_checked

    return load_checked(path)


def input_facts(model) -> dict[str, Any]:
    """The model input as the sidecar records it."""
    from lkca_runtime.onnx_io import input_spec

    return input_spec(model).as_dict()


def onnx_precision(model) -> str:
    """What the graph computes in: 'int8' when it holds Q/DQ nodes, 'fp16' when float16 tensors, else 'fp32'."""
    from onnx import TensorProto

    nodes = list(_all_nodes(model.graph))
    if any(node.op_type in QDQ_OPS for node in nodes):
        return "int8"
    fp16 = TensorProto.FLOAT16
    if any(init.data_type == fp16 for init in model.graph.initializer):
        return "fp16"
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    if any(v.type.tensor_type.elem_type == fp16 for v in values):
        return "fp16"
    for node in nodes:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
            return "fp16"
    return "fp32"


def _all_nodes(graph) -> Iterator:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                yield from _all_nodes(sub)


def require_onnx_precision(model, path: Path, precision: str, accepted: tuple[str, ...]) -> str:
    """Refuse an ONNX whose content does not carry `precision` (precision lives in the ONNX, not in a flag)."""
    found = onnx_precision(model)
    if found not in accepted:
        raise UserError(
            f"{path} computes in {found}, not {precision}: bake the precision first "
            f"(build_engine / lkca-deploy build --precision {precision})"
        )
    return found
