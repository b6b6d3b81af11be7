"""The detector comparison (issue 6) and grid cells: PSIM and the LMSanitator monitor vs STRIP, RAP, ONION.

Rows carry a ``defense`` (``psim``, ``monitor``, a baseline: ``strip``, ``rap``, ``onion`` or any
other registered detector, or ``none`` for the undefended victim) on a cell (backbone, corpus,
attack, method, seed), with ``auroc``, ``defended_asr_reject`` (older files: ``defended_asr`` or
``defended_asr_lms``), ``cacc`` / ``defended_cacc``, ``frr``, ``far``, ``overhead_ratio`` and
optionally a ``roc`` curve. A detector row without ``cacc`` / ``asr`` takes
them from the cell's ``none`` row. The AUROC table marks the best detector of each cell and the
text says where a baseline beats our detectors (the issue's target is the opposite). A cell with no
backdoor to defend (:mod:`peftshield.evaluation.validity`, docs/design.md "Valid cells": a victim at
chance, or one whose ASR is not above the clean control's false-trigger rate) is shown as such and
counted neither as a win nor as a loss.
"""

from __future__ import annotations

from typing import Any

from peftshield.evaluation.validity import NO_BACKDOOR, no_backdoor_reasons
from peftshield.reporting.document import Bullets, Section, Table, Text, fmt, fmt_ratio, number
from peftshield.reporting.plots import curve_figures, group_rows
from peftshield.reporting.results import Benchmark
from peftshield.reporting.rows import (
    asr_of,
    cacc_cost,
    cell_label,
    close_section,
    defended_asr_of,
    expand_policies,
    policy_of,
    varying,
)
from peftshield.reporting.tables import Column, generic_table, rows_table

OURS = ("psim", "monitor", "lmsanitator")


#: Column order of the baselines the project ships; any other defence a result file names (a
#: third-party registered detector) follows them alphabetically. The report reads result files only,
#: never the detector registry (docs/design.md, "Layers").
SHIPPED_BASELINES = ("strip", "rap", "onion")


def is_baseline(name: Any) -> bool:
    """Whether a row's ``defense`` is a baseline: any detector but ours (registered here or not:
    the result file, not this installation, says what was measured) and ``none``."""
    return str(name) not in OURS and str(name) != "none"


CELL_KEYS = ("backbone", "corpus", "attack", "method", "head", "seed")


def cell_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The keys naming a cell: attack and method always (when present), the others when they vary."""
    keys = [k for k in ("attack", "method") if any(r.get(k) is not None for r in rows)]
    return [k for k in CELL_KEYS if k in keys or k in varying(CELL_KEYS, rows)]


def _fill_from_undefended(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    base: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("defense") == "none":
            base.setdefault(cell_label(row, keys), row)
    out = []
    for row in rows:
        none = base.get(cell_label(row, keys))
        extra = {}
        if none is not None and row is not none:
            for key in ("cacc", "asr", "asr_lms"):
                if row.get(key) is None and none.get(key) is not None:
                    extra[key] = none[key]
        out.append({**row, **extra} if extra else row)
    return out


def _detector_rank(name: Any) -> tuple[int, str]:
    name = str(name)
    order = (*OURS, *SHIPPED_BASELINES, "none")
    return (order.index(name) if name in order else len(order), name)


def auroc_table(rows: list[dict[str, Any]], keys: list[str]) -> tuple[Table | None, list[str]]:
    """Cells × detectors AUROC (best per cell in bold), and one line per cell where a baseline wins."""
    detectors = sorted({str(r["defense"]) for r in rows if r.get("defense") != "none"}, key=_detector_rank)
    grid: dict[str, dict[str, float]] = {}
    invalid: dict[str, str] = {}
    for row, reason in zip(rows, no_backdoor_reasons(rows), strict=True):
        value = number(row.get("auroc"))
        if value is not None and row.get("defense") != "none":
            grid.setdefault(cell_label(row, keys), {}).setdefault(str(row["defense"]), value)
            if reason is not None:
                invalid.setdefault(cell_label(row, keys), reason)
    if not grid:
        return None, []
    body, bold, notes = [], set(), []
    ours_win = comparable = 0
    for r, (cell, scores) in enumerate(grid.items()):
        best = max(scores.values())
        line = [cell]
        for c, det in enumerate(detectors, start=1):
            value = scores.get(det)
            line.append(fmt(value))
            if value is not None and value == best:
                bold.add((r, c))
        ours = {d: v for d, v in scores.items() if d in OURS}
        base = {d: v for d, v in scores.items() if is_baseline(d)}
        if cell in invalid:
            verdict = f"{NO_BACKDOOR}: {invalid[cell]}"
            notes.append(f"{cell}: {NO_BACKDOOR} ({invalid[cell]}); not counted")
        elif ours and base:
            comparable += 1
            top_ours = max(ours, key=ours.get)
            top_base = max(base, key=base.get)
            if ours[top_ours] > base[top_base]:
                ours_win += 1
                verdict = f"ours ({top_ours})"
            else:
                verdict = f"baseline ({top_base})"
                notes.append(
                    f"{cell}: baseline {top_base} AUROC {base[top_base]:.3f} >= our best "
                    f"({top_ours}) {ours[top_ours]:.3f}"
                )
        else:
            verdict = "—"
        line.append(verdict)
        body.append(line)
    caption = "AUROC per detector and cell (best in bold); 'winner' compares our best with the best baseline"
    table = Table(["cell", *detectors, "winner"], body, caption, bold=bold)
    if comparable or invalid:
        left_out = f" ({len(invalid)} cell(s) with {NO_BACKDOOR} left out)" if invalid else ""
        notes.insert(
            0,
            f"Our detectors' AUROC is above every baseline's in {ours_win} of {comparable} cells{left_out}.",
        )
    return table, notes


def comparison_section(bench: Benchmark, title: str | None = None) -> Section:
    """The detector comparison: long table, AUROC pivot with winners, ROC per cell; other rows generically."""
    name = bench.name
    section = Section(title or f"{name.capitalize()} (detectors compared on the same cells)")
    section.blocks.append(
        Text(
            "Each detector guards the same victims. CACC cost = CACC - defended CACC (a rejected clean "
            "input counts as wrong); defended ASR counts a rejected triggered input as blocked; overhead = "
            "defended / undefended inference time; 'none' is the undefended victim."
        )
    )
    rows = expand_policies(bench.ok_rows)
    detector_rows = [r for r in rows if r.get("defense") is not None]
    others = [r for r in rows if r.get("defense") is None]
    if detector_rows:
        keys = cell_keys(detector_rows)
        detector_rows = _fill_from_undefended(detector_rows, keys)
        order = {cell: i for i, cell in enumerate(group_rows(detector_rows, keys))}
        detector_rows.sort(
            key=lambda r: (order[cell_label(r, keys)], _detector_rank(r.get("defense")), policy_of(r))
        )
        columns = [
            Column("cell", lambda r: cell_label(r, keys)),
            Column("detector", "defense"),
            Column("threshold", lambda r: policy_of(r) if policy_of(r) != "—" else None),
            Column("AUROC", "auroc"),
            Column("ASR (no defence)", asr_of),
            Column("def. ASR", defended_asr_of),
            Column("CACC", "cacc"),
            Column("CACC cost", cacc_cost),
            Column("FRR", "frr"),
            Column("FAR", "far"),
            Column("overhead", "overhead_ratio", fmt_ratio),
        ]
        reasons = {
            id(r): reason
            for r, reason in zip(detector_rows, no_backdoor_reasons(detector_rows), strict=True)
            if reason is not None
        }
        if reasons:
            columns.append(Column(NO_BACKDOOR, lambda r: reasons.get(id(r))))
        table = rows_table(detector_rows, columns, "Every detector on every cell")
        if table is not None:
            section.blocks.append(table)
        corrected = [r for r in detector_rows if number(r.get("corrected_asr")) is not None]
        table = rows_table(
            corrected,
            [
                Column("cell", lambda r: cell_label(r, keys)),
                Column("defence", "defense"),
                Column("CACC", "cacc"),
                Column("corrected CACC", "corrected_cacc"),
                Column("ASR (no defence)", asr_of),
                Column("corrected ASR", "corrected_asr"),
            ],
            "Correction defences (ONION): the victim reads the cleaned text, nothing is rejected",
        )
        if table is not None:
            section.blocks.append(table)
        pivot, notes = auroc_table(detector_rows, keys)
        if pivot is not None:
            section.blocks.append(pivot)
        if notes:
            section.blocks.append(Bullets(notes))
        section.blocks += curve_figures(
            [r for r in detector_rows if r.get("defense") != "none"],
            group_by=keys,
            line_by=["defense"],
            curve_name="roc",
            x="fpr",
            y="tpr",
            title="ROC per detector: {group}",
            x_label="false positive rate (clean inputs flagged)",
            y_label="true positive rate (triggered inputs flagged)",
            caption="ROC of each detector's score on the same clean and triggered inputs; dashed: chance.",
            diagonal=True,
            line_label=lambda label, row: (
                f"{label} (AUROC {row['auroc']:.3f})" if number(row.get("auroc")) is not None else label
            ),
        )
        section.blocks += curve_figures(
            [r for r in detector_rows if r.get("defense") != "none"],
            group_by=keys,
            line_by=["defense"],
            curve_name="tradeoff",
            x="frr",
            y="asr",
            title="FRR–ASR trade-off per detector: {group}",
            x_label="FRR (clean inputs rejected)",
            y_label="defended ASR",
            caption="As each detector's threshold moves: clean inputs rejected against the ASR left.",
        )
    if others:
        table = generic_table(others, "Rows without a detector")
        if table is not None:
            section.blocks.append(table)
    return close_section(section, bench.rows, None if rows else "No cell of this benchmark has finished.")
