"""README.md and docs/*.md: every relative link names an existing file and heading."""

from __future__ import annotations

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: pathlib.Path) -> set[str]:
  text = FENCE.sub("", page.read_text())
  return {_slug(m) for m in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page):
  text = FENCE.sub("", page.read_text())
  for target in LINK.findall(text):
    if re.match(r"^[a-z]+:", target):
      continue  # http(s), mailto
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{page.name}: link {target!r} names a missing file {dest}"
    if anchor and dest.suffix == ".md":
      assert anchor in _anchors(dest), f"{page.name}: link {target!r}: no heading #{anchor} in {dest.name}"


def test_readme_has_contents_install_lines_and_results_link():
  text = (REPO / "README.md").read_text()
  assert "## Contents" in text and "docs/results.md" in text and "docs/byo_data.md" in text
  for line in ('pip install -e . "jax[cuda12]"', 'pip install -e ".[tpu]"', '"jax[tpu]"'):
    assert line in text
