"""Jetson facts read from files: L4T and JetPack release, board, power mode (nvpmodel), whether clocks are locked
(jetson_clocks), DLA core count. Beside every latency (machine.py) and in the machine fingerprint (fingerprint.py).

Everything is read under `root` ("/" on a real machine; tests write a tree of fixture files in the same layout).
Which file holds what, and the sources: docs/device-proof.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# GPU devfreq nodes of the Jetson iGPUs (Pascal gp10b, Volta gv11b, Ampere ga10b) or anything named gpu.
_GPU_DEVFREQ = re.compile(r"gpu|gp10b|gv11b|ga10b|gb10b", re.IGNORECASE)
_DLA_DEVICE = re.compile(r"\.nvdla\d+$")
_TEGRA_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")
_POWER_MODEL = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)")


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(errors="replace")
    except OSError:
        return None


def l4t_release(root: Path) -> str | None:
    """'36.4.0' from /etc/nv_tegra_release's first line '# R36 (release), REVISION: 4.0, ...'."""
    text = _read(root, "etc/nv_tegra_release")
    match = _TEGRA_RELEASE.search(text or "")
    return f"{match.group(1)}.{match.group(2)}" if match else None


def dpkg_version(root: Path, package: str) -> str | None:
    """An installed Debian package's version from dpkg's status file (JetPack's meta-package names the release)."""
    text = _read(root, "var/lib/dpkg/status") or ""
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") == package and "installed" in fields.get("Status", "").split():
            return fields.get("Version")
    return None


def power_mode(root: Path) -> dict[str, Any] | None:
    """{id, name}: the mode nvpmodel last set (/var/lib/nvpmodel/status 'pmode:0002') named by /etc/nvpmodel.conf."""
    status = _read(root, "var/lib/nvpmodel/status")
    match = re.search(r"pmode:(\d+)", status or "")
    if match is None:
        return None
    mode = int(match.group(1))
    names = {int(i): name for i, name in _POWER_MODEL.findall(_read(root, "etc/nvpmodel.conf") or "")}
    return {"id": mode, "name": names.get(mode)}


def _min_equals_max(folder: Path, low: str, high: str) -> bool | None:
    low_text, high_text = _read(folder, low), _read(folder, high)
    if low_text is None or high_text is None:
        return None
    return low_text.strip() == high_text.strip()


def clocks_locked(root: Path) -> dict[str, bool | None]:
    """Whether CPU and GPU clocks are pinned (jetson_clocks sets each minimum frequency to its maximum).

    cpu: every cpufreq policy has scaling_min_freq == scaling_max_freq; gpu: every GPU devfreq node has
    min_freq == max_freq; all: both. None where the files are absent."""
    cpu = [
        _min_equals_max(p, "scaling_min_freq", "scaling_max_freq")
        for p in sorted((root / "sys/devices/system/cpu/cpufreq").glob("policy*"))
    ]
    gpu = [
        _min_equals_max(p, "min_freq", "max_freq")
        for p in sorted((root / "sys/class/devfreq").glob("*"))
        if _GPU_DEVFREQ.search(p.name)
    ]

    def every(values: list[bool | None]) -> bool | None:
        known = [v for v in values if v is not None]
        return all(known) if known else None

    facts = {"cpu": every(cpu), "gpu": every(gpu)}
    facts["all"] = None if None in facts.values() else facts["cpu"] and facts["gpu"]
    return facts


def dla_cores(root: Path) -> int:
    """DLA engines the kernel registered as platform devices (15880000.nvdla0, 158c0000.nvdla1 on Xavier/Orin)."""
    devices = root / "sys/bus/platform/devices"
    return sum(1 for p in devices.glob("*") if _DLA_DEVICE.search(p.name)) if devices.is_dir() else 0


def jetson_facts(root: str | Path = "/") -> dict[str, Any] | None:
    """L4T and JetPack release, board model, power mode, clocks and DLA cores; None when this is not a Jetson."""
    root = Path(root)
    l4t = l4t_release(root)
    model = (_read(root, "proc/device-tree/model") or "").strip("\0\n ")
    if l4t is None and "jetson" not in model.lower():
        return None
    locked = clocks_locked(root)
    return {
        "model": model or None,
        "l4t": l4t,
        "jetpack": dpkg_version(root, "nvidia-jetpack"),
        "power_mode": power_mode(root),
        "clocks_locked": locked["all"],
        "clocks": {"cpu_locked": locked["cpu"], "gpu_locked": locked["gpu"]},
        "dla_cores": dla_cores(root),
    }


def jetson_summary(facts: dict[str, Any] | None) -> str:
    """One line, e.g. 'Jetson AGX Orin, L4T 36.4.0, JetPack 6.1, power mode MAXN (0), clocks locked, 2 DLA'."""
    if not facts:
        return ""
    mode = facts.get("power_mode") or {}
    locked = {True: "clocks locked", False: "clocks not locked"}.get(facts.get("clocks_locked"), "clocks unknown")
    parts = [
        facts.get("model") or "Jetson",
        f"L4T {facts.get('l4t') or '?'}",
        *([f"JetPack {facts['jetpack']}"] if facts.get("jetpack") else []),
        f"power mode {mode.get('name') or '?'} ({mode.get('id', '?')})" if mode else "power mode unknown",
        locked,
        f"{facts.get('dla_cores', 0)} DLA",
    ]
    return ", ".join(parts)
