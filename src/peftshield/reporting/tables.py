"""Building report tables from result rows: a column is a header, how to read a row, how to format it.

Columns that no row fills are dropped, so one column list serves benchmarks whose rows carry
different subsets of the docs/design.md keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from peftshield.reporting.document import Table, fmt
from peftshield.reporting.rows import is_scalar, scalar_columns


@dataclass(frozen=True)
class Column:
    """A table column: ``header``, the row key (or a function of the row) and the cell formatter."""

    header: str
    key: str | Callable[[dict[str, Any]], Any]
    format: Callable[[Any], str] = fmt

    def value(self, row: dict[str, Any]) -> Any:
        """The raw value of this column in ``row``."""
        return self.key(row) if callable(self.key) else row.get(self.key)


def rows_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    caption: str = "",
    *,
    keep: Sequence[str] = (),
    collapsed: bool = False,
) -> Table | None:
    """A table of ``rows`` over the ``columns`` that have at least one value (and those named in ``keep``).

    Returns ``None`` when there are no rows.
    """
    if not rows:
        return None
    used = [c for c in columns if c.header in keep or any(c.value(r) is not None for r in rows)]
    body = [[c.format(c.value(r)) for c in used] for r in rows]
    return Table([c.header for c in used], body, caption, collapsed=collapsed)


def generic_table(
    rows: Sequence[dict[str, Any]], caption: str = "", skip: tuple[str, ...] = (), max_columns: int = 24
) -> Table | None:
    """Every scalar column of ``rows`` (nested values left out), at most ``max_columns`` of them."""
    keys = scalar_columns(list(rows), skip=skip)[:max_columns]
    if not rows or not keys:
        return None
    body = [[fmt(r.get(k)) if is_scalar(r.get(k)) else fmt(None) for k in keys] for r in rows]
    return Table(keys, body, caption)
