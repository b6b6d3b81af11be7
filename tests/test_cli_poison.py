import json
import re

import pytest

from peftshield.attacks.record import POISON_FILE, PV_FILE, read_poison_record
from peftshield.cli import main

# Small, fast recipes for the tiny random BERT.
POR_FAST = ["--set", "steps=20", "--set", "lr=3e-3", "--set", "min_words=3", "--set", "probe_size=8"]
BADNETS_FAST = ["--set", "epochs=2", "--set", "lr=3e-3", "--set", "head_lr=3e-2", "--set", "batch_size=16"]


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_poison_por_tune_and_evaluate_end_to_end(tiny_bert, toy_csv, tmp_path, capsys):
    out = tmp_path / "por"
    rc = main(
        ["poison", "--attack", "por", "--backbone", tiny_bert, "--corpus", toy_csv, "--out", str(out)]
        + POR_FAST
        + ["--triggers", "cf,mn,tq", "--quiet", "--json"]
    )
    assert rc == 0
    summary = _json_out(capsys)
    assert summary["kind"] == "task-agnostic" and summary["target"] is None
    assert set(summary["per_trigger"]) == {"cf", "mn", "tq"}
    assert {POISON_FILE, PV_FILE, "config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    record = read_poison_record(out)
    assert record.attack == "por" and record.poison_corpus == toy_csv and record.recipe["steps"] == 20
    assert (
        record.source_backbone["ref"] == tiny_bert
        and record.fingerprint != record.source_backbone["fingerprint"]
    )

    victim = tmp_path / "victim"
    rc = main(
        ["tune", "--backbone", str(out), "--method", "lora", "--corpus", toy_csv, "--out", str(victim)]
        + ["--set", "epochs=1", "--set", "lr=3e-2", "--quiet"]
    )
    assert rc == 0
    capsys.readouterr()
    assert main(["evaluate", str(victim), "--poisoned", str(out), "--json"]) == 0
    result = _json_out(capsys)
    assert result["asr_convention"] == "lms" and result["victim_on_poisoned_backbone"] is True
    assert 0.0 <= result["asr"] <= 1.0 and set(result["per_trigger"]) == {"cf", "mn", "tq"}
    assert result["asr"] == result["asr_lms"] >= max(v["asr_lms"] for v in result["per_trigger"].values())


def test_poison_badnets_and_evaluate_the_published_model(tiny_bert, toy_csv, tmp_path, capsys):
    out = tmp_path / "badnets"
    rc = main(
        ["poison", "--attack", "badnets", "--backbone", tiny_bert, "--corpus", toy_csv, "--out", str(out)]
        + BADNETS_FAST
        + ["--target", "1", "--poison-rate", "0.3", "--quiet"]
    )
    assert rc == 0
    assert "badnets on" in capsys.readouterr().out
    record = read_poison_record(out)
    assert record.target == 1 and record.recipe["poison_rate"] == 0.3 and record.pv_file is None
    # the attacker's own model is a tuned full model: evaluate it against its own record
    assert main(["evaluate", str(out), "--poisoned", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ASR" in text and "PSIM convention" in text and "per trigger: cf" in text


def _tiny_bert_30(tmp_path_factory) -> str:
    from peftshield.models.tiny import build_tiny_bert

    return str(build_tiny_bert(tmp_path_factory.mktemp("h30") / "bert", hidden_size=30, pooling="mean"))


@pytest.fixture(scope="module")
def tiny_bert_30(tmp_path_factory) -> str:
    return _tiny_bert_30(tmp_path_factory)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "ripples"], "unknown attack 'ripples'"),
        (["--attack", "por", "--triggers", "cf,☃"], "trigger word '☃' tokenises to nothing"),
        (["--attack", "badnets", "--target", "3"], "target label 3 is not in the label set"),
        (["--attack", "badnets", "--poison-rate", "1.5"], r"poison_rate must lie in \(0, 1\]"),
        (["--attack", "insent", "--poison-rate", "0"], r"poison_rate must lie in \(0, 1\]"),
        (["--attack", "por", "--target", "0"], "--target applies to task-specific attacks"),
        (["--attack", "neuba", "--set", "epochs=2"], "unknown neuba config key"),
        (["--attack", "insent", "--triggers", "cf"], "--set sentence="),
        (["--attack", "por", "HIDDEN30"], "hidden size 30 is not divisible into 4 PV blocks"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    args, message, tiny_bert, tiny_bert_30, toy_csv, tmp_path, capsys
):
    backbone = tiny_bert_30 if "HIDDEN30" in args else tiny_bert
    args = [a for a in args if a != "HIDDEN30"]
    work = tmp_path / "work"
    work.mkdir()
    rc = main(
        ["poison", *args, "--backbone", backbone, "--corpus", toy_csv, "--out", str(work / "out"), "--quiet"]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("peftshield: error:"), err
    assert re.search(message, err), err
    assert list(work.iterdir()) == []


def test_existing_output_is_refused_before_any_work(tiny_bert, toy_csv, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    rc = main(["poison", "--attack", "por", "--backbone", tiny_bert, "--corpus", toy_csv, "--out", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_evaluate_poisoned_needs_a_poison_record(tiny_bert, toy_csv, tmp_path, capsys):
    rc = main(["evaluate", str(tmp_path), "--poisoned", str(tmp_path)])
    assert rc == 2 and "not a poisoned model folder" in capsys.readouterr().err


def test_poison_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["poison", "--help"])
    text = capsys.readouterr().out
    for word in ("clean-label", "badnets", "insent", "template", "por", "neuba", "examples:", "--poisoned"):
        assert word in text
