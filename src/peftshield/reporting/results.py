"""Find and read benchmark result files (docs/design.md, "Benchmark result files").

Every result file is a JSON object ``{"benchmark", "meta", "rows", "summary"}``. A results folder
is searched recursively (a grid run writes one file per cell, possibly in sub-folders); JSON files
of another shape (a model's ``config.json``, a run's ``run.json``) are skipped and listed as such,
hidden files and folders (temporary ``.name.partial`` folders of atomic writes) are not read, and
a file that is not valid JSON is an error naming it. Files of the same benchmark are merged: their
rows are concatenated in file order and each file's ``meta`` is kept for the provenance table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftshield.errors import PeftshieldError
from peftshield.utils.io import read_json

#: the order in which known benchmarks appear in the report; unknown ones follow, by name
KNOWN_BENCHMARKS = ("tuning", "retention", "psim", "lmsanitator", "comparison", "grid")


@dataclass
class ResultFile:
    """One result file as read: where it is (``name`` relative to the searched folder) and its parts."""

    path: Path
    name: str
    benchmark: str
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: Any


@dataclass
class Benchmark:
    """The rows of one benchmark, merged over all its result files."""

    name: str
    files: list[ResultFile] = field(default_factory=list)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row, failed cells included, in file order."""
        return [row for f in self.files for row in f.rows]

    @property
    def ok_rows(self) -> list[dict[str, Any]]:
        """The rows of cells that ran (no ``error`` field)."""
        return [row for row in self.rows if not is_error(row)]

    @property
    def error_rows(self) -> list[dict[str, Any]]:
        """The rows of failed cells."""
        return [row for row in self.rows if is_error(row)]

    @property
    def summary(self) -> Any:
        """The summary of the only file, or ``None`` when several files were merged."""
        return self.files[0].summary if len(self.files) == 1 else None


@dataclass
class Results:
    """Everything found under a results folder: the benchmarks, and the JSON files skipped."""

    root: Path
    benchmarks: list[Benchmark]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def files(self) -> list[ResultFile]:
        """Every result file read, benchmark by benchmark."""
        return [f for b in self.benchmarks for f in b.files]

    def get(self, name: str) -> Benchmark | None:
        """The benchmark called ``name``, if any file had it."""
        return next((b for b in self.benchmarks if b.name == name), None)

    def of_kind(self, kind: str) -> list[Benchmark]:
        """Every benchmark of ``kind`` (``grid`` gives each grid run, ``grid:<name>``)."""
        return [b for b in self.benchmarks if base_name(b.name) == kind]


def is_error(row: dict[str, Any]) -> bool:
    """A failed cell: a row with a non-empty ``error`` field."""
    return row.get("error") not in (None, "", False)


def _candidates(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # hidden folders hold temporary output of atomic writes; skip them and do not descend
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath) / f for f in sorted(filenames) if f.endswith(".json") and not f.startswith(".")
        ]
    return found


def parse_result(data: Any, name: str) -> tuple[str, dict, list, Any] | None:
    """Check one parsed JSON document; return its parts, or ``None`` when it is not a result file.

    A document with a ``benchmark`` key is taken for a result file, so a malformed one (rows
    that are not a list of objects, a benchmark name that is not a string) is an error, not a skip.
    """
    if not isinstance(data, dict) or "benchmark" not in data:
        return None
    benchmark, rows, meta = data["benchmark"], data.get("rows"), data.get("meta", {})
    if not isinstance(benchmark, str) or not benchmark.strip():
        raise PeftshieldError(f"{name}: 'benchmark' must be a non-empty string, got {benchmark!r}")
    if not isinstance(rows, list):
        raise PeftshieldError(f"{name}: 'rows' must be a list of objects, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise PeftshieldError(f"{name}: row {i} is not an object: {row!r:.60}")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise PeftshieldError(f"{name}: 'meta' must be an object, got {type(meta).__name__}")
    return benchmark.strip(), meta, rows, data.get("summary")


def group_name(result: ResultFile) -> str:
    """The benchmark a file's rows join: its ``benchmark``, or ``grid:<name>`` for a grid run.

    Grid runs are kept apart by their grid's name (``meta.grid``): two grids may have cells with
    the same labels (the demo grid and the comparison grid both have a BadNets / LoRA cell), and
    merging their rows would mix figures measured at different sizes.
    """
    grid = result.meta.get("grid")
    if result.benchmark == "grid" and isinstance(grid, str) and grid:
        return f"grid:{grid}"
    return result.benchmark


def base_name(name: str) -> str:
    """The kind of a benchmark group: ``grid`` for ``grid:<name>``, else the name itself."""
    return name.split(":", 1)[0]


def load_results(root: str | os.PathLike) -> Results:
    """Read every result file under ``root`` (a folder, searched recursively, or one file).

    Raises :class:`PeftshieldError` when ``root`` does not exist, a ``.json`` file cannot be read
    or parsed, a result file is malformed, or no result file is found at all.
    """
    root = Path(root)
    if not root.exists():
        raise PeftshieldError(f"results folder not found: {root}")
    base = root if root.is_dir() else root.parent
    files: list[ResultFile] = []
    skipped: list[tuple[str, str]] = []
    for path in _candidates(root):
        name = path.relative_to(base).as_posix()
        try:
            data = read_json(path)
        except PermissionError:
            raise PeftshieldError(f"cannot read {path}: permission denied") from None
        except OSError as err:
            raise PeftshieldError(f"cannot read {path}: {err.strerror or err}") from None
        parts = parse_result(data, name)
        if parts is None:
            skipped.append((name, "not a benchmark result (no 'benchmark' key)"))
            continue
        benchmark, meta, rows, summary = parts
        files.append(ResultFile(path, name, benchmark, meta, rows, summary))
    if not files:
        where = f"in {root}" if root.is_file() else f"under {root}"
        raise PeftshieldError(
            f"no benchmark result files {where} (JSON objects with 'benchmark' and 'rows', docs/design.md)"
        )
    grouped: dict[str, Benchmark] = {}
    for f in files:
        name = group_name(f)
        grouped.setdefault(name, Benchmark(name)).files.append(f)

    def order(name: str) -> tuple[int, str]:
        base = base_name(name)
        known = base in KNOWN_BENCHMARKS
        return (KNOWN_BENCHMARKS.index(base) if known else len(KNOWN_BENCHMARKS), name)

    return Results(root, [grouped[n] for n in sorted(grouped, key=order)], skipped)
