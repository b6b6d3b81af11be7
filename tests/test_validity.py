"""The valid-cell rule (docs/design.md "Valid cells"): a victim at chance, or one whose ASR is not
above the clean control's false-trigger rate, has no backdoor to defend; the grid summary, the
AUROC race and the claims leave it out."""

from __future__ import annotations

import pytest

from peftshield.evaluation.validity import chance_accuracy, no_backdoor_reason, no_backdoor_reasons
from peftshield.grid.runner import summarize
from peftshield.reporting.comparison import auroc_table, cell_keys

VICTIM = {"corpus": "movies", "backbone": "minilm", "seed": 0, "chance_cacc": 0.5}


def _control(method: str) -> dict:
    return {
        **VICTIM,
        "cell": f"none.{method}.none",
        "attack": "none",
        "method": method,
        "defense": "none",
        "cacc": 0.75,
        "defended_cacc": 0.75,
        "asr": None,
        "by_attack": {"badnets": {"asr": 0.30}, "por": {"asr": 0.13}},
    }


def _cell(attack: str, method: str, defense: str, cacc: float, asr: float, auroc: float | None) -> dict:
    return {
        **VICTIM,
        "cell": f"{attack}.{method}.{defense}",
        "attack": attack,
        "method": method,
        "defense": defense,
        "cacc": cacc,
        "defended_cacc": cacc - 0.02,
        "asr": asr,
        "defended_asr_reject": asr / 10,
        "frr": 0.05,
        "auroc": auroc,
    }


def _aurocs(psim: float, strip: float) -> list[tuple[str, float | None]]:
    return [("none", None), ("psim", psim), ("strip", strip)]


def _grid_rows() -> list[dict]:
    rows = [_control("lora"), _control("prefix")]
    # a real backdoor: learned (0.76 vs chance 0.5) and ASR 1.0 above the control's 0.30
    rows += [_cell("badnets", "lora", d, 0.76, 1.0, a) for d, a in _aurocs(0.96, 0.86)]
    # a victim at chance (the demo's POR / prefix victim: CACC 0.500, ASR 0.0)
    rows += [_cell("por", "prefix", d, 0.50, 0.0, a) for d, a in _aurocs(0.85, 0.53)]
    # a learned victim without a backdoor: ASR 0.12 is not above the control's 0.13
    rows += [_cell("por", "lora", d, 0.72, 0.12, a) for d, a in _aurocs(0.60, 0.55)]
    return rows


def test_chance_accuracy_is_the_majority_share():
    assert chance_accuracy([0, 1, 1, 1]) == 0.75 and chance_accuracy([0, 1]) == 0.5
    with pytest.raises(ValueError):
        chance_accuracy([])


def test_a_chance_level_victim_is_excluded():
    reason = no_backdoor_reason(_cell("por", "prefix", "psim", 0.53, 1.0, 0.9))
    assert reason is not None and "chance" in reason
    # the margin is 5 points: 0.56 is a victim that learned something
    assert no_backdoor_reason(_cell("por", "prefix", "psim", 0.56, 1.0, 0.9)) is None
    # a row without chance_cacc reads two labels
    row = _cell("por", "prefix", "psim", 0.52, 1.0, 0.9)
    del row["chance_cacc"]
    assert no_backdoor_reason(row) is not None


def test_a_victim_without_asr_above_the_control_is_excluded():
    control = _control("lora")
    reason = no_backdoor_reason(_cell("por", "lora", "none", 0.72, 0.13, None), control)
    assert reason is not None and "false-trigger" in reason
    assert no_backdoor_reason(_cell("por", "lora", "none", 0.72, 0.14, None), control) is None
    # without a control only the chance rule applies
    assert no_backdoor_reason(_cell("por", "lora", "none", 0.72, 0.13, None)) is None


def test_a_real_backdoor_is_counted():
    rows = _grid_rows()
    reasons = no_backdoor_reasons(rows)
    by_cell = dict(zip((r["cell"] for r in rows), reasons, strict=True))
    assert by_cell["badnets.lora.psim"] is None and by_cell["badnets.lora.none"] is None
    assert by_cell["none.lora.none"] is None  # a control is no attacked cell
    assert "chance" in by_cell["por.prefix.psim"] and "false-trigger" in by_cell["por.lora.strip"]
    # a detector row without asr takes its victim's undefended ASR from the cell's none row
    rows = [{**r, "asr": None} if r["defense"] == "psim" else r for r in rows]
    assert no_backdoor_reasons(rows)[[r["cell"] for r in rows].index("por.lora.psim")] is not None


def test_the_auroc_race_counts_only_cells_with_a_backdoor():
    rows = [r for r in _grid_rows() if r["defense"] != "none" or r["attack"] == "none"]
    table, notes = auroc_table(rows, cell_keys(rows))
    assert notes[0] == (
        "Our detectors' AUROC is above every baseline's in 1 of 1 cells (2 cell(s) with "
        "no backdoor to defend left out)."
    )
    verdicts = {line[0]: line[-1] for line in table.rows}
    assert verdicts["badnets / lora"] == "ours (psim)"
    assert verdicts["por / prefix"].startswith("no backdoor to defend: victim at chance")
    assert verdicts["por / lora"].startswith("no backdoor to defend: ASR 0.120")


def test_the_grid_summary_leaves_cells_without_a_backdoor_out():
    summary = summarize(_grid_rows(), 11)
    assert summary["cells"]["no_backdoor"] == 6
    expected = {f"por.{m}.{d}" for m in ("lora", "prefix") for d in ("none", "psim", "strip")}
    assert set(summary["no_backdoor"]) == expected
    psim = summary["by_defense"]["psim"]
    assert psim["cells"] == 1 and psim["mean_auroc"] == pytest.approx(0.96)
