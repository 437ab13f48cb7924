"""Machine facts read from this machine, checked against /proc/cpuinfo read independently."""

import subprocess
import sys
from pathlib import Path

import pytest

from lkca_runtime.machine import ISA_FLAGS, int8_hint, isa_summary, machine_facts, parse_cpuinfo

CPUINFO = Path("/proc/cpuinfo")
needs_cpuinfo = pytest.mark.skipif(not CPUINFO.exists(), reason="no /proc/cpuinfo on this OS")


def _flags_from_cpuinfo() -> set[str]:
    for line in CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_facts_keys_present():
    facts = machine_facts()
    for key in (
        "cpu_model",
        "logical_cores",
        "physical_cores",
        "usable_cores",
        "isa_flags",
        "os",
        "kernel",
        "python",
        "gpus",
        "versions",
    ):
        assert key in facts, key
    assert facts["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert facts["usable_cores"] >= 1
    assert isinstance(facts["gpus"], list)
    assert facts["versions"]["numpy"]  # installed here
    assert set(facts["versions"]) >= {"numpy", "onnx", "onnxruntime", "openvino", "nncf", "torch"}


def test_reports_import_no_torch_backend_or_matplotlib():
    # torch may already be imported by another test in this process; check in a fresh interpreter.
    code = (
        "import sys\n"
        "from lkca_deploy.measure import latency\nfrom lkca_deploy.reports import render\nfrom lkca_runtime import metrics\n"
        "from lkca_runtime.machine import machine_facts\nmachine_facts()\n"
        "heavy = ('torch', 'onnx', 'onnxruntime', 'openvino', 'nncf', 'tensorrt', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_facts_are_copies():
    machine_facts()["isa_flags"].append("bogus")
    assert "bogus" not in machine_facts()["isa_flags"]


@needs_cpuinfo
def test_isa_summary_consistent_with_cpuinfo():
    flags = _flags_from_cpuinfo()
    facts = machine_facts()
    assert facts["isa_flags"] == [f for f in ISA_FLAGS if f in flags]
    summary = isa_summary(facts)
    assert f"{facts['usable_cores']} cores" in summary
    words = summary.replace(",", " ").replace("(", " ").replace(")", " ").split()
    no_part = summary.split("(no ", 1)[1] if "(no " in summary else ""
    assert ("avx2" in words) == ("avx2" in flags)
    assert ("avx512_vnni" in no_part) == ("avx512_vnni" not in flags)


def test_parse_cpuinfo_sample():
    flags = "flags\t\t: fpu avx2 fma avx512f avx512_vnni amx_tile amx_int8"
    text = (
        f"processor\t: 0\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t: 0\n{flags}\n\n"
        f"processor\t: 1\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t: 0\n{flags}\n\n"
        "processor\t: 2\nphysical id\t: 0\ncore id\t: 1\n"
    )
    cpu = parse_cpuinfo(text)
    assert cpu == {
        "cpu_model": "Test CPU 9000",
        "isa_flags": ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"],
        "physical_cores": 2,
    }
    facts = {"cpu_model": cpu["cpu_model"], "usable_cores": 3, "isa_flags": cpu["isa_flags"], "gpus": []}
    assert isa_summary(facts) == "Test CPU 9000, 3 cores, avx2 fma avx512f avx512_vnni amx (no avx_vnni)"
    assert "AMX" in int8_hint(facts)


def test_int8_hint_by_flags():
    base = {"cpu_model": "x", "usable_cores": 2, "gpus": []}
    assert "no VNNI or AMX" in int8_hint({**base, "isa_flags": ["avx2", "fma"]})
    assert "avx_vnni" in int8_hint({**base, "isa_flags": ["avx2", "avx_vnni"]})
    summary = isa_summary({**base, "isa_flags": ["avx2", "fma"], "gpus": [{"name": "H100", "driver": "570"}]})
    assert summary == "x, 2 cores, avx2 fma (no avx512_vnni, avx_vnni, amx); GPU H100 (driver 570)"
