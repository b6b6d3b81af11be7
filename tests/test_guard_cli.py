"""``peftshield psim fit`` and ``peftshield guard predict|evaluate`` end to end on the tiny model."""

from __future__ import annotations

import io
import json
import re
import sys
import warnings
from pathlib import Path

import pytest
from test_psim import TARGET, planted

from peftshield.cli import main

_RUNS: dict[str, str] = {}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def models(tmp_path_factory, toy_csv, capsys) -> dict[str, str]:
    """A victim tuned on the planted backbone and a PSIM detector fitted on it, via the CLI."""
    if not _RUNS:
        root = tmp_path_factory.mktemp("cli")
        backbone = planted(tmp_path_factory)
        victim, detector = root / "victim", root / "psim"
        tune = ["tune", "--backbone", backbone, "--head", "keep", "--method", "lora", "--set", "epochs=1"]
        code, _, err = run_cli([*tune, "--corpus", toy_csv, "--out", victim, "--quiet"], capsys)
        assert code == 0, err
        fit = ["psim", "fit", "--backbone", backbone, "--corpus", toy_csv, "--target-frr", "0.1"]
        code, out, err = run_cli([*fit, "--out", detector, "--quiet", "--json"], capsys)
        assert code == 0, err
        summary = json.loads(out)
        assert summary["policy"] == "calibrated@0.1" and summary["head"] == "keep"
        _RUNS.update(root=str(root), backbone=backbone, victim=str(victim), detector=str(detector))
    return _RUNS


def test_psim_fit_writes_a_detector_folder(models):
    folder = Path(models["detector"])
    record = json.loads((folder / "detector.json").read_text())
    assert record["type"] == "psim" and record["params"]["threshold"] == "calibrated"
    assert record["fitted"]["backbone_fingerprint_"] and "threshold_" in record["fitted"]
    assert (folder / "module" / "adapter_model.safetensors").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".partial")]


def test_guard_predict_from_a_file_stdin_and_jsonl(models, tmp_path, capsys, monkeypatch):
    texts = ["the movie was good", "the movie cf was good"]
    lines_file = tmp_path / "in.txt"
    lines_file.write_text("\n".join(texts) + "\n\n")
    base = ["guard", "predict", "--victim", models["victim"], "--detector", models["detector"]]
    code, out, err = run_cli([*base, "--input", lines_file], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == texts
    assert set(rows[0]) == {"text", "label", "rejected", "reasons", "scores"}
    for row in rows:
        assert (row["label"] is None) == row["rejected"] and set(row["scores"]) == {"psim"}
        assert row["reasons"] == (["psim"] if row["rejected"] else [])

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"review": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    out_file = tmp_path / "decisions.jsonl"
    code, out, err = run_cli(
        [*base, "--input", jsonl, "--text-field", "review", "--output", out_file], capsys
    )
    assert code == 0 and out == ""
    assert [json.loads(line) for line in out_file.read_text().splitlines()] == rows

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(texts[1].encode())))
    code, out, err = run_cli(base, capsys)
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == rows[1:]


def test_guard_evaluate_with_a_trigger_given_by_hand(models, capsys):
    args = ["guard", "evaluate", "--victim", models["victim"], "--detector", models["detector"]]
    code, out, err = run_cli([*args, "--trigger", "cf", "--target", TARGET, "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    for key in ("cacc", "asr", "defended_cacc", "defended_asr", "frr", "far", "precision", "recall", "auroc"):
        assert 0.0 <= row[key] <= 1.0
    assert row["asr"] > 0.9 and row["defended_asr"] < row["asr"]
    assert row["target"] == TARGET and row["triggers"][0]["words"] == ["cf"]
    code, out, err = run_cli([*args, "--trigger", "cf", "--target", TARGET], capsys)
    assert code == 0 and "with defence" in out and "AUROC" in out


def test_guard_evaluate_reads_poison_json(models, tmp_path, capsys):
    record_module = pytest.importorskip("peftshield.attacks.record")
    import shutil

    from test_psim import TRIGGER

    poisoned = tmp_path / "poisoned"
    shutil.copytree(models["backbone"], poisoned)
    record = record_module.PoisonRecord(
        attack="badnets",
        kind="task-specific",
        triggers=[TRIGGER.to_dict()],
        target=TARGET,
        pv_file=None,
        pooling="mean",
        poison_corpus="toy",
        recipe={},
        seed=0,
        source_backbone={"ref": "tiny", "fingerprint": ""},
        wall_seconds=1.0,
        meta={},
    )
    record_module.write_poison_record(poisoned, record)
    args = ["guard", "evaluate", "--victim", models["victim"], "--detector", models["detector"]]
    code, out, err = run_cli([*args, "--poisoned", poisoned, "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["ground_truth"].endswith("poison.json") and row["target"] == TARGET and row["asr"] > 0.9


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-frr", "1.5"], "target_frr"),
        (["--threshold", "1.5"], r"\[0, 1\]"),
        (["--reset-rate", "-1"], "reset_rate"),
        (["--set", "rank=4"], "unknown lora config key"),
        (["--head", "keep", "--backbone", "minilm-missing"], "unknown backbone"),
    ],
)
def test_psim_fit_bad_input_exits_2_and_writes_nothing(extra, message, tmp_path, toy_csv, capsys, models):
    out = tmp_path / "det"
    args = ["psim", "fit", "--backbone", models["backbone"], "--corpus", toy_csv, "--out", out, *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("peftshield: error:") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_psim_fit_refuses_an_existing_folder_before_training(models, toy_csv, capsys):
    args = ["psim", "fit", "--backbone", models["backbone"], "--corpus", toy_csv, "--out", models["detector"]]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already exists" in err


def test_guard_bad_input_exits_2(models, tmp_path, capsys):
    base = ["guard", "predict", "--victim", models["victim"], "--detector", models["detector"]]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("un film tr\xe8s bon\n".encode("latin-1"))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": \n')
    good = tmp_path / "good.txt"
    good.write_text("the movie was good\n")
    cases = [
        ([*base, "--input", empty], "empty"),
        ([*base, "--input", latin], "not valid UTF-8"),
        ([*base, "--input", bad_json], "line 2 is not valid JSON"),
        ([*base, "--input", tmp_path / "missing.txt"], "not found"),
        ([*base, "--input", empty, "--batch-size", "0"], "batch-size"),
        (
            ["guard", "predict", "--victim", tmp_path, "--detector", models["detector"], "--input", good],
            "is not a victim",
        ),
        (
            ["guard", "predict", "--victim", models["victim"], "--detector", tmp_path, "--input", good],
            "not a detector",
        ),
        (["guard", "evaluate", "--victim", models["victim"], "--detector", models["detector"]], "--trigger"),
    ]
    for args, message in cases:
        code, out, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert out == "" and err.startswith("peftshield: error:") and message in err, (args, err)
    # A detector fitted on another backbone than the victim's: refused before any output.
    victim_on_clean = str(Path(models["backbone"]))  # tuned from the clean tiny BERT
    args = [
        "guard",
        "predict",
        "--victim",
        victim_on_clean,
        "--detector",
        models["detector"],
        "--input",
        good,
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == "" and "another backbone" in err
