"""The LMSanitator benchmark (issue 5): a model-zoo scan, and monitored prompt-tuned victims.

LMSanitator (Wei et al., NDSS 2024) scans a pretrained backbone for predefined vectors (§4, PV
mining and filtering: a model with a PV is backdoored) and, at inference, flags and purges inputs
whose output signs match a PV (§5). Zoo rows are the grid's scan-only rows (``mode: scan``,
``bench/grids/lmsanitator_zoo.json``) or an older file's ``cell: zoo`` rows: ``label`` (ground
truth: ``backdoored`` or ``clean``), ``verdict``, ``score`` (the scan's per-model score),
``scan_seconds`` (older rows: ``seconds``) and the PV recovery (``pv_recovery_rate``,
``recovery_rate``, or a ``pv_recovery`` number or dict); victim rows carry ``asr_lms``,
``defended_asr_purge`` / ``defended_asr_reject`` (older: ``defended_asr``), ``frr`` and
``overhead_ratio``; the oracle monitor's rows (defence ``monitor-oracle``) are shown but never
counted as the defence's result. Detection accuracy, FPR and FNR come from
:func:`peftshield.evaluation.metrics.scan_metrics`, the AUROC of the per-model score from
:func:`peftshield.evaluation.metrics.auroc`.
"""

from __future__ import annotations

import statistics
from typing import Any

from peftshield.reporting.document import Figure, Section, Table, Text, fmt, fmt_seconds, number
from peftshield.reporting.plots import curve_figures
from peftshield.reporting.psim import detector_columns
from peftshield.reporting.results import Benchmark
from peftshield.reporting.rows import (
    asr_of,
    close_section,
    defended_asr_of,
    expand_policies,
    first_number,
    has_policies,
    varying,
)
from peftshield.reporting.svg import histogram
from peftshield.reporting.tables import Column, generic_table, rows_table

_LABELS = ("backdoored", "clean")


def _norm(value: Any) -> str | None:
    text = str(value).strip().lower() if isinstance(value, str) else None
    return text if text in _LABELS else None


def is_zoo_row(row: dict[str, Any]) -> bool:
    """A scanned zoo model: a ground-truth ``label`` and a ``verdict``, in no other tier's ``cell``.

    The benchmark's search-mode scans of the victim tier (``cell: search-scan``) have a label and a
    verdict too, but they rescan zoo models: counting them would count those models twice.
    """
    if row.get("mode") == "scan":
        return _norm(row.get("label")) is not None
    cell = row.get("cell")
    if cell is not None and cell != "zoo":
        return False
    return "verdict" in row and _norm(row.get("label")) is not None


def scan_seconds_of(row: dict[str, Any]) -> float | None:
    """The scan time of a zoo row: ``scan_seconds`` (grid rows), else ``seconds`` (older rows)."""
    return first_number(row, "scan_seconds", "seconds")


def is_oracle_row(row: dict[str, Any]) -> bool:
    """A row of the oracle monitor (the planted PVs): a bound, not the defence's own result."""
    config = row.get("config") if isinstance(row.get("config"), dict) else {}
    defense = config.get("defense") if isinstance(config.get("defense"), dict) else {}
    return defense.get("name") == "monitor-oracle" or row.get("defense") == "monitor-oracle"


def recovery_of(row: dict[str, Any]) -> float | None:
    """The share of the true PVs the scan recovered, wherever the row keeps it."""
    nested = row.get("pv_recovery") if isinstance(row.get("pv_recovery"), dict) else {}
    return first_number(row, "pv_recovery_rate", "recovery_rate", "pv_recovery", "recovery") or first_number(
        nested, "recovery_rate"
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def scan_summary(zoo: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Detection metrics over the zoo rows whose verdict is valid, and the rows left out (no verdict)."""
    from peftshield.evaluation.metrics import auroc, scan_metrics

    scored = [r for r in zoo if _norm(r.get("verdict")) is not None]
    unscored = [r for r in zoo if _norm(r.get("verdict")) is None]
    if not scored:
        return {}, unscored
    summary: dict[str, Any] = scan_metrics([r["verdict"] for r in scored], [r["label"] for r in scored])
    summary["n_backdoored"] = sum(_norm(r["label"]) == "backdoored" for r in scored)
    summary["n_clean"] = summary["n"] - summary["n_backdoored"]
    seconds = [s for s in (scan_seconds_of(r) for r in scored) if s is not None]
    with_score = [r for r in scored if number(r.get("score")) is not None]
    clean = [number(r["score"]) for r in with_score if _norm(r["label"]) == "clean"]
    backdoored = [number(r["score"]) for r in with_score if _norm(r["label"]) == "backdoored"]
    summary["auroc"] = auroc(clean, backdoored) if clean and backdoored else None
    summary["n_scored"] = len(with_score)
    if seconds:
        summary["seconds_mean"] = statistics.fmean(seconds)
        summary["seconds_median"] = statistics.median(seconds)
        summary["seconds_p90"] = _percentile(seconds, 0.9)
        summary["seconds_max"] = max(seconds)
    recovery = [
        v for v in (recovery_of(r) for r in scored if _norm(r["label"]) == "backdoored") if v is not None
    ]
    summary["recovery_mean"] = statistics.fmean(recovery) if recovery else None
    return summary, unscored


def _zoo_blocks(zoo: list[dict[str, Any]]) -> list:
    summary, unscored = scan_summary(zoo)
    blocks: list = []
    if summary:
        columns = ["models", "backdoored", "clean", "accuracy", "FPR", "FNR", "TP", "FP", "TN", "FN"]
        values = [summary[k] for k in ("n", "n_backdoored", "n_clean", "accuracy", "fpr", "fnr")]
        values += [summary[k] for k in ("tp", "fp", "tn", "fn")]
        timing = [("mean scan s", "seconds_mean"), ("median s", "seconds_median"), ("p90 s", "seconds_p90")]
        timing += [("max s", "seconds_max")]
        for header, key in timing:
            if key in summary:
                columns.append(header)
                values.append(fmt_seconds(summary[key]))
        columns.append("PV recovery (mean)")
        values.append(summary["recovery_mean"])
        columns.append("score AUROC")
        values.append(summary["auroc"] if summary["auroc"] is not None else "— (no per-model score)")
        blocks.append(
            Table(
                columns,
                [[v if isinstance(v, str) else fmt(v) for v in values]],
                "Model scan over the zoo (positive = backdoored)",
            )
        )
    if unscored:
        blocks.append(Text(f"{len(unscored)} zoo model(s) have no valid verdict and are not scored."))
    group_key = next((k for k in ("builder", "attack", "family", "kind") if any(r.get(k) for r in zoo)), None)
    if group_key:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in zoo:
            name = str(row.get(group_key) or ("clean" if _norm(row.get("label")) == "clean" else "—"))
            groups.setdefault(name, []).append(row)
        body = []
        for name, members in groups.items():
            scored = [r for r in members if _norm(r.get("verdict")) is not None]
            right = sum(_norm(r["verdict"]) == _norm(r["label"]) for r in scored)
            seconds = [s for s in (scan_seconds_of(r) for r in members) if s is not None]
            recovery = [v for v in (recovery_of(r) for r in members) if v is not None]
            body.append(
                [
                    name,
                    fmt(len(members)),
                    fmt(right / len(scored) if scored else None),
                    fmt_seconds(statistics.fmean(seconds) if seconds else None),
                    fmt(statistics.fmean(recovery) if recovery else None),
                ]
            )
        blocks.append(
            Table(
                [group_key, "models", "verdict correct", "mean scan s", "PV recovery"],
                body,
                f"Zoo by {group_key}",
            )
        )
    per_model = rows_table(
        zoo,
        [
            Column("model", lambda r: r.get("model") or r.get("name") or r.get("folder")),
            Column("label", "label"),
            Column("verdict", "verdict"),
            Column("builder", lambda r: r.get("builder") or r.get("attack")),
            Column("seed", "seed"),
            Column("score", "score"),
            Column("PVs found", "n_pvs"),
            Column("PV recovery", recovery_of),
            Column("attack sign match", "attack_sign_match"),
            Column("drift", "clean_drift"),
            Column("scan s", scan_seconds_of, fmt_seconds),
        ],
        "Every scanned model",
        collapsed=True,
    )
    if per_model is not None:
        blocks.append(per_model)
    by_label: dict[str, list[float]] = {}
    for row in zoo:
        seconds = scan_seconds_of(row)
        if seconds is not None:
            by_label.setdefault(_norm(row.get("label")) or "?", []).append(seconds)
    if by_label:
        title = "LMSanitator scan time per model"
        svg = histogram(title, sorted(by_label.items()), x_label="scan time (s)")
        blocks.append(Figure(title, svg, "Distribution of the scan time per model, by ground truth."))
    return blocks


def lmsanitator_section(bench: Benchmark) -> Section:
    """Zoo detection table, scan-time plot, and the monitored victims' defended figures."""
    section = Section("LMSanitator (model scan and inference-time monitor)")
    section.blocks.append(
        Text(
            "Model scan: PV mining and filtering on each backbone of a zoo of backdoored and clean models "
            "(verdict backdoored when a PV survives the filters). Monitor: prompt-tuned victims of the "
            "backdoored backbones, flagged inputs purged; ASR in the LMSanitator convention."
        )
    )
    rows = bench.ok_rows
    zoo = [r for r in rows if is_zoo_row(r)]
    measured = [r for r in rows if not is_zoo_row(r) and _is_victim(r)]
    victims = expand_policies(measured)
    other = [r for r in rows if not is_zoo_row(r) and not _is_victim(r)]
    if zoo:
        section.subsections.append(Section("Model scan", _zoo_blocks(zoo)))
    if victims:
        keys = [k for k in ("attack", "method", "defense", "threshold") if any(r.get(k) for r in victims)]
        keys += [k for k in varying(("backbone", "model", "seed"), victims) if k not in keys]
        blocks = []
        table = rows_table(victims, detector_columns(keys), "Monitored victims: before / after")
        if table is not None:
            blocks.append(table)
        blocks += curve_figures(
            victims,
            group_by=["attack"],
            line_by=[k for k in keys if k not in ("attack", "threshold")] or ["method"],
            curve_name="roc",
            x="fpr",
            y="tpr",
            title="Monitor ROC: {group}",
            x_label="false positive rate",
            y_label="true positive rate",
            caption="ROC of the monitor's match score on clean vs triggered inputs; dashed: chance.",
            diagonal=True,
        )
        section.subsections.append(Section("Monitored victims", blocks))
    if other:
        table = generic_table(other, "Other rows of this benchmark")
        if table is not None:
            section.blocks.append(table)
    return close_section(section, bench.rows, None if rows else "No cell of this benchmark has finished.")


def _is_victim(row: dict[str, Any]) -> bool:
    """A monitored victim: it has an (un)defended ASR, at top level or per threshold policy."""
    return asr_of(row) is not None or defended_asr_of(row) is not None or has_policies(row)
