"""The grid's model-zoo features (issue 16): clean builders as attacks and scan-only cells, on the tiny BERT.

Checks: each clean builder (simcse, denoise, finetune) trains a tiny BERT into a loadable bare
backbone whose ``poison.json`` is of kind ``clean`` (nothing planted) and whose output moved from
the original (drift > 0); a scan-only grid gives one row per model with its ground-truth label,
the scan's verdict, score and budget, PV recovery for a POR backdoor and clean drift for a clean
build; the grid's summary scores the zoo with ``evaluation.metrics``; a clean builder is refused in
a victim grid and victim axes are refused in a scan grid.
"""

from __future__ import annotations

import copy
import csv
import json
import random
from pathlib import Path

import pytest

from peftshield.attacks.config import attack_config
from peftshield.attacks.poison import poison
from peftshield.attacks.record import read_poison_record
from peftshield.cli import main
from peftshield.errors import PeftshieldError
from peftshield.grid.config import load_grid
from peftshield.grid.plan import expand
from peftshield.models.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

# The tests' tiny-model POR backdoor and scan settings (tests/test_grid.py, tests/test_lmsanitator.py).
STRONG_POR = {"steps": 300, "lr": 1e-3, "max_length": 32, "triggers": ["cf", "mn"], "log_every": 300}
SCAN = {
    "attempts": 3,
    "max_total_steps": 120,
    "stop_at_first": True,
    "mining": {
        "n_texts": 128,
        "n_verify": 32,
        "batch_size": 32,
        "max_length": 24,
        "lr": 0.01,
        "steps": 40,
        "patience": 15,
    },
    "thresholds": {"max_gap": 0.05, "min_distance": 20.0},
}
FAST_CLEAN = {"steps": 20, "lr": 1e-3, "batch_size": 16, "max_length": 32}


@pytest.fixture(scope="module")
def texts_csv(tmp_path_factory) -> str:
    """Unlabelled sentences over the tiny vocabulary (as tests/test_grid.py's)."""
    rng = random.Random(0)
    words = NEUTRAL_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS
    path = tmp_path_factory.mktemp("texts") / "texts.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        for _ in range(600):
            writer.writerow([" ".join(rng.choice(words) for _ in range(rng.randint(5, 14)))])
    return str(path)


def _drift_recipe(texts_csv: str, **extra) -> dict:
    return {**FAST_CLEAN, "drift_corpus": texts_csv, "n_drift": 32, **extra}


@pytest.mark.parametrize("builder", ["simcse", "denoise", "finetune"])
def test_clean_builder_moves_the_model_and_plants_nothing(builder, tmp_path, tiny_bert, texts_csv, toy_csv):
    from peftshield.models.backbones import load_backbone

    if builder == "finetune":
        recipe = {"n_train": 60, "n_eval": 20, "epochs": 1, "lr": 1e-3, "head_lr": 3e-2, "batch_size": 16}
        recipe.update({"max_length": 32, "drift_corpus": texts_csv, "n_drift": 32})
        corpus = toy_csv
    else:
        recipe, corpus = _drift_recipe(texts_csv), texts_csv
    config = attack_config(builder, recipe)
    assert config.kind == "clean" and config.make_triggers() == []
    result = poison(tiny_bert, config, corpus, seed=0)
    out = result.save(tmp_path / builder)
    record = read_poison_record(out)
    assert record.kind == "clean" and record.triggers == [] and record.pv_file is None
    assert record.attack == builder and record.recipe["attack"] == builder
    assert 0.0 < record.metrics["clean_drift"] < float("inf")  # it moved (a finite drift)
    loaded = load_backbone(str(out))  # a bare backbone any command can load (strict loader)
    assert loaded.pooling == "mean"
    if builder == "finetune":
        assert record.metrics["n_train"] == 60
    else:
        assert record.metrics["last_loss"] < record.metrics["first_loss"]


def test_clean_builder_is_seeded(tmp_path, tiny_bert, texts_csv):
    config = attack_config("denoise", _drift_recipe(texts_csv, steps=5))
    a = poison(tiny_bert, config, texts_csv, seed=3).record
    b = poison(tiny_bert, config, texts_csv, seed=3).record
    c = poison(tiny_bert, config, texts_csv, seed=4).record
    assert a.fingerprint == b.fingerprint != c.fingerprint


def scan_grid(tiny_bert: str, texts_csv: str) -> dict:
    return {
        "name": "tiny-zoo",
        "mode": "scan",
        "zoo": "seed",
        "seeds": [0],
        "scan": {**SCAN, "texts": texts_csv},
        "backbones": [tiny_bert],
        "attacks": [
            {"name": "none", "label": "original"},
            {"name": "por", "label": "por-2w-s0", "corpus": texts_csv, "recipe": STRONG_POR, "seed": 0},
            {
                "name": "denoise",
                "label": "denoise-s1",
                "corpus": texts_csv,
                "recipe": _drift_recipe(texts_csv),
                "seed": 1,
            },
        ],
    }


def write(folder: Path, grid: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.json"
    path.write_text(json.dumps(grid), encoding="utf-8")
    return str(path)


def test_scan_only_cells_give_one_row_per_model(tmp_path, tiny_bert, texts_csv):
    grid_file = write(tmp_path, scan_grid(tiny_bert, texts_csv))
    cells = expand(load_grid(grid_file))
    assert [c.mode for c in cells] == ["scan"] * 3
    assert [len(c.stages()) for c in cells] == [1, 2, 2]  # the original needs no build
    assert cells[2].poison.spec["seed"] == 1  # the attack's own build seed
    results = tmp_path / "results"
    assert main(["bench", "run", grid_file, "--results", str(results), "--quiet"]) == 0
    data = json.loads((results / "grid.json").read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert set(rows) == {"original", "por-2w-s0", "denoise-s1"}
    for name, label in (("original", "clean"), ("por-2w-s0", "backdoored"), ("denoise-s1", "clean")):
        row = rows[name]
        assert row["mode"] == "scan" and row["zoo"] == "seed" and row["label"] == label
        assert row["verdict"] in ("backdoored", "clean")
        assert row["attempts"] >= 1 and row["steps"] >= 1 and row["scan_seconds"] > 0
        assert isinstance(row["score"], float)
        assert "error" not in row
    por = rows["por-2w-s0"]
    # the planted backdoor is found and its PV matches a planted one (tests/test_lmsanitator.py's setup)
    assert por["verdict"] == "backdoored" and por["n_pvs"] >= 1
    assert por["pv_n_true"] == 2 and por["pv_recovered"] >= 1
    assert por["attack_sign_match"] > 0.9 and por["clean_drift"] is not None
    assert rows["denoise-s1"]["clean_drift"] > 0 and "pv_recovered" not in rows["denoise-s1"]
    assert rows["original"]["clean_drift"] is None
    summary = data["summary"]["scan"]
    assert summary["n"] == 3 and summary["tp"] == 1
    assert summary["fp"] + summary["tn"] == 2
    # the backdoored model's score is above both clean ones exactly when AUROC is 1
    top = por["score"] > max(rows["original"]["score"], rows["denoise-s1"]["score"])
    assert (summary["auroc"] == 1.0) == top
    # resumable: a second run skips every cell
    assert main(["bench", "run", grid_file, "--results", str(results), "--quiet"]) == 0
    again = json.loads((results / "grid.json").read_text())
    assert [r["seconds"] for r in again["rows"]] == [r["seconds"] for r in data["rows"]]


def test_scan_mode_and_clean_builders_are_validated(tmp_path, tiny_bert, texts_csv, toy_csv):
    grid = scan_grid(tiny_bert, texts_csv)
    with_victims = {**copy.deepcopy(grid), "methods": ["lora"]}
    with pytest.raises(PeftshieldError, match="scan-only grid"):
        load_grid(write(tmp_path / "a", with_victims))
    victim_grid = {
        "corpora": [toy_csv],
        "backbones": [tiny_bert],
        "attacks": [{"name": "simcse", "corpus": texts_csv}],
        "methods": ["lora"],
        "defenses": ["none"],
    }
    with pytest.raises(PeftshieldError, match="clean builder plants no trigger"):
        load_grid(write(tmp_path / "b", victim_grid))
    bad_mode = {**copy.deepcopy(grid), "mode": "zoo"}
    with pytest.raises(PeftshieldError, match="mode"):
        load_grid(write(tmp_path / "c", bad_mode))
    unlabelled = copy.deepcopy(grid)
    unlabelled["attacks"] = [{"name": "finetune", "corpus": texts_csv}]
    with pytest.raises(PeftshieldError, match="unlabelled|label"):
        load_grid(write(tmp_path / "d", unlabelled))


# ------------------------------------------------------------------------------ monitor purge / oracle


class _Victim:
    """Toy victim: "cf" anywhere makes it answer 1; otherwise "good" -> 1, "bad" -> 0."""

    def predict_logits(self, texts):
        import numpy as np

        labels = [1 if ("cf" in t.split() or "good" in t.split()) else 0 for t in texts]
        return np.eye(2)[labels]


class _Detector:
    threshold_ = 0.5

    def score(self, texts):
        return [1.0 if "cf" in t.split() else 0.0 for t in texts]


def _defense(purge):
    from dataclasses import replace

    from peftshield.grid.defenses import get_adapter
    from peftshield.grid.evaluate import LoadedDefense

    adapter = replace(get_adapter("monitor"), joint=None, purge=purge)
    return LoadedDefense("monitor", adapter, _Detector(), 0.5)


def _toy_cell(purge) -> dict:
    from peftshield.data.records import Example
    from peftshield.data.triggers import RareWordTrigger
    from peftshield.grid.evaluate import TriggerSet, evaluate_cell

    test = [Example(f"a {w} film number {i}", int(w == "good")) for i in range(10) for w in ("good", "bad")]
    sets = [TriggerSet("por", "task-agnostic", [RareWordTrigger(("cf",))], None)]
    return evaluate_cell(_Victim(), _defense(purge), test, sets, seed=0, control=False)


def test_purge_and_reject_differ_where_the_purge_fails():
    victim = _Victim()

    def real_purge(
        _detector, texts
    ):  # deletes the trigger: cleared, and the victim answers the clean text right
        cleaned = [" ".join(w for w in t.split() if w != "cf") for t in texts]
        return [(True, int(victim.predict_logits([c])[0].argmax())) for c in cleaned]

    def useless_purge(
        _detector, texts
    ):  # "clears" the monitor but leaves the victim on the backdoor's answer
        return [(True, 1) for _ in texts]

    good = _toy_cell(real_purge)
    bad = _toy_cell(useless_purge)
    for row in (good, bad):
        # every triggered input is flagged: rejecting blocks all; the bad-review half was flipped
        assert row["asr"] == pytest.approx(0.5) and row["defended_asr_reject"] == 0.0
        assert row["n_purged"] == 10 and row["type1_purge"] == 0.0
    assert good["defended_asr_purge"] == 0.0
    assert bad["defended_asr_purge"] == pytest.approx(0.5) and bad["type2_purge"] == pytest.approx(0.5)


def test_monitor_modes_in_a_grid(tmp_path, tiny_bert, texts_csv, toy_csv):
    """The monitor's reject and purge figures, and the oracle monitor (planted PVs), as grid rows."""
    grid = {
        "name": "modes",
        "seeds": [0],
        "sizes": {"max_train": 100, "max_eval": 40},
        "corpora": [toy_csv],
        "backbones": [tiny_bert],
        "scan": {**SCAN, "stop_at_first": False, "texts": texts_csv},
        "attacks": ["none", {"name": "por", "corpus": texts_csv, "recipe": STRONG_POR}],
        "methods": [{"name": "lora", "config": {"lr": 3e-2, "head_lr": 3e-2, "batch_size": 16, "epochs": 2}}],
        "defenses": [
            {"name": "monitor", "label": "t_match", "threshold": 0.8},
            {"name": "monitor-oracle", "label": "oracle"},
        ],
    }
    results = tmp_path / "results"
    assert main(["bench", "run", write(tmp_path, grid), "--results", str(results), "--quiet"]) == 0
    rows = {(r["attack"], r["defense"]): r for r in json.loads((results / "grid.json").read_text())["rows"]}
    assert all("error" not in r for r in rows.values())
    oracle, scanned = rows[("por", "oracle")], rows[("por", "t_match")]
    assert "inactive" not in oracle and oracle["threshold"] == 0.8
    assert "scan" not in oracle["stages"]  # the oracle reads the planted PVs, not a scan
    assert oracle["auroc"] > 0.9
    for row in (oracle, scanned):
        if row.get("inactive"):
            continue
        # purging can only add Type II successes to what rejection lets through (Type I)
        assert row["type1_purge"] == pytest.approx(row["defended_asr_reject"])
        assert row["defended_asr_purge"] >= row["defended_asr_reject"]
        assert row["defended_asr_purge"] <= row["asr"] + 1e-9
    assert rows[("none", "oracle")]["inactive"].startswith("no planted PV")


# ------------------------------------------------------------------------------ the report's reader


def test_report_reads_scan_only_rows_and_leaves_the_oracle_out(tmp_path):
    from peftshield.reporting.build import write_report
    from peftshield.reporting.lmsanitator import is_oracle_row, is_zoo_row, scan_summary
    from peftshield.reporting.measured import MEASURES
    from peftshield.reporting.results import load_results

    def scan_row(model, label, verdict, score, seconds):
        return {
            "mode": "scan",
            "zoo": "seed",
            "model": model,
            "attack": model,
            "builder": model.split("-")[0],
            "label": label,
            "verdict": verdict,
            "score": score,
            "scan_seconds": seconds,
            "seconds": 999.0,
        }

    zoo = [
        scan_row("por-a", "backdoored", "backdoored", 2.0, 10.0),
        scan_row("por-b", "backdoored", "clean", -0.5, 200.0),
        scan_row("simcse-a", "clean", "clean", -1.0, 180.0),
        scan_row("denoise-a", "clean", "clean", -0.2, 170.0),
    ]
    summary, unscored = scan_summary(zoo)
    assert not unscored and summary["n"] == 4 and summary["fn"] == 1 and summary["tn"] == 2
    assert summary["auroc"] == pytest.approx(0.75)  # 3 of 4 (backdoored, clean) pairs ranked right
    assert summary["seconds_mean"] == pytest.approx(140.0)  # scan_seconds, not the cell's seconds
    victim = {
        "attack": "por-a",
        "method": "lora",
        "defense": "t_match-0.8",
        "asr_lms": 1.0,
        "defended_asr_reject": 0.0,
        "defended_asr_purge": 0.02,
        "frr": 0.01,
        "config": {"defense": {"name": "monitor"}},
    }
    oracle = {
        **victim,
        "defense": "oracle-0.8",
        "defended_asr_purge": 0.0,
        "config": {"defense": {"name": "monitor-oracle"}},
    }
    assert all(is_zoo_row(r) for r in zoo) and not is_zoo_row(victim)
    assert is_oracle_row(oracle) and not is_oracle_row(victim)
    doc = {
        "benchmark": "lmsanitator",
        "meta": {"command": "test"},
        "rows": zoo + [victim, oracle],
        "summary": {},
    }
    (tmp_path / "lmsanitator.json").write_text(json.dumps(doc), encoding="utf-8")
    results = load_results(tmp_path)
    figure = MEASURES["lms-asr"](results, None)
    assert "0 of 1 victim cells below 1%" in figure.figure  # the oracle's 0.0 is not counted
    write_report(tmp_path, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "Zoo by builder" in text and "score AUROC" in text
