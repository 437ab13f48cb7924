"""The build side every backend shares: the Backend interface (build + the device loader's load) and a build step.

A backend is three verbs: `build` turns an ONNX (precision already baked in) into an artifact with a JSON sidecar
beside it, `load` turns that artifact into a Runner, and a Runner maps a float32 NCHW batch to float32 logits.
`load` and the Runner live in the device runtime (lkca_runtime.backends); each toolkit backend adds `build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from lkca_runtime.backends.base import Runner


@dataclass
class BuildStep:
    """One engine build in the making: what build_engine hands a backend's prepare_build, then its build."""

    model_path: Path  # the ONNX the backend builds from (precision already baked in)
    out: Path  # the artifact to build
    precision: str
    source: Any  # the fp32 ModelProto it was baked from
    ranges: dict | None  # calibrated tensor ranges of a Q/DQ bake, else None
    device: str | None
    options: dict[str, Any]  # the backend's own build options
    provenance: dict[str, Any]
    cache_version: str | None = None  # TensorRT: the version a calibration cache is written for
    files: list[Path] = field(default_factory=list)  # written beside the artifact for the device


@dataclass(frozen=True)
class BuildResult:
    """What build_engine made: the artifact, or None with the reason when it is built on the device instead."""

    artifact: Path | None
    files: tuple[Path, ...] = ()  # other files written beside it (baked ONNX, calibration cache, scripts)
    deferred: str | None = None


@runtime_checkable
class Backend(Protocol):
    name: str
    precisions: tuple[str, ...]
    int8_flavors: tuple[str, ...]  # how INT8 is baked for this backend; the first is the default
    artifact_suffix: str
    interleaved_load_options: dict[str, Any]  # load options for engines timed in turn with others
    built_on_device: bool  # True: the baked ONNX and device files are written even where the library is missing
    def available(self) -> tuple[bool, str]: ...
    def prepare_build(self, step: BuildStep) -> BuildStep: ...

    def build(
        self,
        onnx_path: Path,
        out: Path,
        *,
        precision: str,
        calib: np.ndarray | None = None,
        device: str | None = None,
        provenance: dict[str, Any] | None = None,
        **options: Any,
    ) -> Path: ...

    def load(
        self, artifact: Path, *, device: str | None = None, threads: int | None = None, **options: Any
    ) -> Runner: ...


class BackendBase:
    """Defaults a backend module overrides where it differs."""

    interleaved_load_options: ClassVar[dict[str, Any]] = {}
    built_on_device = False

    def prepare_build(self, step: BuildStep) -> BuildStep:
        return step


