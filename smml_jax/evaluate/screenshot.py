"""Look at a report the way a reader does: headless Chromium screenshots of `report.html`.

`chromium --headless --screenshot` renders only the window, so the window is made taller than the
page and the blank bottom is trimmed; `page_tiles` cuts the page into screen-sized pictures.
"""

from __future__ import annotations

import base64
import io
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from typing import Optional, Union

import numpy as np

PathLike = Union[str, pathlib.Path]
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Optional[str]:
  """$SMML_CHROMIUM, else the first Chromium/Chrome on PATH, else None."""
  env = os.environ.get("SMML_CHROMIUM")
  if env:
    return env
  return next((path for path in map(shutil.which, _BROWSERS) if path), None)


def _read_png(path: PathLike) -> np.ndarray:
  from PIL import Image

  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def png_array(data: bytes) -> np.ndarray:
  """PNG bytes -> (H, W, 3) uint8."""
  return _read_png(io.BytesIO(data))


def trim_bottom(image: np.ndarray, background: Optional[np.ndarray] = None) -> np.ndarray:
  """(H, W, 3) -> the rows down to the last one that differs from the background (top-left pixel)."""
  background = image[0, 0] if background is None else background
  drawn = np.any(np.abs(image.astype(np.int16) - background.astype(np.int16)) > 2, axis=(1, 2))
  rows = np.flatnonzero(drawn)
  return image[: rows[-1] + 1] if rows.size else image[:1]


def screenshot(
  html_path: PathLike, *, width: int = 1200, height: int = 20000, browser: Optional[str] = None, timeout: float = 180.0
) -> np.ndarray:
  """The rendered page as an (H, W, 3) uint8 array, blank bottom trimmed.

  Raises:
    FileNotFoundError: no browser, or `html_path` does not exist.
    RuntimeError: the browser failed or wrote no picture (its stderr tail is in the message).
  """
  html_path = pathlib.Path(html_path).resolve()
  if not html_path.is_file():
    raise FileNotFoundError(f"screenshot: {html_path} does not exist")
  browser = browser or find_chromium()
  if not browser:
    raise FileNotFoundError(
      "screenshot: no Chromium found (install `chromium`, or set SMML_CHROMIUM to the browser's path)"
    )
  with tempfile.TemporaryDirectory() as tmp:
    png = pathlib.Path(tmp) / "page.png"
    command = [
      browser,
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--hide-scrollbars",
      "--force-device-scale-factor=1",
      f"--user-data-dir={tmp}/profile",
      f"--window-size={width},{height}",
      f"--screenshot={png}",
      html_path.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0 or not png.is_file():
      raise RuntimeError(
        f"screenshot: {' '.join(command[:1])} exited {result.returncode} without "
        f"a picture of {html_path}: {result.stderr.strip()[-800:]}"
      )
    return trim_bottom(_read_png(png))


def page_tiles(image: np.ndarray, tile_height: int = 1400) -> list[np.ndarray]:
  """Cuts a page screenshot into consecutive (<= tile_height, W, 3) pieces."""
  return [image[top : top + tile_height] for top in range(0, len(image), tile_height)]


def save_png(
  image: np.ndarray, path: PathLike, width: Optional[int] = None, colors: Optional[int] = None
) -> pathlib.Path:
  """Writes an (H, W, 3) uint8 array as PNG, scaled to `width` pixels wide and reduced to a
  `colors`-entry palette (a third of the bytes for figures and text) when given."""
  from PIL import Image

  picture = Image.fromarray(np.asarray(image, np.uint8))
  if width and picture.width > width:
    picture = picture.resize((width, round(picture.height * width / picture.width)), Image.LANCZOS)
  if colors:
    picture = picture.quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  picture.save(path, optimize=True)
  return path


def embedded_images(html: str) -> list[tuple[str, bytes]]:
  """(alt text, PNG bytes) of every `<img>` a report embeds as a data URI, in page order."""
  found = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', html)
  return [(alt, base64.b64decode(data)) for alt, data in found]


def drawn_fraction(image: np.ndarray) -> float:
  """Fraction of pixels that differ from the top-left (background) pixel."""
  image = np.asarray(image, np.int16)[..., :3]
  return float(np.any(np.abs(image - image[0, 0]) > 8, axis=-1).mean())
