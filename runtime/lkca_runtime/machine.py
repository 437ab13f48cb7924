"""Facts about the machine, printed beside every timing: the same code runs on AVX2-only and AVX-512/VNNI CPUs, and
whether INT8 or BF16 pays depends on which (docs/backend-limits.md).

Nothing here imports torch or a backend: library versions come from installed package metadata.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from lkca_runtime.arm_cpu import is_arm_cpuinfo, parse_arm_cpuinfo
from lkca_runtime.jetson import jetson_facts, jetson_summary

ISA_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "avx512_fp16",
    "amx_fp16",
)
# Flags whose absence the one-line summary names: these decide whether INT8 (and BF16) can be fast on the CPU.
_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx")
_ARM_NAMED_FLAGS = ("fphp", "asimddp", "i8mm", "bf16")  # aarch64: fp16 math, int8 dot/matrix, bf16
# Arithmetic in a reduced precision, not just conversion (x86's f16c converts only).
FP16_MATH_FLAGS = ("avx512_fp16", "amx_fp16", "fphp")
BF16_MATH_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")

# Distribution names to try per library (the GPU wheels of some have their own names).
_DISTRIBUTIONS = {
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "openvino": ("openvino",),
    "nncf": ("nncf",),
    "torch": ("torch",),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
    "matplotlib": ("matplotlib",),
}
_NVIDIA_SMI_TIMEOUT_S = 5.0


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """CPU model, ISA flags of interest and physical core count from /proc/cpuinfo text. The aarch64 layout
    (arm_cpu.py) adds cpu_ids (each core design's MIDR fields) and features (every Features name)."""
    if is_arm_cpuinfo(text):
        arm = parse_arm_cpuinfo(text)
        return {"cpu_model": arm["cpu_model"], "isa_flags": arm["isa_flags"], "physical_cores": arm["logical_cores"],
                "cpu_ids": arm["cpu_ids"], "features": arm["features"]}
    model, flags, cores = "", set(), set()
    physical_id = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not model:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    return {
        "cpu_model": model,
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "physical_cores": len(cores) or None,
    }


def _usable_cores() -> int:
    """Cores this process may run on (a container's CPU set), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _memory_gib() -> float | None:
    for line in _read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def gpus() -> list[dict[str, str]]:
    """[{name, driver, memory, compute_capability}] from nvidia-smi; empty when there is none or it fails.

    Drivers older than compute_cap's field refuse the whole query: asked again without it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    for fields in (("name", "driver", "memory", "compute_capability"), ("name", "driver", "memory")):
        names = {"name": "name", "driver": "driver_version", "memory": "memory.total", "compute_capability":
                 "compute_cap"}
        query = [smi, f"--query-gpu={','.join(names[f] for f in fields)}", "--format=csv,noheader"]
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S, check=True)
        except (OSError, subprocess.SubprocessError):
            continue
        rows = [[field.strip() for field in line.split(",")] for line in out.stdout.splitlines() if line.strip()]
        return [dict(zip(fields, row)) for row in rows]
    return []


def library_versions() -> dict[str, str | None]:
    """Installed versions read from package metadata (never imports the library); None when not installed."""
    versions: dict[str, str | None] = {}
    for library, distributions in _DISTRIBUTIONS.items():
        versions[library] = None
        for dist in distributions:
            try:
                versions[library] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


@functools.lru_cache(maxsize=1)
def _collect_facts() -> dict[str, Any]:
    cpu = parse_cpuinfo(_read_text("/proc/cpuinfo"))
    return {
        "cpu_model": cpu["cpu_model"] or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": cpu["physical_cores"],
        "usable_cores": _usable_cores(),
        "isa_flags": cpu["isa_flags"],
        "memory_gib": _memory_gib(),
        "os": platform.system(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gpus": gpus(),
        "versions": library_versions(),
        "jetson": jetson_facts(),
    }


def machine_facts() -> dict[str, Any]:
    """cpu_model, arch, logical/physical/usable cores, isa_flags, memory_gib, os, kernel, python, gpus, versions,
    jetson (L4T/JetPack, power mode, clocks locked, DLA cores; None off a Jetson: fingerprint.jetson_facts).

    Collected once per process (nvidia-smi is slow); each call returns a fresh copy.
    """
    return copy.deepcopy(_collect_facts())


def _isa_groups(flags: list[str]) -> list[str]:
    """ISA flags with the three AMX flags shown as one 'amx' (tile, int8, bf16 come together in practice)."""
    plain = [f for f in flags if not f.startswith("amx_")]
    return plain + (["amx"] if any(f.startswith("amx_") for f in flags) else [])


def isa_summary(facts: dict[str, Any] | None = None) -> str:
    """One line, e.g. 'AMD EPYC 7B13, 2 cores, avx2 fma f16c (no avx512_vnni, avx_vnni, amx)'."""
    facts = facts if facts is not None else machine_facts()
    present = _isa_groups(facts.get("isa_flags", []))
    arm = "asimd" in present
    missing = [f for f in (_ARM_NAMED_FLAGS if arm else _INT8_FLAGS) if f not in present]
    line = f"{facts.get('cpu_model') or 'unknown CPU'}, {facts.get('usable_cores')} cores"
    line += f", {' '.join(present) or 'no AVX2/AVX-512'}"
    if missing:
        line += f" (no {', '.join(missing)})"
    for gpu in facts.get("gpus", []):
        line += f"; GPU {gpu.get('name')} (driver {gpu.get('driver')})"
    if facts.get("jetson"):
        line += f"; {jetson_summary(facts['jetson'])}"
    return line


def int8_hint(facts: dict[str, Any] | None = None) -> str:
    """Whether INT8 can be expected to be faster than FP32 on this CPU, and why."""
    facts = facts if facts is not None else machine_facts()
    flags = set(facts.get("isa_flags", []))
    if "amx_int8" in flags:
        return "INT8 expected faster on CPU: AMX int8 tiles present."
    if flags & {"asimddp", "i8mm"}:
        which = " and ".join(sorted(flags & {"asimddp", "i8mm"}))
        return f"INT8 expected faster on CPU: {which} present (Arm int8 dot product / matrix multiply)."
    if flags & {"avx512_vnni", "avx_vnni"}:
        which = " and ".join(sorted(flags & {"avx512_vnni", "avx_vnni"}))
        return f"INT8 expected faster on CPU: {which} present (U8S8 QDQ for ONNX Runtime)."
    return (
        "INT8 may be no faster than FP32 on this CPU: no VNNI or AMX, nor Arm dot product "
        "(INT8 still shrinks the model; a GPU or a VNNI/AMX CPU is where it pays)."
    )


def reduced_precision_math(isa_flags: list[str]) -> dict[str, bool]:
    """{fp16, bf16}: whether the CPU computes in that precision natively (FP16_MATH_FLAGS, BF16_MATH_FLAGS)."""
    flags = set(isa_flags)
    return {"fp16": bool(flags & set(FP16_MATH_FLAGS)), "bf16": bool(flags & set(BF16_MATH_FLAGS))}
