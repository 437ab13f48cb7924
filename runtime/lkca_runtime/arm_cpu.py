"""aarch64 CPUs as Linux's /proc/cpuinfo shows them.

There is no x86 'model name' or 'flags' line there: each core has 'CPU implementer' and 'CPU part' (the fields of
its MIDR_EL1 register, which name the core design), 'CPU variant' and 'CPU revision', and 'Features', the kernel's
names for the HWCAP bits. The features that decide how an engine computes: fphp/asimdhp (fp16 arithmetic: ONNX
Runtime and OpenVINO run fp16 graphs natively), asimddp (int8 dot product), i8mm (int8 matrix multiply), bf16 and
sve/sve2. A first-use golden check is recorded under them (fingerprint.py), so a result proven on a Neoverse-N1
(fp16 arithmetic, dot product) is never reused on a Cortex-A72 (neither).

Part numbers: the Linux kernel's arch/arm64/include/asm/cputype.h.
"""

from __future__ import annotations

from typing import Any

# The features of interest, in the order the one-line summaries print them.
ARM_ISA_FLAGS = ("asimd", "fphp", "asimdhp", "asimddp", "asimdfhm", "i8mm", "bf16", "sve", "sve2", "svei8mm",
                 "svebf16")
IMPLEMENTERS = {0x41: "ARM", 0x4E: "NVIDIA", 0x51: "Qualcomm", 0x61: "Apple", 0xC0: "Ampere", 0x48: "HiSilicon"}
PARTS = {
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD04): "Cortex-A35",
    (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77",
    (0x41, 0xD0E): "Cortex-A76AE",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE",  # Jetson Orin
    (0x41, 0xD44): "Cortex-X1",
    (0x41, 0xD47): "Cortex-A710",
    (0x41, 0xD48): "Cortex-X2",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4B): "Cortex-A78C",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x4E, 0x004): "Carmel",  # Jetson Xavier
}
_ID_KEYS = {"CPU implementer": "implementer", "CPU variant": "variant", "CPU part": "part",
            "CPU revision": "revision"}


def _number(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def core_name(implementer: int | None, part: int | None) -> str:
    """'ARM Neoverse-N1'; an unknown design by its numbers, 'implementer 0x41 part 0xd99'."""
    if implementer is None or part is None:
        return "unknown aarch64 CPU"
    name = PARTS.get((implementer, part))
    vendor = IMPLEMENTERS.get(implementer)
    if name is None:
        return f"{vendor or f'implementer {implementer:#x}'} part {part:#x}"
    return f"{vendor} {name}" if vendor else name


def is_arm_cpuinfo(text: str) -> bool:
    return "CPU implementer" in text


def parse_arm_cpuinfo(text: str) -> dict[str, Any]:
    """{cpu_model, cpu_ids, features, isa_flags, logical_cores} from aarch64 /proc/cpuinfo text.

    cpu_model names each distinct core design, most numerous first ('ARM Cortex-A76 x4 + ARM Cortex-A55 x4' on a
    big.LITTLE board); cpu_ids: the distinct {implementer, part, variant, revision} as hex strings; features: every
    name in the Features lines (the kernel reports the set all cores share), sorted; isa_flags: those of
    ARM_ISA_FLAGS present."""
    cores: list[dict[str, str]] = []
    features: set = set()
    current: dict[str, str] = {}
    for line in text.splitlines() + [""]:
        key, _, value = (part.strip() for part in line.partition(":"))
        if not key:  # a blank line ends a core's block
            if current:
                cores.append(current)
                current = {}
            continue
        if key == "Features":
            features.update(value.split())
        elif key in _ID_KEYS:
            current[_ID_KEYS[key]] = value.lower()
    ids: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    for core in cores:
        if "part" not in core:
            continue
        ident = {k: core.get(k, "") for k in ("implementer", "part", "variant", "revision")}
        if ident not in ids:
            ids.append(ident)
        name = core_name(_number(core.get("implementer", "")), _number(core["part"]))
        counts[name] = counts.get(name, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    if len(ordered) == 1:
        model = ordered[0][0]
    else:
        model = " + ".join(f"{name} x{count}" for name, count in ordered) or "unknown aarch64 CPU"
    return {
        "cpu_model": model,
        "cpu_ids": ids,
        "features": sorted(features),
        "isa_flags": [f for f in ARM_ISA_FLAGS if f in features],
        "logical_cores": len(cores) or None,
    }
