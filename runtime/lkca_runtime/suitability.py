"""Whether this machine can run an engine of a bundle, decided before anything is loaded.

Per engine, in order: is its backend installed (registry.backend_status); can this machine compute it as it was
built, or why not (the backend loader's `refusal`: a precision whose arithmetic the CPU lacks, e.g. OpenVINO bf16
without AVX512_BF16/AMX, which is every Arm CPU); and did it already pass or fail its golden check here (the
first-use record under this machine's fingerprint, records.py). `verify --all` lists refused engines with the
reason; the Predictor's automatic choice considers only engines that passed here or that this machine can run
(checked on first use), and says in one line which it skipped and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lkca_runtime.backends.registry import backend_status, get_loader
from lkca_runtime.bundle import Manifest, inside
from lkca_runtime.fingerprint import machine_fingerprint
from lkca_runtime.records import DeviceCache
from lkca_runtime.verify_engine import engine_id


def refusal(bundle_dir: str | Path, manifest: Manifest, engine: dict[str, Any]) -> str | None:
    """Why this machine cannot run the engine (one line), or None. The backend must be installed."""
    check = getattr(get_loader(engine["backend"]), "refusal", None)
    return None if check is None else check(inside(Path(bundle_dir), engine["artifact"]))


def recorded_here(bundle_dir: str | Path, manifest: Manifest, engine: dict[str, Any]) -> dict[str, Any] | None:
    """The golden check recorded for this engine on a machine with this fingerprint (passed or not), or None."""
    doc = DeviceCache(bundle_dir).load_result(engine_id(manifest, engine), machine_fingerprint(engine["backend"]))
    return None if doc is None else doc["result"]


def unsuitable(bundle_dir: str | Path, manifest: Manifest, engine: dict[str, Any]) -> str | None:
    """Why the automatic choice must pass this engine over here, or None: this machine refuses it, its first-use
    check failed here, or it raised while being asked. (A backend not installed is the choice's own business.)"""
    if not backend_status(engine["backend"])[0]:
        return None
    try:
        why = refusal(bundle_dir, manifest, engine)
        if why is not None:
            return f"refused here: {why}"
        recorded = recorded_here(bundle_dir, manifest, engine)
    except Exception as e:  # noqa: BLE001 -- a broken engine is passed over, not fatal to the choice
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    if recorded is not None and not recorded.get("passed"):
        return f"failed its golden check here: {'; '.join(recorded.get('failures') or ['see lkca-runtime verify'])}"
    return None
