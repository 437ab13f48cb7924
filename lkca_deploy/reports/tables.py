"""One table, three renderings: markdown, fixed-width text, HTML. The report and the comparison both use them."""

from __future__ import annotations

import html
from collections.abc import Sequence


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers)] + [line(r) for r in rows])


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(c: str, tag: str) -> str:
        # verdicts, and a comparison's cells that compare.py marks with " !" (a regression), carry their colour
        failed = c in ("FAIL", "REGRESSED") or c.endswith(" !")
        css = ' class="fail"' if failed else ' class="pass"' if c == "PASS" else ""
        return f"<{tag}{css}>{html.escape(c)}</{tag}>"

    head = "".join(cell(h, "th") for h in headers)
    body = "".join("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
