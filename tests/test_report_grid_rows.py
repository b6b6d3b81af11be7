"""The report reads the retention and PSIM benchmarks in the grid's row shape (issue 16): the rows of
``peftshield bench run bench/grids/retention.json`` / ``psim.json``, and the committed files."""

from __future__ import annotations

import json
from pathlib import Path

from peftshield.cli import main
from peftshield.reporting.retention import from_grid_rows, poison_table, retention_summary
from peftshield.utils.labels import budget_label

REPO = Path(__file__).resolve().parents[1]


def _grid_row(attack: str, label: str, name: str, config: dict, **extra) -> dict:
    attack_name = "none" if attack == "none" else attack
    row = {
        "cell": f"movies.minilm.{attack}.{label}.none.s0.abcd",
        "corpus": "movies",
        "backbone": "minilm",
        "attack": attack,
        "method": label,
        "defense": "none",
        "seed": 0,
        "kind": None if attack == "none" else "task-specific",
        "stages": {"victim": {"key": f"v-{attack}-{label}"}},
        "config": {
            "attack": {"name": attack_name, "corpus": None if attack == "none" else "amazon"},
            "method": {"name": name, "config": config, "head": extra.pop("head", "fresh")},
        },
        **extra,
    }
    if attack != "none":
        row["poison_seconds"] = 190.0
        row["stages"]["poison"] = {
            "key": f"p-{attack}",
            "triggers": ["rareword(cf, random, x1)"],
            "target": 0,
            "attacker_metrics": {"cacc": 0.9, "asr": 1.0},
        }
    return row


def test_budget_labels_spell_learning_rates_one_way():
    assert budget_label(5e-5, 3) == "lr5e-5x3" and budget_label(1e-4, 2) == "lr1e-4x2"
    assert budget_label(2.5e-5, 1) == "lr2.5e-5x1"


def test_retention_reads_grid_rows_like_the_former_scripts_rows():
    full, lora = {"lr": 5e-5, "epochs": 2}, {"lr": 1e-3, "epochs": 3}
    by_attack = {"badnets": {"asr": 0.3, "asr_lms": None, "asr_dominant": 0.3}}
    rows = [
        _grid_row("none", "lora", "lora", lora, cacc=0.79, dev_accuracy=0.8, by_attack=by_attack),
        _grid_row("none", "full", "full", full, cacc=0.8, dev_accuracy=0.81, by_attack=by_attack),
        _grid_row("badnets", "lora", "lora", lora, cacc=0.8, asr=0.9, dev_accuracy=0.8),
        _grid_row("badnets", "full", "full", full, cacc=0.81, asr=0.5, dev_accuracy=0.82),
        _grid_row(
            "badnets",
            "full-lr5e-5x3",
            "full",
            {"lr": 5e-5, "epochs": 3},
            cacc=0.82,
            asr=0.4,
            dev_accuracy=0.83,
        ),
        _grid_row("badnets", "lora-headkeep", "lora", lora, head="keep", cacc=0.8, asr=0.97),
    ]
    victims = [r for r in from_grid_rows(rows) if r["cell"] == "victim"]
    keys = {(r["attack"], r["method"], r["budget"], r["head"]) for r in victims}
    assert ("badnets", "full", "lr5e-5x3", "fresh") in keys and (
        "control",
        "lora",
        "default",
        "fresh",
    ) in keys
    assert ("badnets", "lora", "default", "keep") in keys
    entry = retention_summary(rows)["per_attack"]["badnets"]
    assert entry["best_full_budget"] == "lr5e-5x3" and entry["full_asr_at_best"] == 0.4
    assert entry["peft_mean_asr"] == 0.9 and entry["peft_retains_more"] is True
    assert entry["control_peft_mean_asr"] == 0.3 and entry["lora_head_keep"] == {"cacc": 0.8, "asr": 0.97}
    table = poison_table(from_grid_rows(rows))
    assert table is not None and len(table.rows) == 1  # one poisoned backbone, however many cells
    assert from_grid_rows(from_grid_rows(rows)) == from_grid_rows(rows)  # already read rows pass through


def test_the_committed_psim_file_has_one_row_per_policy_and_renders(tmp_path):
    data = json.loads((REPO / "bench" / "results" / "psim.json").read_text())
    victims = [r for r in data["rows"] if r.get("cell") == "victim"]
    assert victims and not any("policies" in r for r in victims)
    assert all(isinstance(r["threshold"], str) and "threshold_value" in r for r in victims)
    assert not any("overhead_ratio" in r for r in victims)  # the 3-repeat median has its own name
    assert all(r["overhead_protocol"] == "median-of-3-interleaved-repeats" for r in victims)
    cells = {(r["attack"], r["method"], r["head"]) for r in victims}
    assert len(victims) == 4 * len(cells)  # four policies per cell
    out = tmp_path / "report"
    assert main(["report", str(REPO / "bench" / "results"), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for policy in ("fixed@0.7", "calibrated@0.01", "calibrated@0.02", "calibrated@0.05"):
        assert f"Before / after PSIM at threshold {policy}" in text
    assert "overhead (median of 3)" in text
