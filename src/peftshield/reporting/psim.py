"""The PSIM benchmark (issue 4): victims before and after the Poisoned Sample Identification Module.

PSIM (Zhao et al., NAACL Findings 2024, §3) rejects inputs on which a PEFT module trained with
random labels is confident. Rows: attack × method (× head) × threshold policy (the paper's
``fixed@0.7`` or ``calibrated@<FRR>`` on clean held-out data), with ``cacc``, ``asr`` (``asr_lms``
for task-agnostic attacks), ``defended_cacc``, ``defended_asr``, ``frr``, ``far``, ``auroc``,
``overhead_ratio`` and the curves ``roc: {fpr, tpr}`` and ``tradeoff: {threshold, frr, asr}``.
One row per policy (``bench/grids/psim.json`` run by ``peftshield bench run``, and the committed
file, converted to that shape) or one row nesting the policies (:func:`~.rows.expand_policies`)
are both read. The committed rows' timing is ``overhead_ratio_median3`` (the former script's median
of 3 repeats, a different protocol from the grid's ``overhead_ratio``).
"""

from __future__ import annotations

from typing import Any

from peftshield.reporting.document import Section, Text, fmt_ratio, fmt_seconds, number
from peftshield.reporting.plots import before_after_figures, curve_figures
from peftshield.reporting.results import Benchmark
from peftshield.reporting.retention import from_grid_rows, poison_table
from peftshield.reporting.rows import (
    asr_convention,
    asr_of,
    cacc_cost,
    close_section,
    defended_asr_of,
    expand_policies,
    has_metrics,
    policy_of,
    varying,
)
from peftshield.reporting.tables import Column, generic_table, rows_table


def _auroc_label(label: str, row: dict[str, Any]) -> str:
    value = number(row.get("auroc"))
    return f"{label} (AUROC {value:.3f})" if value is not None else label


def detector_columns(cell_keys: list[str]) -> list[Column]:
    """Cell keys, then the before / after and detection columns shared by the PSIM and LMSanitator tables."""
    return [
        *[Column(k, k) for k in cell_keys],
        Column("CACC", "cacc"),
        Column("ASR", asr_of),
        Column("ASR conv.", lambda r: asr_convention(r) if asr_of(r) is not None else None),
        Column("def. CACC", "defended_cacc"),
        Column("CACC cost", cacc_cost),
        Column("def. ASR", defended_asr_of),
        Column("FRR", "frr"),
        Column("FAR", "far"),
        Column("AUROC", "auroc"),
        Column("threshold value", "threshold_value"),
        Column("overhead", "overhead_ratio", fmt_ratio),
        Column("overhead (median of 3)", "overhead_ratio_median3", fmt_ratio),
        Column("fit s", "fit_seconds", fmt_seconds),
    ]


def psim_section(bench: Benchmark) -> Section:
    """Before / after tables per threshold policy, ASR bars, ROC and FRR–ASR trade-off curves."""
    section = Section("PSIM (input detection for task-specific backdoors)")
    section.blocks.append(
        Text(
            "Victims tuned on poisoned backbones, without defence and guarded by PSIM at each threshold "
            "policy (fixed = the paper's confidence threshold, calibrated = a target FRR on clean "
            "held-out data). Defended CACC counts a rejected clean input as wrong, defended ASR counts a "
            "rejected triggered input as blocked; CACC cost = CACC - defended CACC; overhead = guarded / "
            "undefended inference time, summed over every text set of the cell (the grid's protocol); "
            "overhead (median of 3) = the former script's median of 3 interleaved repeats on the clean "
            "test texts, a different protocol kept under its own name."
        )
    )
    rows = expand_policies([r for r in bench.ok_rows if has_metrics(r)])
    cell_keys = ["attack", "method", "head"] + varying(("backbone", "corpus", "seed"), rows)
    cell_keys = [k for k in cell_keys if any(r.get(k) is not None for r in rows)]
    if "head" in cell_keys and not varying(("head",), rows):
        cell_keys.remove("head")
    policies = list(dict.fromkeys(policy_of(r) for r in rows))
    for policy in policies:
        members = [r for r in rows if policy_of(r) == policy]
        table = rows_table(members, detector_columns(cell_keys), f"Before / after PSIM at threshold {policy}")
        if table is not None:
            section.blocks.append(table)
    group = ["attack"]
    line = [k for k in cell_keys if k != "attack"] or ["method"]
    section.blocks += before_after_figures(
        rows,
        group_by=group,
        bar_by=line,
        title="ASR before / after PSIM: {group}",
        caption="ASR of the undefended victim and defended ASR at each threshold policy, per method.",
    )
    section.blocks += curve_figures(
        rows,
        group_by=group,
        line_by=line,
        curve_name="roc",
        x="fpr",
        y="tpr",
        title="PSIM ROC: {group}",
        x_label="false positive rate (clean inputs flagged)",
        y_label="true positive rate (triggered inputs flagged)",
        caption="ROC of the PSIM score on clean vs triggered test inputs; dashed: chance.",
        diagonal=True,
        line_label=_auroc_label,
    )
    section.blocks += curve_figures(
        rows,
        group_by=group,
        line_by=line,
        curve_name="tradeoff",
        x="frr",
        y="asr",
        title="PSIM FRR–ASR trade-off: {group}",
        x_label="FRR (clean inputs rejected)",
        y_label="defended ASR",
        caption="As the threshold moves: the share of clean inputs rejected against the ASR left.",
    )
    poisons = poison_table(from_grid_rows(bench.ok_rows))
    if poisons is not None:
        section.blocks.append(poisons)
    others: dict[str, list[dict[str, Any]]] = {}
    for row in bench.ok_rows:
        if not has_metrics(row) and row.get("cell") != "poison":
            others.setdefault(str(row.get("cell") or "other"), []).append(row)
    for kind, members in others.items():  # e.g. the PSIM fits: fit time, thresholds
        table = generic_table(members, f"{kind} rows (scalar columns)")
        if table is not None:
            section.blocks.append(table)
    empty = "No victim or detector cell of this benchmark has finished."
    return close_section(section, bench.rows, None if rows else empty)
