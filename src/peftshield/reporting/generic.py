"""A benchmark the report does not know: its scalar columns and summary, and its failed cells."""

from __future__ import annotations

from peftshield.reporting.document import Section, Table, Text, fmt
from peftshield.reporting.results import Benchmark
from peftshield.reporting.rows import close_section, is_scalar
from peftshield.reporting.tables import generic_table


def summary_table(summary: object) -> Table | None:
    """The scalar entries of a summary dict (one level of nesting flattened as ``a.b``)."""
    if not isinstance(summary, dict):
        return None
    body = []
    for key, value in summary.items():
        if is_scalar(value):
            body.append([str(key), fmt(value)])
        elif isinstance(value, dict):
            body += [[f"{key}.{k}", fmt(v)] for k, v in value.items() if is_scalar(v)]
    return Table(["summary key", "value"], body, "Summary (scalar entries)") if body else None


def generic_section(bench: Benchmark, note: str = "") -> Section:
    """Every scalar column of the rows, the scalar summary entries, and the failed cells."""
    section = Section(f"{bench.name} (benchmark without a dedicated section)")
    section.blocks.append(
        Text(note or "The report has no dedicated layout for this benchmark: its scalar columns follow.")
    )
    table = generic_table(bench.ok_rows, f"Rows of {bench.name} (scalar columns; nested values left out)")
    if table is not None:
        section.blocks.append(table)
    else:
        section.blocks.append(Text("No finished row with a scalar column."))
    summary = summary_table(bench.summary)
    if summary is not None:
        section.blocks.append(summary)
    return close_section(section, bench.rows)
