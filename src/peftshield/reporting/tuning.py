"""The tuning benchmark (foundation issue): clean accuracy of every PEFT method and the loop's overhead.

Rows (``bench/results/tuning.json``): one per tuned method (``method``, optional ``pooling``,
``cacc``, ``dev_accuracy``, ``trainable_params``, ``epochs``, ``seconds_per_epoch``). The former
script's rows add a ``cell: throughput`` row comparing ``tune``'s loop with a plain torch + peft
loop (``throughput_ratio``); the grid's rows (``bench/grids/tuning.json``, issue 16) add
``seconds_per_step`` (:func:`peftshield.grid.stages.loop_figures`), and a ``lora`` row beside a
``peft-lora`` row of the same cell gives the own-loop / plain-peft-loop seconds-per-step ratio.
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


#: The method pair whose seconds per step compare peftshield's loop with a plain peft loop.
OWN_LOOP, PLAIN_LOOP = "lora", "peft-lora"


def _method_name(row: dict) -> str | None:
    """The registered method of a row (a grid row's label may differ: ``lora-s0``)."""
    method = (row.get("config") or {}).get("method")
    if isinstance(method, dict) and isinstance(method.get("name"), str):
        return method["name"]
    return row.get("method")


def _method_settings(row: dict) -> dict:
    """The method's hyperparameters of a row, without its name (``lora`` and ``peft-lora`` share them)."""
    method = (row.get("config") or {}).get("method")
    settings = (method.get("config") or {}) if isinstance(method, dict) else {}
    return {k: v for k, v in settings.items() if k != "method"}


def loop_pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """``(lora row, peft-lora row)`` pairs of the same backbone, corpus, attack and seed, with the
    same method settings and both a ``seconds_per_step``: the own-loop vs plain-peft-loop comparison."""

    def where(row: dict) -> tuple:
        return (row.get("backbone"), row.get("corpus"), row.get("attack"), row.get("seed"))

    timed = [r for r in rows if (number(r.get("seconds_per_step")) or 0.0) > 0]
    plain = [r for r in timed if _method_name(r) == PLAIN_LOOP]
    pairs = []
    for own in (r for r in timed if _method_name(r) == OWN_LOOP):
        match = next(
            (p for p in plain if where(p) == where(own) and _method_settings(p) == _method_settings(own)),
            None,
        )
        if match is not None:
            plain.remove(match)
            pairs.append((own, match))
    return pairs


def tuning_section(bench: Benchmark) -> Section:
    """CACC per method (table and bars), the throughput ratio and the own / plain-peft loop ratio."""
    section = Section("Tuning (clean accuracy per PEFT method)")
    section.blocks.append(
        Text(
            "Each method tunes the clean backbone on the victim corpus; CACC on its test split. The "
            "throughput ratio (former script) and the lora / peft-lora seconds-per-step ratio (grid) "
            "compare peftshield's training loop with a plain torch + peft loop on the same batches "
            "(1.0 = no overhead)."
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
                fmt(r.get("seconds_per_step")),
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
            "s / epoch",
            "s / step",
        ]
        section.blocks.append(Table(columns, body, "CACC per method (test split)"))
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
    pairs = loop_pairs(rows)
    if pairs:
        body = [
            [
                fmt(own.get("backbone")),
                fmt(own.get("corpus")),
                fmt(own.get("seed")),
                fmt(own["seconds_per_step"]),
                fmt(plain["seconds_per_step"]),
                fmt_ratio(own["seconds_per_step"] / plain["seconds_per_step"]),
                fmt(own.get("optimizer_steps")),
            ]
            for own, plain in pairs
        ]
        columns = [
            "backbone",
            "corpus",
            "seed",
            "lora s / step",
            "peft-lora s / step",
            "own / plain",
            "steps",
        ]
        caption = (
            "Seconds per optimiser step of peftshield's loop (lora) and a plain transformers + peft loop "
            "(peft-lora), same hyperparameters and batches, same run (below 1.00× = peftshield's loop faster)"
        )
        section.blocks.append(Table(columns, body, caption))
    empty = "No tuning cell with a CACC or a throughput ratio was found."
    return close_section(section, bench.rows, None if tuned or speed or pairs else empty)
