"""Which JetPack ships which TensorRT, and whether an engine recipe fits the TensorRT of the device at hand.

Pure Python in Python 3.8 syntax (no numpy, no TensorRT, no torch): the device runtime imports it. A recipe (a
bundle's `device_builds` entry) carries `min_tensorrt`, the oldest TensorRT whose ONNX parser takes its ONNX
(check.py decides that from the ONNX itself); on an older TensorRT the device refuses it in one line that names
the JetPack to use. Facts and their sources: docs/jetson.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lkca_runtime.errors import UserError


@dataclass(frozen=True)
class JetPackLine:
    """JetPack releases that ship the same TensorRT line (docs/jetson.md, "JetPack releases")."""

    label: str  # "6.1, 6.2"
    first: str  # the release to name when telling a user which JetPack to flash: "6.1"
    tensorrt: str  # the TensorRT it ships (the oldest, where the line spans several)
    newest_tensorrt: str
    devices: str
    python: str
    dla: str  # the modules whose DLA TensorRT can use on it; "" when none
    target: str  # the lkca-deploy target that writes for it (targets.py)


JETPACK_LINES: tuple[JetPackLine, ...] = (
    JetPackLine("5.1", "5.1", "8.5.2", "8.5.2", "Xavier, Orin", "3.8", "Xavier, Orin", "jetson-jp5"),
    JetPackLine("6.0", "6.0", "8.6.2", "8.6.2", "Orin", "3.10", "Orin", "jetson-jp6.0"),
    JetPackLine("6.1, 6.2", "6.1", "10.3.0", "10.3.0", "Orin", "3.10", "Orin", "jetson-jp6"),
    JetPackLine("7.0-7.2", "7.0", "10.13.3", "10.16.2", "Thor; Orin from 7.2", "3.12", "", "jetson-jp7"),
    JetPackLine("7.2.2", "7.2.2", "11.4.1", "11.4.1", "Thor, Orin", "3.12", "AGX Orin", "jetson-jp7"),
)


def parse_version(version: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); stops at the first part that is not a number ('11.0.0rc1' -> (11, 0))."""
    parts = []
    for part in str(version).split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    if not parts:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return tuple(parts)


def release_of(version: str) -> str:
    """'8.5.2.2' -> '8.5': the TensorRT release a version belongs to (the key of targets.TENSORRT_RELEASES)."""
    major_minor = parse_version(version)[:2]
    return ".".join(str(p) for p in major_minor)


def line_of(version: str) -> JetPackLine | None:
    """The JetPack line whose TensorRT this version is (major.minor, within the line's range), or None (x86, or a
    TensorRT no JetPack ships)."""
    v = parse_version(version)[:2]
    for line in JETPACK_LINES:
        if parse_version(line.tensorrt)[:2] <= v <= parse_version(line.newest_tensorrt)[:2]:
            return line
    return None


def lines_from(min_tensorrt: str) -> list[JetPackLine]:
    """The JetPack lines whose TensorRT is `min_tensorrt` or newer."""
    low = parse_version(min_tensorrt)
    return [line for line in JETPACK_LINES if parse_version(line.newest_tensorrt) >= low]


def jetpacks_text(lines: Sequence[JetPackLine]) -> str:
    """'5.1, 6.0, 6.1, 6.2, 7.0-7.2, 7.2.2' (or 'none')."""
    return ", ".join(line.label for line in lines) or "none"


def dla_releases() -> str:
    """Which TensorRT places layers on a Jetson's DLA, in words, from the table above."""
    with_dla = [f"{line.tensorrt} (JetPack {line.label}: {line.dla})" for line in JETPACK_LINES if line.dla]
    return "TensorRT " + ", ".join(with_dla) + "; none on Jetson Thor, and none in TensorRT 10.8-11.3"


def compatibility(min_tensorrt: str, parses_on: Sequence[str]) -> dict[str, Any]:
    """A recipe's compatibility entry: the oldest TensorRT that parses it, and the JetPacks whose TensorRT release
    (a key of `parses_on`, e.g. '8.5') parses it."""
    lines = [line for line in JETPACK_LINES if release_of(line.tensorrt) in set(parses_on)]
    return {"min_tensorrt": min_tensorrt, "jetpacks": [line.label for line in lines]}


def advice(min_tensorrt: str, installed: str | None = None) -> str:
    """What to do on a device whose TensorRT (`installed`, or unknown) is older than `min_tensorrt`: the JetPack to
    flash, or the target that writes for the JetPack at hand."""
    use = lines_from(min_tensorrt)
    flash = f"flash JetPack {use[0].first} or later" if use else f"install TensorRT {min_tensorrt} or later"
    here = line_of(installed) if installed else None
    older = [here] if here else [line for line in JETPACK_LINES if line not in use]
    targets = list(dict.fromkeys(line.target for line in older))
    return flash + (f", or write the bundle for this device: lkca-deploy pipeline --target {' / '.join(targets)}"
                    if targets else "")


def recipe_refusal(recipe: dict[str, Any], installed: str) -> str | None:
    """Why `recipe` cannot be built with TensorRT `installed`, in one line naming the JetPack to use; None when
    it fits. A recipe without `min_tensorrt` (written before the stamp existed) is not judged."""
    needed = recipe.get("min_tensorrt")
    if not needed or parse_version(installed) >= parse_version(needed):
        return None
    here = line_of(installed)
    where = f" (JetPack {here.label})" if here else ""
    return f"{describe_recipe(recipe)} needs TensorRT {needed} or later, this device has TensorRT {installed}{where}: " \
        + advice(needed, installed)


def describe_recipe(recipe: dict[str, Any]) -> str:
    """'the fp16 recipe tensorrt/fp16/model.fp16.onnx'."""
    return " ".join(p for p in ("the", recipe.get("precision"), "recipe", recipe.get("onnx")) if p)


def check_recipe_fits(recipe: dict[str, Any], installed: str | None) -> None:
    """UserError (one line) when `recipe` does not fit TensorRT `installed`; nothing when it fits or is unknown."""
    if installed:
        refusal = recipe_refusal(recipe, installed)
        if refusal:
            raise UserError(refusal)
