"""The machine fingerprint on aarch64, read from small /proc and /etc trees written the way Linux and L4T write
them: core design and features are in it, so a first-use record never crosses CPUs that differ in either."""

from pathlib import Path

from lkca_runtime.fingerprint import fingerprint_key, machine_fingerprint
from lkca_runtime.machine import int8_hint, isa_summary, parse_cpuinfo, reduced_precision_math
from lkca_runtime.records import DeviceCache

N1_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
ORIN_FEATURES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                 "asimddp uscat ilrcpc flagm paca pacg")


def cpuinfo(features: str, part: str, cores: int = 2, variant: str = "0x1", model_name: str = "") -> str:
    name = f"model name\t: {model_name}\n" if model_name else ""
    return "".join(
        f"processor\t: {i}\n{name}BogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
        for i in range(cores)
    )


def tree(root: Path, text: str) -> Path:
    (root / "proc").mkdir(parents=True)
    (root / "proc/cpuinfo").write_text(text)
    return root


def key(root: Path) -> str:
    return fingerprint_key(machine_fingerprint("onnxruntime", root=root, gpus=[], backend_version="1.19.2"))


def test_aarch64_cpuinfo_names_the_core_and_its_features():
    cpu = parse_cpuinfo(cpuinfo(N1_FEATURES, "0xd0c", cores=4))
    assert cpu["cpu_model"] == "ARM Neoverse-N1" and cpu["physical_cores"] == 4
    assert cpu["isa_flags"] == ["asimd", "fphp", "asimdhp", "asimddp"]
    assert cpu["cpu_ids"] == [{"implementer": "0x41", "part": "0xd0c", "variant": "0x1", "revision": "1"}]
    assert reduced_precision_math(cpu["isa_flags"]) == {"fp16": True, "bf16": False}
    a72 = parse_cpuinfo(cpuinfo("fp asimd evtstrm crc32 cpuid", "0xd08"))
    assert a72["cpu_model"] == "ARM Cortex-A72" and a72["isa_flags"] == ["asimd"]
    facts = {"cpu_model": a72["cpu_model"], "usable_cores": 4, "isa_flags": a72["isa_flags"], "gpus": []}
    assert isa_summary(facts) == "ARM Cortex-A72, 4 cores, asimd (no fphp, asimddp, i8mm, bf16)"
    assert "may be no faster" in int8_hint(facts)
    assert "asimddp" in int8_hint({**facts, "isa_flags": cpu["isa_flags"]})


def test_big_little_and_unknown_designs_are_named():
    text = cpuinfo("fp asimd", "0xd05", cores=4) + cpuinfo("fp asimd", "0xd0b", cores=2).replace(
        "processor\t: 0", "processor\t: 4").replace("processor\t: 1", "processor\t: 5")
    assert parse_cpuinfo(text)["cpu_model"] == "ARM Cortex-A55 x4 + ARM Cortex-A76 x2"
    assert parse_cpuinfo(cpuinfo("fp asimd", "0xd99"))["cpu_model"] == "ARM part 0xd99"


def test_a_record_never_crosses_cpus_with_other_features_or_designs(tmp_path):
    n1 = tree(tmp_path / "n1", cpuinfo(N1_FEATURES, "0xd0c"))
    a72 = tree(tmp_path / "a72", cpuinfo("fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid", "0xd08"))
    n1_without_dot = tree(tmp_path / "n1b", cpuinfo(N1_FEATURES.replace(" asimddp", ""), "0xd0c"))
    other_revision = tree(tmp_path / "n1c", cpuinfo(N1_FEATURES, "0xd0c", variant="0x4"))
    keys = {key(root) for root in (n1, a72, n1_without_dot, other_revision)}
    assert len(keys) == 4
    assert key(tree(tmp_path / "n1-again", cpuinfo(N1_FEATURES, "0xd0c"))) == key(n1)

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}\n")
    cache = DeviceCache(bundle, user_root=tmp_path / "user")
    engine = "onnxruntime/fp16@0123456789abcdef"
    fp_n1 = machine_fingerprint("onnxruntime", root=n1, gpus=[], backend_version="1.19.2")
    cache.record_result(engine, fp_n1, {"passed": True})
    assert cache.load_result(engine, fp_n1)["result"] == {"passed": True}
    for root in (a72, n1_without_dot, other_revision):
        assert cache.load_result(engine, machine_fingerprint("onnxruntime", root=root, gpus=[],
                                                             backend_version="1.19.2")) is None


def test_jetson_model_and_l4t_are_in_the_aarch64_fingerprint(tmp_path):
    root = tree(tmp_path, cpuinfo(ORIN_FEATURES, "0xd42", cores=8, variant="0x0",
                                  model_name="ARMv8 Processor rev 1 (v8l)"))
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    (root / "proc/device-tree").mkdir()
    (root / "proc/device-tree/model").write_text("NVIDIA Jetson Orin NX Engineering Reference Developer Kit\0")
    fp = machine_fingerprint("tensorrt", root=root, gpus=[], backend_version="8.5.2")
    assert fp["cpu_model"] == "ARM Cortex-A78AE" and "asimddp" in fp["cpu_features"]
    assert fp["jetson"]["model"] == "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
    assert fp["jetson"]["l4t"] == "35.4.1"
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n")
    assert fingerprint_key(machine_fingerprint("tensorrt", root=root, gpus=[], backend_version="8.5.2")) \
        != fingerprint_key(fp)
