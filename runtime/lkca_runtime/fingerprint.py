"""A machine fingerprint: the facts that decide whether an engine computes here what it computed where it was proven.

Two machines with the same fingerprint run an engine the same way, so a golden-sample check that passed on one
holds on the other (records.py keys its results by it). It holds the CPU model and the ISA flags that pick
kernels (lkca_runtime/machine.py; on aarch64 also each core design's MIDR fields and every Features name,
lkca_runtime/arm_cpu.py), the GPUs (name, compute capability, driver), the backend library's version, and on
a Jetson the L4T/JetPack release, power mode, whether clocks are locked and the DLA core count.

Everything is read from files under `root` ("/" on a real machine; tests write a tree of fixture files in the
same layout; the Jetson files: lkca_runtime/jetson.py) and from nvidia-smi. Nothing here imports torch or a backend.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from lkca_runtime.jetson import jetson_facts
from lkca_runtime.machine import library_versions, machine_facts, parse_cpuinfo

FINGERPRINT_FORMAT = 1


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(errors="replace")
    except OSError:
        return None


# ---------------------------------------------------------------- the fingerprint


def gpu_fingerprint(gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Name, compute capability and driver of each GPU (memory size and use do not change what an engine computes)."""
    return [
        {"name": g.get("name"), "compute_capability": g.get("compute_capability"), "driver": g.get("driver")}
        for g in gpus
    ]


def machine_fingerprint(
    backend: str,
    *,
    root: str | Path = "/",
    gpus: list[dict[str, Any]] | None = None,
    backend_version: str | None = None,
) -> dict[str, Any]:
    """The facts an engine of `backend` depends on here. `gpus`: nvidia-smi's rows (default: this machine's,
    asked once per process);
    `backend_version`: default the installed one from package metadata."""
    root = Path(root)
    cpu = parse_cpuinfo(_read(root, "proc/cpuinfo") or "")
    version = backend_version if backend_version is not None else library_versions().get(backend)
    return {
        "format": FINGERPRINT_FORMAT,
        "arch": platform.machine(),
        "cpu_model": cpu["cpu_model"],
        "isa_flags": cpu["isa_flags"],
        # aarch64: the core designs and every feature, so a result never crosses CPUs that differ in either
        **({"cpu_ids": cpu["cpu_ids"], "cpu_features": cpu["features"]} if "cpu_ids" in cpu else {}),
        "gpus": gpu_fingerprint(machine_facts()["gpus"] if gpus is None else gpus),
        "backend": backend,
        "backend_version": version,
        "jetson": jetson_facts(root),
    }


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    """A short stable name for a fingerprint: the first 16 hex digits of the sha256 of its canonical JSON."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
