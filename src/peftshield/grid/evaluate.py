"""Measure one grid cell: the victim and its defence on the clean test split and its triggered copies.

(With ``sizes.evaluate_on: dev`` the measured split is the part of the dev split the defences did
not hold out, :func:`peftshield.grid.stages.heldout_and_measured`; "test" below reads "measured".)

Every cell of a victim sees the SAME inputs, whatever its defence, so the undefended figures of a
victim agree across its defences: the clean test split, and per trigger the test examples whose
label is not the target (all of them for task-agnostic attacks) with the trigger inserted with
seed ``seed + k`` (:func:`peftshield.evaluation.defended.triggered_examples`, as
:func:`~peftshield.evaluation.defended.evaluate_guard` builds them). The metric definitions come
from :func:`peftshield.evaluation.defended.defended_metrics` and :mod:`peftshield.evaluation.metrics`
(docs/design.md "Metric definitions"); nothing is redefined here:

- ``cacc``, ``asr`` (PSIM convention for task-specific attacks; for task-agnostic ones the
  LMSanitator convention, also under ``asr_lms``), ``asr_dominant``
  (:func:`~peftshield.evaluation.metrics.asr_dominant`: the PSIM-convention ASR towards the class
  each trigger's inputs land in most, averaged over triggers), ``defended_cacc``, ``defended_asr_reject`` (a
  rejected clean input counts as wrong, a rejected triggered input as blocked), ``frr``, ``far``,
  ``precision``, ``recall``, ``f1``, ``auroc`` of the defence's score;
- ``defended_asr_purge`` (with ``type1_purge``, ``type2_purge``, ``n_purged``) for a defence that
  purges (the LMSanitator monitors) and a task-agnostic attack: the flagged input goes through the
  real purge and its answer counts (:func:`_purged`);
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

Threshold policies (:func:`evaluate_policies`): the victim reads and the defence scores every text
ONCE; each policy of the defence only moves the cut over those scores and is one row.

A clean control (attack ``none``) is measured with the triggers of every attack of the grid: its
clean-side figures are at the top level and each attack's in ``by_attack``. A cell without a
victim (method ``none``) gets the detection figures only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
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
    #: ``(label, value)`` per threshold policy, all read from ONE scoring pass; ``None``: the fitted
    #: detector's own threshold (``threshold`` / :attr:`threshold_value`) is the only policy.
    policies: list[tuple[str | float, float]] | None = None

    @property
    def threshold_value(self) -> float:
        """The fitted threshold (0 for an inactive defence, whose scores are all 0: nothing is flagged)."""
        return 0.0 if self.detector is None else float(self.detector.threshold_)

    def policy_list(self) -> list[tuple[str | float | None, float]]:
        """The ``(label, threshold value)`` pairs a cell reports, one result row each."""
        if self.policies:
            return list(self.policies)
        return [(self.threshold, self.threshold_value)]


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


def _batch(pred: np.ndarray, scores: np.ndarray | None, defense: LoadedDefense | None, cut: float) -> Any:
    from peftshield.defenses.guard import GuardedBatch

    if scores is None or defense is None:
        return GuardedBatch(
            victim_pred=pred, scores={}, flags={}, rejected=np.zeros(len(pred), dtype=bool), thresholds={}
        )
    flags = scores > cut
    return GuardedBatch(
        victim_pred=pred,
        scores={defense.name: scores},
        flags={defense.name: flags},
        rejected=flags.copy(),
        thresholds={defense.name: cut},
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


def _purged(
    defense: LoadedDefense,
    texts_t: list[str],
    pred_c: np.ndarray,
    y_c: np.ndarray,
    pred_t: np.ndarray,
    s_t: np.ndarray | None,
    *,
    cut: float,
    n_triggers: int,
) -> dict[str, Any]:
    """The defended ASR through the defence's purge, LMSanitator convention (Wei et al. 2024, §V).

    At threshold ``cut``, over the test inputs the victim gets right, trigger ``k`` inserted:
    Type I = flipped and not flagged; Type II = flagged and flipped, and after purging no longer
    flagged and still not the clean prediction (a text the purge cannot clear stays rejected:
    blocked). Only the flagged, flipped, correct inputs are purged (the others cannot become
    successes).
    :func:`peftshield.evaluation.metrics.defended_asr_lms` does the counting.
    """
    from peftshield.evaluation import metrics as m

    n = len(pred_c)
    flipped = _lms_success(pred_t, pred_c, n_triggers)
    flagged = (
        np.zeros_like(flipped)
        if s_t is None or defense.detector is None
        else (s_t > cut).reshape(n_triggers, n)
    )
    correct = pred_c == y_c
    after = np.zeros_like(flagged)
    todo = list(zip(*np.nonzero(flagged & flipped & correct[None, :]), strict=True))
    if todo:
        results = defense.adapter.purge(defense.detector, [texts_t[k * n + i] for k, i in todo])
        for (k, i), (cleared, label) in zip(todo, results, strict=True):
            after[k, i] = cleared and label != pred_c[i]
    counted = m.defended_asr_lms(flagged, flipped, after, correct=correct)
    return {
        DEFENDED_ASR_PURGE: counted["asr"],
        "type1_purge": counted["type1"],
        "type2_purge": counted["type2"],
        "n_purged": len(todo),
    }


@dataclass
class _SetPass:
    """One trigger set's passes (victim labels, scores, cleaned texts): computed once per cell."""

    tset: TriggerSet
    texts_t: list[str]
    y_t: np.ndarray
    pred_t: np.ndarray | None
    s_t: np.ndarray | None
    fixed_t: np.ndarray | None


def _pass_set(
    tset: TriggerSet,
    test: list[Example],
    *,
    victim: Any,
    defense: LoadedDefense | None,
    seed: int,
    timer: _Timer,
) -> _SetPass:
    """The triggered copies of ``test`` for ``tset``, read by the victim and scored by the defence once."""
    from peftshield.evaluation.defended import triggered_examples

    triggered: list[Example] = []
    for k, trigger in enumerate(tset.triggers):
        triggered += triggered_examples(test, trigger, tset.target, seed=seed + k)
    texts_t = [e.text for e in triggered]
    before = timer.victim
    pred_t = _victim_pass(victim, texts_t, timer)
    s_t, cleaned_t = _defense_pass(defense, texts_t, timer.victim - before, timer)
    fixed_t = _corrected_pass(victim, cleaned_t)
    return _SetPass(tset, texts_t, np.asarray([e.label for e in triggered]), pred_t, s_t, fixed_t)


def _measure_set(
    passed: _SetPass,
    test: list[Example],
    *,
    defense: LoadedDefense | None,
    cut: float,
    pred_c: np.ndarray | None,
    s_c: np.ndarray | None,
    fixed_c: np.ndarray | None,
) -> dict[str, Any]:
    """Every figure of one trigger set at threshold ``cut`` (see the module docstring)."""
    from peftshield.evaluation import metrics as m
    from peftshield.evaluation.defended import defended_metrics

    tset, y_t, pred_t, s_t, fixed_t = passed.tset, passed.y_t, passed.pred_t, passed.s_t, passed.fixed_t
    y_c = np.asarray([e.label for e in test])
    agnostic = tset.target is None
    n_triggers = len(tset.triggers)
    row: dict[str, Any] = {
        "kind": tset.kind,
        "target": tset.target,
        "n_triggers": n_triggers,
        "asr_convention": "lms" if agnostic else "psim",
    }
    if pred_c is not None and pred_t is not None:
        metrics = defended_metrics(
            _batch(pred_c, s_c, defense, cut),
            y_c,
            _batch(pred_t, s_t, defense, cut),
            y_t,
            tset.target,
            n_triggers=n_triggers,
        )
        metrics.pop("detectors", None)
        if agnostic:
            metrics["asr"] = metrics["asr_lms"]
            metrics[DEFENDED_ASR_REJECT] = metrics.pop("defended_asr_lms")
            if defense is not None and defense.adapter.purge is not None:
                metrics.update(
                    _purged(defense, passed.texts_t, pred_c, y_c, pred_t, s_t, cut=cut, n_triggers=n_triggers)
                )
        else:
            metrics[DEFENDED_ASR_REJECT] = metrics.pop("defended_asr")
            metrics["asr_lms"] = None  # the triggered set holds non-target inputs only
        # Every trigger block holds the same examples (all of them, or the non-target ones).
        metrics["asr_dominant"] = m.asr_dominant(
            pred_t.reshape(n_triggers, -1), y_t.reshape(n_triggers, -1)[0]
        )
        row.update(metrics)
    else:
        row.update({"n_clean": len(test), "n_triggered": len(y_t)})
    if pred_c is not None and fixed_c is not None and fixed_t is not None:
        row["corrected_cacc"] = m.accuracy(fixed_c, y_c)
        row["corrected_asr"] = m.corrected_asr(pred_c, y_c, fixed_t, y_t, tset.target, n_triggers=n_triggers)
    if s_c is not None and s_t is not None:
        if pred_c is None:
            detection = m.detection_metrics(s_c, s_t, cut)
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
            n_triggers=n_triggers,
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
    """The result row of a cell at its first threshold policy (see :func:`evaluate_policies`)."""
    return evaluate_policies(victim, defense, test, sets, seed=seed, control=control)[0]


def evaluate_policies(
    victim: Any,
    defense: LoadedDefense | None,
    test: list[Example],
    sets: list[TriggerSet],
    *,
    seed: int,
    control: bool,
) -> list[dict[str, Any]]:
    """One result row per threshold policy of ``defense`` (without the identifying keys).

    The victim reads every text once and the defence scores every text once; each policy then
    only moves the cut over the same scores, so the policies' rows share their undefended figures,
    AUROC, curves and overhead, and differ in ``threshold``, ``threshold_value`` and the figures
    that depend on the cut (see the module docstring). Without a defence: one row.
    """
    from peftshield.evaluation import metrics as m
    from peftshield.evaluation.validity import chance_accuracy

    if not test:
        raise PeftshieldError("the measured split is empty")
    if victim is None and defense is None:
        raise PeftshieldError("a cell without a victim needs a defence to measure")
    timer = _Timer()
    texts_c = [e.text for e in test]
    y_c = np.asarray([e.label for e in test])
    pred_c = _victim_pass(victim, texts_c, timer)
    s_c, cleaned_c = _defense_pass(defense, texts_c, timer.victim, timer)
    fixed_c = _corrected_pass(victim, cleaned_c)
    passes = [_pass_set(t, test, victim=victim, defense=defense, seed=seed, timer=timer) for t in sets]
    overhead = timer.guarded / timer.victim if victim is not None and timer.victim > 0 else None
    policies: list[tuple[Any, float]] = [(None, 0.0)] if defense is None else defense.policy_list()
    if defense is not None and defense.detector is None:  # inactive: scores are 0, nothing flagged
        policies = [(label, 0.0) for label, _ in policies]
    rows = []
    for label, cut in policies:
        per_set = {
            p.tset.attack: _measure_set(
                p, test, defense=defense, cut=cut, pred_c=pred_c, s_c=s_c, fixed_c=fixed_c
            )
            for p in passes
        }
        # the chance level the valid-cell rule reads (peftshield.evaluation.validity)
        row: dict[str, Any] = {"n_clean": len(test), "chance_cacc": chance_accuracy(y_c.tolist())}
        if defense is not None:
            row["threshold"] = label
            row["threshold_value"] = float(cut)
            if defense.inactive:
                row["inactive"] = defense.inactive
        if control or len(per_set) != 1:
            rejected = np.zeros(len(test), dtype=bool) if s_c is None or defense is None else s_c > cut
            if pred_c is not None:
                row["cacc"] = m.accuracy(pred_c, y_c)
                row["defended_cacc"] = m.defended_accuracy(pred_c, y_c, rejected)
                if fixed_c is not None:
                    row["corrected_cacc"] = m.accuracy(fixed_c, y_c)
            row["frr"] = float(rejected.mean())
            for key in ("asr", "asr_lms", "asr_dominant", DEFENDED_ASR_REJECT, "far", "auroc"):
                row[key] = None
            row["by_attack"] = per_set
        else:
            row.update(next(iter(per_set.values())))
        row["overhead_ratio"] = overhead
        row["overhead_protocol"] = OVERHEAD_PROTOCOL
        row["inference_seconds"] = {"victim": round(timer.victim, 4), "guarded": round(timer.guarded, 4)}
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- scan-only


#: Ground-truth labels of a scan-only row (``evaluation.metrics.scan_metrics``' positive first).
SCAN_LABELS = ("backdoored", "clean")


def scan_label(attack_name: str, attack_kind: str | None) -> str:
    """``clean`` for the backbone as it is (attack ``none``) and for a clean builder, else ``backdoored``."""
    return "clean" if attack_name == "none" or attack_kind == "clean" else "backdoored"


def evaluate_scan_cell(
    scan_folder: str, backbone: str, attack_name: str, attack_kind: str | None
) -> dict[str, Any]:
    """The row of a scan-only cell (Wei et al., NDSS 2024, §VI-B: one row per scanned model).

    ``label`` (ground truth, :func:`scan_label`), ``verdict``, ``score`` (the scan's per-model
    score, docs/scan-format.md), ``scan_seconds`` (after loading), ``attempts``, ``steps``,
    ``n_pvs``, ``outcomes`` (attempts per outcome); for a task-agnostic backdoor the PV recovery
    against the planted PVs (``pv_*``, :func:`peftshield.defenses.lmsanitator.scan.pv_recovery`,
    sign agreement > 0.8) and the attacker's probe of how well the backdoor took
    (``attack_sign_match``, ``attack_monitor_rate``, ``attack_min_monitor_rate``); ``clean_drift``
    (output drift from the source backbone) for every built model.
    """
    from peftshield.attacks.record import has_poison_record, load_pvs, read_poison_record
    from peftshield.defenses.lmsanitator.scan import SCAN_FILE, pv_recovery
    from peftshield.defenses.lmsanitator.scan import load_pvs as load_found
    from peftshield.utils.io import read_json

    doc = read_json(Path(scan_folder) / SCAN_FILE)
    outcomes: dict[str, int] = {}
    gaps = []
    for attempt in doc.get("attempt_log", []):
        outcome = str(attempt.get("outcome"))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        gap = attempt.get("gap")
        if isinstance(gap, int | float) and np.isfinite(gap):
            gaps.append(float(gap))
    row: dict[str, Any] = {
        "label": scan_label(attack_name, attack_kind),
        "verdict": doc["verdict"],
        "score": doc.get("score"),
        "scan_seconds": doc.get("seconds"),
        "attempts": doc.get("attempts"),
        "steps": doc.get("steps"),
        "n_pvs": doc.get("n_pvs"),
        "outcomes": outcomes,
        "best_gap": min(gaps) if gaps else None,
        "thresholds": doc.get("thresholds"),
        "clean_drift": None,
    }
    if attack_name == "none" or not has_poison_record(backbone):
        return row
    record = read_poison_record(backbone)
    row["clean_drift"] = record.metrics.get("clean_drift")
    row["build_seconds"] = record.wall_seconds
    if record.kind == "clean":
        row["build_metrics"] = {k: v for k, v in record.metrics.items() if k != "history"}
    if record.pv_file is None:
        return row
    per = record.metrics.get("per_trigger", {}).values()
    rates = [v["monitor_rate"] for v in per if isinstance(v.get("monitor_rate"), int | float)]
    matches = [v["sign_match"] for v in per if isinstance(v.get("sign_match"), int | float)]
    row["triggers"] = [t.describe() for t in record.trigger_objects()]
    row["pv_family"] = record.recipe.get("pv_family")
    row["attack_sign_match"] = float(np.mean(matches)) if matches else None
    row["attack_monitor_rate"] = float(np.mean(rates)) if rates else None
    row["attack_min_monitor_rate"] = min(rates) if rates else None
    recovery = pv_recovery(load_found(scan_folder).pvs, load_pvs(backbone), t_match=0.8)
    row.update({f"pv_{k}": v for k, v in recovery.items()})
    return row
