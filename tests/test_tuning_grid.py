"""The tuning benchmark as a grid (issue 16; formerly ``bench/bench_tuning.py``).

Checks: ``bench/grids/tuning.json`` validates and plans (every method, ``peft-lora`` with lora's
hyperparameters, attack and defence ``none``); a tiny tuning grid's victim rows carry the tuning
figures (:func:`peftshield.grid.stages.loop_figures`: epochs, optimiser steps, seconds per epoch and
per step, trainable and total parameters) with values that follow from the cell's settings; the
report's tuning section renders the per-method table and the own / plain-peft loop ratio from rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from peftshield.grid.config import load_grid
from peftshield.grid.plan import expand

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "bench" / "grids" / "tuning.json"
METHODS = ["full", "lora", "prompt", "ptuning", "prefix", "peft-lora"]


def test_the_tuning_grid_validates_and_plans(capsys):
    from peftshield.cli import main
    from peftshield.tuning.config import method_config

    grid = load_grid(GRID)
    assert grid.benchmark == "tuning" and grid.sizes.max_train == 3000 and grid.sizes.max_eval is None
    cells = expand(grid)
    assert [c.method.name for c in cells] == METHODS
    assert {(c.attack.name, c.defense.name) for c in cells} == {("none", "none")}
    assert all(c.victim is not None and c.defense_stage is None and c.scan is None for c in cells)
    by_name = {c.method.name: c for c in cells}
    own, plain = (by_name[m].victim.spec["method"] for m in ("lora", "peft-lora"))
    assert {k: v for k, v in own.items() if k != "method"} == {
        k: v for k, v in plain.items() if k != "method"
    }
    assert own == method_config("lora").to_dict()
    assert main(["bench", "plan", str(GRID)]) == 0
    assert "6 to run" in capsys.readouterr().out


FAST = {"lr": 3e-2, "head_lr": 3e-2, "batch_size": 16, "epochs": 2, "max_length": 32}


@pytest.fixture(scope="module")
def tuning_rows(tmp_path_factory, tiny_bert, toy_csv) -> list[dict]:
    from test_grid import FAST_PREFIX, rows_by_cell, run_cli, write_grid

    folder = tmp_path_factory.mktemp("tuning")
    grid = {
        "name": "tiny-tuning",
        "benchmark": "tuning",
        "seeds": [0],
        "sizes": {"max_train": 100, "max_eval": 40},
        "corpora": [toy_csv],
        "backbones": [tiny_bert],
        "attacks": ["none"],
        "methods": [
            {"name": "full", "config": {**FAST, "lr": 1e-3, "epochs": 1}},
            {"name": "lora", "config": FAST},
            {"name": "prefix", "config": FAST_PREFIX},
            {"name": "peft-lora", "config": FAST},
        ],
        "defenses": ["none"],
    }
    results = folder / "results"
    assert run_cli(["run", write_grid(folder, grid), "--results", str(results), "--quiet"]) == 0
    rows = list(rows_by_cell(results).values())
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    return rows


def test_tiny_tuning_rows_carry_the_tuning_figures(tuning_rows):
    rows = {r["method"]: r for r in tuning_rows}
    assert sorted(rows) == ["full", "lora", "peft-lora", "prefix"]
    for name, row in rows.items():
        epochs = row["config"]["method"]["config"]["epochs"]
        batch = row["config"]["method"]["config"]["batch_size"]
        assert row["n_train"] == 100 and row["epochs"] == epochs
        assert row["optimizer_steps"] == epochs * math.ceil(100 / batch) > 0
        assert row["seconds_per_step"] > 0 and row["seconds_per_epoch"] > 0
        assert row["seconds_per_epoch"] == pytest.approx(
            row["seconds_per_step"] * row["optimizer_steps"] / epochs, rel=1e-3, abs=1e-5
        )
        # the loop's seconds exclude the dev evaluation and loading: below the victim stage's wall time
        assert row["seconds_per_epoch"] * epochs <= row["stages"]["victim"]["seconds"]
        assert 0.0 <= row["cacc"] <= 1.0 and 0.0 <= row["dev_accuracy"] <= 1.0
        if name == "full":
            assert row["trainable_params"] == row["total_params"]
        else:
            assert 0 < row["trainable_params"] < row["total_params"], name
    # the same LoRA on the same backbone: the plain peft model trains as many weights as peftshield's
    # (LoRA on query / value plus a linear head over the hidden size; transformers' pooler is frozen)
    assert rows["peft-lora"]["trainable_params"] == rows["lora"]["trainable_params"]


def test_the_report_renders_the_tuning_table_from_grid_rows(tuning_rows, tmp_path):
    import json

    from peftshield.reporting.build import write_report

    meta = {"git": "abc", "grid": "tiny-tuning"}
    (tmp_path / "tuning.json").write_text(
        json.dumps({"benchmark": "tuning", "meta": meta, "rows": tuning_rows})
    )
    write_report(tmp_path, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    rows = {r["method"]: r for r in tuning_rows}
    assert "Tuning (clean accuracy per PEFT method)" in text
    assert "| peft-lora |" in text and "| prefix |" in text
    assert f"{rows['lora']['trainable_params']:,}" in text
    ratio = rows["lora"]["seconds_per_step"] / rows["peft-lora"]["seconds_per_step"]
    assert "own / plain" in text and f"{ratio:.2f}×" in text


def test_the_loop_ratio_pairs_only_lora_and_peft_lora_of_the_same_cell():
    from peftshield.reporting.tuning import loop_pairs

    def row(method: str, seed: int, step: float | None, **config) -> dict:
        return {
            "method": method,
            "backbone": "minilm",
            "corpus": "movies",
            "attack": "none",
            "seed": seed,
            "seconds_per_step": step,
            "config": {"method": {"name": method, "config": {"method": method, **config}}},
        }

    rows = [row("lora", 0, 0.5), row("peft-lora", 0, 0.4), row("lora", 1, 0.5), row("peft-lora", 1, None)]
    rows += [row("lora", 2, 0.5, lr=1e-2), row("peft-lora", 2, 0.4), row("prefix", 0, 0.3)]
    pairs = loop_pairs(rows)
    assert [(own["seed"], plain["seed"]) for own, plain in pairs] == [(0, 0)]
