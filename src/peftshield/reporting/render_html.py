"""Render a report :class:`~peftshield.reporting.document.Document` as one self-contained HTML page.

Plots are inline SVG and the style sheet is inline: the page loads nothing (no script, no font,
no external style sheet or image), so it opens in a browser with no network.
"""

from __future__ import annotations

from html import escape

from peftshield.reporting.document import Bullets, Document, Figure, Section, Table, Text

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #4e79a7; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f8; }
tr:nth-child(even) td { background: #fafafa; }
caption { caption-side: top; text-align: left; font-style: italic; padding: .3em 0; }
figure { margin: 1em 0; }
figcaption { font-style: italic; font-size: 13px; max-width: 720px; }
details { margin: .5em 0 1em; }
summary { cursor: pointer; font-style: italic; }
nav ul { columns: 2; }
.table-wrap { overflow-x: auto; }
"""


def table_html(table: Table) -> str:
    """A ``<table>`` with its caption; a collapsed table is folded in ``<details>``."""
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for r, row in enumerate(table.rows):
        cells = []
        for c, value in enumerate(row):
            text = escape(str(value))
            cells.append(f"<td><strong>{text}</strong></td>" if (r, c) in table.bold else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    inner = f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
    if table.collapsed:
        summary = escape(table.caption or "table") + f" ({len(table.rows)} rows)"
        wrapped = f'<div class="table-wrap"><table>{inner}</table></div>'
        return f"<details><summary>{summary}</summary>{wrapped}</details>"
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    return f'<div class="table-wrap"><table>{caption}{inner}</table></div>'


def _block(block) -> str:
    if isinstance(block, Text):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        return table_html(block)
    if isinstance(block, Figure):
        caption = f"<figcaption>{escape(block.caption)}</figcaption>" if block.caption else ""
        return f"<figure>{block.svg}{caption}</figure>"
    raise TypeError(f"unknown report block {type(block).__name__}")


def _section(section: Section, level: int, prefix: str = "") -> list[str]:
    tag = f"h{min(level, 6)}"
    anchor = f"{prefix}-{section.anchor}" if prefix else section.anchor  # unique under its parent
    out = [f'<section><{tag} id="{escape(anchor)}">{escape(section.title)}</{tag}>']
    out += [_block(b) for b in section.blocks]
    for sub in section.subsections:
        out += _section(sub, level + 1, anchor)
    out.append("</section>")
    return out


def render_html(doc: Document) -> str:
    """The whole document as an HTML page (ends with a newline)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(doc.title)}</h1>",
    ]
    parts += [_block(b) for b in doc.intro]
    if len(doc.sections) > 1:
        links = "".join(f'<li><a href="#{escape(s.anchor)}">{escape(s.title)}</a></li>' for s in doc.sections)
        parts.append(f"<nav><ul>{links}</ul></nav>")
    for section in doc.sections:
        parts += _section(section, 2)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
