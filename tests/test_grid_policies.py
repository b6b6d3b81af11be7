"""What the grid gained for the retention and PSIM benchmarks (issue 16, items 1-2): threshold
policies read from one scoring pass (one fit, one row per policy), full fine-tuning budgets as
method entries, ``asr_dominant`` (one definition, checked against a hand-computed case), the
``benchmark`` name of a grid's result file and ``bench run --only``."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from test_grid import FAST_BADNETS, FAST_LORA, FAST_PSIM, built_counts, write_grid

from peftshield.cli import main
from peftshield.data.records import Example
from peftshield.data.triggers import trigger_from_dict
from peftshield.defenses.base import load_detector
from peftshield.errors import PeftshieldError
from peftshield.evaluation.metrics import asr_dominant, calibrate_threshold, dominant_trigger_asr
from peftshield.grid.config import validate_grid
from peftshield.grid.evaluate import TriggerSet, evaluate_policies
from peftshield.grid.stages import pack_policy_rows, policy_rows

POLICIES = [0.7, "calibrated@0.05", {"target_frr": 0.2, "label": "loose"}]


# ------------------------------------------------------------------------------- asr_dominant


def test_asr_dominant_matches_a_hand_computed_case():
    labels = np.array([0, 1, 0, 1])
    # trigger 0 sends 3 of 4 texts to class 1: the two class-0 texts both flip to 1 -> 1.0
    # trigger 1 sends 3 of 4 texts to class 0: of the two class-1 texts one lands in 0 -> 0.5
    preds = np.array([[1, 1, 1, 0], [0, 1, 0, 0]])
    first = dominant_trigger_asr(preds[0], labels)
    assert first == {"dominant_label": 1, "dominant_share": 0.75, "asr_dominant": 1.0}
    assert dominant_trigger_asr(preds[1], labels)["asr_dominant"] == 0.5
    assert asr_dominant(preds, labels) == pytest.approx(0.75)
    # every text's true label is the dominant one: undefined, left out of the mean; all undefined: None
    assert dominant_trigger_asr(np.array([1, 1]), np.array([1, 1]))["asr_dominant"] is None
    assert asr_dominant(np.array([[1, 1]]), np.array([1, 1])) is None
    with pytest.raises(PeftshieldError):
        asr_dominant(np.array([[1, 1, 0]]), labels)


class _WordVictim:
    """Predicts class 1 when a text holds ``cf``, class 0 when it holds ``mn``, else the true label."""

    def __init__(self, truth: dict[str, int]) -> None:
        self.truth = truth

    def predict_logits(self, texts):
        out = []
        for text in texts:
            words = text.split()
            label = 1 if "cf" in words else 0 if "mn" in words else self.truth[text]
            out.append([1.0 - label, float(label)])
        return np.asarray(out)


def test_grid_rows_carry_asr_dominant_of_a_task_agnostic_attack():
    test = [Example(f"text number {i}", i % 2) for i in range(6)]
    victim = _WordVictim({e.text: e.label for e in test})
    triggers = [trigger_from_dict({"type": "rareword", "words": [w]}) for w in ("cf", "mn")]
    tset = TriggerSet(attack="por", kind="task-agnostic", triggers=triggers, target=None)
    (row,) = evaluate_policies(victim, None, test, [tset], seed=0, control=False)
    # cf: every text -> 1, the three class-0 texts flip: 1.0; mn: every text -> 0: 1.0
    assert row["asr_dominant"] == 1.0 and row["asr"] == row["asr_lms"] == 1.0
    assert row["cacc"] == 1.0 and row["asr_convention"] == "lms"


# ------------------------------------------------------------------------------- policies


def _policy_grid(tiny_bert: str, toy_csv: str) -> dict:
    return {
        "name": "policies",
        "benchmark": "psim",
        "sizes": {"max_train": 100, "max_eval": 40},
        "corpora": [toy_csv],
        "backbones": [tiny_bert],
        "attacks": [{"name": "badnets", "corpus": toy_csv, "recipe": FAST_BADNETS}],
        "methods": [{"name": "lora", "config": FAST_LORA}],
        "defenses": [
            {"name": "psim", **FAST_PSIM, "calibration_fraction": 0.0, "policies": POLICIES},
            # the same detector with the fixed threshold as its only one: the old, one-row path
            {
                "name": "psim",
                "label": "psim-fixed",
                **FAST_PSIM,
                "calibration_fraction": 0.0,
                "threshold": 0.7,
            },
        ],
    }


def test_policies_are_read_from_one_fit_and_one_scoring_pass(tmp_path, tiny_bert, toy_csv):
    grid = write_grid(tmp_path, _policy_grid(tiny_bert, toy_csv))
    results = tmp_path / "results"
    assert main(["bench", "run", grid, "--results", str(results), "--quiet"]) == 0
    data = json.loads((results / "grid.json").read_text())
    assert data["benchmark"] == "psim"
    rows = data["rows"]
    assert len(list((results / "cells").iterdir())) == 2  # two cells ...
    policy = [r for r in rows if r["defense"] == "psim"]
    single = [r for r in rows if r["defense"] == "psim-fixed"]
    assert len(policy) == 3 and len(single) == 1  # ... and one row per policy
    assert [r["threshold"] for r in policy] == ["fixed@0.7", "calibrated@0.05", "loose"]
    assert len({r["cell"] for r in policy}) == 1
    # one fit per defence entry (two entries: two fits, the poison and the victim shared)
    assert Counter(kind for kind, _ in built_counts(results)) == {"poison": 1, "victim": 1, "defense": 2}
    # one scoring pass: the rows share everything that does not depend on the cut
    for key in ("cacc", "asr", "auroc", "roc", "tradeoff", "inference_seconds", "overhead_ratio"):
        assert all(r[key] == policy[0][key] for r in policy), key
    # the fixed policy gives exactly what the detector fitted with that threshold gives
    fixed = policy[0]
    for key in ("threshold_value", "defended_cacc", "defended_asr_reject", "frr", "far", "auroc", "roc"):
        assert fixed[key] == single[0][key], key
    # calibrated policies: the threshold at the target FRR of the saved clean held-out scores
    fit = results / fixed["stages"]["defense"]["folder"]
    held = json.loads((fit / "heldout_scores.json").read_text())["scores"]
    from peftshield.data.corpora import load_splits

    splits = load_splits({"corpus": toy_csv, "split_seed": 0, "max_train": 100, "max_eval": 40})
    poisoned = results / fixed["stages"]["poison"]["folder"] / "model"
    fitted = load_detector(fit / "detector", device="cpu", backbone=str(poisoned))
    assert held == [float(x) for x in fitted.score([e.text for e in splits.dev])]  # dev, never test
    assert policy[1]["threshold_value"] == calibrate_threshold(held, 0.05)
    assert policy[2]["threshold_value"] == calibrate_threshold(held, 0.2)
    assert policy[2]["threshold_value"] <= policy[1]["threshold_value"]
    assert policy[2]["frr"] >= policy[1]["frr"]
    # the policy's summary is kept apart per policy
    assert {"psim fixed@0.7", "psim calibrated@0.05", "psim loose", "psim-fixed"} <= set(
        data["summary"]["by_defense"]
    )

    # a different policy list keeps the fit (the threshold is not in its key) and runs the cell again
    changed = _policy_grid(tiny_bert, toy_csv)
    changed["defenses"] = changed["defenses"][:1]
    changed["defenses"][0]["policies"] = [0.5, "calibrated@0.1"]  # another fixed value, too
    other = write_grid(tmp_path, changed, "changed.json")
    before = built_counts(results)
    assert main(["bench", "run", other, "--results", str(results), "--quiet", "--force"]) == 0
    assert built_counts(results) == before  # nothing built: poison, victim and fit reused
    low, row = json.loads((results / "grid.json").read_text())["rows"]
    assert low["threshold"] == "fixed@0.5" and low["threshold_value"] == 0.5
    assert row["threshold"] == "calibrated@0.1" and row["threshold_value"] == calibrate_threshold(held, 0.1)


def test_policy_rows_pack_into_one_cell_file_and_unpack():
    rows = [
        {"cell": "c", "threshold": "a", "frr": 0.1, "roc": [1, 2]},
        {"cell": "c", "threshold": "b", "frr": 0.3, "roc": [1, 2]},
    ]
    packed = pack_policy_rows(rows)
    assert packed["other_policies"] == [{"threshold": "b", "frr": 0.3}]
    assert policy_rows(packed) == rows
    assert policy_rows(rows[0]) == [rows[0]]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"policies": []}, "non-empty list"),
        ({"policies": [0.7, 0.7]}, "repeated policy"),
        ({"policies": ["calibrated@x"]}, "calibrated@<FRR>"),
        ({"policies": [{"target_frr": 1.5}]}, "strictly between 0 and 1"),
        ({"policies": [{"threshold": 0.5, "target_frr": 0.1}]}, "exactly one of"),
        ({"policies": [0.7], "threshold": 0.5}, "through 'policies' only"),
    ],
)
def test_bad_policies_fail_naming_the_entry(tiny_bert, toy_csv, entry, message):
    grid = _policy_grid(tiny_bert, toy_csv)
    grid["defenses"] = [{"name": "psim", "calibration_fraction": 0.0, **entry}]
    with pytest.raises(PeftshieldError, match="defenses") as err:
        validate_grid(grid, source="g.json")
    assert message in str(err.value)


# ------------------------------------------------------------------------------- full-FT budgets


def test_full_fine_tuning_budgets_are_cells_of_their_own(tmp_path, tiny_bert, toy_csv):
    fast_full = {"lr": 3e-3, "head_lr": 3e-2, "batch_size": 16, "epochs": 1, "max_length": 32}
    grid = {
        "name": "budgets",
        "sizes": {"max_train": 60, "max_eval": 20},
        "corpora": [toy_csv],
        "backbones": [tiny_bert],
        "attacks": ["none"],
        "methods": [{"name": "full", "config": fast_full, "budgets": [{"lr": 1e-3, "epochs": 2}]}],
        "defenses": ["none"],
    }
    spec = validate_grid(json.loads(json.dumps(grid)))
    assert [m.label for m in spec.methods] == ["full", "full-lr1e-3x2"]
    assert spec.methods[1].config["lr"] == 1e-3 and spec.methods[1].config["epochs"] == 2
    assert spec.methods[1].config["batch_size"] == 16  # the base entry's config under the budget
    results = tmp_path / "results"
    assert main(["bench", "run", write_grid(tmp_path, grid), "--results", str(results), "--quiet"]) == 0
    rows = {r["method"]: r for r in json.loads((results / "grid.json").read_text())["rows"]}
    assert set(rows) == {"full", "full-lr1e-3x2"}
    assert rows["full-lr1e-3x2"]["config"]["method"]["config"]["epochs"] == 2
    assert rows["full"]["config"]["method"]["config"]["epochs"] == 1
    assert rows["full"]["stages"]["victim"]["key"] != rows["full-lr1e-3x2"]["stages"]["victim"]["key"]
    for row in rows.values():
        assert 0.0 <= row["cacc"] <= 1.0 and row["trainable_params"] > 0

    # --only runs the cells it names, and grid.json lists those
    only = tmp_path / "only"
    args = ["bench", "run", write_grid(tmp_path, grid), "--results", str(only), "--quiet"]
    assert main([*args, "--only", "*/full-lr1e-3x2/*"]) == 0
    assert [r["method"] for r in json.loads((only / "grid.json").read_text())["rows"]] == ["full-lr1e-3x2"]
    assert main([*args, "--only", "*/nothing/*"]) == 2


def test_bad_budgets_fail_naming_the_entry(tiny_bert, toy_csv):
    grid = {"corpora": [toy_csv], "backbones": [tiny_bert], "defenses": ["none"]}
    for methods, message in (
        ([{"name": "full", "budgets": []}], "non-empty list"),
        ([{"name": "full", "budgets": [{"lr": 1e-3, "warmup": 2}]}], "give a 'label'"),
        ([{"name": "full", "budgets": [{"lr": "fast", "epochs": 2}]}], "must be numbers"),
        ([{"name": "full", "budgets": [{"lr": 1e-3, "epochs": 0}]}], "methods[0] (full).budgets[0]"),
    ):
        with pytest.raises(PeftshieldError) as err:
            validate_grid({**grid, "methods": methods})
        assert message in str(err.value)


# ------------------------------------------------------------------------------- ROC thinning


def test_the_one_roc_thinning_is_monotone_and_keeps_its_area():
    from peftshield.evaluation.metrics import auroc
    from peftshield.grid.curves import MAX_POINTS, roc_area, roc_points

    rng = np.random.default_rng(0)
    clean, trig = rng.normal(0, 1, 800), rng.normal(1.5, 1, 400)
    roc = roc_points(clean, trig)
    fpr, tpr = np.array(roc["fpr"]), np.array(roc["tpr"])
    assert 10 < len(fpr) <= MAX_POINTS
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert roc_area(roc) == pytest.approx(auroc(clean, trig), abs=0.01)
    small = roc_points(clean[:20], trig[:10])  # under the cap nothing is thinned: the area is exact
    assert roc_area(small) == pytest.approx(auroc(clean[:20], trig[:10]), abs=1e-9)
