"""Report figures built from result rows: ASR before / after bars, ROC and trade-off curves.

The drawing is :mod:`.svg`'s; this module decides what goes in each figure: rows are grouped by
some keys (one figure per group, e.g. per attack) and labelled by others (one bar or line per
label, e.g. per PEFT method or per detector).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from peftshield.reporting.document import Figure
from peftshield.reporting.rows import asr_of, cell_label, curve, defended_asr_of, policy_of
from peftshield.reporting.svg import bar_chart, line_chart


def group_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by the label of ``keys`` (``attack / method`` ...), groups in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(cell_label(row, list(keys)), []).append(row)
    return groups


def curve_figures(
    rows: Sequence[dict[str, Any]],
    *,
    group_by: Sequence[str],
    line_by: Sequence[str],
    curve_name: str,
    x: str,
    y: str,
    title: str,
    x_label: str,
    y_label: str,
    caption: str,
    diagonal: bool = False,
    line_label: Callable[[str, dict[str, Any]], str] | None = None,
) -> list[Figure]:
    """One line chart per group of rows, one line per ``line_by`` label (its first row with a curve).

    ``title`` may hold ``{group}``. Groups without any usable curve give no figure.
    """
    figures = []
    for group, members in group_rows(rows, group_by).items():
        lines: dict[str, tuple[list[float], list[float]]] = {}
        seen: set[str] = set()
        for row in members:
            label = cell_label(row, list(line_by))
            found = curve(row, curve_name, x, y)
            if found is None or label in seen:
                continue
            seen.add(label)
            lines[line_label(label, row) if line_label else label] = found
        if not lines:
            continue
        name = title.format(group=group)
        series = [(label, xs, ys) for label, (xs, ys) in lines.items()]
        svg = line_chart(name, series, x_label=x_label, y_label=y_label, diagonal=diagonal)
        figures.append(Figure(name, svg, caption))
    return figures


def before_after_figures(
    rows: Sequence[dict[str, Any]],
    *,
    group_by: Sequence[str],
    bar_by: Sequence[str],
    title: str,
    caption: str,
) -> list[Figure]:
    """Per group: ASR without defence and defended ASR under each threshold policy, per ``bar_by`` label.

    The undefended ASR of a label is taken from its first row that has one (it does not depend on
    the threshold policy).
    """
    figures = []
    for group, members in group_rows(rows, group_by).items():
        categories = list(dict.fromkeys(cell_label(r, list(bar_by)) for r in members))
        policies = list(dict.fromkeys(policy_of(r) for r in members if defended_asr_of(r) is not None))
        before: dict[str, float | None] = dict.fromkeys(categories)
        after: dict[tuple[str, str], float | None] = {}
        for row in members:
            label = cell_label(row, list(bar_by))
            if before[label] is None:
                before[label] = asr_of(row)
            value = defended_asr_of(row)
            if value is not None:
                after.setdefault((label, policy_of(row)), value)
        series = [("no defence", [before[c] for c in categories])]
        series += [(f"defended, {p}", [after.get((c, p)) for c in categories]) for p in policies]
        if all(v is None for _, vals in series for v in vals):
            continue
        name = title.format(group=group)
        svg = bar_chart(name, categories, series, y_label="ASR", y_max=1.0)
        figures.append(Figure(name, svg, caption))
    return figures
