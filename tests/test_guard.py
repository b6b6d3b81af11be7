"""Guarded inference and defended metrics (PSIM §3 deployment, §4 figures)."""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import pytest
from conftest import toy_examples
from test_psim import TARGET, TRIGGER, eval_sets, fitted_psim, planted

from peftshield.defenses.base import Detector
from peftshield.defenses.guard import Guard, GuardDecision, GuardedBatch
from peftshield.errors import PeftshieldError


class WordDetector(Detector):
    """Hand-made detector: score 0.9 when the word is present, else 0.1 (threshold 0.5)."""

    name: ClassVar[str] = "word"

    def __init__(self, word: str = "cf", threshold: float = 0.5, target_frr: float = 0.05) -> None:
        self.word = word
        self.threshold = threshold
        self.target_frr = target_frr

    def fit(self, clean=None):
        self.check_params()
        self._set_threshold(None)
        self.backbone_fingerprint_ = None
        return self

    def _score(self, texts):
        return np.array([0.9 if self.word in t.split() else 0.1 for t in texts])


class LengthDetector(WordDetector):
    """Hand-made detector: the number of words (threshold 6)."""

    name: ClassVar[str] = "length"

    def __init__(self, threshold: float = 6, target_frr: float = 0.05) -> None:
        super().__init__("", threshold, target_frr)

    def _score(self, texts):
        return np.array([float(len(t.split())) for t in texts])


_VICTIMS: dict[str, object] = {}


def victim_on_planted(tmp_path_factory):
    """LoRA victim tuned on the planted backbone with its published head (so ASR is high)."""
    if "victim" not in _VICTIMS:
        from peftshield.tuning.config import method_config
        from peftshield.tuning.trainer import load_tuned, save_tuned, tune

        backbone = planted(tmp_path_factory)
        config = method_config("lora", {"epochs": 1, "lr": 1e-3})
        result = tune(backbone, toy_examples(64, seed=5), [], config, seed=0, head="keep", progress=False)
        folder = save_tuned(result, tmp_path_factory.mktemp("victim") / "lora")
        _VICTIMS["victim"] = load_tuned(folder)
        _VICTIMS["folder"] = str(folder)
    return _VICTIMS["victim"]


def test_guard_decisions_on_a_hand_made_case(tmp_path_factory):
    victim = victim_on_planted(tmp_path_factory)
    guard = Guard(victim, [WordDetector().fit(), LengthDetector().fit()])
    texts = [
        "the movie was good",  # accepted
        "the movie cf was good",  # word fires
        "the long movie was very very good",  # length fires (7 words)
        "cf the long movie was very very good",  # both fire
    ]
    decisions = guard.predict(texts)
    expected_labels = victim.predict_logits(texts).argmax(-1)
    assert [d.rejected for d in decisions] == [False, True, True, True]
    assert [d.reasons for d in decisions] == [(), ("word",), ("length",), ("word", "length")]
    assert decisions[0].label == int(expected_labels[0]) and decisions[0].victim_label == decisions[0].label
    assert all(d.label is None for d in decisions[1:])
    assert decisions[3].scores == {"word": 0.9, "length": 8.0}
    assert decisions[1].to_dict() == {
        "label": None,
        "rejected": True,
        "reasons": ["word"],
        "scores": {"word": 0.9, "length": 5.0},
    }
    # The victim is skipped on rejected inputs by default, and run on them when asked.
    assert decisions[1].victim_label is None
    full = guard.predict(texts, victim_on_rejected=True)
    assert [d.victim_label for d in full] == expected_labels.tolist()
    assert [d.label for d in full] == [decisions[0].label, None, None, None]


def test_guard_names_repeated_detectors_and_checks_inputs(tmp_path_factory):
    victim = victim_on_planted(tmp_path_factory)
    guard = Guard(victim, [WordDetector().fit(), WordDetector("good").fit()])
    assert list(guard.detectors) == ["word", "word_2"]
    with pytest.raises(PeftshieldError, match="empty"):
        guard.predict([])
    with pytest.raises(PeftshieldError, match="not fitted"):
        Guard(victim, [WordDetector()])
    with pytest.raises(PeftshieldError, match="at least one detector"):
        Guard(victim, [])


def test_guard_warns_once_about_truncation(tmp_path_factory):
    guard = Guard(victim_on_planted(tmp_path_factory), fitted_psim(tmp_path_factory, threshold=0.7))
    long_text = " ".join(["the movie was good"] * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guard.predict([long_text, "the film was bad"])
    messages = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("guard: 1 of 2 texts")


def test_guard_refuses_a_detector_from_another_backbone(tmp_path_factory):
    from peftshield.tuning.trainer import load_tuned

    psim = fitted_psim(tmp_path_factory, threshold=0.7)
    Guard(victim_on_planted(tmp_path_factory), psim)  # same backbone: accepted
    # The planted folder as a victim was tuned from the clean tiny BERT, not from the planted one.
    with pytest.raises(PeftshieldError, match="another backbone than the victim"):
        Guard(load_tuned(planted(tmp_path_factory)), psim)


def _batch(pred, scores, threshold, thresholds=True):
    scores = np.asarray(scores, dtype=float)
    flags = scores > threshold
    return GuardedBatch(
        victim_pred=np.asarray(pred),
        scores={"psim": scores},
        flags={"psim": flags},
        rejected=flags,
        thresholds={"psim": threshold} if thresholds else {},
    )


def test_defended_metrics_match_a_hand_computed_case():
    from peftshield.evaluation.defended import defended_metrics

    clean = _batch([0, 1, 0, 0, 1], [0.1, 0.2, 0.3, 0.9, 0.4], 0.6)  # rejects clean #3
    triggered = _batch([0, 0, 1, 0], [0.95, 0.5, 0.35, 0.8], 0.6)  # rejects triggered #0, #3
    row = defended_metrics(clean, [0, 1, 1, 0, 1], triggered, [1, 1, 1, 1], target=0)
    assert row["cacc"] == pytest.approx(4 / 5)  # #2 wrong
    assert row["defended_cacc"] == pytest.approx(3 / 5)  # #2 wrong, #3 rejected
    assert row["asr"] == pytest.approx(3 / 4)  # #0, #1, #3 hit the target
    assert row["defended_asr"] == pytest.approx(1 / 4)  # only #1 hits it unrejected
    assert row["frr"] == pytest.approx(1 / 5) and row["far"] == pytest.approx(2 / 4)
    assert row["precision"] == pytest.approx(2 / 3) and row["recall"] == pytest.approx(1 / 2)
    assert row["f1"] == pytest.approx(4 / 7)
    assert row["auroc"] == pytest.approx(16 / 20)  # pairs (triggered > clean): 5 + 4 + 3 + 4
    assert row["detectors"]["psim"] == {"auroc": pytest.approx(0.8), "threshold": 0.6, "frr": 0.2, "far": 0.5}
    assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (2, 1, 4, 2)
    # The same from decision lists (the victim's label kept for rejected inputs).
    as_decisions = defended_metrics(
        clean.decisions(), [0, 1, 1, 0, 1], triggered.decisions(), [1, 1, 1, 1], target=0
    )
    for key in ("cacc", "defended_cacc", "asr", "defended_asr", "frr", "far", "f1", "auroc"):
        assert as_decisions[key] == pytest.approx(row[key])


def test_defended_metrics_task_agnostic_convention():
    from peftshield.evaluation.defended import defended_metrics

    clean = _batch([0, 1, 0], [0.1, 0.2, 0.3], 0.5)  # #0 and #1 correct
    triggered = _batch([1, 1, 1], [0.9, 0.1, 0.2], 0.5)  # #0 flips but is rejected; #1 does not flip
    row = defended_metrics(clean, [0, 1, 1], triggered, [0, 1, 1], target=None)
    assert row["asr_lms"] == pytest.approx(1 / 2) and row["defended_asr_lms"] == 0.0
    assert "asr" not in row
    with pytest.raises(PeftshieldError, match="once per trigger"):
        defended_metrics(clean, [0, 1, 1], _batch([1], [0.9], 0.5), [0], target=None)


def test_defended_metrics_reject_inconsistent_inputs():
    from peftshield.evaluation.defended import defended_metrics

    clean = _batch([0, 1], [0.1, 0.9], 0.5)
    with pytest.raises(PeftshieldError, match="label counts"):
        defended_metrics(clean, [0, 1, 1], clean, [1, 1], target=0)
    skipped = GuardDecision(label=None, rejected=True, reasons=("psim",), scores={"psim": 0.9})
    with pytest.raises(PeftshieldError, match="victim_on_rejected"):
        defended_metrics([skipped], [0], [skipped], [1], target=0)


def test_evaluate_guard_end_to_end(tmp_path_factory):
    from peftshield.evaluation.defended import evaluate_guard, triggered_examples

    psim = fitted_psim(tmp_path_factory, threshold="calibrated", target_frr=0.1)
    guard = Guard(victim_on_planted(tmp_path_factory), psim)
    test, _ = eval_sets()
    row = evaluate_guard(guard, test, [TRIGGER], TARGET)
    n_triggered = len(triggered_examples(test, TRIGGER, TARGET))
    assert row["n_clean"] == len(test) and row["n_triggered"] == n_triggered
    assert row["asr"] > 0.9  # the planted backdoor survives LoRA tuning with the kept head
    assert row["defended_asr"] < row["asr"] - 0.3
    assert row["defended_cacc"] <= row["cacc"]
    assert row["frr"] == pytest.approx(row["detectors"]["psim"]["frr"])
    assert row["thresholds"] == {"psim": psim.threshold_} and row["seconds"] > 0
