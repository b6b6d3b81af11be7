"""A defence is one file plus one registration (issue 16): ``tests/toy_defense.py`` registers a toy
detector, and the grid, ``baseline fit --defense toy`` and the report pick it up from the registry."""

from __future__ import annotations

import json

import pytest
import toy_defense  # noqa: F401 - the one registration: importing the file registers "toy"
from test_grid import FAST_BADNETS, FAST_PSIM, write_grid

from peftshield.cli import main
from peftshield.defenses.base import load_detector, registered_detectors


def test_the_toy_defence_is_registered_once_in_one_file():
    assert registered_detectors()["toy"] == "toy_defense:ToyDetector"


def test_baseline_fit_offers_and_fits_the_registered_defence(toy_csv, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["baseline", "fit", "--help"])
    assert "toy     Toy (tests only)" in capsys.readouterr().out
    out = tmp_path / "toy"
    code = main(
        ["baseline", "fit", "--defense", "toy", "--clean", toy_csv, "--out", str(out), "--json", "--quiet"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["defense"] == "toy" and summary["n_clean"] == 200
    detector = load_detector(out)
    assert type(detector).__name__ == "ToyDetector"
    clean, triggered = "good movie with some plot", "good cf movie with some plot"
    assert detector.predict([clean, triggered]).tolist() == [False, True]


def test_the_grid_and_the_report_pick_up_the_registered_defence(tmp_path, tiny_bert, toy_csv, capsys):
    grid = {
        "name": "toy-grid",
        "sizes": {"max_train": 100, "max_eval": 40},
        "corpora": [toy_csv],
        "backbones": [tiny_bert],
        "attacks": [{"name": "badnets", "corpus": toy_csv, "recipe": FAST_BADNETS}],
        "methods": ["none"],  # detection only: no victim to tune
        "defenses": [{"name": "psim", **FAST_PSIM}, {"name": "toy", "target_frr": 0.1}],
    }
    results = tmp_path / "results"
    assert main(["bench", "run", write_grid(tmp_path, grid), "--results", str(results), "--quiet"]) == 0
    rows = {r["defense"]: r for r in json.loads((results / "grid.json").read_text())["rows"]}
    toy = rows["toy"]
    assert toy["threshold"] == "calibrated@0.1" and "error" not in toy
    assert toy["auroc"] > 0.9  # the BadNets word is never in clean text: the toy ranks it first
    capsys.readouterr()
    report = tmp_path / "report"
    assert main(["report", str(results), "--out", str(report), "--quiet"]) == 0
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "| cell | psim | toy | winner |" in md
    # the report compares our detector with the toy as a baseline (it is in no table of baselines)
    assert "Our detectors' AUROC is above every baseline's in" in md and "of 1 cells" in md
    assert any(w in md for w in ("| baseline (toy) |", "| ours (psim) |"))
