"""Reading result rows whatever their exact nesting: metric look-ups, threshold policies, curves.

The row keys are docs/design.md's (``cacc``, ``asr``, ``asr_lms``, ``defended_cacc``, ``defended_asr``,
``frr``, ``far``, ``auroc``, ``overhead_ratio`` ...). The defended ASR has two meanings, named
apart in the grid's rows: ``defended_asr_reject`` (a flagged input is rejected, hence blocked) and
``defended_asr_purge`` (a flagged input is purged of words and answered, LMSanitator's mode);
older files say ``defended_asr`` (or ``defended_asr_lms``), read as the rejection figure unless
the benchmark purged (:func:`defended_asr_of`). Benchmarks that evaluate a detector at
several thresholds may write one row per threshold policy (``"threshold": "fixed@0.7"``) or one
row holding a dict per policy (``"policies": {"fixed@0.7": {...}, "calibrated@0.02": {...}}``);
:func:`expand_policies` turns the second form into the first. Keys the report does not know are
ignored, never an error.
"""

from __future__ import annotations

import re
from typing import Any

from peftshield.reporting.document import Section, Table, Text, fmt, number
from peftshield.reporting.results import is_error

#: keys that say which cell a row is (shown in failed-cell listings and cell labels), in this order
DIMENSIONS = (
    "cell",
    "backbone",
    "corpus",
    "poison_corpus",
    "attack",
    "method",
    "pooling",
    "recipe",
    "budget",
    "head",
    "defense",
    "threshold",
    "model",
    "name",
    "label",
    "seed",
)

#: names under which a row may nest its per-threshold-policy results
POLICY_CONTAINERS = ("policies", "by_policy", "by_threshold", "thresholds", "threshold_policies", "at")
#: keys of per-policy results: a nested dict holding one of these is a policy's result
POLICY_METRICS = (
    "defended_asr_reject",
    "defended_asr_purge",
    "defended_asr",
    "defended_asr_lms",
    "defended_cacc",
    "frr",
    "far",
)
#: the defended-ASR keys by meaning, in the order they are read (the old names last)
DEFENDED_ASR_KEYS = {
    "reject": ("defended_asr_reject", "defended_asr", "defended_asr_lms"),
    "purge": ("defended_asr_purge", "defended_asr", "defended_asr_lms"),
}
_POLICY_NAME = re.compile(r"^(fixed|calibrated|paper|frr|target)\b|@", re.IGNORECASE)


def first_number(row: dict[str, Any], *keys: str) -> float | None:
    """The first of ``keys`` that holds a finite number in ``row``."""
    for key in keys:
        value = number(row.get(key))
        if value is not None:
            return value
    return None


def on_test_split(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows measured on the test split: a row of a dev-split grid (``evaluate_on: dev``) made a
    choice and never counts as a result (docs/design.md, "Choosing on the dev split")."""
    return [row for row in rows if row.get("evaluate_on", "test") == "test"]


def asr_of(row: dict[str, Any]) -> float | None:
    """The undefended ASR: ``asr`` (PSIM convention), else ``asr_lms`` (LMSanitator convention)."""
    return first_number(row, "asr", "asr_lms")


def defended_asr_of(row: dict[str, Any], prefer: str = "reject") -> float | None:
    """The defended ASR in whichever convention and name the row has.

    ``prefer``: ``reject`` (a flagged input is blocked; every detector's figure) or ``purge``
    (LMSanitator's purged answer, where the row has one); either falls back to the other meaning,
    then to the old names ``defended_asr`` / ``defended_asr_lms``.
    """
    if prefer not in DEFENDED_ASR_KEYS:
        raise ValueError(f"prefer must be one of {', '.join(DEFENDED_ASR_KEYS)}, got {prefer!r}")
    other = "purge" if prefer == "reject" else "reject"
    mine, theirs = DEFENDED_ASR_KEYS[prefer], DEFENDED_ASR_KEYS[other]
    return first_number(row, mine[0], theirs[0], *mine[1:])


#: the figures that make a row a measurement of a victim or a detector
METRICS = (
    "cacc",
    "asr",
    "asr_lms",
    "defended_cacc",
    "defended_asr_reject",
    "defended_asr_purge",
    "defended_asr",
    "defended_asr_lms",
    "frr",
    "far",
    "auroc",
)


def has_metrics(row: dict[str, Any]) -> bool:
    """Whether ``row`` holds any of :data:`METRICS` (at top level or per threshold policy)."""
    return first_number(row, *METRICS) is not None or has_policies(row)


def asr_convention(row: dict[str, Any]) -> str:
    """``psim`` or ``lms``: the convention of :func:`asr_of` for this row."""
    if row.get("asr_convention") in ("psim", "lms"):
        return row["asr_convention"]
    return "psim" if number(row.get("asr")) is not None else "lms"


def cacc_cost(row: dict[str, Any]) -> float | None:
    """Clean accuracy lost to the defence: ``cacc - defended_cacc`` (``None`` if either is missing)."""
    before, after = number(row.get("cacc")), number(row.get("defended_cacc"))
    return None if before is None or after is None else before - after


def policy_of(row: dict[str, Any]) -> str:
    """The threshold policy of a row (``fixed@0.7``, ``calibrated@0.02`` ...), or ``—``."""
    for key in ("threshold_policy", "policy", "threshold"):
        value = row.get(key)
        if isinstance(value, str) and value:
            return value
    value = number(row.get("threshold"))
    return f"threshold {value:g}" if value is not None else "—"


def _policy_container(row: dict[str, Any]) -> str | None:
    for key, value in row.items():
        if not isinstance(value, dict) or not value:
            continue
        if not all(isinstance(v, dict) for v in value.values()):
            continue
        holds_results = any(any(m in v for m in POLICY_METRICS) for v in value.values())
        named_like_policies = all(_POLICY_NAME.search(str(k)) for k in value)
        if holds_results and (key in POLICY_CONTAINERS or named_like_policies):
            return key
    return None


def has_policies(row: dict[str, Any]) -> bool:
    """Whether ``row`` nests its results per threshold policy (see :func:`expand_policies`)."""
    return not is_error(row) and _policy_container(row) is not None


def expand_policies(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per threshold policy: a row nesting per-policy dicts becomes one row per policy.

    The outer keys (cell identity, undefended figures, curves) are kept in every expanded row and
    the policy's own keys override them; the policy's name becomes ``threshold`` unless the nested
    dict names it itself. Rows without nesting, and failed cells, pass through unchanged.
    """
    out = []
    for row in rows:
        key = None if is_error(row) else _policy_container(row)
        if key is None:
            out.append(row)
            continue
        outer = {k: v for k, v in row.items() if k != key}
        for name, inner in row[key].items():
            merged = {**outer, **inner}
            if not isinstance(inner.get("threshold"), str) and not inner.get("policy"):
                if number(inner.get("threshold")) is not None:
                    merged["threshold_value"] = inner["threshold"]
                merged["threshold"] = str(name)
            out.append(merged)
    return out


def curve(row: dict[str, Any], name: str, x: str, y: str) -> tuple[list[float], list[float]] | None:
    """A curve stored as ``row[name] = {x: [...], y: [...]}`` (or ``row[name + '_' + x]`` lists).

    Returns the finite (x, y) pairs, or ``None`` when the row has no usable curve.
    """
    value = row.get(name)
    if isinstance(value, dict):
        xs, ys = value.get(x), value.get(y)
    else:
        xs, ys = row.get(f"{name}_{x}"), row.get(f"{name}_{y}")
    if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
        return None
    pairs = [(number(a), number(b)) for a, b in zip(xs, ys, strict=True)]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if len(pairs) < 2:
        return None
    return [a for a, _ in pairs], [b for _, b in pairs]


def present(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """The ``columns`` that at least one row has a value for."""
    return [c for c in columns if any(r.get(c) is not None for r in rows)]


def varying(keys: list[str] | tuple[str, ...], rows: list[dict[str, Any]]) -> list[str]:
    """The ``keys`` whose values differ between rows (the ones worth showing in a cell label)."""
    out = []
    for key in keys:
        values = {repr(r.get(key)) for r in rows}
        if len(values) > 1:
            out.append(key)
    return out


def cell_label(row: dict[str, Any], keys: list[str]) -> str:
    """``attack / method / ...``: the values of ``keys`` that the row has, joined."""
    parts = [str(row[k]) for k in keys if row.get(k) is not None and is_scalar(row[k])]
    return " / ".join(parts) if parts else "(all)"


def first_line(text: Any, limit: int = 160) -> str:
    """The first line of an error message, cut at ``limit`` characters."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failed_cells_table(rows: list[dict[str, Any]], caption: str = "") -> Table | None:
    """The failed cells (rows with ``error``) with the keys that identify them; ``None`` if none failed."""
    failed = [r for r in rows if is_error(r)]
    if not failed:
        return None
    columns = present([d for d in DIMENSIONS if d != "label" or any("verdict" in r for r in failed)], failed)
    body = [[fmt(r.get(c)) for c in columns] + [first_line(r["error"])] for r in failed]
    return Table(
        columns + ["error"],
        body,
        caption or f"Failed cells ({len(failed)}): each ran and raised; its figures are missing above.",
    )


def is_scalar(value: Any) -> bool:
    """A value a generic table can show in one cell."""
    return value is None or isinstance(value, str | int | float | bool)


def scalar_columns(rows: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> list[str]:
    """The keys, in first-seen order, whose values are scalars in every row that has them."""
    seen: dict[str, bool] = {}
    for row in rows:
        for key, value in row.items():
            if key in skip:
                continue
            seen[key] = seen.get(key, True) and is_scalar(value)
    return [k for k, ok in seen.items() if ok and any(r.get(k) is not None for r in rows)]


def close_section(section: Section, rows: list[dict[str, Any]], empty: str | None = None) -> Section:
    """Finish a benchmark's section: its failed cells (if any), then ``empty`` as a note when given.

    ``empty`` is the sentence a section shows when none of its cells finished; pass ``None`` when
    something did.
    """
    failed = failed_cells_table(rows)
    if failed is not None:
        section.blocks.append(failed)
    if empty:
        section.blocks.append(Text(empty))
    return section
