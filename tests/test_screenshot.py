"""Screenshot helpers that need no browser: trimming, tiling, saving, embedded figures."""

import base64

import numpy as np

from smml_jax.evaluate import screenshot


def _page():
  page = np.full((500, 300, 3), 255, np.uint8)
  page[40:260, 20:280] = np.linspace(0, 255, 260, dtype=np.uint8)[None, :, None]  # a "figure"
  return page


def test_trim_tile_and_save(tmp_path):
  trimmed = screenshot.trim_bottom(_page())
  assert trimmed.shape == (260, 300, 3)  # the white bottom is gone, the figure kept
  tiles = screenshot.page_tiles(trimmed, 100)
  assert [len(t) for t in tiles] == [100, 100, 60]
  path = screenshot.save_png(trimmed, tmp_path / "p.png", width=150, colors=64)
  back = screenshot.png_array(path.read_bytes())
  assert back.shape == (130, 150, 3)
  assert screenshot.drawn_fraction(back) > 0.5
  assert screenshot.drawn_fraction(np.full((10, 10, 3), 255, np.uint8)) == 0.0


def test_embedded_images_are_found_in_page_order(tmp_path):
  screenshot.save_png(_page(), tmp_path / "a.png")
  data = (tmp_path / "a.png").read_bytes()
  uri = base64.b64encode(data).decode()
  html = (
    f'<img alt="one.png" src="data:image/png;base64,{uri}"><p>x</p>'
    f'<img alt="two.png" src="data:image/png;base64,{uri}">'
  )
  assert [(name, len(raw)) for name, raw in screenshot.embedded_images(html)] == [
    ("one.png", len(data)),
    ("two.png", len(data)),
  ]
