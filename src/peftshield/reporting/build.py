"""Assemble the report from a results folder and write ``report.md`` and ``report.html``.

The document is built once (:mod:`.document`) and rendered twice. Both files are rendered in
memory, written to temporary names in the output folder and only then renamed over
``report.md`` / ``report.html``: a failed run leaves any earlier report untouched and no partial
file behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peftshield.errors import PeftshieldError
from peftshield.reporting.document import Document, Section, Table, Text, fmt
from peftshield.reporting.results import Benchmark, Results, base_name, load_results
from peftshield.utils.io import write_texts

REPORT_FILES = ("report.md", "report.html")


def _builders() -> dict[str, Callable[[Benchmark], Section]]:
    from peftshield.reporting.adaptive import adaptive_section
    from peftshield.reporting.comparison import comparison_section
    from peftshield.reporting.lmsanitator import lmsanitator_section
    from peftshield.reporting.psim import psim_section
    from peftshield.reporting.retention import retention_section
    from peftshield.reporting.tuning import tuning_section

    return {
        "tuning": tuning_section,
        "retention": retention_section,
        "psim": psim_section,
        "lmsanitator": lmsanitator_section,
        "comparison": comparison_section,
        "adaptive": adaptive_section,
        "grid": lambda bench: comparison_section(bench, f"Grid run {_grid_title(bench.name)}(every cell)"),
    }


def _grid_title(name: str) -> str:
    return f"`{name.split(':', 1)[1]}` " if ":" in name else ""


def benchmark_section(bench: Benchmark) -> Section:
    """The section of one benchmark; rows a known layout cannot read are shown generically instead."""
    from peftshield.reporting.generic import generic_section

    builder = _builders().get(base_name(bench.name))
    if builder is None:
        return generic_section(bench)
    try:
        return builder(bench)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        note = (
            f"The rows are not in the shape the {bench.name} section expects ({type(err).__name__}: {err}); "
            "they are shown generically."
        )
        return generic_section(bench, note)


def overview(results: Results) -> Table:
    """Benchmarks found, with their files, finished rows and failed cells."""
    body = [
        [b.name, fmt(len(b.files)), fmt(len(b.rows)), fmt(len(b.ok_rows)), fmt(len(b.error_rows))]
        for b in results.benchmarks
    ]
    return Table(["benchmark", "files", "rows", "finished", "failed"], body, "Benchmarks found")


def build_report(results: Results) -> Document:
    """The report document: overview, one section per benchmark, claims vs measured, provenance."""
    from peftshield import __version__
    from peftshield.reporting.measured import claims_section
    from peftshield.reporting.provenance import provenance_section

    failed = sum(len(b.error_rows) for b in results.benchmarks)
    intro = [
        Text(
            f"peftshield {__version__} report of {len(results.files)} result file(s) under {results.root}. "
            "CACC: clean accuracy; ASR: attack success rate (PSIM convention: non-target inputs sent to "
            "the target; LMSanitator convention: correct inputs flipped by any trigger); defended figures "
            "count a rejected clean input as wrong and a rejected triggered input as blocked "
            "(docs/design.md)."
            + (f" {failed} failed cell(s) are listed in their sections." if failed else "")
        ),
        overview(results),
    ]
    sections = [benchmark_section(b) for b in results.benchmarks]
    sections += [claims_section(results), provenance_section(results)]
    return Document("peftshield benchmark report", intro, sections)


def check_out_dir(out: Path) -> None:
    """Fail before any work when ``out`` cannot become a writable folder."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise PeftshieldError(f"cannot write the report to {out}: {probe} is not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise PeftshieldError(f"cannot write the report to {out}: {probe} is not writable")


@dataclass
class ReportInfo:
    """What :func:`write_report` wrote and from what."""

    paths: list[Path]
    files: int
    benchmarks: list[str]
    rows: int
    failed: int
    tables: int
    figures: int


def write_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> ReportInfo:
    """Read every result under ``results_dir`` and write ``report.md`` and ``report.html`` to ``out_dir``.

    ``out_dir`` defaults to ``results_dir`` (the folder holding it when ``results_dir`` is one
    file). Existing report files are replaced. Raises :class:`PeftshieldError` when no result is
    found, a JSON file is unreadable, or the output folder cannot be written.
    """
    from peftshield.reporting.render_html import render_html
    from peftshield.reporting.render_markdown import render_markdown

    root = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else (root if root.is_dir() else root.parent)
    results = load_results(root)
    check_out_dir(out)
    doc = build_report(results)
    texts = {out / "report.md": render_markdown(doc), out / "report.html": render_html(doc)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_texts(texts)
    except OSError as err:
        raise PeftshieldError(f"cannot write the report to {out}: {err.strerror or err}") from None
    return ReportInfo(
        paths=list(texts),
        files=len(results.files),
        benchmarks=[b.name for b in results.benchmarks],
        rows=sum(len(b.rows) for b in results.benchmarks),
        failed=sum(len(b.error_rows) for b in results.benchmarks),
        tables=len(doc.tables()),
        figures=len(doc.figures()),
    )
