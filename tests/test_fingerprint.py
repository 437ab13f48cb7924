"""The machine fingerprint, read from a tree of files the test writes in the layout of a Jetson's /etc and sysfs."""

from pathlib import Path

import pytest

from lkca_runtime.fingerprint import fingerprint_key, machine_fingerprint
from lkca_runtime.jetson import jetson_facts, jetson_summary

CPUINFO = """processor\t: 0
model name\t: ARMv8 Processor rev 1 (v8l)
flags\t\t: fp asimd evtstrm
physical id\t: 0
core id\t\t: 0
"""
X86_CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu avx2 fma f16c avx512f avx512_vnni
physical id\t: 0
core id\t\t: 0
"""
NVPMODEL_CONF = """< PARAM TYPE=FILE NAME=CPU_ONLINE >
< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=MODE_15W >
CPU_ONLINE CORE_0 1
< PM_CONFIG DEFAULT=1 >
"""
DPKG_STATUS = """Package: nvidia-l4t-core
Status: install ok installed
Version: 36.4.0-20240912212859

Package: nvidia-jetpack
Status: install ok installed
Priority: standard
Version: 6.1+b123
Description: NVIDIA Jetpack Meta Package
 continued description line: with a colon
"""
GPUS = [{"name": "Orin (nvgpu)", "compute_capability": "8.7", "driver": "540.4.0", "memory": "N/A"}]


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def jetson_tree(root: Path, *, mode: int = 0, locked: bool = True, dla: int = 2) -> Path:
    """An AGX Orin as its files show it: L4T 36.4, JetPack 6.1, two DLA cores, jetson_clocks applied or not."""
    write(root, "etc/nv_tegra_release", "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, "
                                        "EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n")
    write(root, "proc/device-tree/model", "NVIDIA Jetson AGX Orin Developer Kit\0")
    write(root, "proc/cpuinfo", CPUINFO)
    write(root, "var/lib/nvpmodel/status", f"pmode:{mode:04d} fmode:quiet\n")
    write(root, "etc/nvpmodel.conf", NVPMODEL_CONF)
    write(root, "var/lib/dpkg/status", DPKG_STATUS)
    for cpu in (0, 4, 8):
        policy = f"sys/devices/system/cpu/cpufreq/policy{cpu}"
        write(root, f"{policy}/scaling_min_freq", "2201600\n" if locked else "115200\n")
        write(root, f"{policy}/scaling_max_freq", "2201600\n")
    write(root, "sys/class/devfreq/17000000.ga10b/min_freq", "1300500000\n" if locked else "306000000\n")
    write(root, "sys/class/devfreq/17000000.ga10b/max_freq", "1300500000\n")
    write(root, "sys/class/devfreq/d0b0000.nvdec/min_freq", "115200\n")  # not the GPU: ignored
    write(root, "sys/class/devfreq/d0b0000.nvdec/max_freq", "998400\n")
    for name in ("15880000.nvdla0", "158c0000.nvdla1")[:dla]:
        (root / "sys/bus/platform/devices" / name).mkdir(parents=True)
    (root / "sys/bus/platform/devices/3100000.serial").mkdir(parents=True, exist_ok=True)
    return root


def test_jetson_facts_from_the_files(tmp_path):
    facts = jetson_facts(jetson_tree(tmp_path))
    assert facts == {
        "model": "NVIDIA Jetson AGX Orin Developer Kit",
        "l4t": "36.4.0",
        "jetpack": "6.1+b123",
        "power_mode": {"id": 0, "name": "MAXN"},
        "clocks_locked": True,
        "clocks": {"cpu_locked": True, "gpu_locked": True},
        "dla_cores": 2,
    }
    assert jetson_summary(facts) == ("NVIDIA Jetson AGX Orin Developer Kit, L4T 36.4.0, JetPack 6.1+b123, "
                                     "power mode MAXN (0), clocks locked, 2 DLA")


def test_unlocked_clocks_other_mode_and_no_dla(tmp_path):
    facts = jetson_facts(jetson_tree(tmp_path, mode=1, locked=False, dla=0))
    assert facts["power_mode"] == {"id": 1, "name": "MODE_15W"}
    assert facts["clocks_locked"] is False and facts["clocks"] == {"cpu_locked": False, "gpu_locked": False}
    assert facts["dla_cores"] == 0


def test_a_jetson_with_missing_files_says_unknown(tmp_path):
    write(tmp_path, "etc/nv_tegra_release", "# R35 (release), REVISION: 5.0, GCID: 1, BOARD: t186ref\n")
    facts = jetson_facts(tmp_path)
    assert facts["l4t"] == "35.5.0"
    assert facts["jetpack"] is None and facts["power_mode"] is None and facts["clocks_locked"] is None
    assert "clocks unknown" in jetson_summary(facts) and "power mode unknown" in jetson_summary(facts)


def test_not_a_jetson(tmp_path):
    write(tmp_path, "proc/cpuinfo", X86_CPUINFO)
    assert jetson_facts(tmp_path) is None
    assert jetson_summary(None) == ""


def test_fingerprint_holds_cpu_gpu_backend_and_jetson(tmp_path):
    fp = machine_fingerprint("tensorrt", root=jetson_tree(tmp_path), gpus=GPUS, backend_version="10.3.0")
    assert fp["cpu_model"] == "ARMv8 Processor rev 1 (v8l)"
    assert fp["gpus"] == [{"name": "Orin (nvgpu)", "compute_capability": "8.7", "driver": "540.4.0"}]
    assert fp["backend"] == "tensorrt" and fp["backend_version"] == "10.3.0"
    assert fp["jetson"]["l4t"] == "36.4.0"


@pytest.mark.parametrize("change", ["power mode", "clocks", "backend version", "isa", "gpu driver"])
def test_every_fact_changes_the_key(tmp_path, change):
    def key(root, **kw):
        args = {"gpus": GPUS, "backend_version": "10.3.0", **kw}
        return fingerprint_key(machine_fingerprint("tensorrt", root=root, **args))

    base = key(jetson_tree(tmp_path / "a"))
    assert key(jetson_tree(tmp_path / "same")) == base  # the same files, the same key
    other = tmp_path / "b"
    if change == "power mode":
        jetson_tree(other, mode=1)
    elif change == "clocks":
        jetson_tree(other, locked=False)
    else:
        jetson_tree(other)
    kw = {}
    if change == "backend version":
        kw["backend_version"] = "10.7.0"
    if change == "isa":
        write(other, "proc/cpuinfo", X86_CPUINFO)
    if change == "gpu driver":
        kw["gpus"] = [{**GPUS[0], "driver": "540.5.0"}]
    assert key(other, **kw) != base


def test_this_machine_fingerprint_is_stable():
    first = machine_fingerprint("onnxruntime")
    assert first["backend_version"]  # installed here
    assert first["isa_flags"] == machine_fingerprint("onnxruntime")["isa_flags"]
    assert fingerprint_key(first) == fingerprint_key(machine_fingerprint("onnxruntime"))
    assert fingerprint_key(first) != fingerprint_key(machine_fingerprint("openvino"))
