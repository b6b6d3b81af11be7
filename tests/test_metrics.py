import json

import numpy as np
import pytest

from peftshield.errors import PeftshieldError
from peftshield.evaluation.metrics import (
    accuracy,
    attack_success_rate,
    attack_success_rate_lms,
    auroc,
    calibrate_threshold,
    corrected_asr,
    defended_accuracy,
    defended_asr,
    defended_asr_lms,
    detection_metrics,
    per_trigger_asr_lms,
    scan_metrics,
)


def test_accuracy_by_hand():
    assert accuracy([1, 0, 1, 1, 0], [1, 1, 1, 0, 0]) == pytest.approx(3 / 5)
    assert accuracy(np.array(["pos", "neg"]), ["pos", "pos"]) == 0.5


def test_asr_psim_convention_by_hand():
    labels = [0, 1, 1, 1, 0]
    pred = [0, 0, 1, 0, 1]
    # target 0: eligible rows 1, 2, 3 (true label 1); predicted 0 at rows 1 and 3 -> 2/3.
    assert attack_success_rate(pred, labels, target=0) == pytest.approx(2 / 3)
    # target 1: eligible rows 0, 4; predicted 1 at row 4 only -> 1/2.
    assert attack_success_rate(pred, labels, target=1) == pytest.approx(1 / 2)


def test_asr_multiclass_does_not_exclude_misclassified():
    labels = [2, 0, 1, 1, 2]
    pred = [2, 2, 0, 2, 2]
    # target 2: eligible rows 1, 2, 3; predicted 2 at rows 1 and 3 -> 2/3.
    assert attack_success_rate(pred, labels, 2) == pytest.approx(2 / 3)


def test_asr_lms_by_hand():
    labels = [0, 1, 1, 0, 1]
    clean = [0, 1, 0, 0, 1]  # rows 0, 1, 3, 4 correct; row 2 wrong (excluded)
    triggered = [
        [1, 1, 1, 0, 1],  # trigger A flips row 0 (and row 2, which does not count)
        [0, 1, 0, 0, 0],  # trigger B flips row 4
        [0, 1, 0, 0, 0],  # trigger C flips row 4 again
    ]
    # Flipped by any trigger among the 4 correct rows: rows 0 and 4 -> 2/4.
    assert attack_success_rate_lms(clean, labels, triggered) == pytest.approx(0.5)
    np.testing.assert_allclose(per_trigger_asr_lms(clean, labels, triggered), [0.25, 0.25, 0.25])
    # A 1-D array is one trigger.
    assert attack_success_rate_lms(clean, labels, triggered[0]) == pytest.approx(0.25)


def test_corrected_asr_by_hand():
    # PSIM convention: the victim's labels on the cleaned triggered texts (non-target rows only).
    labels = [0, 1, 1, 1]
    fixed = [0, 0, 1, 1]  # target 0: eligible rows 1, 2, 3; still sent to 0 at row 1 -> 1/3
    assert corrected_asr(None, None, fixed, labels, target=0) == pytest.approx(1 / 3)
    # LMSanitator convention: against the labels on the UNcleaned clean texts, two triggers in blocks.
    clean_labels = [0, 1, 1]
    clean_pred = [0, 1, 0]  # rows 0, 1 correct
    fixed_blocks = [0, 0, 0, 1, 1, 1]  # trigger A flips row 1; trigger B flips row 0 -> 2/2
    assert corrected_asr(clean_pred, clean_labels, fixed_blocks, clean_labels * 2, None, 2) == 1.0
    assert corrected_asr(clean_pred, clean_labels, [0, 1, 1, 0, 1, 1], clean_labels * 2, None, 2) == 0.0


def test_defended_accuracy_by_hand():
    pred = [1, 0, 1, 1, 0]
    labels = [1, 0, 0, 1, 0]
    rejected = [False, True, False, False, False]
    # Correct: rows 0, 1, 3, 4; row 1 rejected -> counts wrong -> 3/5.
    assert defended_accuracy(pred, labels, rejected) == pytest.approx(3 / 5)
    assert defended_accuracy(pred, labels, [0, 1, 0, 0, 0]) == pytest.approx(3 / 5)
    assert defended_accuracy(pred, labels, [False] * 5) == accuracy(pred, labels)


def test_defended_asr_by_hand():
    labels = [1, 1, 1, 1, 0]
    pred = [0, 0, 0, 1, 0]
    rejected = [True, False, False, False, True]
    # target 0: eligible rows 0-3; successes (pred 0, accepted): rows 1, 2 -> 2/4.
    assert defended_asr(pred, labels, 0, rejected) == pytest.approx(0.5)
    assert attack_success_rate(pred, labels, 0) == pytest.approx(0.75)
    assert defended_asr(pred, labels, 0, [False] * 5) == attack_success_rate(pred, labels, 0)


def test_defended_asr_lms_type1_type2_by_hand():
    # Two triggers, five clean-correct samples.
    flipped = [[1, 1, 0, 1, 0], [0, 1, 1, 1, 0]]
    flagged = [[0, 1, 1, 1, 1], [1, 1, 1, 0, 1]]
    after = [[0, 1, 1, 0, 1], [0, 0, 1, 0, 0]]
    # sample 0: trigger 0 flips unflagged -> Type I.
    # sample 1: both flagged+flipped; trigger 0 survives purging -> Type II.
    # sample 2: trigger 1 flagged+flipped, survives -> Type II (trigger 0 not flipped: ignored).
    # sample 3: trigger 1 flips unflagged -> Type I (its Type-II chance is not counted twice).
    # sample 4: never flipped -> no success, whatever `after` says.
    out = defended_asr_lms(flagged, flipped, after)
    assert out == {
        "asr": pytest.approx(4 / 5),
        "type1": pytest.approx(2 / 5),
        "type2": pytest.approx(2 / 5),
        "n": 5,
    }


def test_defended_asr_lms_correct_mask_and_1d():
    out = defended_asr_lms([0, 1, 1], [1, 1, 0], [0, 0, 1], correct=[True, True, False])
    # Columns 0, 1 kept: sample 0 Type I, sample 1 flagged & flipped but purge works.
    assert out["asr"] == pytest.approx(0.5) and out["type1"] == pytest.approx(0.5) and out["type2"] == 0.0
    assert out["n"] == 2


def test_detection_metrics_by_hand():
    clean = [0.1, 0.2, 0.8, 0.3, 0.5]
    poison = [0.9, 0.6, 0.4, 0.95, 0.5]
    m = detection_metrics(clean, poison, threshold=0.5)
    # Flag when > 0.5: clean 0.8 flagged (fp=1); poison 0.9, 0.6, 0.95 flagged (tp=3, fn=2).
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 4, 2)
    assert m["frr"] == pytest.approx(1 / 5)
    assert m["far"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    json.dumps(m)


def test_detection_metrics_zero_divisions():
    m = detection_metrics([0.1, 0.2], [0.3, 0.4], threshold=1.0)  # nothing flagged
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["frr"] == 0.0 and m["far"] == 1.0


def test_auroc_perfect_inverted_and_ties():
    assert auroc([0.1, 0.2, 0.3], [0.7, 0.8]) == 1.0
    assert auroc([0.7, 0.8], [0.1, 0.2, 0.3]) == 0.0
    assert auroc([0.5, 0.5], [0.5, 0.5, 0.5]) == 0.5
    # Pairs (p, c): p=0.4 vs c={0.1, 0.4, 0.6} -> 1 + 0.5 + 0; p=0.6 -> 1 + 1 + 0.5; p=0.9 -> 3.
    # (1.5 + 2.5 + 3) / 9 = 7/9.
    assert auroc([0.1, 0.4, 0.6], [0.4, 0.6, 0.9]) == pytest.approx(7 / 9)


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 5, size=40).astype(float)
    p = rng.integers(1, 6, size=30).astype(float)
    diff = p[:, None] - c[None, :]
    expected = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
    assert auroc(c, p) == pytest.approx(expected)


def test_calibrate_threshold_by_hand():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    # target 0.2 on 10 scores -> k = 2 above -> threshold is the 8th smallest (0.8).
    assert calibrate_threshold(scores, 0.2) == 0.8
    assert calibrate_threshold(scores, 0.05) == 1.0  # k = 0: nothing rejected
    # 0.29 * 100 == 28.999999999999996 in floats: the threshold must still allow 29 rejections.
    hundred = np.arange(1, 101) / 100
    assert calibrate_threshold(hundred, 0.29) == 0.71
    assert float(np.mean(hundred > 0.71)) == pytest.approx(0.29)


def test_calibrate_threshold_ties_stay_below_target():
    scores = [0.1, 0.5, 0.5, 0.5, 0.9]
    t = calibrate_threshold(scores, 0.4)  # k = 2, but 0.5 is tied across the cut
    assert t == 0.5
    assert detection_metrics(scores, [1.0], t)["frr"] == pytest.approx(0.2)


def test_calibrate_threshold_reaches_target_on_sample():
    rng = np.random.default_rng(1)
    clean = rng.normal(size=1000)
    for target in (0.01, 0.05, 0.1):
        t = calibrate_threshold(clean, target)
        frr = float(np.mean(clean > t))
        assert frr <= target
        assert frr == pytest.approx(target, abs=1e-3)
    held_out = rng.normal(size=20000)
    assert float(np.mean(held_out > calibrate_threshold(clean, 0.05))) == pytest.approx(0.05, abs=0.02)


def test_scan_metrics_by_hand():
    verdicts = ["backdoored", "clean", "backdoored", "clean", "Backdoored "]
    labels = ["backdoored", "backdoored", "clean", "clean", "backdoored"]
    m = scan_metrics(verdicts, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (2, 1, 1, 1, 5)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["fpr"] == pytest.approx(1 / 2)
    assert m["fnr"] == pytest.approx(1 / 3)
    assert scan_metrics(["clean"], ["clean"])["fnr"] == 0.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: accuracy([1, 0], [1]),
        lambda: accuracy([], []),
        lambda: accuracy([[1]], [[1]]),
        lambda: attack_success_rate([0, 0], [0, 0], 0),
        lambda: attack_success_rate_lms([0, 1], [1, 0], [[0, 1]]),
        lambda: attack_success_rate_lms([0, 1], [0, 1], [[0, 1, 1]]),
        lambda: defended_accuracy([1], [1], [0.7]),
        lambda: defended_accuracy([1, 1], [1, 1], [True]),
        lambda: defended_asr_lms([[0, 1]], [[0, 1, 1]], [[0, 1]]),
        lambda: detection_metrics([0.1, float("nan")], [0.2], 0.5),
        lambda: detection_metrics([], [0.2], 0.5),
        lambda: auroc([0.1], []),
        lambda: calibrate_threshold([0.1, 0.2], 0.0),
        lambda: calibrate_threshold([0.1, 0.2], 1.0),
        lambda: calibrate_threshold([0.1, 0.2], -0.5),
        lambda: calibrate_threshold([], 0.05),
        lambda: scan_metrics(["backdoored", "maybe"], ["clean", "clean"]),
        lambda: scan_metrics(["clean"], ["clean", "clean"]),
        lambda: scan_metrics("clean", "clean"),
    ],
)
def test_bad_inputs_raise(call):
    with pytest.raises(PeftshieldError):
        call()
