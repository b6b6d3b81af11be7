"""Where every number came from: each result file's ``meta`` (git, versions, machine, command) and configs.

docs/design.md's result files record in ``meta`` the git hash and dirty flag, the package versions,
the machine, the start time and the command that reruns them; rows may carry the ``config`` (or
``recipe``) they ran with. This section lists all of it, so a reader can tell which figures are
comparable (same versions, same machine) and how to rerun any of them.
"""

from __future__ import annotations

import json
from typing import Any

from peftshield.reporting.document import Bullets, Section, Table, Text, fmt
from peftshield.reporting.results import Results, is_error
from peftshield.reporting.rows import DIMENSIONS, cell_label, varying

_STANDARD_META = ("git", "dirty", "versions", "machine", "started", "command")
MAX_SKIPPED_LISTED = 8


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) and not value else fmt(value)


def files_table(results: Results) -> Table:
    """One row per result file: benchmark, rows, failed cells, git, start time, machine, command."""
    body = []
    for f in results.files:
        meta = f.meta
        git = meta.get("git")
        git = git[:10] if isinstance(git, str) else git
        other = {k: v for k, v in meta.items() if k not in _STANDARD_META}
        body.append(
            [
                f.name,
                f.benchmark,
                fmt(len(f.rows)),
                fmt(sum(is_error(r) for r in f.rows)),
                fmt(git),
                fmt(meta.get("dirty")),
                fmt(meta.get("started")),
                fmt(meta.get("machine")),
                fmt(meta.get("command")),
                _compact(other) if other else "—",
            ]
        )
    columns = [
        "file",
        "benchmark",
        "rows",
        "failed",
        "git",
        "dirty",
        "started",
        "machine",
        "command",
        "other meta",
    ]
    return Table(columns, body, "Result files and how they were produced")


def versions_table(results: Results) -> Table | None:
    """Package versions per result file (one column per package seen in any file)."""
    packages: list[str] = []
    for f in results.files:
        versions = f.meta.get("versions")
        if isinstance(versions, dict):
            packages += [p for p in versions if p not in packages]
    if not packages:
        return None
    body = []
    for f in results.files:
        versions = f.meta.get("versions") if isinstance(f.meta.get("versions"), dict) else {}
        body.append([f.name] + [fmt(versions.get(p)) for p in packages])
    return Table(["file", *packages], body, "Package versions")


def config_tables(results: Results) -> list[Table]:
    """Per benchmark: each cell's ``config`` / ``recipe`` (folded in HTML)."""
    tables = []
    for bench in results.benchmarks:
        rows = [
            r for r in bench.rows if isinstance(r.get("config"), dict) or isinstance(r.get("recipe"), dict)
        ]
        if not rows:
            continue
        keys = [k for k in DIMENSIONS if any(r.get(k) is not None for r in rows)]
        keys = [k for k in keys if k in varying(keys, rows)] or keys[:2]
        body = []
        for row in rows:
            config = row.get("config") if isinstance(row.get("config"), dict) else row.get("recipe")
            body.append([cell_label(row, keys), _compact(config)])
        tables.append(
            Table(
                ["cell", "configuration"], body, f"{bench.name}: configuration of every cell", collapsed=True
            )
        )
    return tables


def cell_meta_tables(results: Results) -> list[Table]:
    """Per benchmark: the ``meta`` a row carries itself (a grid cell records its own provenance)."""
    tables = []
    for bench in results.benchmarks:
        rows = [r for r in bench.rows if isinstance(r.get("meta"), dict)]
        if not rows:
            continue
        keys = [k for k in DIMENSIONS if any(r.get(k) is not None for r in rows)]
        keys = [k for k in keys if k in varying(keys, rows)] or keys[:2]
        body = []
        for row in rows:
            meta = row["meta"]
            git = meta.get("git")
            body.append(
                [
                    cell_label(row, keys),
                    fmt(git[:10] if isinstance(git, str) else git),
                    fmt(meta.get("dirty")),
                    fmt(meta.get("started")),
                    fmt(meta.get("machine")),
                    _compact(meta.get("versions")) if isinstance(meta.get("versions"), dict) else "—",
                ]
            )
        columns = ["cell", "git", "dirty", "started", "machine", "versions"]
        tables.append(Table(columns, body, f"{bench.name}: provenance of every cell", collapsed=True))
    return tables


def skipped_lines(skipped: list[tuple[str, str]]) -> list[str]:
    """The skipped JSON files, counted per top-level folder (a grid's artifact folders hold many)."""
    folders: dict[str, list[tuple[str, str]]] = {}
    for name, reason in skipped:
        top = name.split("/", 1)[0] + "/" if "/" in name else ""
        folders.setdefault(top, []).append((name, reason))
    lines = []
    for top, files in folders.items():
        reasons = "; ".join(sorted({reason for _, reason in files}))
        if len(files) <= MAX_SKIPPED_LISTED:
            lines += [f"{name}: {reason}" for name, reason in files]
        else:
            shown = ", ".join(name for name, _ in files[:3])
            lines.append(f"{top}: {len(files)} files ({shown}, ...): {reasons}")
    return lines


def provenance_section(results: Results) -> Section:
    """Files, versions, per-cell configurations, and the JSON files that were skipped."""
    section = Section("Configuration and versions")
    section.blocks.append(
        Text(
            f"Read from {results.root}: {len(results.files)} result file(s). Compare timings only between "
            "results from the same machine and run."
        )
    )
    section.blocks.append(files_table(results))
    versions = versions_table(results)
    if versions is not None:
        section.blocks.append(versions)
    section.blocks += config_tables(results)
    section.blocks += cell_meta_tables(results)
    if results.skipped:
        section.blocks.append(Text(f"{len(results.skipped)} other JSON file(s) were not read as results:"))
        section.blocks.append(Bullets(skipped_lines(results.skipped)))
    return section
