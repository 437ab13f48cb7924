"""tools/trt_api_check.py (and trt_bindings, trt_uses) on inputs written here: a tiny x86-64 ELF with merged string literals, a bindings wheel
made of it, and small sources that use TensorRT in the ways the backend does. No network, no TensorRT."""

from __future__ import annotations

import struct
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from lkca_runtime.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))  # scripts, not a package
import trt_api_check as check
import trt_bindings
import trt_uses

TEXT, RODATA = 0x1000, 0x2000
# As a linker leaves them: "INPUT" merged into the tail of "CONDITIONAL_INPUT", "num_errors" into "get_num_errors",
# "TF32" only inside "ALLOW_TF32" and a docstring, "errors" a tail nobody points at.
STRINGS = b"\0CONDITIONAL_INPUT\0create_network\0ALLOW_TF32\0Use TF32 here.\0get_num_errors\0"


def _tail(s: bytes) -> int:
    """The address of the literal that ends STRINGS' entry with `s`."""
    return RODATA + STRINGS.index(s + b"\0")


def _lea_rax(at: int, target: int) -> bytes:
    """lea rax, [rip + disp32] placed at address `at`: REX.W 8D /0 with ModRM 05."""
    return b"\x48\x8d\x05" + struct.pack("<i", target - (at + 7))


def tiny_elf(lea_targets: list[int], relocated: list[int]) -> bytes:
    """An ELF64 shared object with .text (one lea per target), .rodata (STRINGS), .rela.dyn and .shstrtab."""
    text = b"\x90" + b"".join(_lea_rax(TEXT + 1 + 7 * i, t) for i, t in enumerate(lea_targets)) + b"\xc3"
    rela = b"".join(struct.pack("<QQq", 0x3000 + 8 * i, 8, t) for i, t in enumerate(relocated))
    names = b"\0.text\0.rodata\0.rela.dyn\0.shstrtab\0"
    body = bytearray(0x4000)
    body[TEXT : TEXT + len(text)] = text
    body[RODATA : RODATA + len(STRINGS)] = STRINGS
    body[0x3000 : 0x3000 + len(rela)] = rela
    body[0x3800 : 0x3800 + len(names)] = names
    sections = [
        (0, 0, 0, 0, 0),
        (names.index(b".text\0"), 1, TEXT, TEXT, len(text)),
        (names.index(b".rodata\0"), 1, RODATA, RODATA, len(STRINGS)),
        (names.index(b".rela.dyn\0"), 4, 0x3000, 0x3000, len(rela)),
        (names.index(b".shstrtab\0"), 3, 0, 0x3800, len(names)),
    ]
    shoff = len(body)
    headers = b"".join(struct.pack("<IIQQQQIIQQ", n, t, 0, a, o, s, 0, 0, 1, 0) for n, t, a, o, s in sections)
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(sections), 4)
    body[: len(header)] = header
    return bytes(body) + headers


def test_a_name_counts_only_as_a_literal_of_its_own():
    names = trt_bindings.elf_identifiers(tiny_elf([_tail(b"INPUT")], [_tail(b"num_errors")]))
    assert {"CONDITIONAL_INPUT", "create_network", "ALLOW_TF32", "get_num_errors"} <= names
    assert {"INPUT", "num_errors"} <= names  # tails the code or data points at: literals merged by the linker
    assert "TF32" not in names  # inside another identifier and a docstring only
    assert "errors" not in names and "OUTPUT" not in names and "Use" not in names


def test_merged_tails_need_a_reference():
    names = trt_bindings.elf_identifiers(tiny_elf([], []))
    assert "INPUT" not in names and "num_errors" not in names
    assert "CONDITIONAL_INPUT" in names


def test_not_an_elf_is_refused():
    with pytest.raises(UserError, match="ELF"):
        trt_bindings.elf_identifiers(b"MZ not an elf" + b"\0" * 64)


def test_init_names_are_added():
    source = textwrap.dedent(
        """
        from .tensorrt import *
        __version__ = "10.3.0"
        def nptype(trt_type):
            return None
        Logger.Severity = ILogger.Severity
        """
    )
    assert {"__version__", "nptype", "Severity"} <= trt_bindings.init_identifiers(source)


def write_wheel(folder: Path, version: str, lea_tails: list[bytes], package: str = "tensorrt_cu12") -> Path:
    path = folder / f"{package}_bindings-{version}-cp311-none-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("tensorrt_bindings/tensorrt.so", tiny_elf([_tail(t) for t in lea_tails], []))
        wheel.writestr(
            "tensorrt_bindings/__init__.py", f"from .tensorrt import *\n__version__ = '{version}'\n"
        )
    return path


def test_read_wheel_gives_version_package_and_names(tmp_path):
    bindings = trt_bindings.read_wheel(write_wheel(tmp_path, "11.4.0.106", [b"INPUT"], "tensorrt_cu13"))
    assert bindings.version == "11.4.0.106" and bindings.package == "tensorrt-cu13-bindings"
    assert bindings.has("INPUT") and bindings.has("__version__") and not bindings.has("TF32")
    # TensorRT 8 (JetPack 6.0's 8.6) has no cuXX package on PyPI: tensorrt-bindings 8.6.1
    eight = trt_bindings.read_wheel(write_wheel(tmp_path, "8.6.1", [], "tensorrt"))
    assert eight.version == "8.6.1" and eight.package == trt_bindings.PACKAGES[8] == "tensorrt-bindings"


def test_read_wheel_refuses_what_is_not_a_bindings_wheel(tmp_path):
    other = tmp_path / "numpy-2.0-cp311-none-any.whl"
    other.write_bytes(b"")
    with pytest.raises(UserError, match="not a TensorRT bindings wheel"):
        trt_bindings.read_wheel(other)
    broken = tmp_path / "tensorrt_cu12_bindings-10.3.0-cp311-none-any.whl"
    broken.write_bytes(b"PK not a zip")
    with pytest.raises(UserError, match="not a readable wheel"):
        trt_bindings.read_wheel(broken)


# ---------------------------------------------------------------- the source scan

BACKEND = """
import numpy as np


def _trt():
    import tensorrt
    return tensorrt


class Runner:
    def __init__(self, engine):
        trt = _trt()
        self.engine = engine
        self.context = engine.create_execution_context()
        self.mode = engine.get_tensor_mode("x") == trt.TensorIOMode.INPUT

    def __call__(self, stream):
        return self.context.execute_async_v3(stream)


def load(data):
    trt = _trt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    return Runner(runtime.deserialize_cuda_engine(data))


def build(trt, plan):
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    for flag in plan.flags:  # trt-api: <11 uses BuilderFlag.FP16 (weak typing is TensorRT 10 only)
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.implicit:  # trt-api: <11 (implicit INT8: TensorRT 10 only)
        config.int8_calibrator = _calibrator(trt)
    mystery = plan.thing()
    return np.asarray(builder.build_serialized_network(None, config)), mystery


def _calibrator(trt):
    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)

        def read_calibration_cache(self):
            return b""

    return Calibrator()
"""


def labels(uses, kind=None):
    return {u.label for u in uses if kind is None or u.kind == kind}


def test_scan_follows_tensorrt_values_through_calls_and_self():
    uses = trt_uses.scan_source(BACKEND, "backend.py")
    assert {"trt.Runtime", "trt.Logger", "trt.Builder"} <= labels(uses, "module")
    assert {"trt.Logger.WARNING", "trt.TensorIOMode.INPUT", "trt.BuilderFlag.TF32"} <= labels(uses, "member")
    assert {
        "Runtime.deserialize_cuda_engine()",  # trt.Runtime(...) made the runtime
        "ICudaEngine.create_execution_context()",  # the engine passed into Runner.__init__
        "ICudaEngine.get_tensor_mode()",
        "IExecutionContext.execute_async_v3()",  # self.context, set in __init__, used in __call__
        "Builder.create_builder_config()",
        "IBuilderConfig.clear_flag()",
        "IBuilderConfig.set_flag()",
        "Builder.build_serialized_network()",
    } <= labels(uses, "method")
    assert "IBuilderConfig.int8_calibrator (set)" in labels(uses, "property-set")
    assert "IInt8EntropyCalibrator2.read_calibration_cache (override)" in labels(uses, "override")
    assert not any("__init__" in label or "thing" in label or "asarray" in label for label in labels(uses))


def test_scan_records_the_gates_of_each_use():
    gates = {u.label: u.gates for u in trt_uses.scan_source(BACKEND, "backend.py")}
    assert gates["IBuilderConfig.clear_flag()"] == ("hasattr",)
    assert gates["IBuilderConfig.set_flag()"] == ("<11",)
    assert gates["trt.BuilderFlag.FP16"] == ("<11",)  # declared by `uses`: getattr with a variable
    assert gates["IBuilderConfig.int8_calibrator (set)"] == ("<11",)
    # Only called from the gated line, so the calibrator's names inherit the gate.
    assert gates["trt.IInt8EntropyCalibrator2"] == ("<11",)
    assert gates["IInt8EntropyCalibrator2.read_calibration_cache (override)"] == ("<11",)
    assert gates["Builder.create_builder_config()"] == ()


def test_computed_names_without_a_declaration_are_listed_not_judged():
    source = "def f(trt, name):\n    return getattr(trt.BuilderFlag, name)\n"
    (use,) = [u for u in trt_uses.scan_source(source) if u.kind == "unattributed"]
    assert use.label == "BuilderFlag.<computed>" and not use.attributed


def test_untraced_tensorrt_results_are_unattributed():
    source = "def f(trt, net):\n    layer = net.get_layer(0)\n    return trt.Builder(None).make().precision\n"
    uses = trt_uses.scan_source(source)
    assert "?.precision" in labels(uses, "unattributed")  # make() is not in FACTORIES: its type is unknown
    assert "?.get_layer" not in labels(uses)  # `net` is never shown to be a TensorRT value: not claimed


def test_our_own_tensorrt_module_is_not_the_library():
    source = (
        "from lkca_deploy.backends import tensorrt as trt_backend\ntrt_backend.write_trtexec_script(1, 2)\n"
    )
    assert trt_uses.scan_source(source) == []


def test_a_malformed_pragma_names_its_line():
    with pytest.raises(UserError, match="x.py:2"):
        trt_uses.scan_source("def f(trt):\n    trt.Builder  # trt-api: eleven\n", "x.py")


# ---------------------------------------------------------------- verdict and the script


def bindings(version: str, *names: str):
    return trt_bindings.Bindings(version, "tensorrt-test-bindings", frozenset(names))


def test_cells_say_present_missing_gated_or_guarded():
    v10 = bindings("10.16.1.11", "Builder", "int8_calibrator", "clear_flag")
    v11 = bindings("11.4.0.106", "Builder")
    plain = trt_uses.Use("IBuilderConfig", "clear_flag", "method", "a.py:1")
    gated = trt_uses.Use("IBuilderConfig", "int8_calibrator", "property-set", "a.py:2", ("<11",))
    guarded = trt_uses.Use("IBuilderConfig", "clear_flag", "method", "a.py:3", ("hasattr",))
    member = trt_uses.Use("Builder", "TF32", "member", "a.py:4")
    assert [check.cell(u, v10) for u in (plain, gated, guarded, member)] == [
        "present",
        "present",
        "present",
        "missing",
    ]
    assert [check.cell(u, v11) for u in (plain, gated, guarded, member)] == [
        "missing",
        "gated",
        "guarded",
        "missing",
    ]
    wrong_gate = trt_uses.Use("IBuilderConfig", "int8_calibrator", "property-set", "a.py:5", (">=11",))
    assert check.cell(wrong_gate, v11) == "missing"  # the gate says 11 runs it, and 11 lacks it


def test_rows_fail_only_on_attributed_names():
    uses = [
        trt_uses.Use(None, "Builder", "module", "a.py:1"),
        trt_uses.Use(None, "Gone", "module", "a.py:2"),
        trt_uses.Use(None, "loose", "unattributed", "a.py:3"),
    ]
    table = check.rows(uses, [bindings("10.3.0", "Builder")])
    assert [r.label for r in check.failures(table)] == ["trt.Gone"]
    assert table[-1].label == "?.loose" and not table[-1].attributed


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("10.7.0", "<11", True),
        ("11.0.0.114", "<11", False),
        ("10.16.1.11", ">=10.8,<11", True),
        ("11.4.0.106", ">=11.4.1", False),
        ("10.7.0.post1", "<=10.7", True),
    ],
)
def test_version_gates(version, spec, expected):
    assert trt_uses.version_matches(version, spec) is expected


def test_versions_asked_for_and_cached(tmp_path):
    assert check.wanted_versions(["10=10.3.0"]) == [(8, None), (10, "10.3.0"), (11, None)]
    with pytest.raises(UserError, match="MAJOR=VERSION"):
        check.wanted_versions(["10.3.0"])
    assert trt_bindings.newest(["10.7.0", "10.16.1.11", "11.0.0.114", "10.7.0.post1"], 10) == "10.16.1.11"
    cached = write_wheel(tmp_path, "10.3.0", [])
    assert trt_bindings.fetch_wheel(10, "10.3.0", cache=tmp_path) == cached  # from the cache: pip never runs
    with pytest.raises(UserError, match="not a TensorRT 11 release"):
        trt_bindings.fetch_wheel(11, "10.3.0", cache=tmp_path)


def test_script_exit_codes(tmp_path, capsys):
    source = tmp_path / "pkg"
    source.mkdir()
    (source / "backend.py").write_text("def build(trt):\n    return trt.Builder(None).create_network(0)\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # "create_network" is a whole literal in the tiny ELF; "Builder" is not: TensorRT 10.3.0 here lacks it.
    wheel = write_wheel(wheels, "10.3.0", [])
    assert check.main(["--wheel", str(wheel), "--source", str(source)]) == 1
    out = capsys.readouterr().out
    assert "trt.Builder" in out and "missing" in out and "FAILED" in out

    (source / "backend.py").write_text(
        "def build(trt):\n    return trt.Gone  # trt-api: >=11 (absent in 10, never run there)\n"
    )
    assert check.main(["--wheel", str(wheel), "--source", str(source)]) == 0
    assert "PASSED" in capsys.readouterr().out

    assert check.main(["--version", "ten", "--source", str(source)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MAJOR=VERSION" in err[0]
