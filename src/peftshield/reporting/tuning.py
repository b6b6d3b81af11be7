"""The tuning benchmark (foundation issue): clean accuracy of every PEFT method and the loop's overhead.

Rows (``bench/results/tuning.json``): one per tuned method (``method``, optional ``pooling``,
``cacc``, ``dev_accuracy``, ``trainable_params``, ``epochs``, ``seconds_per_epoch``), and a
``cell: throughput`` row comparing ``tune``'s loop with a plain torch + peft loop
(``throughput_ratio``).
"""

from __future__ import annotations

from peftshield.reporting.document import Figure, Section, Table, Text, fmt, fmt_ratio, fmt_seconds, number
from peftshield.reporting.results import Benchmark
from peftshield.reporting.rows import close_section
from peftshield.reporting.svg import bar_chart


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else fmt(value)


def _label(row: dict) -> str:
    pooling = row.get("pooling")
    return f"{row.get('method')}[{pooling}]" if pooling else str(row.get("method"))


def tuning_section(bench: Benchmark) -> Section:
    """CACC per method (table and bars) and the throughput ratio."""
    section = Section("Tuning (clean accuracy per PEFT method)")
    section.blocks.append(
        Text(
            "Each method tunes the clean backbone on the victim corpus; CACC on its test split. The "
            "throughput ratio compares peftshield's training loop with a plain torch + peft loop on the "
            "same batches (1.0 = no overhead)."
        )
    )
    rows = bench.ok_rows
    tuned = [r for r in rows if r.get("method") and number(r.get("cacc")) is not None]
    if tuned:
        body = [
            [
                _label(r),
                fmt(r.get("backbone")),
                fmt(r.get("corpus")),
                fmt(r["cacc"]),
                fmt(r.get("dev_accuracy")),
                _count(r.get("trainable_params")),
                fmt(r.get("epochs")),
                fmt(r.get("n_train")),
                fmt_seconds(r.get("seconds_per_epoch")),
            ]
            for r in tuned
        ]
        columns = [
            "method",
            "backbone",
            "corpus",
            "CACC",
            "dev acc.",
            "trainable params",
            "epochs",
            "n train",
        ]
        section.blocks.append(Table([*columns, "s / epoch"], body, "CACC per method (test split)"))
        svg = bar_chart(
            "Clean accuracy per method",
            [_label(r) for r in tuned],
            [("CACC", [r["cacc"] for r in tuned])],
            y_label="CACC",
            y_max=1.0,
        )
        section.blocks.append(Figure("Clean accuracy per method", svg, "CACC on the test split, per method."))
    speed = [r for r in rows if number(r.get("throughput_ratio")) is not None]
    if speed:
        body = [
            [
                fmt(r.get("method")),
                fmt(r.get("tune_examples_per_s")),
                fmt(r.get("plain_examples_per_s")),
                fmt_ratio(r["throughput_ratio"]),
                fmt(r.get("steps")),
                fmt(r.get("rounds")),
            ]
            for r in speed
        ]
        columns = ["method", "tune ex/s", "plain loop ex/s", "throughput ratio", "steps", "rounds"]
        section.blocks.append(Table(columns, body, "Throughput of the tuning loop"))
    empty = "No tuning cell with a CACC or a throughput ratio was found."
    return close_section(section, bench.rows, None if tuned or speed else empty)
