"""Before/after figures of a guarded victim (PSIM, Zhao et al., NAACL Findings 2024, §3 and §4).

Given the guard's work on clean test examples and on triggered ones, report CACC and ASR without
the defence, defended CACC and ASR with it, and the detection quality (FRR, FAR, precision,
recall, F1, AUROC). Every number comes from :mod:`peftshield.evaluation.metrics`, where the
definitions live (docs/design.md "Metric definitions"); this module only routes the right arrays to
them:

- CACC = accuracy of the victim on clean inputs; defended CACC counts a rejected clean input as
  wrong (PSIM ``evaluation_test``).
- ASR (PSIM / OpenBackdoor convention) over triggered inputs whose true label is not the target;
  defended ASR counts a rejected triggered input as blocked (PSIM ``evaluation_poisoned``).
- Detection: clean inputs are the negatives, triggered inputs the positives; the guard's rejection
  (any detector) is the flag. AUROC is the score's, per detector.

For task-agnostic backdoors (no target label) the ASR follows the LMSanitator convention
(``asr_lms``: a correctly classified clean input whose prediction flips under any trigger), and its
defended form counts a flip as a success only when the triggered input was accepted.

Triggered test examples are the non-target test samples with the trigger inserted
(:func:`triggered_examples`), as both papers and OpenBackdoor build them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from peftshield.data.records import Example
from peftshield.data.triggers import Trigger, insert_trigger
from peftshield.defenses.guard import Guard, GuardDecision, GuardedBatch
from peftshield.errors import PeftshieldError


def triggered_examples(
    examples: Sequence[Example], trigger: Trigger, target: int | None, *, seed: int = 0
) -> list[Example]:
    """The triggered test set: ``examples`` whose label is not ``target``, with ``trigger`` inserted.

    With ``target=None`` (task-agnostic backdoors) every example is triggered. Labels stay the true
    labels (the ASR metrics need them); ``target`` is recorded on each copy.
    """
    chosen = [e for e in examples if target is None or e.label != target]
    if not chosen:
        raise PeftshieldError(f"no test example has a label other than the target {target}")
    return insert_trigger(chosen, trigger, seed=seed, target=target)


def _as_batch(guarded: GuardedBatch | Sequence[GuardDecision], what: str) -> GuardedBatch:
    """Turn a list of decisions into arrays (scores keyed by detector name)."""
    if isinstance(guarded, GuardedBatch):
        if (guarded.victim_pred < 0).any():
            raise PeftshieldError(
                f"{what}: the victim skipped rejected inputs; run the guard with victim_on_rejected"
            )
        return guarded
    decisions = list(guarded)
    if not decisions:
        raise PeftshieldError(f"{what}: no guard decisions")
    if any(d.victim_label is None for d in decisions):
        raise PeftshieldError(
            f"{what}: some decisions lack the victim's label; run the guard with victim_on_rejected=True"
        )
    names = list(decisions[0].scores)
    if any(list(d.scores) != names for d in decisions):
        raise PeftshieldError(f"{what}: the decisions do not share the same detectors")
    scores = {n: np.array([d.scores[n] for d in decisions], dtype=float) for n in names}
    flags = {n: np.array([n in d.reasons for d in decisions], dtype=bool) for n in names}
    return GuardedBatch(
        victim_pred=np.array([d.victim_label for d in decisions], dtype=np.int64),
        scores=scores,
        flags=flags,
        rejected=np.array([d.rejected for d in decisions], dtype=bool),
        thresholds={},
    )


def defended_metrics(
    clean: GuardedBatch | Sequence[GuardDecision],
    clean_labels: Sequence[int],
    triggered: GuardedBatch | Sequence[GuardDecision],
    triggered_labels: Sequence[int],
    target: int | None,
    *,
    n_triggers: int = 1,
) -> dict[str, Any]:
    """CACC, ASR, defended CACC / ASR and detection metrics from the guard's work (PSIM §4).

    ``clean`` / ``triggered`` are the guard's outputs (a :class:`GuardedBatch` or a list of
    :class:`GuardDecision` with the victim's label on rejected inputs too) on the clean test
    examples and on the triggered ones; the labels are the TRUE labels. With a ``target`` the ASR
    is the PSIM convention. With ``target=None`` it is the LMSanitator convention, which compares
    each triggered input with its clean original: then ``triggered`` holds ``n_triggers`` blocks of
    the whole clean set, one per trigger, each in the clean order (as :func:`evaluate_guard` builds
    them).

    Returns the docs/design.md row keys ``cacc``, ``asr`` (or ``asr_lms``), ``defended_cacc``,
    ``defended_asr`` (or ``defended_asr_lms``), ``frr``, ``far``, ``precision``, ``recall``,
    ``f1``, ``auroc`` (``None`` with several detectors: see ``detectors``), the counts, and per
    detector its threshold, FRR, FAR and AUROC.
    """
    from peftshield.evaluation import metrics as m

    c = _as_batch(clean, "clean")
    t = _as_batch(triggered, "triggered")
    y_c = np.asarray(clean_labels)
    y_t = np.asarray(triggered_labels)
    if len(y_c) != len(c.rejected) or len(y_t) != len(t.rejected):
        raise PeftshieldError(
            f"label counts ({len(y_c)} clean, {len(y_t)} triggered) do not match the guard's outputs "
            f"({len(c.rejected)} clean, {len(t.rejected)} triggered)"
        )
    if list(c.scores) != list(t.scores):
        raise PeftshieldError("the clean and triggered runs used different detectors")
    row: dict[str, Any] = {
        "cacc": m.accuracy(c.victim_pred, y_c),
        "defended_cacc": m.defended_accuracy(c.victim_pred, y_c, c.rejected),
    }
    if target is not None:
        row["asr"] = m.attack_success_rate(t.victim_pred, y_t, target)
        row["defended_asr"] = m.defended_asr(t.victim_pred, y_t, target, t.rejected)
    else:
        if len(y_t) != n_triggers * len(y_c) or not np.array_equal(y_t, np.tile(y_c, n_triggers)):
            raise PeftshieldError(
                "the LMSanitator ASR needs every clean example triggered once per trigger, in the clean "
                f"order ({len(y_c)} clean, {len(y_t)} triggered, {n_triggers} trigger(s))"
            )
        pred = t.victim_pred.reshape(n_triggers, -1)
        rej = t.rejected.reshape(n_triggers, -1)
        row["asr_lms"] = m.attack_success_rate_lms(c.victim_pred, y_c, pred)
        flipped = pred != c.victim_pred[None, :]
        # A rejected triggered input is blocked: nothing is purged, so it never succeeds after.
        lms = m.defended_asr_lms(rej, flipped, np.zeros_like(flipped), correct=c.victim_pred == y_c)
        row["defended_asr_lms"] = lms["asr"]
    # The guard's rejection is a 0/1 score; at threshold 0.5 detection_metrics counts it exactly.
    detection = m.detection_metrics(c.rejected.astype(float), t.rejected.astype(float), 0.5)
    for key in ("frr", "far", "precision", "recall", "f1", "tp", "fp", "tn", "fn"):
        row[key] = detection[key]
    per_detector = {}
    for name in c.scores:
        thr = c.thresholds.get(name, t.thresholds.get(name))
        entry: dict[str, Any] = {"auroc": m.auroc(c.scores[name], t.scores[name])}
        if thr is not None:
            entry["threshold"] = float(thr)
        entry["frr"] = float(np.mean(c.flags[name]))
        entry["far"] = float(np.mean(~t.flags[name]))
        per_detector[name] = entry
    names = list(per_detector)
    row["auroc"] = per_detector[names[0]]["auroc"] if len(names) == 1 else None
    row["n_clean"] = int(len(y_c))
    row["n_triggered"] = int(len(y_t))
    row["detectors"] = per_detector
    return row


def evaluate_guard(
    guard: Guard,
    test: Sequence[Example],
    triggers: Sequence[Trigger],
    target: int | None,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``guard`` on the clean test set and its triggered copies; return :func:`defended_metrics`.

    With a target, each trigger is inserted into the non-target test examples (one block per
    trigger, seeds ``seed, seed + 1, ...``); without one (task-agnostic), into every test example.
    Adds ``seconds`` (wall time of the guard's passes), ``thresholds`` and ``n_triggers``.
    """
    if not triggers:
        raise PeftshieldError("evaluate_guard needs at least one trigger")
    test = list(test)
    if not test:
        raise PeftshieldError("the test set is empty")
    triggered: list[Example] = []
    for k, trigger in enumerate(triggers):
        triggered += triggered_examples(test, trigger, target, seed=seed + k)
    start = time.perf_counter()
    clean_out = guard.run([e.text for e in test], victim_on_rejected=True)
    trig_out = guard.run([e.text for e in triggered], victim_on_rejected=True)
    seconds = time.perf_counter() - start
    row = defended_metrics(
        clean_out,
        [e.label for e in test],
        trig_out,
        [e.label for e in triggered],
        target,
        n_triggers=len(triggers),
    )
    row["thresholds"] = guard.thresholds()
    row["n_triggers"] = len(triggers)
    row["seconds"] = seconds
    return row
