"""Where a device keeps what it proved and built for a bundle: golden-check results and TensorRT engines.

Both are keyed: a check result by the engine's file hash and the machine fingerprint (fingerprint.py), a device-
built TensorRT engine by GPU, compute capability, TensorRT version, driver and what it was built from. An entry
whose stored facts differ from the facts asked for is never loaded; a corrupt or partly missing entry counts as
absent. The cache lives beside the bundle (BUNDLE.device-cache/, never inside it: a bundle is served only whole,
with no file its manifest does not list) and, where that folder cannot be written (a read-only mount, another
user's files), in the user's cache directory under the bundle's identity (the sha256 of its manifest). Lookups
read both places; writes go to the first that takes them, atomically.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lkca_runtime.errors import UserError
from lkca_runtime.fingerprint import fingerprint_key
from lkca_runtime.fsutil import atomic_copy, atomic_dir, atomic_write_text, json_loads, sha256_file

CACHE_FORMAT = 1
CACHE_SUFFIX = ".device-cache"  # BUNDLE.device-cache beside BUNDLE
CACHE_ENV = "LKCA_DEPLOY_CACHE"  # overrides the user cache directory
_ENTRY = "entry.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def user_cache_root() -> Path:
    """$LKCA_DEPLOY_CACHE, else $XDG_CACHE_HOME/lkca-deploy, else ~/.cache/lkca-deploy."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lkca-deploy"


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder` (made if needed): tried, since root passes os.access on
    read-only modes and a read-only mount is only known by trying."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json_loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON (tuples and lists alike, key order ignored)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def beside_bundle(bundle_dir: str | Path) -> Path:
    """BUNDLE.device-cache, the folder beside the bundle."""
    bundle_dir = Path(bundle_dir).resolve()
    return bundle_dir.with_name(bundle_dir.name + CACHE_SUFFIX)


def safe_name(text: str) -> str:
    """A file-name-safe form of an engine name ('onnxruntime/int8-cpu' -> 'onnxruntime-int8-cpu')."""
    return _UNSAFE.sub("-", text).strip("-.") or "engine"  # never "." or "..": a name, not a path


class DeviceCache:
    """The cache of one bundle: `DeviceCache(bundle_dir)`; `user_root` overrides user_cache_root()."""

    def __init__(self, bundle_dir: str | Path, *, user_root: str | Path | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.bundle_id = sha256_file(self.bundle_dir / "manifest.json")[:16]
        self.places = [
            beside_bundle(self.bundle_dir),
            Path(user_root if user_root is not None else user_cache_root()) / self.bundle_id,
        ]
        self._write_place: Path | None = None

    def write_place(self) -> Path:
        """The first place that takes files (beside the bundle, else the user cache)."""
        if self._write_place is None:
            place = next((p for p in self.places if _writable(p)), None)
            if place is None:

                raise UserError(
                    f"cannot write a device cache beside {self.bundle_dir} nor in {self.places[-1]}: "
                    f"set {CACHE_ENV} to a writable directory"
                )
            self._write_place = place
        return self._write_place

    # -- golden-check results, keyed by engine and machine fingerprint

    def _result_path(self, place: Path, engine_id: str, fingerprint: dict[str, Any]) -> Path:
        return place / "verify" / safe_name(engine_id) / f"{fingerprint_key(fingerprint)}.json"

    def load_result(self, engine_id: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        """The check recorded for this engine on a machine with exactly this fingerprint, or None."""
        for place in self.places:
            doc = _read_json(self._result_path(place, engine_id, fingerprint))
            if (
                doc is not None
                and doc.get("format") == CACHE_FORMAT
                and doc.get("engine") == engine_id
                and _same(doc.get("fingerprint"), fingerprint)
                and isinstance(doc.get("result"), dict)
            ):
                return doc
        return None

    def record_result(self, engine_id: str, fingerprint: dict[str, Any], result: dict[str, Any]) -> Path:
        """Record a check (passed or not) for this engine and fingerprint; returns the file."""
        doc = {
            "format": CACHE_FORMAT,
            "engine": engine_id,
            "key": fingerprint_key(fingerprint),
            "fingerprint": fingerprint,
            "checked_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "result": result,
        }
        path = self._result_path(self.write_place(), engine_id, fingerprint)
        atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")
        return path

    # -- device-built engines, keyed by the facts an engine depends on

    def _engine_dir(self, place: Path, name: str, facts: dict[str, Any]) -> Path:
        return place / "engines" / safe_name(name) / fingerprint_key(facts)

    def find_engine(self, name: str, facts: dict[str, Any]) -> Path | None:
        """The folder of a cached engine built with exactly these facts, every file intact; else None."""
        for place in self.places:
            folder = self._engine_dir(place, name, facts)
            entry = _read_json(folder / _ENTRY)
            if entry is None or entry.get("format") != CACHE_FORMAT or not _same(entry.get("facts"), facts):
                continue
            files = entry.get("files")
            if isinstance(files, dict) and files and all(
                (folder / f).is_file() and sha256_file(folder / f) == digest for f, digest in files.items()
            ):
                return folder
        return None

    def store_engine(
        self, name: str, facts: dict[str, Any], files: list[Path], extra: dict[str, Any] | None = None
    ) -> Path:
        """Copy `files` (the engine and its sidecar) into the folder for `facts`, entry last; returns the folder.
        The folder appears whole or not at all."""
        target = self._engine_dir(self.write_place(), name, facts)
        with atomic_dir(target) as tmp:
            digests = {}
            for src in map(Path, files):
                atomic_copy(src, tmp / src.name)
                digests[src.name] = sha256_file(tmp / src.name)
            entry = {"format": CACHE_FORMAT, "name": name, "facts": facts, "files": digests, **(extra or {})}
            atomic_write_text(tmp / _ENTRY, json.dumps(entry, indent=2, default=str) + "\n")
        return target

    def entry(self, folder: Path) -> dict[str, Any]:
        return _read_json(Path(folder) / _ENTRY) or {}
