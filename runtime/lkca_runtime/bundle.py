"""Deploy bundles: a directory of artifacts (ONNX, OpenVINO IR, TensorRT files, reports) with a manifest.

``manifest.json`` names the model, its preprocessing and class names, every file with its sha256, and the engines
the runtime may load. A bundle is built in a temporary directory beside the target and renamed into place, so a
failure or Ctrl-C leaves no half bundle, and the manifest is written last. Torch-free: the runtime reads bundles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from lkca_runtime.backends.base import PRECISIONS, sidecar_path
from lkca_runtime.backends.registry import BACKENDS
from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import json_loads, sha256_file
from lkca_runtime.spec import PreprocessSpec

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
    "readme",
)


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


def engine_name(engine: Mapping[str, Any]) -> str:
    """'onnxruntime/int8-cpu': backend, precision and INT8 flavour (`quantizer`), an engine's name everywhere and its
    folder in a bundle."""
    return f"{engine['backend']}/{recipe_name(engine)}"


def recipe_name(engine: Mapping[str, Any]) -> str:
    """'int8-cpu': precision and INT8 flavour, an engine's name within its backend."""
    quantizer = engine.get("quantizer")
    return f"{engine['precision']}{'-' + quantizer if quantizer else ''}"


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
        doc = json_loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
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
    try:
        manifest.spec  # noqa: B018  (every preprocessing value checked: PreprocessSpec.__post_init__)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"preprocessing: {e}") from None
    seen: set[str] = set()
    for entry in manifest.artifacts:
        entry["path"] = safe_relpath(entry["path"], UserError)
        # A file listed twice would have only its first entry's hash checked (Manifest.artifact finds the first).
        if entry["path"] in seen:
            raise UserError(f"it lists {entry['path']} twice")
        seen.add(entry["path"])
        digest, size = entry["sha256"], entry.get("size_bytes")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise UserError(f"the sha256 of {entry['path']} is {digest!r}, not 64 hex digits")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise UserError(f"the size_bytes of {entry['path']} is {size!r}, not a byte count")
        if entry.get("kind") not in ARTIFACT_KINDS:
            raise UserError(f"the kind of {entry['path']} is {entry.get('kind')!r}, not a bundle file kind")
    engines = set()
    for engine in manifest.engines:
        engine["artifact"] = safe_relpath(engine["artifact"], UserError)
        if engine["backend"] not in BACKENDS or engine["precision"] not in PRECISIONS:
            raise ValueError(f"engine {engine['backend']}/{engine['precision']}")
        for rel in [engine["artifact"], *engine.get("files", [])]:
            if safe_relpath(rel, UserError) not in seen:
                raise UserError(f"engine {engine['backend']}/{engine['precision']} reads {rel}, which it does not "
                                "list with a hash")
        key = (engine["backend"], engine["precision"], engine.get("lowering"), engine.get("quantizer"),
               engine["artifact"])
        if key in engines:
            raise UserError(f"it lists the engine {engine['backend']}/{engine['precision']} ({engine['artifact']}) "
                            "twice")
        engines.add(key)
    return manifest


def require_hashes(bundle_dir: str | Path, manifest: Manifest, paths: list[str] | None = None) -> None:
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


def require_whole(bundle_dir: str | Path, manifest: Manifest) -> None:
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
    require_hashes(bundle_dir, manifest)


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


