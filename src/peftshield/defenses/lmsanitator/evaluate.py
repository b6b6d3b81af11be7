"""Defended attack success in the LMSanitator convention, with the monitor and the real purge.

Wei et al., NDSS 2024, §V; reference ``run.py defense_predict`` (docs/design.md, "Deviations from
the papers"). Over the test samples the victim classifies correctly without a trigger, each trigger
is inserted once;

* **Type I** success: the triggered input flips the prediction and the monitor does not flag it;
* **Type II** success: it is flagged and flipped, and after purging it is no longer flagged and
  still misclassified.

The reference emulates purging (one variant per word before the trigger); here the inputs go
through :class:`~.purge.Purger` itself, so a Type II success is a purged text that the monitor
accepts and the victim still gets wrong (a text the purge could not clear stays rejected:
blocked). Every rate comes from :mod:`peftshield.evaluation.metrics` (``defended_asr_lms``,
``attack_success_rate_lms``, ``detection_metrics``, ``auroc``); nothing is redefined here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from peftshield.data.records import Example
from peftshield.data.triggers import Trigger
from peftshield.errors import PeftshieldError

from .monitor import PVMonitor
from .purge import Purger


def evaluate_defense(
    monitor: PVMonitor,
    examples: Sequence[Example],
    triggers: Sequence[Trigger],
    *,
    purger: Purger | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """CACC, ASR (LMSanitator convention) without and with the monitor + purge, FRR and detection.

    ``examples`` are labelled clean test examples, ``triggers`` the planted triggers (e.g.
    ``read_poison_record(folder).trigger_objects()``); trigger ``k`` is inserted with seed
    ``seed + k`` (:func:`peftshield.data.triggers.triggered_texts`). Returns a flat dict with the
    docs/design.md key names: ``cacc``, ``asr_lms``, ``defended_asr`` (with ``type1`` / ``type2``),
    ``frr``, ``far``, ``precision``, ``recall``, ``f1``, ``auroc``, ``threshold`` and timings
    (``seconds``, ``monitor_seconds`` for the clean pass: monitoring shares the victim's pass).
    """
    from peftshield.data.triggers import triggered_texts
    from peftshield.evaluation.metrics import (
        accuracy,
        attack_success_rate_lms,
        auroc,
        defended_asr_lms,
        detection_metrics,
    )

    if not examples or not triggers:
        raise PeftshieldError("evaluate_defense needs clean examples and at least one trigger")
    purger = purger or Purger(monitor)
    start = time.perf_counter()
    texts = [e.text for e in examples]
    labels = np.asarray([e.label for e in examples])
    clean = monitor.run(texts)
    monitor_seconds = time.perf_counter() - start
    clean_pred = clean.labels
    correct = clean_pred == labels
    rows = triggered_texts(examples, triggers, seed)
    flagged = np.zeros((len(triggers), len(texts)), dtype=bool)
    preds = np.zeros((len(triggers), len(texts)), dtype=np.int64)
    scores = np.zeros((len(triggers), len(texts)))
    for k, row in enumerate(rows):
        batch = monitor.run(row)
        flagged[k], preds[k], scores[k] = batch.flags, batch.labels, batch.scores
    flipped = preds != clean_pred[None, :]
    after = np.zeros_like(flagged)
    todo = [(k, i) for k, i in zip(*np.nonzero(flagged & flipped & correct[None, :]), strict=True)]
    if todo:
        results = purger.purge([rows[k][i] for k, i in todo])
        for (k, i), res in zip(todo, results, strict=True):
            after[k, i] = res.cleared and res.label != clean_pred[i]
    defended = defended_asr_lms(flagged, flipped, after, correct=correct)
    poisoned_scores = scores[:, correct].ravel()
    detection = detection_metrics(clean.scores, poisoned_scores, monitor.threshold_)
    return {
        "cacc": accuracy(clean_pred, labels),
        "asr_lms": attack_success_rate_lms(clean_pred, labels, preds),
        "defended_asr": defended["asr"],
        "type1": defended["type1"],
        "type2": defended["type2"],
        "n_correct": defended["n"],
        "n_purged": len(todo),
        **{k: detection[k] for k in ("frr", "far", "precision", "recall", "f1", "threshold")},
        "auroc": auroc(clean.scores, poisoned_scores),
        "seconds": time.perf_counter() - start,
        "monitor_seconds": monitor_seconds,
    }
