"""The names a TensorRT Python bindings wheel exposes, read from its compiled module without importing it.

TensorRT's libraries come from NVIDIA's own index, so `import tensorrt` is impossible here; the bindings wheels
(`tensorrt-cu12-bindings` for 10.x, `tensorrt-cu13-bindings` for 11.x) are on PyPI, and their compiled module carries
every class, method, property and enum member it binds as a string literal. `fetch_wheel` downloads one (cached under
~/.cache/lkca-deploy/trt-bindings), `read_wheel` lists its names.
"""

from __future__ import annotations

import ast
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lkca_runtime.errors import UserError
from lkca_runtime.fsutil import publish

CACHE = Path.home() / ".cache" / "lkca-deploy" / "trt-bindings"
# One bindings package per major: 11.x is built for CUDA 13 (the cu12 package has 11.x too; one choice keeps one file).
# TensorRT 8 (JetPack 5.1: 8.5.2, 6.0: 8.6.2) has no cuXX package: PyPI's tensorrt-bindings carries 8.6.1 only.
PACKAGES = {8: "tensorrt-bindings", 10: "tensorrt-cu12-bindings", 11: "tensorrt-cu13-bindings"}
# The compiled module is the same code for every CPython; one fixed platform keeps the cache to one file per version
# (x86-64 Linux: elf_identifiers reads x86-64 code). Releases up to 10.7 are tagged manylinux_2_17, later ones 2_28.
PLATFORMS, PYTHON = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64"), "311"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_version(text: str) -> tuple[int, ...]:
    """'10.16.1.11' -> (10, 16, 1, 11); stops at the first part that is not a number ('10.7.0.post1' -> (10, 7, 0))."""
    parts = []
    for part in text.strip().split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    if not parts:
        raise UserError(f"not a TensorRT version: {text!r}")
    return tuple(parts)


# ---------------------------------------------------------------- names in the compiled module


@dataclass
class _Elf:
    data: bytes
    sections: dict[str, tuple[int, int, int]]  # name -> (address, file offset, size)

    def section(self, name: str) -> tuple[int, int, int]:
        if name not in self.sections:
            raise UserError(f"the bindings module has no {name} section: not an x86-64 ELF shared object")
        return self.sections[name]


def _read_elf(data: bytes) -> _Elf:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise UserError("the bindings module is not a little-endian 64-bit ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    entsize, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * entsize) for i in range(count)]
    names_offset = headers[names_index][4]

    def name(at: int) -> str:
        start = names_offset + at
        return data[start : data.index(b"\0", start)].decode()

    return _Elf(data, {name(h[0]): (h[3], h[4], h[5]) for h in headers})


def _lea_targets(elf: _Elf) -> set[int]:
    """Addresses loaded by `lea reg64, [rip + disp32]` anywhere in .text (REX.W 8D, ModRM mod=00 rm=101)."""
    import numpy as np

    address, offset, size = elf.section(".text")
    code = np.frombuffer(elf.data, dtype=np.uint8, count=size, offset=offset)
    rex = (code[:-6] & 0xF8) == 0x48
    hit = np.flatnonzero(rex & (code[1:-5] == 0x8D) & ((code[2:-4] & 0xC7) == 0x05))
    disp = code[hit + 3].astype(np.int64)
    for k in (1, 2, 3):
        disp |= code[hit + 3 + k].astype(np.int64) << (8 * k)
    disp = np.where(disp >= 1 << 31, disp - (1 << 32), disp)
    return set((address + hit + 7 + disp).tolist())  # rip = the next instruction, 7 bytes on


def _relative_relocations(elf: _Elf) -> set[int]:
    """Pointers stored in data (R_X86_64_RELATIVE addends): name tables that code does not load with lea."""
    if ".rela.dyn" not in elf.sections:
        return set()
    _, offset, size = elf.sections[".rela.dyn"]
    targets = set()
    for at in range(offset, offset + size - 23, 24):
        _, info, addend = struct.unpack_from("<QQq", elf.data, at)
        if info & 0xFFFFFFFF == 8:  # R_X86_64_RELATIVE
            targets.add(addend)
    return targets


def elf_identifiers(data: bytes) -> set[str]:
    """Every identifier the compiled module carries as a string literal of its own.

    pybind11 binds each class, method, property and enum member by a NUL-terminated literal. The linker merges a
    literal into the tail of a longer one ("INPUT" lives inside "CONDITIONAL_INPUT\\0", "num_errors" inside
    "get_num_errors\\0"), so a name counts when (a) a whole string in .rodata is exactly that identifier, or (b) the
    code loads the address of a tail of a longer string (lea) or data points at it (relocation): then that tail is
    a literal in its own right. A name merely contained in another ("TF32" inside "ALLOW_TF32") never counts.
    """
    elf = _read_elf(data)
    address, offset, size = elf.section(".rodata")
    rodata = data[offset : offset + size]
    names = set()
    start = 0
    for piece in rodata.split(b"\0"):
        if IDENTIFIER.fullmatch(piece.decode("latin-1")):
            names.add(piece.decode())
        start += len(piece) + 1
    for target in _lea_targets(elf) | _relative_relocations(elf):
        at = target - address
        if 0 < at < size and rodata[at - 1] != 0:
            end = rodata.find(b"\0", at)
            tail = rodata[at:end].decode("latin-1")
            if IDENTIFIER.fullmatch(tail):
                names.add(tail)
    return names


def init_identifiers(source: str) -> set[str]:
    """Names the package's __init__.py defines beside the compiled module: functions, classes, assignments,
    attributes it sets on the bound classes (`ILogger.__enter__ = ...`, `Logger.Severity = ...`)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names.add(sub.id)
                    elif isinstance(sub, ast.Attribute):
                        names.add(sub.attr)
    return names


@dataclass(frozen=True)
class Bindings:
    version: str
    package: str
    names: frozenset[str]

    def has(self, name: str) -> bool:
        return name in self.names


def read_wheel(path: Path) -> Bindings:
    """The names a TensorRT bindings wheel exposes, and its version (from its file name)."""
    path = Path(path)
    m = re.match(r"(tensorrt[a-z0-9_]*?)_bindings-([0-9][^-]*)-", path.name)
    if not m:
        raise UserError(f"{path.name} is not a TensorRT bindings wheel (tensorrt-cuXX-bindings)")
    try:
        with zipfile.ZipFile(path) as wheel:
            modules = [n for n in wheel.namelist() if re.fullmatch(r"tensorrt_bindings/tensorrt[^/]*\.so", n)]
            if not modules:
                raise UserError(f"{path.name} holds no tensorrt_bindings/tensorrt*.so")
            names = elf_identifiers(wheel.read(modules[0]))
            names |= init_identifiers(wheel.read("tensorrt_bindings/__init__.py").decode())
    except (zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{path.name} is not a readable wheel ({e}): delete it from {path.parent}") from None
    return Bindings(m.group(2), f"{m.group(1).replace('_', '-')}-bindings", frozenset(names))


# ---------------------------------------------------------------- wheels (pip, cached)


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False, timeout=600
    )


def available_versions(package: str) -> list[str]:
    proc = _pip("index", "versions", package)
    m = re.search(r"Available versions:\s*(.+)", proc.stdout)
    return [v.strip() for v in m.group(1).split(",")] if m else []


def cached_wheels(package: str, cache: Path = CACHE) -> dict[str, Path]:
    stem = package.replace("-", "_")
    return {
        m.group(1): p for p in cache.glob(f"{stem}-*.whl") if (m := re.match(rf"{stem}-([^-]+)-", p.name))
    }


def newest(versions: Iterable[str], major: int) -> str | None:
    mine = [v for v in versions if parse_version(v)[0] == major]
    return max(mine, key=lambda v: (parse_version(v), v)) if mine else None


def fetch_wheel(major: int, version: str | None = None, cache: Path = CACHE) -> Path:
    """The bindings wheel for `version` (default: the newest of `major` on the index, else the newest cached)."""
    package = PACKAGES.get(major)
    if package is None:
        raise UserError(f"no bindings package known for TensorRT {major}: use one of {sorted(PACKAGES)}")
    cached = cached_wheels(package, cache)
    if version is None:
        version = newest(available_versions(package), major) or newest(cached, major)
        if version is None:
            raise UserError(f"cannot list {package} on the package index and nothing is cached in {cache}")
    if parse_version(version)[0] != major:
        raise UserError(f"--version {major}={version}: that is not a TensorRT {major} release")
    if version in cached:
        return cached[version]
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        proc = _pip(
            "download", "--no-deps", "--only-binary=:all:", *(f"--platform={p}" for p in PLATFORMS),
            "--python-version", PYTHON, "-d", tmp, f"{package}=={version}",
        )  # fmt: skip
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            reason = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise UserError(f"cannot download {package}=={version}: {reason}")
        return publish(wheels[0], cache / wheels[0].name)  # one rename within the cache: never half a wheel
