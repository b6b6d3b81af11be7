"""Measure one grid cell: the victim and its defence on the clean test split and its triggered copies.

Every cell of a victim sees the SAME inputs, whatever its defence, so the undefended figures of a
victim agree across its defences: the clean test split, and per trigger the test examples whose
label is not the target (all of them for task-agnostic attacks) with the trigger inserted with
seed ``seed + k`` (:func:`peftshield.evaluation.defended.triggered_examples`, as
:func:`~peftshield.evaluation.defended.evaluate_guard` builds them). The metric definitions come
from :func:`peftshield.evaluation.defended.defended_metrics` and :mod:`peftshield.evaluation.metrics`
(docs/design.md "Metric definitions"); nothing is redefined here:

- ``cacc``, ``asr`` (PSIM convention for task-specific attacks; for task-agnostic ones the
  LMSanitator convention, also under ``asr_lms``), ``defended_cacc``, ``defended_asr_reject`` (a
  rejected clean input counts as wrong, a rejected triggered input as blocked), ``frr``, ``far``,
  ``precision``, ``recall``, ``f1``, ``auroc`` of the defence's score;
- ``corrected_cacc``, ``corrected_asr`` (a correction defence, ONION): the victim's CACC and ASR
  on the texts the defence cleaned, nothing rejected (:func:`~peftshield.evaluation.metrics.corrected_asr`),
  beside its figures as a detector;
- ``overhead_ratio`` (the grid's one overhead protocol, ``bench/README.md``): wall time of guarded
  inference over undefended inference, summed over every text set of the cell (clean, then each
  trigger set), the victim's pass and the detector's pass timed back to back on each set (one
  shared pass for a monitor, which reads the victim's own forward pass; a memoised detector is
  charged its measured cost per text); named in the row as ``overhead_protocol``;
- ``chance_cacc``: the accuracy of always answering the test split's most frequent class, which
  the valid-cell rule reads (:mod:`peftshield.evaluation.validity`);
- ``roc``: ``{fpr, tpr}`` points of the score; ``tradeoff``: ``{threshold, frr, far, asr, cacc}``
  as the threshold moves (defended ASR and CACC at each threshold).

A clean control (attack ``none``) is measured with the triggers of every attack of the grid: its
clean-side figures are at the top level and each attack's in ``by_attack``. A cell without a
victim (method ``none``) gets the detection figures only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftshield.data.records import Example
from peftshield.errors import PeftshieldError
from peftshield.grid.curves import roc_points, sweep_thresholds

#: The defended ASR when a flagged input is rejected (docs/design.md "Metric definitions"): the
#: name every grid row uses, so that it cannot be mistaken for the ASR after an LMSanitator purge
#: (``defended_asr_purge``, where the flagged input is cleaned and answered). Older result files
#: call it ``defended_asr``; the report reads both.
DEFENDED_ASR_REJECT = "defended_asr_reject"
DEFENDED_ASR_PURGE = "defended_asr_purge"
#: The grid's overhead measurement (module docstring, ``overhead_ratio``).
OVERHEAD_PROTOCOL = "summed-paired-pass"


@dataclass(frozen=True)
class TriggerSet:
    """The ground truth one attack planted: its triggers, kind and target (``None``: task-agnostic)."""

    attack: str
    kind: str
    triggers: list[Any]
    target: int | None


@dataclass
class LoadedDefense:
    """A fitted defence ready to score: its adapter, the detector (``None`` when inactive) and labels.

    ``memo``: a :class:`~peftshield.grid.scorememo.ScoreMemo` for a defence whose scores do not
    depend on the victim (each text is scored once per grid; its measured cost is still charged).
    """

    name: str
    adapter: Any
    detector: Any
    threshold: str | float | None
    inactive: str | None = None
    memo: Any = None

    @property
    def threshold_value(self) -> float:
        """The fitted threshold (0 for an inactive defence, whose scores are all 0: nothing is flagged)."""
        return 0.0 if self.detector is None else float(self.detector.threshold_)


def trigger_set_from_dict(data: dict[str, Any]) -> TriggerSet:
    """Rebuild a :class:`TriggerSet` from the plan's JSON form."""
    from peftshield.data.triggers import trigger_from_dict

    return TriggerSet(
        attack=data["attack"],
        kind=data["kind"],
        triggers=[trigger_from_dict(t) for t in data["triggers"]],
        target=data["target"],
    )


def trigger_set_from_record(label: str, record: Any) -> TriggerSet:
    """The :class:`TriggerSet` of a poisoned folder's ``poison.json``."""
    return TriggerSet(attack=label, kind=record.kind, triggers=record.trigger_objects(), target=record.target)


class _Timer:
    """Wall time of the victim's passes and of the guarded passes, summed over a cell."""

    def __init__(self) -> None:
        self.victim = 0.0
        self.guarded = 0.0


def _victim_pass(victim: Any, texts: list[str], timer: _Timer) -> np.ndarray | None:
    if victim is None:
        return None
    start = time.perf_counter()
    pred = victim.predict_logits(texts).argmax(axis=-1)
    timer.victim += time.perf_counter() - start
    return pred


def _defense_pass(
    defense: LoadedDefense | None, texts: list[str], victim_seconds: float, timer: _Timer
) -> tuple[np.ndarray | None, list[str] | None]:
    """Scores of ``texts`` and, for a correction defence, the cleaned texts; adds the guarded time.

    Guarded time = detector + victim, or one joint pass; a memoised defence is charged each text's
    measured cost (:mod:`peftshield.grid.scorememo`).
    """
    if defense is None:
        timer.guarded += victim_seconds
        return None, None
    if defense.detector is None:  # inactive: nothing is scored, inference is undefended
        timer.guarded += victim_seconds
        return np.zeros(len(texts)), None
    adapter, detector = defense.adapter, defense.detector

    def compute(batch: list[str]) -> tuple[Any, list[str] | None]:
        if adapter.correct is not None:
            return adapter.correct(detector, batch)
        return detector.score(batch), None

    if defense.memo is not None:
        scores, cleaned, seconds = defense.memo.lookup(texts, compute)
        timer.guarded += seconds + victim_seconds
        return scores, cleaned
    start = time.perf_counter()
    if adapter.joint is not None:
        _, scores = adapter.joint(detector, texts)
        cleaned = None
        timer.guarded += time.perf_counter() - start
    else:
        scores, cleaned = compute(texts)
        timer.guarded += time.perf_counter() - start + victim_seconds
    return np.asarray(scores, dtype=float), cleaned


def _corrected_pass(victim: Any, cleaned: list[str] | None) -> np.ndarray | None:
    """The victim's labels on a correction defence's cleaned texts (``None`` when there are none)."""
    if victim is None or cleaned is None:
        return None
    return victim.predict_logits(cleaned).argmax(axis=-1)


def _batch(pred: np.ndarray, scores: np.ndarray | None, defense: LoadedDefense | None) -> Any:
    from peftshield.defenses.guard import GuardedBatch

    if scores is None or defense is None:
        return GuardedBatch(
            victim_pred=pred, scores={}, flags={}, rejected=np.zeros(len(pred), dtype=bool), thresholds={}
        )
    flags = scores > defense.threshold_value
    return GuardedBatch(
        victim_pred=pred,
        scores={defense.name: scores},
        flags={defense.name: flags},
        rejected=flags.copy(),
        thresholds={defense.name: defense.threshold_value},
    )


def _lms_success(pred_t: np.ndarray, pred_c: np.ndarray, n_triggers: int) -> np.ndarray:
    return pred_t.reshape(n_triggers, -1) != pred_c[None, :]


def _tradeoff(
    s_c: np.ndarray,
    s_t: np.ndarray,
    *,
    pred_c: np.ndarray | None,
    y_c: np.ndarray,
    pred_t: np.ndarray | None,
    y_t: np.ndarray,
    target: int | None,
    n_triggers: int,
) -> dict[str, list[float]]:
    """FRR, FAR, defended ASR and defended CACC as the threshold sweeps the scores."""
    from peftshield.evaluation import metrics as m

    out: dict[str, list[float]] = {"threshold": [], "frr": [], "far": []}
    if pred_c is not None:
        out.update({"asr": [], "cacc": []})
    correct = None if pred_c is None else pred_c == y_c
    for t in sweep_thresholds(s_c, s_t):
        rej_c, rej_t = s_c > t, s_t > t
        out["threshold"].append(round(float(t), 6))
        out["frr"].append(round(float(rej_c.mean()), 5))
        out["far"].append(round(float((~rej_t).mean()), 5))
        if pred_c is None or pred_t is None:
            continue
        out["cacc"].append(round(m.defended_accuracy(pred_c, y_c, rej_c), 5))
        if target is not None:
            asr = m.defended_asr(pred_t, y_t, target, rej_t)
        else:
            flipped = _lms_success(pred_t, pred_c, n_triggers)
            rej = rej_t.reshape(n_triggers, -1)
            asr = m.defended_asr_lms(rej, flipped, np.zeros_like(flipped), correct=correct)["asr"]
        out["asr"].append(round(float(asr), 5))
    return out


def _measure_set(
    tset: TriggerSet,
    test: list[Example],
    *,
    victim: Any,
    defense: LoadedDefense | None,
    pred_c: np.ndarray | None,
    s_c: np.ndarray | None,
    fixed_c: np.ndarray | None,
    seed: int,
    timer: _Timer,
) -> dict[str, Any]:
    """Every figure of one trigger set (see the module docstring)."""
    from peftshield.evaluation import metrics as m
    from peftshield.evaluation.defended import defended_metrics, triggered_examples

    triggered: list[Example] = []
    for k, trigger in enumerate(tset.triggers):
        triggered += triggered_examples(test, trigger, tset.target, seed=seed + k)
    texts_t = [e.text for e in triggered]
    y_c = np.asarray([e.label for e in test])
    y_t = np.asarray([e.label for e in triggered])
    before = timer.victim
    pred_t = _victim_pass(victim, texts_t, timer)
    s_t, cleaned_t = _defense_pass(defense, texts_t, timer.victim - before, timer)
    fixed_t = _corrected_pass(victim, cleaned_t)
    agnostic = tset.target is None
    row: dict[str, Any] = {
        "kind": tset.kind,
        "target": tset.target,
        "n_triggers": len(tset.triggers),
        "asr_convention": "lms" if agnostic else "psim",
    }
    if pred_c is not None and pred_t is not None:
        metrics = defended_metrics(
            _batch(pred_c, s_c, defense),
            y_c,
            _batch(pred_t, s_t, defense),
            y_t,
            tset.target,
            n_triggers=len(tset.triggers),
        )
        metrics.pop("detectors", None)
        if agnostic:
            metrics["asr"] = metrics["asr_lms"]
            metrics[DEFENDED_ASR_REJECT] = metrics.pop("defended_asr_lms")
        else:
            metrics[DEFENDED_ASR_REJECT] = metrics.pop("defended_asr")
            metrics["asr_lms"] = None  # the triggered set holds non-target inputs only
        row.update(metrics)
    else:
        row.update({"n_clean": len(test), "n_triggered": len(triggered)})
    if pred_c is not None and fixed_c is not None and fixed_t is not None:
        row["corrected_cacc"] = m.accuracy(fixed_c, y_c)
        row["corrected_asr"] = m.corrected_asr(
            pred_c, y_c, fixed_t, y_t, tset.target, n_triggers=len(tset.triggers)
        )
    if s_c is not None and s_t is not None:
        if pred_c is None:
            detection = m.detection_metrics(s_c, s_t, defense.threshold_value if defense else 0.0)
            detection.pop("threshold")  # the row's threshold is the policy label, set by evaluate_cell
            row.update(detection)
        row["auroc"] = m.auroc(s_c, s_t)
        row["roc"] = roc_points(s_c, s_t)
        row["tradeoff"] = _tradeoff(
            s_c,
            s_t,
            pred_c=pred_c,
            y_c=y_c,
            pred_t=pred_t,
            y_t=y_t,
            target=tset.target,
            n_triggers=len(tset.triggers),
        )
    return row


def evaluate_cell(
    victim: Any,
    defense: LoadedDefense | None,
    test: list[Example],
    sets: list[TriggerSet],
    *,
    seed: int,
    control: bool,
) -> dict[str, Any]:
    """The result row of a cell (without its identifying keys): see the module docstring."""
    from peftshield.evaluation import metrics as m
    from peftshield.evaluation.validity import chance_accuracy

    if not test:
        raise PeftshieldError("the test split is empty")
    if victim is None and defense is None:
        raise PeftshieldError("a cell without a victim needs a defence to measure")
    timer = _Timer()
    texts_c = [e.text for e in test]
    y_c = np.asarray([e.label for e in test])
    pred_c = _victim_pass(victim, texts_c, timer)
    s_c, cleaned_c = _defense_pass(defense, texts_c, timer.victim, timer)
    fixed_c = _corrected_pass(victim, cleaned_c)
    per_set = {
        tset.attack: _measure_set(
            tset,
            test,
            victim=victim,
            defense=defense,
            pred_c=pred_c,
            s_c=s_c,
            fixed_c=fixed_c,
            seed=seed,
            timer=timer,
        )
        for tset in sets
    }
    # the chance level the valid-cell rule reads (peftshield.evaluation.validity)
    row: dict[str, Any] = {"n_clean": len(test), "chance_cacc": chance_accuracy(y_c.tolist())}
    if defense is not None:
        row["threshold"] = defense.threshold
        row["threshold_value"] = defense.threshold_value
        if defense.inactive:
            row["inactive"] = defense.inactive
    if control or len(per_set) != 1:
        rejected = (
            np.zeros(len(test), dtype=bool)
            if s_c is None or defense is None
            else s_c > defense.threshold_value
        )
        if pred_c is not None:
            row["cacc"] = m.accuracy(pred_c, y_c)
            row["defended_cacc"] = m.defended_accuracy(pred_c, y_c, rejected)
            if fixed_c is not None:
                row["corrected_cacc"] = m.accuracy(fixed_c, y_c)
        row["frr"] = float(rejected.mean())
        for key in ("asr", "asr_lms", DEFENDED_ASR_REJECT, "far", "auroc"):
            row[key] = None
        row["by_attack"] = per_set
    else:
        row.update(next(iter(per_set.values())))
    row["overhead_ratio"] = timer.guarded / timer.victim if victim is not None and timer.victim > 0 else None
    row["overhead_protocol"] = OVERHEAD_PROTOCOL
    row["inference_seconds"] = {"victim": round(timer.victim, 4), "guarded": round(timer.guarded, 4)}
    return row
