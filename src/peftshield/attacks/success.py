"""Clean accuracy and attack success of a (victim) classifier against a recorded backdoor.

It sits in the attack layer, beside the record it reads: an attack measures its own success on the
model it poisoned with it, and evaluation, the grid and the commands measure victims with it.

Given a classifier, a :class:`~peftshield.attacks.record.PoisonRecord` (the ground truth written
by ``peftshield poison``) and clean labelled test examples, this inserts every recorded trigger
into every test text (seeded; trigger ``k`` uses ``seed + k``), classifies the clean and the
triggered texts in ONE call of :func:`~peftshield.models.inference.predict_outputs`, and applies
the metric definitions of :mod:`peftshield.evaluation.metrics` (docs/design.md, "Metric
definitions"):

- task-specific records: ``asr`` in the PSIM / OpenBackdoor convention (non-target samples
  predicted as the target once triggered; the mean over triggers when there are several),
- every record: ``asr_lms`` in the LMSanitator convention (clean-correct samples whose prediction
  flips under ANY trigger); for task-agnostic records ``asr`` is ``asr_lms``,
- ``per_trigger``: each trigger's own rates and the label its triggered inputs go to most
  (``dominant_label``). A task-agnostic backdoor has no target, but on a given victim each PV
  lands in one class; ``asr_dominant`` is the PSIM-convention ASR with that class as the target
  (non-dominant-label samples predicted as the dominant label once triggered), which can reach
  1.0 per trigger, whereas a per-trigger ``asr_lms`` on a balanced binary task cannot exceed the
  share of correct samples outside the trigger's class. The record-level ``asr_dominant`` is the
  mean over triggers (:func:`peftshield.evaluation.metrics.asr_dominant`, defined once there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from peftshield.attacks.record import PoisonRecord
from peftshield.data.records import Example
from peftshield.data.triggers import trigger_key, triggered_texts
from peftshield.errors import PeftshieldError
from peftshield.evaluation.metrics import (
    accuracy,
    asr_dominant,
    attack_success_rate,
    attack_success_rate_lms,
    dominant_trigger_asr,
    per_trigger_asr_lms,
)


def backdoor_metrics(
    model: Any,
    tokenizer: Any,
    record: PoisonRecord,
    examples: Sequence[Example],
    *,
    seed: int = 0,
    max_length: int = 64,
    batch_size: int = 128,
) -> dict[str, Any]:
    """CACC and ASR of ``model`` (a classifier returning ``logits``) on ``examples`` against ``record``.

    PSIM (Zhao et al. 2024; ``confidence.py``): ASR over non-target test samples with
    the trigger inserted. LMSanitator (Wei et al. 2024; ``run.py test_asr``): each trigger
    inserted once at a random word position of every clean-correct sample, success if any flips.
    Returns ``{"attack", "kind", "n", "cacc", "asr", "asr_convention", "asr_lms", "asr_dominant",
    "target", "per_trigger": {key: {"asr"?, "asr_lms", "dominant_label", "dominant_share", "asr_dominant"}},
    "seed"}``; ``asr`` per trigger only for task-specific records; ``asr_dominant`` is ``None``
    when every test sample has the dominant label. Texts longer than ``max_length`` tokens
    are truncated, which may cut a trigger inserted near their end (short corpora are unaffected).
    """
    from peftshield.models.inference import predict_outputs

    examples = list(examples)
    if not examples:
        raise PeftshieldError("no test examples to measure the attack on")
    labels = np.asarray([e.label for e in examples])
    if labels.min() < 0:
        raise PeftshieldError("ASR needs labelled test examples (labels >= 0)")
    triggers = record.trigger_objects()
    rows = triggered_texts(examples, triggers, seed)
    n = len(examples)
    texts = [e.text for e in examples] + [t for row in rows for t in row]
    logits, _ = predict_outputs(model, tokenizer, texts, batch_size=batch_size, max_length=max_length)
    num_labels = logits.shape[1]
    if labels.max() >= num_labels:
        raise PeftshieldError(f"the test set has label {labels.max()} but the model has {num_labels} labels")
    preds = logits.argmax(-1)
    clean, trig = preds[:n], preds[n:].reshape(len(triggers), n)
    result: dict[str, Any] = {
        "attack": record.attack,
        "kind": record.kind,
        "n": n,
        "cacc": accuracy(clean, labels),
        "asr_lms": attack_success_rate_lms(clean, labels, trig),
        "target": record.target,
        "seed": seed,
    }
    per_lms = per_trigger_asr_lms(clean, labels, trig)
    per: dict[str, dict[str, Any]] = {}
    for k, trigger in enumerate(triggers):
        per[trigger_key(trigger)] = {"asr_lms": float(per_lms[k]), **dominant_trigger_asr(trig[k], labels)}
    result["asr_dominant"] = asr_dominant(trig, labels)
    if record.kind == "task-specific":
        target = int(record.target)  # type: ignore[arg-type]
        if target >= num_labels:
            raise PeftshieldError(
                f"the recorded target label {target} is outside the model's {num_labels} labels"
            )
        asrs = [attack_success_rate(trig[k], labels, target) for k in range(len(triggers))]
        for key, value in zip(per, asrs, strict=True):
            per[key] = {"asr": value, **per[key]}
        result["asr"] = float(np.mean(asrs))
        result["asr_convention"] = "psim"
    else:
        result["asr"] = result["asr_lms"]
        result["asr_convention"] = "lms"
    result["per_trigger"] = per
    return result


def evaluate_victim(
    tuned: Any, record: PoisonRecord, examples: Sequence[Example], *, seed: int = 0, batch_size: int = 128
) -> dict[str, Any]:
    """:func:`backdoor_metrics` for a :class:`~peftshield.tuning.trainer.TunedModel` (from ``load_tuned``)."""
    return backdoor_metrics(
        tuned.model,
        tuned.tokenizer,
        record,
        examples,
        seed=seed,
        max_length=tuned.max_length,
        batch_size=batch_size,
    )
