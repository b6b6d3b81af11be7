"""peftshield report: turn benchmark result files into report.md and report.html.

Reads every result file under RESULTS_DIR (recursively; docs/design.md "Benchmark result files":
{"benchmark", "meta", "rows", "summary"}) and writes one self-contained report: the tables and
plots of each benchmark (tuning, retention, psim, lmsanitator, comparison, grid; any other
benchmark as a table of its scalar columns), failed cells, the seed papers' claims and the issues'
targets beside our figures, and the configuration and package versions of every result.
"""

from __future__ import annotations

import argparse

from peftshield.commands.common import add_command

EPILOG = """examples:
  peftshield report bench/results                  # writes bench/results/report.md and report.html
  peftshield report runs/grid --out reports/grid   # a grid run's per-cell results, report elsewhere
  peftshield report bench/results/psim.json --out /tmp/psim-report

output: report.md (plots as embedded data: images) and report.html (inline SVG plots and style;
no script, loads nothing from the network). Existing report files in the folder are replaced; both
are written to temporary names first and renamed, so a failed run leaves no partial report.
JSON files of another shape under RESULTS_DIR are skipped and listed; a file that is not valid
JSON, a folder with no result file, or an output folder that cannot be written: exit status 2.
"""


def add_parser(subparsers) -> None:
    """Register ``report``."""
    parser = add_command(
        subparsers,
        "report",
        help="write report.md and report.html from benchmark result files",
        description=__doc__,
        epilog=EPILOG,
    )
    parser.add_argument(
        "results", metavar="RESULTS_DIR", help="folder searched recursively, or one result file"
    )
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="output folder (default: RESULTS_DIR itself)"
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build and write the report; print what was written."""
    from peftshield.reporting.build import write_report

    info = write_report(args.results, args.out)
    if not args.quiet:
        print(
            f"read {info.files} result file(s): {', '.join(info.benchmarks)}; {info.rows} rows, "
            f"{info.failed} failed cell(s); {info.tables} tables, {info.figures} plots"
        )
        for path in info.paths:
            print(f"wrote {path}")
    return 0
