"""Data poisoning: ``examples -> poisoned examples``, a pure seeded function (docs/design.md: data and weight
poisoning are different types, after ART's ``poison(x, y) -> (x', y')``).

Task-specific weight poisoning (:mod:`peftshield.attacks.task_specific`) trains on the output of
:func:`poison_dataset`; evaluation inserts triggers with
:func:`peftshield.data.triggers.insert_trigger` and never relabels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from peftshield.data.records import Example
from peftshield.data.triggers import Trigger, insert_trigger
from peftshield.errors import PeftshieldError

MODES: tuple[str, ...] = ("clean", "dirty")


def check_target(examples: Sequence[Example], target: int) -> list[int]:
    """Raise unless ``target`` is one of the labels present in ``examples``; return the sorted labels."""
    labels = sorted({e.label for e in examples})
    if not labels or labels[0] < 0:
        raise PeftshieldError(
            "poisoning needs labelled examples (labels >= 0); is this an unlabelled corpus?"
        )
    if isinstance(target, bool) or not isinstance(target, int | np.integer) or int(target) not in labels:
        raise PeftshieldError(
            f"target label {target!r} is not in the label set {labels} of the poisoning corpus"
        )
    return labels


def n_poisoned(n_eligible: int, rate: float, max_count: int | None = None) -> int:
    """How many of ``n_eligible`` samples ``rate`` poisons: ``round(rate · n)``, >= 1, <= ``max_count``."""
    k = max(1, int(math.floor(rate * n_eligible + 0.5)))
    return min(k, n_eligible, max_count) if max_count is not None else min(k, n_eligible)


def poison_dataset(
    examples: Sequence[Example],
    trigger: Trigger,
    *,
    target: int,
    mode: str,
    rate: float,
    seed: int,
    max_count: int | None = None,
) -> list[Example]:
    """Return a copy of ``examples`` in which a seeded share carries ``trigger``, in the same order.

    ``mode="clean"`` (clean-label, the PSIM reference code's attack): the eligible samples are
    those whose label IS ``target``; the chosen ones get the trigger and keep their label.
    ``mode="dirty"`` (BadNets / InSent): the eligible samples are those whose label is NOT
    ``target``; the chosen ones get the trigger and are relabelled to ``target``.

    ``rate`` in ``(0, 1]`` is the share of eligible samples poisoned (:func:`n_poisoned`), capped at
    ``max_count``. The choice uses ``numpy.random.default_rng([seed, 1])`` and the insertions
    :func:`~peftshield.data.triggers.insert_trigger` with ``seed``, so the output is a pure
    function of the inputs. Poisoned copies carry ``poisoned=True``, ``trigger`` (its
    description), ``target`` and ``meta["insertion"]`` (what went where) plus ``meta["poison"]`` =
    ``{"mode", "original_label", "rate", "seed"}``; untouched samples are returned as they are.
    """
    if mode not in MODES:
        raise PeftshieldError(f"unknown poisoning mode {mode!r}; choose clean or dirty")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
        raise PeftshieldError(f"poison rate must lie in (0, 1], got {rate!r}")
    if max_count is not None and max_count < 1:
        raise PeftshieldError(f"max_count must be at least 1, got {max_count}")
    if not isinstance(trigger, Trigger):
        raise PeftshieldError(f"poison_dataset: expected a Trigger, got {type(trigger).__name__}")
    if any(not isinstance(e, Example) for e in examples):
        raise PeftshieldError("poison_dataset: expected Example records")
    check_target(examples, target)
    target = int(target)
    labels = np.fromiter((e.label for e in examples), dtype=np.int64, count=len(examples))
    eligible = np.flatnonzero(labels == target if mode == "clean" else labels != target)
    if eligible.size == 0:
        which = "with" if mode == "clean" else "without"
        raise PeftshieldError(f"no sample {which} the target label {target} to poison ({mode}-label)")
    k = n_poisoned(len(eligible), float(rate), max_count)
    # A generator of its own for the choice, so that it never shares random numbers with the insertions.
    chosen = np.sort(np.random.default_rng([int(seed), 1]).choice(eligible, size=k, replace=False))
    triggered = insert_trigger([examples[i] for i in chosen], trigger, seed=int(seed), target=target)
    out = list(examples)
    for i, ex in zip(chosen.tolist(), triggered, strict=True):
        meta = dict(ex.meta)
        meta["poison"] = {"mode": mode, "original_label": ex.label, "rate": float(rate), "seed": int(seed)}
        out[i] = replace(ex, label=target, meta=meta)
    return out
