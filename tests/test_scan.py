"""The scan for an unknown attacker and the scanner conventions (issue 11): every candidate vector,
exit codes 0 / 1 / 2, JSON and SARIF reports, adapter folders, --pooling narrowing, the per-model score.

The models are tiny BERTs built in the test; the poisoned one carries a POR backdoor planted on
[CLS] while its registered pooling (``peftshield_pooling``) is mean.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import pytest
import torch

from peftshield.cli import main
from peftshield.defenses.lmsanitator.filtering import FilterThresholds
from peftshield.defenses.lmsanitator.mining import MiningConfig
from peftshield.defenses.lmsanitator.scan import candidate_score, load_pvs, scan
from peftshield.errors import PeftshieldError
from peftshield.models.backbones import LoadedBackbone, load_backbone
from peftshield.models.pooling import CONFIG_KEY, candidate_poolings, pool
from peftshield.models.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, build_tiny_bert

WORDS = NEUTRAL_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS
PLANTED = ["cf", "mn"]
# initializer_range 0.3: a tiny BERT whose [CLS] and pooler vary with the text (at BERT's 0.02 the
# [CLS] state hardly moves, and a backdoor on it is no test). Its embeddings spread about 0.3 per
# unit, so the mining lr is 0.05 (the default 0.01 is sized for minilm's 0.05 spread).
INIT_RANGE = 0.3
SETS = ["n_texts=128", "n_verify=32", "batch_size=32", "max_length=24", "lr=0.05", "patience=15"]
CONFIG = MiningConfig(n_texts=128, n_verify=32, batch_size=32, max_length=24, lr=0.05, steps=40, patience=15)
# Measured on these models (seeds 0-3, 3 attempts per vector): the clean model's smallest entropy
# gap 0.2 (distance <= 4.3), the POR [CLS] backdoor's PVs gap <= 0.05 at distance >= 100.
THRESHOLDS = FilterThresholds(max_gap=0.1, min_distance=20.0)


def mining_texts(n: int = 300, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def clean_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("clean") / "bert"
    return str(build_tiny_bert(folder, seed=0, pooling="mean", initializer_range=INIT_RANGE))


@pytest.fixture(scope="module")
def cls_backdoored(clean_model, tmp_path_factory) -> str:
    """POR planted on the [CLS] vector; the saved backbone then registers mean pooling."""
    from peftshield.attacks.config import PORConfig
    from peftshield.attacks.task_agnostic import poison_task_agnostic

    config = PORConfig(steps=300, lr=1e-3, max_length=32, triggers=PLANTED, log_every=300)
    backbone = load_backbone(clean_model, pooling="cls")
    result = poison_task_agnostic(backbone, mining_texts(600, seed=0), config, progress=False)
    # The attack itself must have worked on [CLS], or the tests below would prove nothing.
    assert result.record.pooling == "cls"
    assert all(row["sign_match"] > 0.95 for row in result.record.metrics["per_trigger"].values())
    folder = Path(result.save(tmp_path_factory.mktemp("por") / "model"))
    config_file = folder / "config.json"
    data = json.loads(config_file.read_text())
    data[CONFIG_KEY] = "mean"
    config_file.write_text(json.dumps(data))
    assert load_backbone(str(folder)).pooling == "mean"
    return str(folder)


@pytest.fixture(scope="module")
def texts_csv(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("texts") / "mine.csv"
    path.write_text("text\n" + "\n".join(mining_texts()) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def thresholds_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("thr") / "thresholds.json"
    path.write_text(json.dumps(THRESHOLDS.to_dict()))
    return str(path)


def cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, out.getvalue(), err.getvalue()


def scan_cmd(model: str, texts_csv: str, thresholds_file: str, *extra: str) -> list[str]:
    args = ["scan", model, "--texts", texts_csv, "--thresholds", thresholds_file]
    args += ["--steps", "40", "--attempts", "3", "--quiet"]
    for item in SETS:
        args += ["--set", item]
    return args + list(extra)


# ------------------------------------------------------------------------------------- candidate vectors


def test_candidate_poolings_per_architecture():
    from transformers import BertConfig, LlamaConfig

    bert = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    assert candidate_poolings(bert, has_pooler=True) == ("cls", "mean", "pooler")
    assert candidate_poolings(bert) == ("cls", "mean")
    setattr(bert, CONFIG_KEY, "mean")
    assert candidate_poolings(bert, has_pooler=True) == ("mean", "cls", "pooler")  # registered first
    llama = LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    assert candidate_poolings(llama) == ("last", "mean")


def test_last_pooling_reads_the_last_real_token_under_either_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(pool(hidden, right, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.equal(pool(hidden, left, "last"), torch.stack([hidden[0, 3], hidden[1, 3]]))


# ------------------------------------------------------------------------------------- the [CLS] backdoor


def test_default_scan_finds_a_cls_backdoor_of_a_mean_pooled_backbone(cls_backdoored):
    result = scan(cls_backdoored, mining_texts(), config=CONFIG, thresholds=THRESHOLDS, attempts=3)
    assert result.registered_pooling == "mean" and result.poolings == ("mean", "cls", "pooler")
    assert result.verdict == "backdoored" and result.vectors["cls"].verdict == "backdoored"
    assert result.vectors["cls"].n_pvs >= 1 and result.score > 0
    # The [CLS] PV is the planted one: it agrees in sign with a true PV on most units.
    from peftshield.attacks.record import load_pvs as true_pvs
    from peftshield.defenses.lmsanitator.scan import pv_recovery

    recovery = pv_recovery(result.vectors["cls"].pvs, true_pvs(cls_backdoored), t_match=0.8)
    assert recovery["recovered"] >= 1
    # What a scan narrowed to the registered mean vector does here, measured: this 2-layer model's
    # [CLS] backdoor moves every token, so the mean collapses too and the narrowed scan finds it as
    # well. (On a 4-layer variant, seed 1, the mean-only scan missed what the default found on the
    # pooler.) The default scan does not depend on this.
    narrowed = scan(
        cls_backdoored, mining_texts(), config=CONFIG, thresholds=THRESHOLDS, attempts=3, pooling="mean"
    )
    assert narrowed.poolings == ("mean",)
    assert narrowed.verdict == "backdoored"


def test_clean_model_is_clean_on_every_vector_with_a_negative_score(clean_model):
    result = scan(clean_model, mining_texts(), config=CONFIG, thresholds=THRESHOLDS, attempts=2)
    assert result.verdict == "clean" and result.n_pvs == 0
    assert {name: v.verdict for name, v in result.vectors.items()} == dict.fromkeys(
        ("mean", "cls", "pooler"), "clean"
    )
    assert all(v.attempts == 2 for v in result.vectors.values())
    assert result.score < 0 and all(v.score is not None and v.score < 0 for v in result.vectors.values())
    assert result.steps == sum(v.steps for v in result.vectors.values())
    # Attempts take the vectors in turn, the registered one first.
    assert [a.pooling for a in result.attempts] == ["mean", "cls", "pooler"] * 2


def test_candidate_score_is_the_signed_margin_to_the_thresholds():
    th = FilterThresholds(max_gap=0.02, min_distance=4.0)
    assert candidate_score(16.0, 0.005, True, th) == pytest.approx(min(2 * 0.6931, 1.3863), abs=1e-3)
    assert candidate_score(2.0, 0.04, True, th) == pytest.approx(-0.6931, abs=1e-3)
    assert candidate_score(40.0, 0.0, True, th) > 0  # a perfect collapse stays finite
    assert candidate_score(40.0, 0.001, False, th) == pytest.approx(-1.0)
    assert candidate_score(float("nan"), 0.01, True, th) != candidate_score(float("nan"), 0.01, True, th)


def test_a_decoder_is_scanned_on_its_last_token_and_mean(tmp_path):
    from transformers import LlamaConfig, LlamaModel

    from peftshield.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path, 64, bos_token="[CLS]", eos_token="[SEP]")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    encoder = LlamaModel(config)
    backbone = LoadedBackbone(encoder, tokenizer, "last", str(tmp_path), "tiny-llama")
    config_small = MiningConfig(n_texts=64, n_verify=32, batch_size=32, max_length=24, steps=10, patience=10)
    result = scan(backbone, mining_texts(), config=config_small, thresholds=THRESHOLDS, attempts=1)
    assert result.poolings == ("last", "mean")
    assert all(v.attempts == 1 and v.score is not None for v in result.vectors.values())
    with pytest.raises(PeftshieldError, match="no pooler"):
        scan(backbone, mining_texts(), config=config_small, pooling="pooler")


# ------------------------------------------------------------------------------------- CLI conventions


def test_exit_codes_clean_backdoored_and_error(
    clean_model, cls_backdoored, texts_csv, thresholds_file, tmp_path
):
    status, out, _ = cli(scan_cmd(clean_model, texts_csv, thresholds_file))
    assert status == 0 and ": CLEAN" in out.splitlines()[0]
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"mean", "cls", "pooler"}
    status, out, _ = cli(scan_cmd(cls_backdoored, texts_csv, thresholds_file))
    assert status == 1 and ": BACKDOORED" in out.splitlines()[0]
    # Errors: exit 2, one line, nothing written.
    report = tmp_path / "report.json"
    for args in (
        scan_cmd(str(tmp_path / "nowhere"), texts_csv, thresholds_file, "--out", str(report)),
        scan_cmd(clean_model, texts_csv, thresholds_file, "--base", clean_model),
        scan_cmd(clean_model, texts_csv, thresholds_file, "--out", str(tmp_path)),
        scan_cmd(clean_model, texts_csv, thresholds_file, "--json", "--format", "sarif"),
    ):
        status, out, err = cli(args)
        assert status == 2 and out == "" and len(err.strip().splitlines()) == 1, (args, err)
        assert err.startswith("peftshield: error: ")
    assert not report.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_json_report_schema(cls_backdoored, texts_csv, thresholds_file, tmp_path):
    out = tmp_path / "reports" / "scan.json"
    status, stdout, _ = cli(
        scan_cmd(cls_backdoored, texts_csv, thresholds_file, "--format", "json", "--out", str(out))
    )
    assert status == 1 and stdout == ""
    doc = json.loads(out.read_text())
    assert [p.name for p in out.parent.iterdir()] == ["scan.json"]  # written atomically, no leftovers
    assert doc["schema"] == "peftshield.scan/1" and doc["tool"]["name"] == "peftshield"
    documented = {
        "verdict", "backdoored", "score", "n_pvs", "vectors", "pvs", "pooling", "poolings",
        "registered_pooling", "attempts", "steps", "seconds", "setup_seconds", "fingerprint",
        "hidden_size", "input", "versions", "thresholds", "config", "stop_at_first", "max_attempts",
        "max_total_steps", "seed", "texts", "started", "attempt_log", "pvs_out", "command",
    }  # fmt: skip
    assert documented <= set(doc)
    assert doc["verdict"] == "backdoored" and doc["backdoored"] is True and doc["score"] > 0
    assert doc["input"]["kind"] == "backbone" and doc["input"]["weights"].endswith("model.safetensors")
    assert {"torch", "transformers", "peftshield"} <= set(doc["versions"])
    vectors = {v["pooling"]: v for v in doc["vectors"]}
    assert set(vectors) == {"mean", "cls", "pooler"} and vectors["cls"]["verdict"] == "backdoored"
    for vector in doc["vectors"]:
        assert set(vector) == {"pooling", "verdict", "score", "n_pvs", "attempts", "steps", "seconds"}
        assert vector["verdict"] in ("backdoored", "clean", "not_scanned")
    assert doc["n_pvs"] == len(doc["pvs"]) == sum(v["n_pvs"] for v in doc["vectors"])
    row = doc["pvs"][0]
    assert {"pooling", "index", "attempt", "distance", "gap", "score", "values"} <= set(row)
    assert len(row["values"]) == doc["hidden_size"] == 32
    assert "trace" not in doc["attempt_log"][0] and doc["attempt_log"][0]["pooling"] == "mean"
    # Rerunning onto an existing report needs --overwrite.
    status, _, err = cli(scan_cmd(cls_backdoored, texts_csv, thresholds_file, "--json", "--out", str(out)))
    assert status == 2 and "already exists" in err


def test_sarif_report_has_the_required_fields(cls_backdoored, clean_model, texts_csv, thresholds_file):
    status, stdout, _ = cli(scan_cmd(cls_backdoored, texts_csv, thresholds_file, "--format", "sarif"))
    assert status == 1
    log = json.loads(stdout)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-schema-2.1.0.json")
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert (
        driver["name"] == "peftshield"
        and driver["version"]
        and driver["informationUri"].startswith("https://")
    )
    rule_ids = {rule["id"] for rule in driver["rules"]}
    assert all(rule["shortDescription"]["text"] for rule in driver["rules"])
    assert run["invocations"][0]["executionSuccessful"] is True
    assert run["results"], "a backdoored model has at least one result"
    weights = (Path(cls_backdoored) / "model.safetensors").resolve().as_uri()
    for result in run["results"]:
        assert result["ruleId"] in rule_ids and result["level"] in ("none", "note", "warning", "error")
        assert result["level"] == "error" and result["message"]["text"]
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == weights
    assert "cls" in {r["properties"]["pooling"] for r in run["results"]}
    assert run["properties"]["verdict"] == "backdoored" and run["properties"]["score"] > 0
    status, stdout, _ = cli(scan_cmd(clean_model, texts_csv, thresholds_file, "--format", "sarif"))
    assert status == 0 and json.loads(stdout)["runs"][0]["results"] == []


def test_sarif_location_is_relative_for_a_relative_model_path(
    cls_backdoored, texts_csv, thresholds_file, monkeypatch
):
    monkeypatch.chdir(Path(cls_backdoored).parent)
    status, stdout, _ = cli(scan_cmd("model", texts_csv, thresholds_file, "--format", "sarif"))
    result = json.loads(stdout)["runs"][0]["results"][0]
    assert status == 1
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "model/model.safetensors"


def test_pooling_narrows_the_scan_and_pvs_are_saved_per_vector(
    cls_backdoored, texts_csv, thresholds_file, tmp_path
):
    folder = tmp_path / "pvs"
    status, stdout, _ = cli(
        scan_cmd(
            cls_backdoored,
            texts_csv,
            thresholds_file,
            "--pooling",
            "cls",
            "pooler",
            "--json",
            "--pvs-out",
            str(folder),
        )  # fmt: skip
    )
    doc = json.loads(stdout)
    assert status == 1 and doc["poolings"] == ["cls", "pooler"] and doc["pvs_out"] == str(folder)
    assert [a["pooling"] for a in doc["attempt_log"]][:1] == ["cls"]
    # The registered mean was not scanned: the primary vector is the first scanned one.
    assert doc["pooling"] == "cls" and doc["registered_pooling"] == "mean"
    cls_pvs = load_pvs(folder, pooling="cls")
    assert cls_pvs.pvs.shape[0] == {v["pooling"]: v for v in doc["vectors"]}["cls"]["n_pvs"] >= 1
    assert torch.equal(load_pvs(folder).pvs, cls_pvs.pvs)
    with pytest.raises(PeftshieldError, match="no PVs of the mean vector"):
        load_pvs(folder, pooling="mean")
    # A monitor watches the vector its victim's head reads, so it takes that vector's PVs (a
    # plain-peft BERT head reads the pooler), not the scan's primary ones.
    from peftshield.defenses.lmsanitator.monitor import PVMonitor

    hidden = cls_pvs.pvs.shape[1]
    pooler_pvs = load_pvs(folder, pooling="pooler").pvs
    watched, _, _, scan = PVMonitor(victim=None, pvs=str(folder))._load_pvs(hidden, "pooler")
    assert torch.equal(watched, pooler_pvs) and not torch.equal(watched, cls_pvs.pvs)
    assert scan["verdict"] == "backdoored"
    with pytest.raises(PeftshieldError, match="no PVs of the mean vector"):
        PVMonitor(victim=None, pvs=str(folder))._load_pvs(hidden, "mean")
    with pytest.raises(SystemExit) as usage, contextlib.redirect_stderr(io.StringIO()):
        main(scan_cmd(cls_backdoored, texts_csv, thresholds_file, "--pooling", "sum"))
    assert usage.value.code == 2


def test_scanning_an_adapter_folder_scans_its_base(
    clean_model, cls_backdoored, texts_csv, thresholds_file, tmp_path
):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from peftshield.models.backbones import quiet_transformers

    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(clean_model, num_labels=2)
    adapter = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    folder = tmp_path / "adapter"
    adapter.save_pretrained(folder)
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == clean_model
    status, stdout, _ = cli(scan_cmd(str(folder), texts_csv, thresholds_file, "--json"))
    doc = json.loads(stdout)
    assert status == 0 and doc["input"]["kind"] == "adapter" and doc["input"]["base"] == clean_model
    # --base overrides the recorded base: the suspect weights are what is scanned.
    status, stdout, _ = cli(
        scan_cmd(str(folder), texts_csv, thresholds_file, "--json", "--base", cls_backdoored)
    )
    doc = json.loads(stdout)
    assert status == 1 and doc["input"]["base"] == cls_backdoored and doc["input"]["adapter"] == str(folder)
    assert doc["input"]["weights"] == str(Path(cls_backdoored).resolve() / "model.safetensors")
    # The library does the same.
    result = scan(str(folder), mining_texts(), config=CONFIG, thresholds=THRESHOLDS, attempts=1)
    assert result.input["kind"] == "adapter" and result.model == clean_model and result.verdict == "clean"
    with pytest.raises(PeftshieldError, match="--base is for a peft adapter folder"):
        scan(clean_model, mining_texts(), base=cls_backdoored)
