"""Writing deploy bundles: a directory of artifacts (ONNX, OpenVINO IR, TensorRT files, reports) with a manifest
of hashes, built beside its target and renamed into place. Reading and checking them is the device runtime's
(lkca_runtime.bundle).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from lkca_deploy import __version__
from lkca_runtime.backends.base import PRECISIONS, sidecar_path
from lkca_runtime.backends.registry import BACKENDS
from lkca_runtime.bundle import ARTIFACT_KINDS, MANIFEST, Manifest, safe_relpath, sidecar_rel
from lkca_runtime.fsutil import atomic_dir, json_loads, sha256_file
from lkca_runtime.spec import TASKS, PreprocessSpec

# The kind of the weights file a sidecar names beside its artifact (OpenVINO: model.xml -> model.bin).
_WEIGHTS_KIND = {"openvino-ir": "openvino-weights"}


class BundleWriter:
    """Build a bundle in a temp directory beside `out_dir`; on a clean exit hash files, write the manifest, rename.

    with BundleWriter(out, force=False) as b:
        b.set_model("lkca_vit_nano", "classification", config, spec)
        write_report(report, b.path / "reports"); b.register_dir("reports", "report")
        b.add_artifact(built_xml, "openvino", "openvino-ir")  # keeps its file name
        b.add_engine("openvino", "fp32", "openvino/model.fp32.xml", lowering="conv", passed=True, p50_ms={"1": 0.4})
    """

    def __init__(self, out_dir: str | Path, force: bool = False):
        self.target = Path(out_dir)
        self.force = force
        self.path: Path | None = None  # the temp directory, while open
        self._files: dict[str, str] = {}  # rel -> kind, in registration order
        self._engines: list[dict[str, Any]] = []
        self._model: dict[str, Any] | None = None
        self._preprocessing: dict[str, Any] = {}
        self._class_names: list[str] = []
        self._input_shape: list[int] = []
        self._versions: dict[str, Any] = {}
        self._extra: dict[str, Any] = {}
        self._atomic = None

    def __enter__(self):
        self._atomic = atomic_dir(self.target, force=self.force, marker=MANIFEST, what="bundle")
        self.path = self._atomic.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        atomic, self._atomic = self._atomic, None
        if exc_type is None:
            try:
                self._write_manifest()
            except BaseException:
                atomic.__exit__(*sys.exc_info())  # removes the temp directory
                raise
            atomic.__exit__(None, None, None)
            return False
        return atomic.__exit__(exc_type, exc, tb)  # removes the temp directory, leaves the target as it was

    # -- files

    def register(self, rel: str | Path, kind: str) -> str:
        """Record a file already written under `b.path`; returns its normalised relative path."""
        rel = safe_relpath(rel)
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; valid: {', '.join(ARTIFACT_KINDS)}")
        if not (self._require_open() / rel).is_file():
            raise ValueError(f"cannot register {rel}: no such file in the bundle being built")
        if self._files.get(rel, kind) != kind:
            raise ValueError(f"{rel} is already registered as {self._files[rel]}, not {kind}")
        self._files[rel] = kind
        return rel

    def add_file(self, src: str | Path, rel: str | Path, kind: str) -> str:
        """Copy `src` into the bundle at `rel` and register it."""
        rel = safe_relpath(rel)
        dst = self._require_open() / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        shutil.copymode(src, dst)  # a trtexec script stays executable; the bundle's one mode rule does the rest
        return self.register(rel, kind)

    def add_text(self, rel: str | Path, text: str, kind: str) -> str:
        """Write `text` into the bundle at `rel` and register it."""
        rel = safe_relpath(rel)
        dst = self._require_open() / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text)
        return self.register(rel, kind)

    def add_artifact(self, src: str | Path, rel_dir: str | Path, kind: str) -> list[str]:
        """Copy a built backend artifact into folder `rel_dir` with its sidecar and the weights file the sidecar
        names (OpenVINO's .bin). File names are kept: the sidecar and the IR refer to each other by name."""
        src, folder = Path(src), PurePosixPath(safe_relpath(rel_dir))
        rel = (folder / src.name).as_posix()
        added = [self.add_file(src, rel, kind)]
        if sidecar_path(src).is_file():
            added.append(self.add_file(sidecar_path(src), sidecar_rel(rel), "sidecar"))
            weights = _sidecar_weights(sidecar_path(src))
            if weights:
                weights_kind = _WEIGHTS_KIND.get(kind, kind)
                added.append(
                    self.add_file(src.with_name(weights), (folder / weights).as_posix(), weights_kind)
                )
        return added

    def register_dir(self, rel_dir: str | Path, kind: str) -> list[str]:
        """Register every file under `rel_dir` (already written inside), e.g. the reports folder."""
        root = self._require_open()
        base = root / safe_relpath(rel_dir)
        return [
            self.register(f.relative_to(root).as_posix(), kind)
            for f in sorted(base.rglob("*"))
            if f.is_file()
        ]

    # -- facts

    def set_model(
        self,
        name: str,
        task: str,
        config: dict[str, Any],
        preprocessing: PreprocessSpec | dict[str, Any],
        class_names: list[str] | None = None,
        input_shape: list[int] | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
        spec = (
            preprocessing
            if isinstance(preprocessing, PreprocessSpec)
            else PreprocessSpec.from_dict(preprocessing)
        )
        self._model = {"name": name, "task": task, "config": dict(config)}
        self._preprocessing = spec.to_dict()
        self._class_names = list(class_names if class_names is not None else spec.class_names)
        self._input_shape = list(input_shape if input_shape is not None else spec.input_shape)

    def add_engine(
        self,
        backend: str,
        precision: str,
        artifact: str | Path,
        *,
        lowering: str = "conv",
        quantizer: str | None = None,
        passed: bool | None = None,
        p50_ms: dict[str | int, float] | None = None,
        files: Sequence[str] = (),
        **extra: Any,
    ) -> None:
        """An engine the runtime may load. `files`: companions beyond the sidecar and its weights (found here)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self._engines.append(
            {
                "backend": backend,
                "precision": precision,
                "lowering": lowering,
                "quantizer": quantizer,
                "artifact": safe_relpath(artifact),
                "passed": passed,
                "p50_ms": {str(k): float(v) for k, v in (p50_ms or {}).items()},
                "files": [safe_relpath(f) for f in files],
                **extra,
            }
        )

    def set_versions(self, versions: dict[str, Any]) -> None:
        self._versions.update(versions)

    def set_extra(self, **fields: Any) -> None:
        """More top-level manifest fields (data set, report summary...)."""
        self._extra.update(fields)

    @property
    def engines(self) -> list[dict[str, Any]]:
        """The engines added so far (copies)."""
        return [dict(e) for e in self._engines]

    @property
    def extra(self) -> dict[str, Any]:
        """The extra manifest fields set so far (a copy)."""
        return dict(self._extra)

    # -- internals

    def _require_open(self) -> Path:
        if self.path is None:
            raise RuntimeError("BundleWriter is used outside its `with` block")
        return self.path

    def _engine_companions(self, engine: dict[str, Any]) -> list[str]:
        """Registered files that loading the engine reads: its sidecar and the weights the sidecar names."""
        artifact = engine["artifact"]
        sidecar = sidecar_rel(artifact)
        found = []
        if sidecar in self._files:
            found.append(sidecar)
            weights = _sidecar_weights(self.path / sidecar)
            if weights:
                found.append((PurePosixPath(artifact).parent / weights).as_posix())
        return [*found, *engine["files"]]

    def _check_complete(self) -> None:
        if self._model is None:
            raise ValueError("a bundle needs set_model(...) before it is closed")
        for engine in self._engines:
            for rel in [engine["artifact"], *self._engine_companions(engine)]:
                if rel not in self._files:
                    raise ValueError(
                        f"engine {engine['backend']}/{engine['precision']} needs {rel}, never registered"
                    )

    def _write_manifest(self) -> None:
        self._check_complete()
        for engine in self._engines:
            engine["files"] = list(dict.fromkeys(self._engine_companions(engine)))
        artifacts = [
            {
                "path": rel,
                "sha256": sha256_file(self.path / rel),
                "size_bytes": (self.path / rel).stat().st_size,
                "kind": kind,
            }
            for rel, kind in self._files.items()
        ]
        manifest = Manifest(
            model=self._model,
            preprocessing=self._preprocessing,
            artifacts=artifacts,
            engines=self._engines,
            class_names=self._class_names,
            input_shape=self._input_shape,
            versions=self._versions,
            created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            toolkit_version=__version__,
            extra=self._extra,
        )
        (self.path / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")


def _sidecar_weights(sidecar: Path) -> str | None:
    """The weights file a sidecar names beside its artifact (OpenVINO's .bin), if any."""
    try:
        weights = json_loads(sidecar.read_text(encoding="utf-8")).get("weights")
    except (OSError, ValueError, AttributeError):
        return None
    return weights.get("file") if isinstance(weights, dict) else None
