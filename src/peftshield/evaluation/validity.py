"""Which cells have a backdoor to defend: the one rule (docs/design.md, "Valid cells").

A cell (an attacked victim and its defence) is **no backdoor to defend** when

1. its victim never learned its task: the clean accuracy (``cacc``) is within
   :data:`CHANCE_MARGIN` (5 points) of chance, chance being the accuracy of always answering the
   clean test split's most frequent class (``chance_cacc`` in grid rows, :func:`chance_accuracy`;
   a row without it reads ``1 / n_labels``, and every built-in labelled corpus has 2 labels); or
2. its victim never carried the backdoor: its undefended ASR is not above the false-trigger rate of
   the same attack's triggers on the clean control (attack ``none``) of the same backbone, corpus,
   method, head and seed, read from the control row's ``by_attack[attack]["asr"]`` (the same ASR
   convention as the attacked row's ``asr``).

Such a cell is left out of every claim, win count and summary mean, and the report shows it as
"no backdoor to defend" with the reason (issue 13, "Valid cells"). A cell with no victim (detection
only) or no CACC is never excluded by rule 1; a cell whose control is missing is judged by rule 1
alone. This module is pure (row dicts in, reasons out) so that the grid and the report, which reads
result files only, call the same rule; it belongs to the base layer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

#: A victim whose CACC is within this many accuracy points (as a fraction) of chance learned nothing.
CHANCE_MARGIN = 0.05
#: Row keys that name a victim apart from its attack and defence: a control matches on all of them.
VICTIM_KEYS = ("backbone", "corpus", "method", "head", "seed", "split_seed")
#: The label of a clean control's attack.
CONTROL_ATTACK = "none"
#: The label the report shows for an excluded cell.
NO_BACKDOOR = "no backdoor to defend"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def chance_accuracy(labels: Iterable[Any]) -> float:
    """The accuracy of always answering the most frequent label (the chance level of a test split)."""
    counts = Counter(labels)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("chance accuracy of an empty label set")
    return max(counts.values()) / total


def chance_of(row: dict[str, Any]) -> float:
    """A row's chance accuracy: ``chance_cacc``, else ``1 / n_labels``, else 0.5 (two labels)."""
    value = _number(row.get("chance_cacc"))
    if value is not None:
        return value
    n_labels = _number(row.get("n_labels"))
    return 1.0 / n_labels if n_labels and n_labels >= 2 else 0.5


def _victim(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(repr(row.get(k)) for k in VICTIM_KEYS)


def false_trigger_rate(control: dict[str, Any], attack: str) -> float | None:
    """The control's ASR under ``attack``'s triggers (``by_attack[attack]["asr"]``), if measured."""
    entry = (control.get("by_attack") or {}).get(attack)
    return _number(entry.get("asr")) if isinstance(entry, dict) else None


def no_backdoor_reason(
    row: dict[str, Any], control: dict[str, Any] | None = None, undefended_asr: float | None = None
) -> str | None:
    """Why this attacked cell has no backdoor to defend, or ``None`` when it has one.

    ``control``: the clean control row of the same victim (``None``: rule 2 is not applied);
    ``undefended_asr``: the victim's ASR without a defence when the row lacks ``asr``.
    """
    attack = row.get("attack")
    if attack is None or attack == CONTROL_ATTACK:
        return None
    cacc = _number(row.get("cacc"))
    if cacc is not None:
        chance = chance_of(row)
        if cacc - chance <= CHANCE_MARGIN + 1e-12:
            return f"victim at chance (CACC {cacc:.3f}, chance {chance:.3f})"
    asr = _number(row.get("asr"))
    asr = undefended_asr if asr is None else asr
    if control is not None and asr is not None:
        floor = false_trigger_rate(control, str(attack))
        if floor is not None and asr <= floor:
            return f"ASR {asr:.3f} not above the clean control's false-trigger rate {floor:.3f}"
    return None


def no_backdoor_reasons(rows: Sequence[dict[str, Any]]) -> list[str | None]:
    """:func:`no_backdoor_reason` of every row (aligned with ``rows``), controls found among them.

    Each attacked row is matched with a clean control of the same victim (:data:`VICTIM_KEYS`)
    that measured this attack's triggers; a detector row without ``asr`` takes its victim's
    undefended ASR from the cell's ``defense: none`` row.
    """
    controls: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    undefended: dict[tuple[Any, ...], float] = {}
    for row in rows:
        if row.get("attack") == CONTROL_ATTACK and row.get("by_attack"):
            controls.setdefault(_victim(row), []).append(row)
        asr = _number(row.get("asr"))
        if row.get("defense") == "none" and asr is not None:
            undefended.setdefault((*_victim(row), repr(row.get("attack"))), asr)
    out: list[str | None] = []
    for row in rows:
        attack = row.get("attack")
        control = next(
            (c for c in controls.get(_victim(row), []) if false_trigger_rate(c, str(attack)) is not None),
            None,
        )
        out.append(no_backdoor_reason(row, control, undefended.get((*_victim(row), repr(row.get("attack"))))))
    return out


def valid_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with a backdoor to defend (or no attack): every row :func:`no_backdoor_reasons` keeps."""
    return [row for row, reason in zip(rows, no_backdoor_reasons(rows), strict=True) if reason is None]
