"""The PSIM benchmark's pure parts: cell order, threshold policies, metrics from one scoring pass."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_psim  # noqa: E402

from peftshield.defenses.guard import GuardedBatch  # noqa: E402
from peftshield.evaluation.metrics import auroc  # noqa: E402


def batch(pred, scores) -> GuardedBatch:
    scores = np.asarray(scores, dtype=float)
    return GuardedBatch(
        victim_pred=np.asarray(pred),
        scores={"psim": scores},
        flags={"psim": scores > 0.7},
        rejected=scores > 0.7,
        thresholds={"psim": 0.7},
    )


def test_cells_run_in_tiers():
    attacks = list(bench_psim.DEFAULT_ATTACKS)
    cells = bench_psim.plan_cells(attacks, list(bench_psim.DEFAULT_METHODS))
    labels = [c.label() for c in cells]
    # 4 task-specific attacks x (4 methods + LoRA with the head kept), 2 agnostic x 4, control x 4
    assert len(cells) == 4 * 5 + 2 * 4 + 4
    assert labels[:3] == ["badnets / lora", "badnets / lora (head keep)", "badnets / prefix"]
    first_prompt = labels.index("badnets / prompt")
    assert all(c.method in ("lora", "prefix") for c in cells[:first_prompt])
    assert labels.index("template / ptuning") < labels.index("clean-label / lora")
    assert max(i for i, c in enumerate(cells) if c.attack == "clean-label") < labels.index("por / lora")
    assert labels.index("neuba / prefix") < labels.index("control / lora") < labels.index("por / prompt")
    assert not any(c.head == "keep" for c in cells if c.attack in ("por", "neuba", "control"))


def test_policies_calibrate_on_the_given_clean_scores():
    dev = np.linspace(0.0, 1.0, 101)
    chosen = bench_psim.policies(dev)
    assert chosen["fixed@0.7"] == 0.7
    for frr in bench_psim.TARGET_FRRS:
        threshold = chosen[f"calibrated@{frr:g}"]
        assert np.mean(dev > threshold) == pytest.approx(frr, abs=1 / 101)
        assert np.mean(dev > threshold) <= frr


def test_measure_reads_every_policy_from_one_pass():
    # clean: labels 0 1 0 1, victim right on the first three; triggered (target 1): both flipped
    clean = batch([0, 1, 0, 0], [0.1, 0.2, 0.3, 0.9])
    trig = batch([1, 1], [0.95, 0.5])
    out = bench_psim.measure(clean, [0, 1, 0, 1], trig, [0, 0], 1, 1, {"fixed@0.7": 0.7, "low": 0.25})
    assert out["cacc"] == 0.75 and out["asr"] == 1.0
    assert out["auroc"] == pytest.approx(7 / 8)
    fixed = out["policies"]["fixed@0.7"]
    assert fixed["defended_cacc"] == 0.75 and fixed["cacc_cost"] == 0.0  # only the wrong input is rejected
    assert fixed["defended_asr"] == 0.5 and fixed["frr"] == 0.25 and fixed["far"] == 0.5
    low = out["policies"]["low"]
    assert low["defended_cacc"] == 0.5 and low["defended_asr"] == 0.0 and low["frr"] == 0.5
    curve = out["tradeoff"]
    assert curve["threshold"] == sorted(curve["threshold"])
    assert np.all(np.diff(curve["frr"]) <= 0) and np.all(np.diff(curve["asr"]) >= 0)
    assert bench_psim.target_check(out) == {"met": False, "met_at": []}


def test_task_agnostic_asr_uses_the_lmsanitator_convention():
    clean = batch([0, 1, 1], [0.1, 0.2, 0.3])
    # two triggers, each over the whole clean set in order; the second one flips input 0 and is flagged
    trig = batch([0, 1, 1, 1, 1, 1], [0.1, 0.1, 0.1, 0.9, 0.1, 0.1])
    out = bench_psim.measure(clean, [0, 1, 0], trig, [0, 1, 0, 0, 1, 0], None, 2, {"fixed@0.7": 0.7})
    assert out["asr_convention"] == "lms" and out["asr"] == 0.5  # 1 of the 2 correct inputs flips
    assert out["policies"]["fixed@0.7"]["defended_asr"] == 0.0


def test_roc_is_thinned_monotone_and_keeps_its_area():
    rng = np.random.default_rng(0)
    clean, trig = rng.normal(0, 1, 800), rng.normal(1.5, 1, 400)
    roc = bench_psim.roc_points(clean, trig)
    fpr, tpr = np.array(roc["fpr"]), np.array(roc["tpr"])
    assert 10 < len(fpr) <= bench_psim.ROC_POINTS
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auroc(clean, trig), abs=0.01)


def test_psim_overrides_parse_json_values():
    assert bench_psim.psim_setting(["lr=2e-5", "head=keep", "epochs=2"]) == {
        "lr": 2e-5,
        "head": "keep",
        "epochs": 2,
    }
    with pytest.raises(SystemExit):
        bench_psim.psim_setting(["lr"])
