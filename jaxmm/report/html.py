"""HTML pieces of the run report: one self-contained page, no script, no external resource.

Every function returns an HTML string. Text from the workdir's files is escaped here
(`text`), images are embedded as base64 data URIs (`image_figure`), the CSS is inline, and
tables scroll inside their own box so the page never overflows a laptop screen.
"""
import base64
import html
import math
import re
import urllib.parse
from collections.abc import Iterable, Sequence

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: #1d2430; line-height: 1.45;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 1rem 1.25rem 3rem; background: #fff;
  min-height: 100vh; overflow-wrap: anywhere; }
h1 { font-size: 1.6rem; margin: 0.4rem 0 0.2rem; }
h2 { font-size: 1.3rem; margin: 2rem 0 0.6rem; padding-bottom: 0.2rem;
  border-bottom: 2px solid #d8dde6; }
h3 { font-size: 1.1rem; margin: 1.4rem 0 0.5rem; }
h4 { font-size: 0.98rem; margin: 1rem 0 0.4rem; color: #3a4557; }
section.variant { margin-top: 2.5rem; padding: 0.2rem 1rem 1rem; border-left: 4px solid #4c78a8;
  background: #fafbfd; }
section.variant > h2 { border-bottom-color: #4c78a8; }
nav { margin: 0.8rem 0 1.2rem; padding: 0.6rem 0.9rem; background: #eef1f6; border-radius: 6px;
  font-size: 0.92rem; }
nav ul { margin: 0; padding: 0; list-style: none; }
nav li { margin: 0.15rem 0; }
nav ul ul { display: inline; }
nav ul ul li { display: inline; }
nav ul ul li + li::before { content: " \\00b7  "; color: #8a94a6; }
nav a { color: #1f4f8f; text-decoration: none; }
nav a:hover { text-decoration: underline; }
.muted { color: #5b6577; font-size: 0.9rem; }
.warning { padding: 0.45rem 0.7rem; border-left: 4px solid #c8811a; background: #fff4e0;
  color: #5a3a06; }
.table-wrap { width: fit-content; max-width: 100%; max-height: 34rem; overflow: auto;
  margin: 0 0 1rem; border: 1px solid #dde2ea; border-radius: 4px; }
p.caption { margin: 0.9rem 0 0.3rem; font-weight: 600; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.86rem; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #e6e9ef; text-align: left;
  white-space: nowrap; }
thead th { position: sticky; top: 0; background: #f0f3f8; }
tbody th { font-weight: normal; color: #3a4557; background: #f7f8fb; }
td.num { text-align: right; }
figure { margin: 0.6rem 0 1.4rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e6e9ef; }
figcaption { font-size: 0.85rem; color: #5b6577; margin-top: 0.25rem; }
details { margin: 0.4rem 0 1rem; }
summary { cursor: pointer; color: #1f4f8f; }
pre { max-width: 100%; max-height: 36rem; overflow: auto; background: #f6f8fa; padding: 0.7rem;
  border: 1px solid #e1e4e8; border-radius: 4px; font-size: 0.8rem; }
code { font-size: 0.88em; background: #f0f2f5; padding: 0 0.2em; border-radius: 3px; }
p, ul.notes { max-width: 60rem; }
""".strip()


# ------------------------------------------------------------------ text and values

def text(value) -> str:
  """Any value as escaped HTML text (None -> empty)."""
  return "" if value is None else html.escape(str(value), quote=True)


def anchor_id(*parts: str) -> str:
  """An element id from name parts: letters, digits, '-' and '_' only, joined by '-'."""
  return "-".join(re.sub(r"[^A-Za-z0-9_-]+", "_", str(p)).strip("_") or "x" for p in parts)


def format_number(value: float) -> str:
  """A float to 3 decimals; a small nonzero one (a p-value, say) in scientific notation so it
  does not read as 0; NaN/inf as '-'."""
  if not math.isfinite(value):
    return "-"
  if value != 0 and abs(value) < 1e-3:
    return f"{value:.2e}"
  return f"{value:.3f}"


def format_cell(value) -> tuple[str, bool]:
  """(escaped text, is it a number): integers as they are, floats (also numeric strings, as
  csv.DictReader gives them) through `format_number`, None/empty as ''."""
  if isinstance(value, bool) or value is None:
    return text(value), False
  if isinstance(value, int):
    return str(value), True
  if isinstance(value, float):
    return text(format_number(value)), True
  raw = str(value).strip()
  if re.fullmatch(r"[+-]?\d+", raw):
    return raw, True
  try:
    number = float(raw)
  except ValueError:
    return text(value), False
  if raw.lower() in ("nan", "inf", "-inf", "+inf", "infinity") or re.search(r"[.eE]", raw):
    return text(format_number(number)), True
  return text(value), False


# ------------------------------------------------------------------ blocks

def paragraph(body: str, css_class: str | None = None) -> str:
  """`body` is HTML (escape file text with `text` first)."""
  attribute = f' class="{css_class}"' if css_class else ""
  return f"<p{attribute}>{body}</p>"


def warning(body: str) -> str:
  """A highlighted paragraph that the reader must not miss; `body` is HTML."""
  return paragraph(f"<strong>Warning:</strong> {body}", "warning")


def caption_block(caption: str | None) -> str:
  return f"<p class=\"caption\">{text(caption)}</p>" if caption else ""


def is_empty(value) -> bool:
  return value is None or (isinstance(value, str) and not value.strip())


def table(rows: Sequence[dict], columns: Sequence[str] | None = None,
          caption: str | None = None) -> str:
  """A table of `rows` (dicts) under its caption, in a box that scrolls horizontally (and
  vertically past ~30 rows). `columns` default: every key in first-seen order, less those
  empty in every row."""
  if not rows:
    return ""
  if columns is None:
    keys = dict.fromkeys(k for r in rows for k in r)
    columns = [k for k in keys if not all(is_empty(r.get(k)) for r in rows)]
  cells = [[format_cell(row.get(c)) for c in columns] for row in rows]
  return html_table([text(c) for c in columns], cells, caption)


def html_table(header: Sequence[str], rows: Sequence[Sequence[tuple[str, bool]]],
               caption: str | None = None) -> str:
  """A table of ready HTML: `header` cells, and rows of (cell HTML, right-align it)."""
  head = "".join(f"<th scope=\"col\">{h}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td class=\"num\">{v}</td>" if numeric else f"<td>{v}</td>"
                                  for v, numeric in row) + "</tr>" for row in rows)
  return (f"{caption_block(caption)}<div class=\"table-wrap\"><table><thead><tr>{head}</tr>"
          f"</thead><tbody>{body}</tbody></table></div>")


def key_value_table(pairs: Iterable[tuple[str, object]], caption: str | None = None) -> str:
  """Names in the first column (row headers), values (left-aligned) in the second."""
  rows = "".join(f"<tr><th scope=\"row\">{text(k)}</th><td>{format_cell(v)[0]}</td></tr>"
                 for k, v in pairs)
  if not rows:
    return ""
  return (f"{caption_block(caption)}<div class=\"table-wrap\"><table><tbody>{rows}</tbody>"
          "</table></div>")


def image_figure(png: bytes, caption: str) -> str:
  """A PNG embedded as a data URI, with a caption (also the alt text)."""
  if not png.startswith(PNG_SIGNATURE):
    raise ValueError(f"not a PNG: {caption!r}")
  data = base64.b64encode(png).decode("ascii")
  return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{text(caption)}\">"
          f"<figcaption>{text(caption)}</figcaption></figure>")


def details(summary: str, body: str) -> str:
  """A collapsed block; `summary` is plain text, `body` HTML."""
  return f"<details><summary>{text(summary)}</summary>{body}</details>"


def preformatted(content: str) -> str:
  return f"<pre>{text(content)}</pre>"


def link(relative_path: str, label: str | None = None) -> str:
  """A link to a file beside the report, by its relative path."""
  return f"<a href=\"{urllib.parse.quote(relative_path)}\">{text(label or relative_path)}</a>"


def section(section_id: str, title: str, body: str, level: int = 2,
            css_class: str | None = None) -> str:
  """<section id=...> with an <h{level}> title; `title` is plain text, `body` HTML."""
  attribute = f' class="{css_class}"' if css_class else ""
  return (f"<section id=\"{section_id}\"{attribute}><h{level}>{text(title)}</h{level}>"
          f"{body}</section>")


# ------------------------------------------------------------------ the page

def navigation(groups: Sequence[tuple[str, str | None, Sequence[tuple[str, str]]]]) -> str:
  """The list of sections, one line per group: (title, the group's id or None, [(section id,
  section title), ...])."""
  items = []
  for title, group_id, children in groups:
    label = f"<strong>{text(title)}</strong>"
    head = f"<a href=\"#{group_id}\">{label}</a>" if group_id else label
    inner = "".join(f"<li><a href=\"#{child_id}\">{text(child_title)}</a></li>"
                    for child_id, child_title in children)
    items.append(f"<li>{head}" + (f": <ul>{inner}</ul>" if inner else "") + "</li>")
  return f"<nav aria-label=\"sections\"><ul>{''.join(items)}</ul></nav>"


def page(title: str, subtitle: str, nav: str, body: str) -> str:
  """The whole document: inline CSS, no script, an empty data: favicon (so the browser asks
  for no file)."""
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
          f"<title>{text(title)}</title><link rel=\"icon\" href=\"data:,\">"
          f"<style>{CSS}</style></head><body><main>"
          f"<h1>{text(title)}</h1><p class=\"muted\">{subtitle}</p>{nav}{body}"
          "</main></body></html>\n")
