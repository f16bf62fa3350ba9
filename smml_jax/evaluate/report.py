"""One self-contained `report.html`: sections of text, tables and images embedded as data URIs."""

from __future__ import annotations

import base64
import dataclasses
import html
import pathlib
import re
from typing import Mapping, Sequence, Union

import pandas as pd

PathLike = Union[str, pathlib.Path]
REPORT_NAME = "report.html"
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml", ".gif": "image/gif"}
_STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } caption { font-weight: bold; text-align: left; padding: 4px 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; } code { background: #f4f4f4; padding: 0 3px; }
"""


@dataclasses.dataclass(frozen=True)
class Section:
  """One report section.

  Attributes:
    title: the section heading.
    text: Markdown-ish paragraphs: blank lines separate paragraphs, lines starting with "- " form a
      list, and `code` / **bold** spans are rendered; everything else is escaped HTML-safe text.
    tables: caption -> DataFrame, rendered in order.
    images: image files (PNG/JPEG/SVG/GIF) embedded as base64 data URIs, captioned by file name.
  """

  title: str
  text: str = ""
  tables: Mapping[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
  images: Sequence[PathLike] = ()


def _inline(text: str) -> str:
  text = html.escape(text)
  text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
  return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def render_text(text: str) -> str:
  """Markdown-ish text -> HTML paragraphs and bullet lists (see `Section.text`)."""
  blocks = []
  for block in re.split(r"\n\s*\n", text.strip()):
    if not block.strip():
      continue
    lines = block.strip().splitlines()
    if all(line.lstrip().startswith("- ") for line in lines):
      items = "".join(f"<li>{_inline(line.lstrip()[2:])}</li>" for line in lines)
      blocks.append(f"<ul>{items}</ul>")
    else:
      blocks.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
  return "\n".join(blocks)


def image_data_uri(path: PathLike) -> str:
  """The file as a `data:<mime>;base64,...` URI."""
  path = pathlib.Path(path)
  mime = _MIME.get(path.suffix.lower())
  if mime is None:
    raise ValueError(f"image_data_uri: {path} has unsupported suffix {path.suffix!r}; expected one of {sorted(_MIME)}")
  if not path.is_file():
    raise ValueError(f"image_data_uri: image {path} does not exist")
  return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _render_section(section: Section) -> str:
  parts = [f"<section>\n<h2>{html.escape(section.title)}</h2>"]
  if section.text:
    parts.append(render_text(section.text))
  for caption, frame in section.tables.items():
    if not isinstance(frame, pd.DataFrame):
      raise ValueError(
        f"write_report: table {caption!r} of section {section.title!r} is a "
        f"{type(frame).__name__}, expected a pandas DataFrame"
      )
    table = frame.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}", na_rep="")
    table = table.replace(">\n  <thead>", f">\n  <caption>{html.escape(caption)}</caption>\n  <thead>", 1)
    parts.append(table)
  for image in section.images:
    name = html.escape(pathlib.Path(image).name)
    parts.append(f'<figure><img alt="{name}" src="{image_data_uri(image)}"><figcaption>{name}</figcaption></figure>')
  parts.append("</section>")
  return "\n".join(parts)


def write_report(out_dir: PathLike, sections: Sequence[Section], title: str = "smml-jax report") -> pathlib.Path:
  """Write `out_dir/report.html` (no external references: images are inlined) and return its path."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  body = "\n".join(_render_section(s) for s in sections)
  document = (
    f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
    f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
  )
  path = out_dir / REPORT_NAME
  path.write_text(document, encoding="utf-8")
  return path
