"""Deploy bundles: a directory of artifacts (ONNX, OpenVINO IR, TensorRT files, reports) with a manifest.

``manifest.json`` names the model, its preprocessing and class names, every file with its sha256, and the engines
the runtime may load. A bundle is built in a temporary directory beside the target and renamed into place, so a
failure or Ctrl-C leaves no half bundle, and the manifest is written last. Torch-free: the runtime reads bundles.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from .backends.base import PRECISIONS, sidecar_path
from .backends.registry import BACKENDS
from .data.spec import PreprocessSpec
from .errors import UserError
from .fsutil import atomic_dir, sha256_file
from .tasks.names import TASKS

FORMAT = "lkca-deploy-bundle/1"
MANIFEST = "manifest.json"
ARTIFACT_KINDS = (
    "onnx",
    "openvino-ir",
    "openvino-weights",
    "tensorrt-engine",
    "calibration-cache",
    "trtexec",
    "sidecar",
    "golden",
    "report",
    "checkpoint",
)
# The kind of the weights file a sidecar names beside its artifact (OpenVINO: model.xml -> model.bin).
_WEIGHTS_KIND = {"openvino-ir": "openvino-weights"}


# ---------------------------------------------------------------- the manifest


@dataclass
class Manifest:
    model: dict[str, Any]  # name, task, config
    preprocessing: dict[str, Any]  # PreprocessSpec.to_dict()
    artifacts: list[dict[str, Any]]  # path, sha256, size_bytes, kind
    engines: list[dict[str, Any]]  # backend, precision, lowering, quantizer, artifact, passed, p50_ms, files
    class_names: list[str] = field(default_factory=list)
    input_shape: list[int] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    created_utc: str = ""
    toolkit_version: str = ""
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know, kept as read

    @property
    def task(self) -> str:
        return self.model.get("task") or self.preprocessing.get("task", "classification")

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocessing)

    def artifact(self, rel: str) -> dict[str, Any] | None:
        return next((a for a in self.artifacts if a["path"] == rel), None)

    def to_dict(self) -> dict[str, Any]:
        known = {
            "format": self.format,
            "created_utc": self.created_utc,
            "toolkit_version": self.toolkit_version,
            "model": self.model,
            "preprocessing": self.preprocessing,
            "class_names": self.class_names,
            "input_shape": self.input_shape,
            "artifacts": self.artifacts,
            "engines": self.engines,
            "versions": self.versions,
        }
        return {**self.extra, **known}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            **{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names}
        )


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """The bundle's manifest, checked for format and for paths that stay inside the bundle."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise UserError(f"bundle directory {bundle_dir} does not exist")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{bundle_dir} is not a bundle: it has no {MANIFEST} (build one with lkca-deploy pipeline)"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({e}): rebuild the bundle") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise UserError(f"{path} has format {found!r}, this toolkit reads {FORMAT!r}: rebuild the bundle")
    try:
        return _checked(Manifest.from_dict(doc))
    except UserError as e:
        raise UserError(f"{path} is corrupt: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path} is corrupt (bad or missing field {e}): rebuild the bundle") from None


def _checked(manifest: Manifest) -> Manifest:
    """Raise on fields the runtime relies on; normalise every path (and refuse those leaving the bundle)."""
    manifest.spec  # noqa: B018  (a preprocessing spec the runtime can build)
    for entry in manifest.artifacts:
        entry["path"] = safe_relpath(entry["path"], UserError)
        if not isinstance(entry["sha256"], str):
            raise TypeError("sha256")
    for engine in manifest.engines:
        engine["artifact"] = safe_relpath(engine["artifact"], UserError)
        if engine["backend"] not in BACKENDS or engine["precision"] not in PRECISIONS:
            raise ValueError(f"engine {engine['backend']}/{engine['precision']}")
    return manifest


def verify_artifacts(bundle_dir: str | Path, manifest: Manifest, paths: list[str] | None = None) -> None:
    """Check that every listed file (or just `paths`) is present and unchanged (size, then sha256)."""
    bundle_dir = Path(bundle_dir)
    for rel in manifest_paths(manifest) if paths is None else paths:
        entry = manifest.artifact(rel)
        if entry is None:
            raise UserError(f"bundle {bundle_dir} lists no file {rel} in its {MANIFEST}: rebuild the bundle")
        file = inside(bundle_dir, rel)
        if not file.is_file():
            raise UserError(f"bundle file {rel} is missing from {bundle_dir}: rebuild the bundle")
        size = entry.get("size_bytes")
        if (size is not None and file.stat().st_size != size) or sha256_file(file) != entry["sha256"]:
            raise UserError(f"bundle file {rel} was altered (sha256 mismatch): rebuild the bundle")


def verify_whole(bundle_dir: str | Path, manifest: Manifest) -> None:
    """The whole bundle as it was written, or a UserError naming the first difference: no file the manifest does
    not list (an engine could read it unchecked, e.g. an ONNX's external data), every listed file present at its
    size (cheap, all first), then every sha256. Every loader (Predictor, parity, bench) serves a bundle whole or
    not at all: a changed report or a stray file means someone changed the bundle, whatever the engine reads."""
    bundle_dir = Path(bundle_dir)
    listed = set(manifest_paths(manifest))
    for root, folders, files in os.walk(bundle_dir):
        for name in [*files, *(f for f in folders if os.path.islink(os.path.join(root, f)))]:
            rel = Path(root, name).relative_to(bundle_dir).as_posix()
            if rel != MANIFEST and rel not in listed:
                raise UserError(f"bundle file {rel} is not listed in {bundle_dir / MANIFEST}: an engine could read "
                                "it unchecked; remove it or rebuild the bundle")
    for entry in manifest.artifacts:
        file = inside(bundle_dir, entry["path"])
        if not file.is_file():
            raise UserError(f"bundle file {entry['path']} is missing from {bundle_dir}: rebuild the bundle")
        if entry.get("size_bytes") is not None and file.stat().st_size != entry["size_bytes"]:
            raise UserError(f"bundle file {entry['path']} was altered (size differs): rebuild the bundle")
    verify_artifacts(bundle_dir, manifest)


def check_engine_precision(engine: dict[str, Any], computed: str | None) -> None:
    """Refuse an engine whose artifact computes in another precision than the manifest says (files swapped)."""
    if computed is not None and computed != engine["precision"]:
        raise UserError(f"bundle engine {engine['artifact']} is listed as {engine['precision']} but its artifact "
                        f"computes in {computed}: rebuild the bundle")


def manifest_paths(manifest: Manifest) -> list[str]:
    return [a["path"] for a in manifest.artifacts]


def engine_files(manifest: Manifest, engine: dict[str, Any]) -> list[str]:
    """What loading `engine` reads: its artifact, the companions recorded with it, and its sidecar if listed."""
    artifact = engine["artifact"]
    files = [artifact, *engine.get("files", [])]
    sidecar = sidecar_rel(artifact)
    if manifest.artifact(sidecar) is not None:
        files.append(sidecar)
    return list(dict.fromkeys(files))


# ---------------------------------------------------------------- paths


def safe_relpath(rel: str | Path, error: type[Exception] = ValueError) -> str:
    """`rel` as a normalised POSIX path that stays inside the bundle; `error` for absolute or ../ paths."""
    text = str(rel).replace("\\", "/")
    path = PurePosixPath(text)
    if not text or path.is_absolute() or ".." in path.parts or not path.parts or text.startswith("~"):
        raise error(f"bundle path {str(rel)!r} leaves the bundle: use a relative path without '..'")
    normal = path.as_posix()
    if normal == MANIFEST:
        raise error(f"{MANIFEST} is written by the bundle itself, not registered")
    return normal


def inside(bundle_dir: Path, rel: str) -> Path:
    """The file `rel` of the bundle; UserError when a symlink leads it outside the bundle."""
    file = Path(bundle_dir) / safe_relpath(rel, UserError)
    if file.exists() and not file.resolve().is_relative_to(Path(bundle_dir).resolve()):
        raise UserError(f"bundle file {rel} links outside the bundle: rebuild the bundle")
    return file


def sidecar_rel(rel: str) -> str:
    return sidecar_path(Path(rel)).as_posix()


# ---------------------------------------------------------------- writing


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
        from . import __version__

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
        weights = json.loads(sidecar.read_text(encoding="utf-8")).get("weights")
    except (OSError, ValueError, AttributeError):
        return None
    return weights.get("file") if isinstance(weights, dict) else None
