"""A renderer-neutral report document: sections holding text, bullet lists, tables and figures.

Each benchmark section is built once as these plain objects and rendered twice, to Markdown
(:mod:`.render_markdown`) and to HTML (:mod:`.render_html`), so the two outputs cannot disagree.
Text is plain (renderers escape it); a figure carries its SVG drawing (:mod:`.svg`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Text:
    """A paragraph of plain text."""

    text: str


@dataclass
class Bullets:
    """A bullet list of plain-text items."""

    items: list[str]


@dataclass
class Table:
    """A table of already formatted cells; ``bold`` lists the (row, column) cells to emphasise.

    ``collapsed`` asks the HTML renderer to fold the table (long per-model or per-cell listings).
    """

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    bold: set[tuple[int, int]] = field(default_factory=set)
    collapsed: bool = False

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"table row has {len(row)} cells for {len(self.columns)} columns: {row}")


@dataclass
class Figure:
    """A plot: its title, the SVG drawing (no XML namespace; renderers add it where needed), a caption."""

    title: str
    svg: str
    caption: str = ""


Block = Text | Bullets | Table | Figure


@dataclass
class Section:
    """A titled section with its blocks and sub-sections."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        """A stable id for links, made as GitHub makes heading ids (lower case, punctuation dropped)."""
        return re.sub(r"[^\w\- ]", "", self.title.lower()).replace(" ", "-") or "section"

    def walk(self):
        """This section's blocks, then its sub-sections', depth first."""
        yield from self.blocks
        for sub in self.subsections:
            yield from sub.walk()


@dataclass
class Document:
    """The whole report: a title, opening blocks and the sections."""

    title: str
    intro: list[Block] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def blocks(self):
        """Every block of the document, in order."""
        yield from self.intro
        for section in self.sections:
            yield from section.walk()

    def figures(self) -> list[Figure]:
        """Every figure, in order."""
        return [b for b in self.blocks() if isinstance(b, Figure)]

    def tables(self) -> list[Table]:
        """Every table, in order."""
        return [b for b in self.blocks() if isinstance(b, Table)]


# --------------------------------------------------------------------------------------------
# Cell formatting shared by every section

MISSING = "—"


def fmt(value: Any, digits: int = 3) -> str:
    """One table cell: fractions with ``digits`` decimals, large numbers with one, ints as they are.

    ``None`` is an em dash, booleans ``yes`` / ``no``, lists and dicts compact JSON (cut at 80
    characters).
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if 0 < abs(value) < 10**-digits:
            return f"{value:.2g}"  # learning rates and the like would round to zero
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, list | tuple | dict):
        text = json.dumps(value, default=str, separators=(",", ":"))
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)


def fmt_seconds(value: Any) -> str:
    """A duration in seconds with one decimal (``—`` when absent)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.1f}"
    return fmt(value)


def fmt_ratio(value: Any) -> str:
    """A ratio such as an overhead (``1.23×``)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.2f}×"
    return fmt(value)


def number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when it is not a number (or is NaN / infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
