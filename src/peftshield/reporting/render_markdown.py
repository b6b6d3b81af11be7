"""Render a report :class:`~peftshield.reporting.document.Document` as Markdown.

Plots are embedded as ``data:image/svg+xml;base64`` images, so ``report.md`` is one
self-contained file like ``report.html`` (viewers that refuse ``data:`` images show the alt text,
the plot's title; the numbers are in the tables beside it).
"""

from __future__ import annotations

import base64

from peftshield.reporting.document import Bullets, Document, Figure, Section, Table, Text
from peftshield.reporting.svg import standalone


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or " "


def table_markdown(table: Table) -> str:
    """A Markdown table (caption not included); bold cells as ``**x**``."""
    lines = ["| " + " | ".join(_cell(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    for r, row in enumerate(table.rows):
        cells = [f"**{_cell(v)}**" if (r, c) in table.bold else _cell(v) for c, v in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure_markdown(figure: Figure) -> str:
    """The figure as a ``data:`` SVG image, then its caption in italics."""
    data = base64.b64encode(standalone(figure.svg).encode("utf-8")).decode("ascii")
    alt = figure.title.replace("[", "(").replace("]", ")")
    out = f"![{alt}](data:image/svg+xml;base64,{data})"
    return out + (f"\n\n*{figure.caption}*" if figure.caption else "")


def _block(block) -> str:
    if isinstance(block, Text):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        return (f"{block.caption}\n\n" if block.caption else "") + table_markdown(block)
    if isinstance(block, Figure):
        return figure_markdown(block)
    raise TypeError(f"unknown report block {type(block).__name__}")


def _section(section: Section, level: int) -> list[str]:
    out = [f"{'#' * level} {section.title}"]
    out += [_block(b) for b in section.blocks]
    for sub in section.subsections:
        out += _section(sub, min(level + 1, 6))
    return out


def render_markdown(doc: Document) -> str:
    """The whole document as Markdown text (ends with a newline)."""
    parts = [f"# {doc.title}"] + [_block(b) for b in doc.intro]
    if len(doc.sections) > 1:
        parts.append("Contents: " + " · ".join(f"[{s.title}](#{s.anchor})" for s in doc.sections))
    for section in doc.sections:
        parts += _section(section, 2)
    return "\n\n".join(parts) + "\n"
