"""Check every TensorRT name our code uses against the real TensorRT Python bindings of 8.6, 10.x and 11.x.

TensorRT cannot be imported here (its libraries come from NVIDIA's own index), but the bindings wheels
(`tensorrt-bindings` 8.6.1, the TensorRT 8 of JetPack 6.0; `tensorrt-cu12-bindings`, `tensorrt-cu13-bindings`) are
on PyPI and their compiled module carries every name it
binds as a string literal. This script:

1. downloads one bindings wheel per TensorRT major (the newest, or `--version 10=10.3.0`), cached under
   ~/.cache/lkca-deploy/trt-bindings;
2. reads the names the module exposes (tools/trt_bindings.py says how, precisely) and what its __init__.py adds;
3. walks every .py under lkca_deploy/ that uses TensorRT (`import tensorrt`, or an object named `trt`) and collects
   each `trt.X` and `trt.X.Y`, each method and property used on a TensorRT object it can trace (builder, config,
   network, parser, runtime, engine, context, ...), and each method our subclasses of TensorRT classes override;
4. prints a table name x version and exits 1 when a name the code uses unconditionally is missing in a version
   it is checked against (every checked version is one the backend claims: TensorRT 8, 10 and 11).

Limits, said in the output too: the binary records names, not which class owns them, so `IBuilderConfig.set_flag`
is checked as "set_flag exists in this TensorRT", not "IBuilderConfig has set_flag"; attribute uses on TensorRT
values whose type could not be traced, and names built at run time (getattr with a variable), are listed apart.
How the code marks version-gated lines (`# trt-api: <11`): tools/trt_uses.py.

Run: python tools/trt_api_check.py [--version 10=10.16.1.11] [--version 11=11.4.0.106] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from a checkout: lkca_deploy without an install

from trt_bindings import CACHE, PACKAGES, Bindings, fetch_wheel, parse_version, read_wheel
from trt_uses import Use, scan_tree, version_matches

from lkca_runtime.errors import UserError


def cell(use: Use, bindings: Bindings) -> str:
    """present | missing | gated (absent where the code never runs it) | guarded (hasattr)."""
    if use.name == "<computed>":
        return "not checked"
    present = all(bindings.has(n) for n in use.names)
    if present:
        return "present"
    specs = [g for g in use.gates if g != "hasattr"]
    if specs and not all(version_matches(bindings.version, s) for s in specs):
        return "gated"
    if "hasattr" in use.gates:
        return "guarded"
    return "missing"


@dataclass
class Row:
    label: str
    kind: str
    gates: tuple[str, ...]
    where: list[str]
    cells: list[str]
    attributed: bool


def rows(uses: Sequence[Use], versions: Sequence[Bindings]) -> list[Row]:
    """One row per (name, kind, gates), attributed names first, each with its cell per version."""
    grouped: dict[tuple, list[Use]] = {}
    for use in uses:
        grouped.setdefault((use.label, use.kind, use.gates), []).append(use)
    out = [
        Row(
            label,
            kind,
            gates,
            sorted({u.where for u in group}, key=_line_order),
            [cell(group[0], b) for b in versions],
            group[0].attributed,
        )
        for (label, kind, gates), group in grouped.items()
    ]
    return sorted(out, key=lambda r: (not r.attributed, r.label, r.gates))


def _line_order(where: str) -> tuple[str, int]:
    path, _, line = where.rpartition(":")
    return path, int(line)


def failures(table: Sequence[Row]) -> list[Row]:
    """Rows whose name our code reaches unconditionally (or inside its own gate) but a checked version lacks."""
    return [r for r in table if r.attributed and "missing" in r.cells]


def render(table: Sequence[Row], versions: Sequence[Bindings], markdown: bool = False) -> str:
    head = ["name", "kind", "gate", *[f"TensorRT {b.version}" for b in versions], "used at"]
    body = [
        [
            r.label,
            r.kind,
            " ".join(r.gates) or "-",
            *r.cells,
            r.where[0] + (f" (+{len(r.where) - 1})" if len(r.where) > 1 else ""),
        ]
        for r in table
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += [
            "| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(row)) + " |" for row in body
        ]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body]
    )


def summary(table: Sequence[Row], versions: Sequence[Bindings]) -> str:
    checked = [r for r in table if r.attributed]
    loose = [r for r in table if not r.attributed]
    bad = failures(table)
    lines = [
        "Checked against: " + ", ".join(f"{b.package} {b.version} ({len(b.names)} names)" for b in versions),
        (
            f"{len(checked)} names attributed and checked; {len(loose)} uses not attributed (listed, not judged): "
            "values whose TensorRT type the scan could not trace, or names computed at run time."
        ),
        (
            "A name counts as present when the compiled module carries it as a literal of its own; which class "
            "owns a method is not recorded in the binary, so Owner.name checks that the name exists in that TensorRT."
        ),
    ]
    if bad:
        lines.append(
            "FAILED: missing where the code runs them: "
            + "; ".join(
                f"{r.label} in TensorRT "
                + ", ".join(b.version for b, c in zip(versions, r.cells) if c == "missing")
                for r in bad
            )
        )
    else:
        lines.append("PASSED: every attributed name exists in every version where the code runs it.")
    return "\n".join(lines)


def wanted_versions(items: Sequence[str]) -> list[tuple[int, str | None]]:
    """`--version` values ('10=10.3.0', repeatable) as (major, version); a major not named gets its newest."""
    chosen = []
    for item in items:
        major, sep, version = item.partition("=")
        if not sep or not major.strip().isdigit() or not version.strip():
            raise UserError(f"--version takes MAJOR=VERSION (e.g. 10=10.3.0), got {item!r}")
        chosen.append((int(major), version.strip()))
    named = {m for m, _ in chosen}
    return sorted(
        chosen + [(m, None) for m in PACKAGES if m not in named], key=lambda mv: (mv[0], mv[1] or "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version",
        action="append",
        default=[],
        metavar="MAJOR=VERSION",
        help="a bindings version to check, e.g. 10=10.3.0, repeatable (default: the newest 8, 10 and 11)",
    )
    parser.add_argument(
        "--wheel",
        action="append",
        default=[],
        type=Path,
        help="a bindings wheel already on disk (instead of downloading)",
    )
    parser.add_argument("--source", type=Path, default=REPO / "runtime" / "lkca_runtime",
                        help="the package to scan (where the TensorRT backend lives)")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    try:
        paths = list(args.wheel) or [fetch_wheel(m, v, args.cache) for m, v in wanted_versions(args.version)]
        versions = sorted(map(read_wheel, paths), key=lambda b: parse_version(b.version))
        uses = scan_tree(args.source, relative_to=args.source.parent)
        if not uses:
            raise UserError(f"no TensorRT use found under {args.source}")
        table = rows(uses, versions)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(table, versions, markdown=args.markdown))
    print()
    print(summary(table, versions))
    return 1 if failures(table) else 0


if __name__ == "__main__":
    sys.exit(main())
