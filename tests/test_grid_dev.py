"""Grids measured on the dev split (issue 13 item 1, ``sizes.evaluate_on: dev``), on the tiny BERT.

Checks: a dev-split cell measures the part of the dev split the defences did not hold out (its
clean count, and its CACC recomputed from the victim on exactly those texts), never the test split;
the same grid on the test split reuses the poison and the victim and measures other texts; a config
that would calibrate on the texts it measures is refused with one line; a method's ``seed`` pins
the victim so that a grid's seeds repeat the defence alone; and the two selection grids of
``bench/grids`` validate, share their poisons and victim with ``grids/psim.json`` and fit their budget.
"""

from __future__ import annotations

import copy
import csv
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_grid import FAST_BADNETS, FAST_LORA, FAST_PSIM  # the grid tests' fast recipes

from peftshield.cli import main
from peftshield.grid.cache import StageLog
from peftshield.grid.config import load_grid
from peftshield.grid.plan import expand, unique_stages
from peftshield.grid.stages import heldout_and_measured, load_split
from peftshield.models.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

REPO = Path(__file__).resolve().parents[1]
N_DEV = 60  # 600 examples: dev 10 % = 60, test 20 % = 120 (capped at max_eval 60)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """A labelled toy CSV large enough for a dev split of 60 (tiny vocabulary, one sentiment word)."""
    rng = random.Random(7)
    path = tmp_path_factory.mktemp("dev-data") / "toy.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(600):
            label = rng.randint(0, 1)
            words = [rng.choice(NEUTRAL_WORDS) for _ in range(rng.randint(3, 8))]
            words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE_WORDS if label else NEGATIVE_WORDS))
            writer.writerow([" ".join(words), label])
    return str(path)


def dev_grid(tiny_bert: str, corpus: str, **sizes) -> dict:
    """BadNets x LoRA, undefended and behind PSIM with two policies, measured on the dev split."""
    return copy.deepcopy(
        {
            "name": "dev",
            "seeds": [0],
            "sizes": {"max_train": 100, "max_eval": N_DEV, "evaluate_on": "dev", "dev_heldout": 0.5, **sizes},
            "corpora": [corpus],
            "backbones": [tiny_bert],
            "attacks": [{"name": "badnets", "corpus": corpus, "recipe": FAST_BADNETS}],
            "methods": [{"name": "lora", "config": FAST_LORA}],
            "defenses": ["none", {"name": "psim", **FAST_PSIM, "policies": [0.7, "calibrated@0.1"]}],
        }
    )


def write(folder: Path, grid: dict, name: str = "grid.json") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(grid), encoding="utf-8")
    return str(folder / name)


def bench(*args: str) -> int:
    return main(["bench", *args])


def cell_rows(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "cells").glob("*.json"))]


def victim_accuracy(results: Path, row: dict, texts: list[str], labels: list[int]) -> float:
    """The victim's accuracy on ``texts``, computed here from its saved folder (not by the grid)."""
    from peftshield.tuning.trainer import load_tuned

    folder = results / row["stages"]["victim"]["folder"] / "model"
    backbone = results / row["stages"]["poison"]["folder"] / "model"
    victim = load_tuned(folder, backbone=str(backbone))
    pred = victim.predict_logits(texts).argmax(axis=-1)
    return float(np.mean(pred == np.asarray(labels)))


def test_the_dev_part_held_out_for_the_defences_never_meets_the_measured_part(corpus):
    settings = {"corpus": corpus, "text_column": "text", "label_column": "label"}
    sizes = {"split_seed": 0, "max_train": 100, "max_eval": N_DEV, "evaluate_on": "dev", "dev_heldout": 0.25}
    heldout, measured = heldout_and_measured(settings, sizes)
    dev = load_split(settings, 0, 100, N_DEV)
    assert len(heldout) == 15 and len(measured) == N_DEV - 15
    assert heldout + measured == list(dev.dev)  # the dev split, cut in two, in its order
    assert not {e.text for e in measured} & {e.text for e in dev.test}
    assert heldout_and_measured(settings, {**sizes, "evaluate_on": "test", "dev_heldout": None}) == (
        list(dev.dev),
        list(dev.test),
    )


def test_a_dev_grid_measures_the_dev_split_and_the_test_grid_reuses_its_victim(tmp_path, tiny_bert, corpus):
    results = tmp_path / "results"
    assert (
        bench("run", write(tmp_path, dev_grid(tiny_bert, corpus)), "--results", str(results), "--quiet") == 0
    )
    rows = cell_rows(results)
    assert len(rows) == 2 and not any("error" in r for r in rows)
    settings = {"corpus": corpus, "text_column": "text", "label_column": "label"}
    splits = load_split(settings, 0, 100, N_DEV)
    measured = list(splits.dev)[N_DEV // 2 :]
    for row in rows:
        assert row["evaluate_on"] == "dev" and row["n_clean"] == N_DEV - N_DEV // 2 == len(measured)
        assert row["config"]["sizes"]["dev_heldout"] == 0.5
    by = {r["defense"]: r for r in rows}
    dev_cacc = victim_accuracy(results, by["none"], [e.text for e in measured], [e.label for e in measured])
    assert by["none"]["cacc"] == pytest.approx(dev_cacc)  # exactly the second half of dev
    # the PSIM policies read their thresholds from the first half only
    heldout_scores = json.loads(
        next((results / "artifacts" / "defense").glob("*/heldout_scores.json")).read_text()
    )
    assert heldout_scores["n"] == N_DEV // 2 and heldout_scores["split"] == "first 0.5 of dev"
    grid_file = json.loads((results / "grid.json").read_text())
    assert grid_file["meta"]["evaluate_on"] == "dev"
    assert {r["threshold"] for r in grid_file["rows"] if r["defense"] == "psim"} == {
        "fixed@0.7",
        "calibrated@0.1",
    }

    # The same grid on the test split, in the same folder: poison and victim reused, other texts.
    test_grid = dev_grid(tiny_bert, corpus)
    del test_grid["sizes"]["evaluate_on"], test_grid["sizes"]["dev_heldout"]
    before = len(StageLog(results / "log" / "stages.jsonl").read())
    path = write(tmp_path, test_grid, "test.json")
    assert bench("run", path, "--results", str(results), "--quiet", "--force") == 0
    new = StageLog(results / "log" / "stages.jsonl").read()[before:]
    assert Counter(e["kind"] for e in new if e["event"] == "built") == {"defense": 1}
    test_rows = [r for r in cell_rows(results) if r["evaluate_on"] == "test"]
    assert len(test_rows) == 2 and {r["cell"] for r in test_rows}.isdisjoint({r["cell"] for r in rows})
    test_by = {r["defense"]: r for r in test_rows}
    assert test_by["none"]["n_clean"] == len(splits.test) == N_DEV
    test_cacc = victim_accuracy(
        results, test_by["none"], [e.text for e in splits.test], [e.label for e in splits.test]
    )
    assert test_by["none"]["cacc"] == pytest.approx(test_cacc)
    assert test_by["none"]["stages"]["victim"]["key"] == by["none"]["stages"]["victim"]["key"]
    # other texts, other scores: the PSIM curves of the two splits differ
    assert test_by["psim"]["roc"] != by["psim"]["roc"]
    assert test_by["psim"]["n_triggered"] != by["psim"]["n_triggered"]


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        (
            {"dev_heldout": 0},
            "sizes.dev_heldout: is 0 with evaluate_on: dev: the defences would calibrate on the dev texts",
        ),
        ({"dev_heldout": 1.0}, "sizes.dev_heldout: is 1.0: no dev text would be left to measure"),
        ({"evaluate_on": "train"}, "sizes.evaluate_on: must be one of test, dev, got 'train'"),
        ({"evaluate_on": "test", "dev_heldout": 0.5}, "sizes.dev_heldout: only with evaluate_on: dev"),
    ],
)
def test_a_config_calibrating_on_its_measured_texts_is_refused_in_one_line(
    tmp_path, tiny_bert, corpus, capsys, sizes, expected
):
    results = tmp_path / "results"
    assert bench("run", write(tmp_path, dev_grid(tiny_bert, corpus, **sizes)), "--results", str(results)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("peftshield: error: grid.json: ")
    assert expected in err
    assert not (results / "cells").exists()


def test_a_method_seed_pins_the_victim_so_the_seeds_repeat_the_defence(tmp_path, tiny_bert, corpus):
    grid = dev_grid(tiny_bert, corpus)
    grid["seeds"] = [0, 1, 2]
    grid["attacks"][0]["seed"] = 0
    grid["methods"][0]["seed"] = 0
    stages = unique_stages(expand(load_grid(write(tmp_path, grid))))
    assert (len(stages["poison"]), len(stages["victim"]), len(stages["defense"])) == (1, 1, 3)
    del grid["methods"][0]["seed"]
    stages = unique_stages(expand(load_grid(write(tmp_path, grid))))
    assert (len(stages["poison"]), len(stages["victim"])) == (1, 3)
    grid["methods"][0]["seed"] = -1
    with pytest.raises(Exception, match=r"methods\[0\] \(lora\)\.seed: must be an integer >= 0"):
        load_grid(write(tmp_path, grid))


def test_the_selection_grids_validate_share_psim_stages_and_fit_their_budget(capsys):
    from peftshield.grid.estimate import plan_costs

    psim = unique_stages(expand(load_grid(REPO / "bench" / "grids" / "psim.json")))
    for name, n_cells, n_fits in (("psim_recipes", 16, 16), ("rap_optimizer", 9, 6)):
        grid = load_grid(REPO / "bench" / "grids" / f"{name}.json")
        assert grid.sizes.evaluate_on == "dev" and grid.sizes.dev_heldout == 0.5 and grid.benchmark == name
        cells = expand(grid)
        stages = unique_stages(cells)
        assert len(cells) == n_cells and len(stages["defense"]) == n_fits
        assert set(stages["poison"]) <= set(psim["poison"])  # a shared results folder reuses them
        assert set(stages["victim"]) <= set(psim["victim"])
        assert sum(plan_costs(cells, set(), set()).values()) < 25 * 60  # idle-machine estimate
        assert bench("plan", str(REPO / "bench" / "grids" / f"{name}.json")) == 0
        assert "measured on: the dev split, its first 0.5 held out" in capsys.readouterr().out
    rap = load_grid(REPO / "bench" / "grids" / "rap_optimizer.json")
    assert {d.params.get("optimizer") for d in rap.defenses if d.name == "rap"} == {"adam", "reference"}


def test_rows_measured_on_dev_never_count_for_a_claim():
    from peftshield.reporting.measured import measure
    from peftshield.reporting.results import Benchmark, ResultFile, Results

    def row(cell: str, defended_asr: float, **extra) -> dict:
        return {
            "cell": cell,
            "corpus": "movies",
            "backbone": "minilm",
            "attack": "badnets",
            "method": "lora",
            "defense": "psim",
            "seed": 0,
            "threshold": "calibrated@0.02",
            "cacc": 0.80,
            "defended_cacc": 0.795,
            "asr": 0.9,
            "defended_asr_reject": defended_asr,
            "chance_cacc": 0.5,
            **extra,
        }

    def calibrated_claim(rows: list[dict]) -> str:
        results = Results(
            Path("."), [Benchmark("psim", [ResultFile(Path("p.json"), "p.json", "psim", {}, rows, {})])]
        )
        return next(m.figure for c, m in measure(results) if c.id == "issue4-calibrated")

    test_row, dev_row = row("a", 0.0), row("b", 0.5, evaluate_on="dev")
    assert calibrated_claim([test_row]).startswith("calibrated@0.02: 1 of 1 cells meet both")
    # the dev row (which would fail the target) is left out; a row without the key was on test
    assert calibrated_claim([test_row, dev_row]) == calibrated_claim([test_row])
    assert calibrated_claim([dict(test_row, evaluate_on="test"), dev_row]) == calibrated_claim([test_row])


def test_a_scan_only_grid_refuses_a_measured_split(tmp_path, tiny_bert):
    from peftshield.errors import PeftshieldError

    grid = {"mode": "scan", "backbones": [tiny_bert], "sizes": {"evaluate_on": "dev"}}
    with pytest.raises(PeftshieldError, match="sizes.evaluate_on: a scan-only grid measures no split"):
        load_grid(write(tmp_path, grid))
