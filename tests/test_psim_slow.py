"""PSIM on minilm against a real BadNets weight-poisoning attack (slow: several minutes on 2 cores).

The whole pipeline through the command line: poison minilm on amazon (dirty-label "cf" -> 0),
tune a LoRA victim on movies with the published head, fit PSIM on movies with a calibrated
threshold, and evaluate the guarded victim. The thresholds asserted are deliberately modest: this
test was written without a minilm run (the shared machine had no room for one), so it checks that
PSIM works at all on a real backbone; the benchmark measures how well.
"""

import json

import pytest

pytestmark = pytest.mark.slow


def test_psim_on_a_badnets_minilm_lowers_the_attack_success(tmp_path, capsys):
    from peftshield.cli import main

    poisoned, victim, detector = tmp_path / "poisoned", tmp_path / "victim", tmp_path / "psim"
    common = ["--max-train", "1000", "--max-eval", "300", "--quiet"]
    assert (
        main(["poison", "--attack", "badnets", "--poison-rate", "0.2", "--out", str(poisoned), *common]) == 0
    )
    tune = ["tune", "--backbone", str(poisoned), "--head", "keep", "--method", "lora", "--set", "epochs=1"]
    assert main([*tune, "--corpus", "movies", "--out", str(victim), *common]) == 0
    fit = ["psim", "fit", "--backbone", str(poisoned), "--corpus", "movies", "--target-frr", "0.05"]
    assert main([*fit, "--out", str(detector), *common]) == 0
    capsys.readouterr()
    evaluate = ["guard", "evaluate", "--victim", str(victim), "--detector", str(detector)]
    assert main([*evaluate, "--poisoned", str(poisoned), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    print(
        json.dumps(
            {k: row[k] for k in ("cacc", "asr", "defended_cacc", "defended_asr", "frr", "far", "auroc")}
        )
    )
    assert row["asr"] > 0.5, "the attack did not survive LoRA tuning; nothing to defend"
    assert row["auroc"] > 0.7
    assert row["defended_asr"] < row["asr"]
    assert row["frr"] < 0.15  # calibrated at 0.05 on held-out clean texts of the same corpus
