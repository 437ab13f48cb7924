"""Screenshots of a report's HTML as a real browser draws it, to look at the plots before trusting them.

The test suite checks the report's structure; whether labels overlap or a box plot is squashed flat only shows in
pixels. This renders report.html in headless Chromium (Debian: `apt-get install chromium`) and writes PNGs:
`report.png` (the whole page) and `report-1.png`, `report-2.png`, ... (the page cut into screen-sized pieces, each
small enough to read in an image viewer).

    python benchmarks/report_screenshots.py lkca-bundle --out shots
    python benchmarks/report_screenshots.py lkca-bundle/reports/report.json --out shots --width 1200

BUNDLE_OR_REPORT: a bundle (its reports/report.html), a reports folder, a report.json (the report.html beside it),
or a report.html. The HTML is needed, not only report.json: the latency plots draw raw samples that stay out of
the JSON.
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

PIECE_HEIGHT = 1600  # px per piece: one screen, readable at full size
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_html(source: Path) -> Path:
    candidates = {
        True: [source / "reports" / "report.html", source / "report.html"],
        False: [source if source.suffix == ".html" else source.with_name("report.html")],
    }[source.is_dir()]
    for path in candidates:
        if path.is_file():
            return path
    sys.exit(f"report_screenshots: no report.html at {' or '.join(map(str, candidates))}")


def _png_size(b64: str) -> tuple[int, int]:
    """(width, height) from a base64 PNG's IHDR: 8-byte signature, chunk length and type, then two uint32s."""
    head = base64.b64decode(b64[:32])  # 24 bytes are enough
    return struct.unpack(">II", head[16:24]) if head[:8] == b"\x89PNG\r\n\x1a\n" else (0, 0)


def estimated_height(html: str, width: int) -> int:
    """Generous page height: embedded images (scaled to the content width) + table rows + text lines."""
    content = min(width - 40, 1100)  # render.py's CSS caps the body at 1100 px
    height = 600
    for match in re.finditer(r'<img[^>]*src="data:image/png;base64,([^"]+)"', html):
        png_width, png_height = _png_size(match.group(1))
        height += int(png_height * min(1.0, content / max(png_width, 1))) + 80
    height += 40 * sum(html.count(tag) for tag in ("<tr>", "<li>", "<h2>", "<p>"))
    return height


def chromium() -> str:
    for name in _CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    sys.exit("report_screenshots: no Chromium found (Debian: apt-get update && apt-get install -y chromium)")


def screenshot(html_path: Path, out_png: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="lkca-chromium-") as profile:
        cmd = [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={out_png}",
            html_path.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    if proc.returncode != 0 or not out_png.is_file():
        sys.exit(f"report_screenshots: chromium failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def trim_and_cut(page_png: Path, out_dir: Path) -> list[Path]:
    """Drop the blank space below the content, then cut the page into PIECE_HEIGHT pieces."""
    from PIL import Image, ImageChops

    with Image.open(page_png) as image:
        page = image.convert("RGB")
    blank = Image.new("RGB", page.size, (255, 255, 255))
    box = ImageChops.difference(page, blank).getbbox()
    if box is not None:
        page = page.crop((0, 0, page.width, min(page.height, box[3] + 40)))
    page.save(page_png)
    pieces = []
    for i, top in enumerate(range(0, page.height, PIECE_HEIGHT), start=1):
        piece = out_dir / f"{page_png.stem}-{i}.png"
        page.crop((0, top, page.width, min(page.height, top + PIECE_HEIGHT))).save(piece)
        pieces.append(piece)
    return pieces


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="bundle, reports folder, report.json or report.html")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--width", type=int, default=1400, help="browser window width in px (default 1400)")
    args = parser.parse_args(argv)
    html_path = find_html(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    page = args.out / "report.png"
    screenshot(html_path, page, args.width, estimated_height(html_path.read_text(encoding="utf-8"), args.width))
    pieces = trim_and_cut(page, args.out)
    print(f"{html_path} -> {page} and {len(pieces)} pieces: {', '.join(p.name for p in pieces)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
