"""Screenshots of a report as a reader sees it: `python scripts/report_screenshots.py REPORT.html OUT/`.

Renders the report in headless Chromium, refuses a blank page or a blank embedded figure, and writes
the page as consecutive screen-sized PNGs (`page_01.png`, ...), scaled to --width pixels.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from smml_jax.evaluate import screenshot  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("report", help="report.html")
  p.add_argument("out", help="folder for page_NN.png")
  p.add_argument("--width", type=int, default=900, help="width of the saved PNGs (pixels)")
  p.add_argument("--tile-height", type=int, default=1400, help="page slice height (pixels)")
  args = p.parse_args(argv)
  report = pathlib.Path(args.report)
  if not report.is_file():
    print(f"error: {report} does not exist", file=sys.stderr)
    return 2
  blank = [
    name
    for name, data in screenshot.embedded_images(report.read_text())
    if screenshot.drawn_fraction(screenshot.png_array(data)) < 0.02
  ]
  if blank:
    print(f"error: {report}: blank figure(s) {blank}", file=sys.stderr)
    return 1
  page = screenshot.screenshot(report, width=1100)
  if screenshot.drawn_fraction(page) < 0.02:
    print(f"error: {report} renders blank", file=sys.stderr)
    return 1
  out = pathlib.Path(args.out)
  for k, tile in enumerate(screenshot.page_tiles(page, args.tile_height), start=1):
    path = screenshot.save_png(tile, out / f"page_{k:02d}.png", width=args.width, colors=256)
    print(f"{path} ({path.stat().st_size // 1024} KiB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
