"""A Markdown table from `lkca-runtime verify BUNDLE --all --json` outputs: one row per engine, one column per file.

Run: python tools/verify_table.py OUT/verify-neoverse-n1.json OUT/verify-cortex-a72.json
A column is named by the file's name after 'verify-' (the CPU tools/arm_proof.sh emulated) and its header row
gives the machine line verify printed. Cells: pass with the golden metrics, refused or not installed with the
reason, FAIL with the first missed limit, ERROR with the message. Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cell(check: dict) -> str:
    status = check.get("status")
    metrics = check.get("metrics") or {}
    if status == "passed":
        agreement = metrics.get("agreement", metrics.get("pixel_agreement"))
        parts = []
        if agreement is not None:
            parts.append(f"agreement {agreement:.3f}")
        if metrics.get("max_abs_err") is not None:
            parts.append(f"max err {metrics['max_abs_err']:.2g}")
        return f"pass ({', '.join(parts)})" if parts else "pass"
    if status == "failed":
        return f"FAIL: {(check.get('failures') or ['?'])[0]}"
    if status == "skipped":
        return f"not installed: {check.get('reason')}"
    if status == "refused":
        return f"refused: {check.get('reason')}"
    return f"ERROR: {check.get('reason')}"


def render(paths: list[Path]) -> str:
    columns, rows = [], {}
    for path in paths:
        doc = json.loads(path.read_text())
        name = path.stem.removeprefix("verify-")
        columns.append((name, (doc.get("machine") or {}).get("summary", "")))
        for check in doc.get("engines", []):
            rows.setdefault(check["engine"], {})[name] = _cell(check).replace("|", "\\|")
    lines = ["| engine | " + " | ".join(name for name, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    lines += [f"| {engine} | " + " | ".join(cells.get(name, "-") for name, _ in columns) + " |"
              for engine, cells in rows.items()]
    lines += [""] + [f"- {name}: {summary}" for name, summary in columns]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python tools/verify_table.py VERIFY.json...", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(render([Path(a) for a in argv]))
    except (OSError, ValueError, KeyError) as e:
        print(f"verify_table: cannot read {' '.join(argv)}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
