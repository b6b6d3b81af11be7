"""Metric definitions: the one place where CACC, ASR, defended metrics and detection are defined.

Every function here is pure numpy, validates its inputs (a mistake raises
:class:`~peftshield.errors.PeftshieldError`, since the arrays often come from user files) and
returns plain Python floats / dicts ready for the JSON result rows of docs/design.md (key names
``cacc``, ``asr``, ``asr_lms``, ``defended_cacc``, ``defended_asr``, ``frr``, ``far``,
``precision``, ``recall``, ``f1``, ``auroc``).

Conventions (docs/design.md "Metric definitions"):

- Scores are "higher = more suspicious"; an input is flagged / rejected when ``score > threshold``
  (strictly). PSIM's code rejects clean inputs at ``>= 0.7`` but flags triggered ones at ``> 0.7``;
  we use ``>`` on both paths.
- Poisoned (triggered) is the positive class in detection metrics; ``backdoored`` is the positive
  class in model-scan metrics.
- A ratio whose denominator is zero in detection / scan metrics is reported as 0.0 (documented per
  function); an ASR with no eligible sample is an error, since it means the test set is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from peftshield.errors import PeftshieldError

ArrayLike = Any  # anything np.asarray accepts: list, tuple, numpy array


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise PeftshieldError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise PeftshieldError(f"{name} is empty")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise PeftshieldError(f"length mismatch: {shown}")


def _boolean(x: ArrayLike, name: str, ndim: int = 1) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise PeftshieldError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise PeftshieldError(f"{name} is empty")
    if arr.dtype != bool:
        # Accept 0/1 flags (e.g. read back from CSV) but nothing else: 0.7 is a score, not a flag.
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise PeftshieldError(f"{name} must hold booleans (or 0/1)")
        arr = arr.astype(bool)
    return arr


def _scores(x: ArrayLike, name: str) -> np.ndarray:
    arr = _vector(x, name)
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise PeftshieldError(f"{name} must be numeric scores")
    arr = arr.astype(float)
    if np.isnan(arr).any():
        raise PeftshieldError(f"{name} contains NaN")
    return arr


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def accuracy(pred: ArrayLike, labels: ArrayLike) -> float:
    """Share of predictions equal to the labels; CACC when computed on the clean test set.

    CACC (clean accuracy) as in PSIM, LMSanitator and OpenBackdoor: denominator = all samples.
    """
    p, y = _vector(pred, "pred"), _vector(labels, "labels")
    _same_length(pred=p, labels=y)
    return float(np.mean(p == y))


def _non_target_mask(y: np.ndarray, target: Any) -> np.ndarray:
    mask = y != target
    if not mask.any():
        raise PeftshieldError(f"ASR is undefined: every sample has the target label {target!r}")
    return mask


def attack_success_rate(pred_triggered: ArrayLike, labels: ArrayLike, target: Any) -> float:
    """ASR, PSIM / OpenBackdoor convention (task-specific backdoors with a target label).

    Over samples whose TRUE label is not ``target``, the share predicted as ``target`` once the
    trigger is inserted: ``mean(pred_triggered[labels != target] == target)``. Samples already
    misclassified without the trigger are NOT excluded (PSIM's code computes 1 − accuracy on the
    triggered non-target test samples; for binary tasks that equals this). ``labels`` are the
    true labels of the texts, not the attacker's relabelled ones.
    """
    p, y = _vector(pred_triggered, "pred_triggered"), _vector(labels, "labels")
    _same_length(pred_triggered=p, labels=y)
    mask = _non_target_mask(y, target)
    return float(np.mean(p[mask] == target))


def dominant_trigger_asr(pred_triggered: ArrayLike, labels: ArrayLike) -> dict[str, Any]:
    """One trigger's dominant class and the PSIM-convention ASR towards it (``asr_dominant`` per trigger).

    A task-agnostic backdoor has no target, but on a given victim each trigger's inputs land
    mostly in one class: the ``dominant_label`` (the most frequent prediction over the triggered
    texts; the smallest label on ties). Returns ``{"dominant_label", "dominant_share",
    "asr_dominant"}``: ``dominant_share`` = share of triggered predictions that are the dominant
    label; ``asr_dominant`` = :func:`attack_success_rate` with the dominant label as the target
    (samples whose true label is not the dominant one, predicted as it once triggered), ``None``
    when every sample's true label is the dominant one (docs/design.md "Metric definitions").
    """
    p, y = _vector(pred_triggered, "pred_triggered"), _vector(labels, "labels")
    _same_length(pred_triggered=p, labels=y)
    if p.size == 0:
        raise PeftshieldError("asr_dominant needs at least one triggered prediction")
    values, counts = np.unique(p, return_counts=True)
    dominant = values[int(counts.argmax())].item()
    return {
        "dominant_label": dominant,
        "dominant_share": float(counts.max() / p.size),
        "asr_dominant": attack_success_rate(p, y, dominant) if (y != dominant).any() else None,
    }


def asr_dominant(triggered_preds: ArrayLike, labels: ArrayLike) -> float | None:
    """``asr_dominant``: the mean over triggers of :func:`dominant_trigger_asr`'s per-trigger ASR.

    ``triggered_preds`` has shape ``(n_triggers, n)`` (row ``k``: the texts with trigger ``k``
    inserted; a 1-D array is one trigger), ``labels`` the true labels of the ``n`` texts. Triggers
    whose rate is undefined (every sample has their dominant label) are left out of the mean;
    ``None`` when no trigger has one. It can reach 1.0, where a per-trigger ``asr_lms`` on a
    balanced binary task cannot exceed the share of correct samples outside the trigger's class.
    """
    y = _vector(labels, "labels")
    t = _triggered_matrix(triggered_preds, len(y))
    rates = [dominant_trigger_asr(row, y)["asr_dominant"] for row in t]
    kept = [r for r in rates if r is not None]
    return float(np.mean(kept)) if kept else None


def _triggered_matrix(triggered_preds: ArrayLike, n: int) -> np.ndarray:
    t = np.asarray(triggered_preds)
    if t.ndim == 1:
        t = t[None, :]  # one trigger
    if t.ndim != 2 or t.shape[0] == 0:
        raise PeftshieldError(f"triggered_preds must have shape (n_triggers, n), got {t.shape}")
    if t.shape[1] != n:
        raise PeftshieldError(f"length mismatch: clean_pred={n}, triggered_preds has {t.shape[1]} columns")
    return t


def _correct_mask(c: np.ndarray, y: np.ndarray) -> np.ndarray:
    correct = c == y
    if not correct.any():
        raise PeftshieldError("LMSanitator ASR is undefined: no sample is classified correctly when clean")
    return correct


def attack_success_rate_lms(clean_pred: ArrayLike, labels: ArrayLike, triggered_preds: ArrayLike) -> float:
    """ASR, LMSanitator convention (task-agnostic backdoors, no target label): the ``asr_lms`` key.

    Over samples classified correctly without a trigger, the share whose prediction changes when
    ANY one of the triggers is inserted (LMSanitator ``run.py test_asr``: six triggers, each
    inserted once; success if any flips). ``triggered_preds`` has shape ``(n_triggers, n)``: row
    ``k`` holds the predictions for the texts with trigger ``k`` inserted (a 1-D array is one
    trigger). The class-averaged "weighted ASR" of the reference code is not computed here.
    """
    c, y = _vector(clean_pred, "clean_pred"), _vector(labels, "labels")
    _same_length(clean_pred=c, labels=y)
    t = _triggered_matrix(triggered_preds, len(c))
    correct = _correct_mask(c, y)
    flipped = (t != c[None, :]).any(axis=0)
    return float(np.mean(flipped[correct]))


def per_trigger_asr_lms(clean_pred: ArrayLike, labels: ArrayLike, triggered_preds: ArrayLike) -> np.ndarray:
    """LMSanitator-convention ASR of each trigger alone, shape ``(n_triggers,)``.

    Same denominator as :func:`attack_success_rate_lms` (clean-correct samples); row ``k`` is the
    share of them whose prediction changes under trigger ``k``. The any-trigger ASR is at least
    the maximum of these.
    """
    c, y = _vector(clean_pred, "clean_pred"), _vector(labels, "labels")
    _same_length(clean_pred=c, labels=y)
    t = _triggered_matrix(triggered_preds, len(c))
    correct = _correct_mask(c, y)
    return np.mean(t[:, correct] != c[None, correct], axis=1).astype(float)


def corrected_asr(
    clean_pred: ArrayLike,
    labels: ArrayLike,
    corrected_triggered: ArrayLike,
    triggered_labels: ArrayLike,
    target: Any,
    n_triggers: int = 1,
) -> float:
    """ASR after a correction defence (ONION: the victim reads the cleaned triggered text).

    Nothing is rejected, so the plain conventions apply to the predictions on the cleaned texts:
    with a ``target``, :func:`attack_success_rate` (PSIM / OpenBackdoor); with ``target=None``,
    :func:`attack_success_rate_lms` against the victim's labels on the uncleaned clean texts
    (``corrected_triggered`` holds ``n_triggers`` blocks of the clean set, in the clean order).
    """
    fixed = _vector(corrected_triggered, "corrected_triggered")
    if target is not None:
        return attack_success_rate(fixed, triggered_labels, target)
    return attack_success_rate_lms(clean_pred, labels, fixed.reshape(n_triggers, -1))


def defended_accuracy(pred: ArrayLike, labels: ArrayLike, rejected: ArrayLike) -> float:
    """Defended CACC: a rejected clean input counts as WRONG (``defended_cacc``).

    ``mean((pred == labels) & ~rejected)`` over all clean samples, the convention of PSIM's
    ``evaluation_test`` and of OpenBackdoor (rejected samples relabelled to an impossible class).
    ``rejected`` is the defence's boolean flag per input.
    """
    p, y = _vector(pred, "pred"), _vector(labels, "labels")
    r = _boolean(rejected, "rejected")
    _same_length(pred=p, labels=y, rejected=r)
    return float(np.mean((p == y) & ~r))


def defended_asr(pred_triggered: ArrayLike, labels: ArrayLike, target: Any, rejected: ArrayLike) -> float:
    """Defended ASR, PSIM / OpenBackdoor convention: a rejected triggered input counts as BLOCKED.

    Same denominator as :func:`attack_success_rate` (samples whose true label is not ``target``);
    a sample is a success only when it is accepted and predicted as ``target``:
    ``mean((pred_triggered == target) & ~rejected)`` over ``labels != target``. PSIM's
    "Defense ASR" = 1 − (flagged + unflagged correct)/N, equal for binary tasks.
    """
    p, y = _vector(pred_triggered, "pred_triggered"), _vector(labels, "labels")
    r = _boolean(rejected, "rejected")
    _same_length(pred_triggered=p, labels=y, rejected=r)
    mask = _non_target_mask(y, target)
    return float(np.mean(((p == target) & ~r)[mask]))


def defended_asr_lms(
    flagged: ArrayLike,
    flipped_without_purge: ArrayLike,
    flipped_after_purge: ArrayLike,
    *,
    correct: ArrayLike | None = None,
) -> dict[str, float]:
    """Defended ASR, LMSanitator convention (``run.py defense_predict``), with Type I / II parts.

    Inputs are boolean arrays of shape ``(n_triggers, n)`` (1-D = one trigger), one column per
    test sample, for the samples classified correctly WITHOUT a trigger (the denominator); pass
    ``correct`` (shape ``(n,)``) to select those columns from a full test set instead.

    - ``flagged[k, i]``: the output monitor flagged sample ``i`` with trigger ``k`` inserted.
    - ``flipped_without_purge[k, i]``: the victim's prediction on that triggered text differs
      from the (correct) clean prediction.
    - ``flipped_after_purge[k, i]``: after purging, the attack still succeeds — at least one purged
      variant is both unflagged by the monitor and misclassified (the reference emulates purging
      by deleting each word before the trigger in turn). Only read where the pair is flagged and
      flipped; elsewhere its value is ignored.

    A sample is a Type-I success if some trigger flips it unflagged; a Type-II success if it is
    not Type-I and some flagged, flipped trigger pair still succeeds after purging (the reference
    tests Type II only for samples without a Type-I success, so the two sets are disjoint).
    Returns ``{"asr": type1 + type2, "type1", "type2", "n"}`` with rates over ``n`` samples.
    """
    f = _boolean(np.atleast_2d(flagged), "flagged", ndim=2)
    w = _boolean(np.atleast_2d(flipped_without_purge), "flipped_without_purge", ndim=2)
    a = _boolean(np.atleast_2d(flipped_after_purge), "flipped_after_purge", ndim=2)
    if not (f.shape == w.shape == a.shape):
        raise PeftshieldError(
            f"shape mismatch: flagged={f.shape}, flipped_without_purge={w.shape}, "
            f"flipped_after_purge={a.shape}"
        )
    if correct is not None:
        keep = _boolean(correct, "correct")
        if len(keep) != f.shape[1]:
            raise PeftshieldError(f"length mismatch: correct={len(keep)}, arrays have {f.shape[1]} columns")
        f, w, a = f[:, keep], w[:, keep], a[:, keep]
    n = f.shape[1]
    if n == 0:
        raise PeftshieldError("LMSanitator defended ASR is undefined: no clean-correct sample")
    type1 = (w & ~f).any(axis=0)
    type2 = (w & f & a).any(axis=0) & ~type1
    return {
        "asr": float(np.mean(type1 | type2)),
        "type1": float(np.mean(type1)),
        "type2": float(np.mean(type2)),
        "n": int(n),
    }


def detection_metrics(
    scores_clean: ArrayLike, scores_poison: ArrayLike, threshold: float
) -> dict[str, float]:
    """Input-detection quality at one threshold (OpenBackdoor ``eval_detect`` plus F1).

    Poisoned inputs are the positive class; an input is flagged when ``score > threshold``.

    - ``frr`` = clean flagged / clean (false rejection rate)
    - ``far`` = poisoned not flagged / poisoned (false acceptance rate)
    - ``precision`` = poisoned flagged / all flagged — 0.0 when nothing is flagged
    - ``recall`` = poisoned flagged / poisoned = 1 − far
    - ``f1`` = harmonic mean of precision and recall — 0.0 when both are 0

    Also returns the counts ``tp``, ``fp``, ``tn``, ``fn`` and the ``threshold``.
    """
    c, p = _scores(scores_clean, "scores_clean"), _scores(scores_poison, "scores_poison")
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise PeftshieldError(f"threshold must be a number, got {threshold!r}") from None
    if math.isnan(thr):
        raise PeftshieldError("threshold is NaN")
    fp = int(np.sum(c > thr))
    tn = len(c) - fp
    tp = int(np.sum(p > thr))
    fn = len(p) - tp
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, len(p))
    return {
        "frr": _ratio(fp, len(c)),
        "far": _ratio(fn, len(p)),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "threshold": thr,
    }


def auroc(scores_clean: ArrayLike, scores_poison: ArrayLike) -> float:
    """Area under the ROC curve of a detector score, poisoned = positive (higher = poisoned).

    Rank (Mann-Whitney U) formula: ``AUROC = (R_p − n_p (n_p + 1) / 2) / (n_p n_c)`` where
    ``R_p`` is the sum of the poisoned scores' ranks in the pooled sample and tied scores get
    their average rank. Equivalently ``P(s_p > s_c) + 0.5 P(s_p = s_c)``: ties count half.
    1.0 = perfect separation, 0.5 = chance, 0.0 = perfectly inverted.
    """
    c, p = _scores(scores_clean, "scores_clean"), _scores(scores_poison, "scores_poison")
    pooled = np.concatenate([c, p])
    _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
    # Ranks are 1-based; a tie group occupying ranks [first, last] gets (first + last) / 2.
    last = np.cumsum(counts).astype(float)
    first = last - counts + 1.0
    ranks = ((first + last) / 2.0)[inverse.reshape(-1)]
    n_c, n_p = len(c), len(p)
    rank_sum = float(np.sum(ranks[n_c:]))
    return (rank_sum - n_p * (n_p + 1) / 2.0) / (n_p * n_c)


def calibrate_threshold(clean_scores: ArrayLike, target_frr: float) -> float:
    """Threshold at a target false-rejection rate on clean held-out scores (never poisoned ones).

    Returns the observed clean score ``t`` = the ``(n − k)``-th smallest, ``k = floor(target_frr·n)``.
    With the ``score > t`` rule, at most ``k`` clean scores lie strictly above ``t``, so the FRR on
    this sample is ``<= target_frr``; any lower threshold would exceed it, so ``t`` gets as close
    to the target as the sample allows. Ties: scores equal to ``t`` are all accepted, so when a
    tie straddles the cut the achieved FRR falls below the target (never above it); with
    ``k = 0`` the threshold is the maximum and nothing is rejected. This is an order-statistic
    quantile (OpenBackdoor's STRIP / RAP take ``np.percentile`` at ``frr·100``, which may
    interpolate). ``target_frr`` must lie strictly between 0 and 1.
    """
    s = _scores(clean_scores, "clean_scores")
    try:
        frr = float(target_frr)
    except (TypeError, ValueError):
        raise PeftshieldError(f"target_frr must be a number, got {target_frr!r}") from None
    if not 0.0 < frr < 1.0:
        raise PeftshieldError(f"target_frr must lie strictly between 0 and 1, got {target_frr!r}")
    n = len(s)
    # The tiny epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from losing one allowed rejection.
    k = min(n - 1, math.floor(frr * n + 1e-9))
    return float(np.sort(s)[n - 1 - k])


_VERDICTS = ("backdoored", "clean")


def _verdicts(x: Sequence[str], name: str) -> np.ndarray:
    if isinstance(x, str):
        raise PeftshieldError(f"{name} must be a sequence of 'backdoored' / 'clean', got one string")
    arr = np.array([str(v).strip().lower() for v in x], dtype=object)
    if arr.size == 0:
        raise PeftshieldError(f"{name} is empty")
    bad = sorted({v for v in arr if v not in _VERDICTS})
    if bad:
        shown = ", ".join(map(repr, bad))
        raise PeftshieldError(f"{name}: unknown value(s) {shown}; use 'backdoored' or 'clean'")
    return arr == "backdoored"


def scan_metrics(verdicts: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Model-scan quality over a zoo of models (LMSanitator's detection accuracy over 960 models).

    ``verdicts`` are the scanner's answers and ``labels`` the ground truth, each ``"backdoored"``
    (positive) or ``"clean"`` (case and surrounding spaces ignored). Returns ``accuracy``,
    ``fpr`` = clean models called backdoored / clean models, ``fnr`` = backdoored models called
    clean / backdoored models (each 0.0 when its denominator is zero), and the counts ``tp``,
    ``fp``, ``tn``, ``fn``, ``n``.
    """
    v, y = _verdicts(verdicts, "verdicts"), _verdicts(labels, "labels")
    _same_length(verdicts=v, labels=y)
    tp = int(np.sum(v & y))
    fp = int(np.sum(v & ~y))
    tn = int(np.sum(~v & ~y))
    fn = int(np.sum(~v & y))
    return {
        "accuracy": _ratio(tp + tn, len(v)),
        "fpr": _ratio(fp, fp + tn),
        "fnr": _ratio(fn, fn + tp),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": len(v),
    }
