"""LMSanitator on a tiny random BERT poisoned with POR in the test: scan, monitor, purge, CLI, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_examples

from peftshield.cli import main
from peftshield.defenses.lmsanitator.calibration import calibrate_thresholds
from peftshield.defenses.lmsanitator.filtering import (
    Candidate,
    FilterThresholds,
    candidate_reasons,
)
from peftshield.defenses.lmsanitator.measures import (
    OutputScale,
    entropy_gap,
    normalised_mse,
    relative_spread,
    sign_agreement,
)
from peftshield.defenses.lmsanitator.mining import (
    MiningConfig,
    PVMiner,
    legitimate_range,
    prepare_texts,
    word_embeddings,
)
from peftshield.defenses.lmsanitator.scan import load_pvs, pv_recovery, read_pv_file, scan
from peftshield.errors import PeftshieldError
from peftshield.models.backbones import load_backbone
from peftshield.models.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

WORDS = NEUTRAL_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS
PLANTED = ["cf", "mn"]
# Small enough for seconds on 2 cores, large enough for the batch softmax to mean something.
CONFIG = MiningConfig(n_texts=128, n_verify=32, batch_size=32, max_length=24, lr=1e-2, steps=40, patience=15)
# The tiny POR backdoor leaves a residual spread of ~0.2 clean units around its PV (gap ~0.02).
THRESHOLDS = FilterThresholds(max_gap=0.05, min_distance=20.0)


def mining_texts(n: int = 300, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))) for _ in range(n)]


def insert_word(texts: list[str], word: str, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        words.insert(rng.randint(0, len(words)), word)
        out.append(" ".join(words))
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny model is too small to gain from threads; sharing 2 cores with other jobs costs more.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def por_tiny(tiny_bert, tmp_path_factory) -> str:
    """The tiny BERT with a POR backdoor: triggers cf and mn mapped to two balanced +-1 PVs."""
    from peftshield.attacks.config import PORConfig
    from peftshield.attacks.task_agnostic import poison_task_agnostic

    config = PORConfig(steps=300, lr=1e-3, max_length=32, triggers=PLANTED, log_every=300)
    result = poison_task_agnostic(load_backbone(tiny_bert), mining_texts(600, seed=0), config, progress=False)
    # The attack itself must have worked, or the tests below would prove nothing.
    assert all(row["sign_match"] > 0.95 for row in result.record.metrics["per_trigger"].values())
    return str(result.save(tmp_path_factory.mktemp("por") / "model"))


@pytest.fixture(scope="module")
def texts_csv(tmp_path_factory) -> str:
    import csv

    path = tmp_path_factory.mktemp("texts") / "mine.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([t] for t in mining_texts())
    return str(path)


@pytest.fixture(scope="module")
def thresholds_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("thr") / "thresholds.json"
    path.write_text(json.dumps(THRESHOLDS.to_dict()))
    return str(path)


def scan_args(model: str, texts_csv: str, thresholds_file: str, *extra: str) -> list[str]:
    sets = ["n_texts=128", "n_verify=32", "batch_size=32", "max_length=24", "lr=0.01", "patience=15"]
    args = ["scan", model, "--texts", texts_csv, "--thresholds", thresholds_file, "--steps", "40", "--quiet"]
    for item in sets:
        args += ["--set", item]
    return args + list(extra)


@pytest.fixture(scope="module")
def por_scan(por_tiny, texts_csv, thresholds_file, tmp_path_factory) -> tuple[str, dict]:
    """``peftshield scan`` of the poisoned model, searching for every PV within the budget."""
    out = tmp_path_factory.mktemp("scan") / "por"
    args = scan_args(por_tiny, texts_csv, thresholds_file, "--all", "--attempts", "3", "--pvs-out", str(out))
    return str(out), _run_json(args, expect=1)


def _run_json(args: list[str], expect: int = 0) -> dict:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = main([*args, "--json"])
    assert status == expect  # scanner convention: 0 clean, 1 backdoored
    return json.loads(buffer.getvalue())


@pytest.fixture(scope="module")
def victim(por_tiny, tmp_path_factory) -> str:
    """A prefix-tuned (P-tuning v2, frozen backbone) victim on the poisoned backbone."""
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import save_tuned, tune

    config = method_config("prefix", {"epochs": 1, "num_virtual_tokens": 4, "max_length": 32})
    result = tune(por_tiny, toy_examples(96, seed=3), [], config, seed=0, progress=False)
    return str(save_tuned(result, tmp_path_factory.mktemp("victim") / "prefix"))


@pytest.fixture(scope="module")
def monitor(victim, por_scan):
    from peftshield.defenses.lmsanitator.monitor import PVMonitor

    return PVMonitor(victim, por_scan[0]).fit([e.text for e in toy_examples(100, seed=4)])


# ------------------------------------------------------------------------------------- measures


def test_entropy_gap_is_zero_for_a_collapsed_batch_and_about_half_for_unit_spread():
    gen = torch.Generator().manual_seed(0)
    collapsed = torch.ones(32, 64) * 3.0
    spread = torch.randn(32, 64, generator=gen)
    assert float(entropy_gap(collapsed)) == pytest.approx(0.0, abs=1e-6)
    assert 0.3 < float(entropy_gap(spread)) < 0.7
    assert float(relative_spread(spread)) == pytest.approx(1.0, abs=0.1)


def test_output_scale_floors_dead_units_and_normalises():
    gen = torch.Generator().manual_seed(0)
    outputs = torch.randn(100, 8, generator=gen) * 0.2
    outputs[:, 3] = 0.5  # a unit that never varies (minilm has one)
    scale = OutputScale.from_outputs(outputs, floor=0.25)
    assert float(scale.sigma[3]) == pytest.approx(0.25 * float(scale.sigma.median()))
    z = scale.normalise(outputs)
    assert torch.isfinite(z).all() and float(z[:, 3].abs().max()) < 1e-5
    # Two unrelated clean outputs are about 2 clean units apart.
    assert 1.2 < float(normalised_mse(outputs[:50], outputs[50:], scale)) < 2.6


def test_sign_agreement_and_pv_recovery():
    true = torch.tensor([[1.0, 1.0, -1.0, -1.0], [-1.0, 1.0, -1.0, 1.0]])
    found = torch.tensor([[0.3, 0.1, -0.2, -0.9], [0.5, -0.5, 0.5, -0.5]])
    agreement = sign_agreement(true, found)
    assert agreement.tolist() == [[1.0, 0.5], [0.5, 0.0]]
    rec = pv_recovery(found, true, t_match=0.8)
    assert rec["recovered"] == 1 and rec["recovery_rate"] == 0.5 and rec["spurious"] == 1
    assert pv_recovery(torch.zeros(0, 4), true)["recovered"] == 0


def test_filter_rules_and_threshold_files():
    base = dict(pv=torch.zeros(4), trigger=torch.zeros(2, 4), entropy=3.4, spread=0.1, max_abs_trigger=0.1)
    good = Candidate(distance=50.0, gap=0.01, overlap=0.0, in_range=True, **base)
    assert candidate_reasons(good, THRESHOLDS) == []
    bad = Candidate(distance=3.0, gap=0.3, overlap=0.9, in_range=False, **base)
    assert len(candidate_reasons(bad, THRESHOLDS)) == 4
    assert FilterThresholds.from_dict(THRESHOLDS.to_dict()) == THRESHOLDS
    with pytest.raises(PeftshieldError, match="unknown threshold key"):
        FilterThresholds.from_dict({"max_gapp": 0.1})
    lo, hi = legitimate_range(torch.tensor([-0.5, 0.1]), torch.tensor([1.0, 0.3]), 1.2)
    assert torch.allclose(lo, torch.tensor([-0.6, 0.08])) and torch.allclose(hi, torch.tensor([1.2, 0.32]))
    with pytest.raises(PeftshieldError, match="n_texts"):
        MiningConfig(n_texts=8, batch_size=32)


def test_trigger_slots_sit_before_a_word_and_clean_ids_match(tiny_bert):
    backbone = load_backbone(tiny_bert)
    texts = ["the movie was good", "a film of the city and the river"]
    prepared = prepare_texts(backbone.tokenizer, texts, 3, 24, 32, np.random.default_rng(0))
    for i in range(len(texts)):
        n = int(prepared.mask[i].sum())
        slot = prepared.slot[i, :n]
        where = torch.nonzero(slot >= 0).flatten().tolist()
        assert slot[where].tolist() == [0, 1, 2] and where == list(range(where[0], where[0] + 3))
        assert where[0] >= 2  # after [CLS] and at least one word (reference: word index >= 1)
        kept = [t for j, t in enumerate(prepared.ids[i, :n].tolist()) if slot[j] < 0]
        assert kept == prepared.clean_ids[i, : len(kept)].tolist()
        pieces = backbone.tokenizer.convert_ids_to_tokens(prepared.ids[i, where[0] + 3 : n - 1].tolist())
        words = texts[i].split()[prepared.positions[i] :]
        assert pieces == backbone.tokenizer.tokenize(" ".join(words))


def test_a_model_without_a_readable_embedding_matrix_is_refused():
    class NoEmbeddings(torch.nn.Module):
        def get_input_embeddings(self):
            raise NotImplementedError

    with pytest.raises(PeftshieldError, match="word-embedding matrix"):
        word_embeddings(NoEmbeddings())


# ------------------------------------------------------------------------------------- scan


@pytest.mark.parametrize(
    "bad", [{"attempts": 0}, {"attempts": True}, {"max_total_steps": 1.5}, {"max_total_steps": "9"}]
)
def test_scan_budgets_must_be_positive_integers(tiny_bert, bad):
    name = next(iter(bad))
    with pytest.raises(PeftshieldError, match=f"{name} must be a positive integer"):
        scan(tiny_bert, mining_texts(), **bad)


def test_scan_recovers_a_planted_pv(por_tiny, por_scan):
    from peftshield.attacks.record import load_pvs as true_pvs

    out, report = por_scan
    assert report["verdict"] == "backdoored" and report["n_pvs"] >= 1
    found = load_pvs(out)
    assert found.fingerprint == report["fingerprint"] and found.pvs.shape[1] == 32
    recovery = pv_recovery(found.pvs, true_pvs(por_tiny), t_match=0.8)
    # The planted PVs are balanced +-1 blocks: a match above 0.8 of the signs is no accident.
    assert max(recovery["best_agreement"]) > 0.8
    assert recovery["spurious"] == 0
    assert {"attempt", "outcome", "steps", "gap", "distance"} <= set(report["attempt_log"][0])
    saved = json.loads((__import__("pathlib").Path(out) / "scan.json").read_text())
    assert saved["verdict"] == "backdoored" and "trace" in saved["attempt_log"][0]


def test_clean_model_yields_no_pv_within_the_budget(tiny_bert):
    result = scan(
        tiny_bert, mining_texts(), config=CONFIG, thresholds=THRESHOLDS, attempts=10, max_total_steps=400
    )
    assert result.verdict == "clean" and result.n_pvs == 0
    assert result.steps <= 400 and len(result.attempts) >= 5
    # Mining did push the outputs away: the clean model is not rescued by a search that never moved.
    assert max(a.distance for a in result.attempts) > 0.5
    assert min(a.gap for a in result.attempts) > THRESHOLDS.max_gap


def test_calibration_uses_clean_backbones_only(tiny_bert):
    config = MiningConfig(
        n_texts=64, n_verify=32, batch_size=32, max_length=24, lr=1e-2, steps=20, patience=20
    )
    result = calibrate_thresholds([tiny_bert], mining_texts(), config=config, attempts=2, base=THRESHOLDS)
    assert 0.05 < result.smallest_gap < 0.6 and 0.1 < result.largest_distance < 20
    th = result.thresholds
    assert th.max_gap == pytest.approx(0.5 * result.smallest_gap)
    assert th.min_distance == THRESHOLDS.min_distance and th.range_factor == THRESHOLDS.range_factor
    assert th.source.startswith("calibrated on 1 clean")
    rows = result.per_backbone[0]["attempts"]
    assert len(rows) == 2 and all(r["steps"] == 20 for r in rows)  # never abandoned early


def test_miner_leaves_the_encoder_as_it_found_it(tiny_bert):
    backbone = load_backbone(tiny_bert)
    backbone.encoder.train()
    before = {k: v.clone() for k, v in backbone.encoder.state_dict().items()}
    config = MiningConfig(n_texts=32, n_verify=8, batch_size=8, max_length=24, steps=3, patience=3)
    miner = PVMiner(backbone.encoder, backbone.tokenizer, backbone.pooling, mining_texts(60), config)
    miner.attempt(0)
    miner.close()
    assert backbone.encoder.training
    assert all(p.requires_grad for p in backbone.encoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in backbone.encoder.state_dict().items())


# ------------------------------------------------------------------------------------- monitor and purge


def test_monitor_flags_triggered_inputs_and_passes_clean_ones(monitor):
    clean = [e.text for e in toy_examples(60, seed=5)]
    assert monitor.threshold_ == 0.8 and monitor.n_pvs_ >= 1
    assert monitor.calibration_frr_ <= 0.05
    planted = [w for w in PLANTED]
    flagged_any = np.zeros(len(clean), dtype=bool)
    for word in planted:
        flagged_any |= monitor.predict(insert_word(clean, word, seed=6))
    assert flagged_any.mean() >= 0.9
    assert monitor.predict(clean).mean() <= 0.05
    # A rare word that is not a trigger does not fire it.
    assert monitor.predict(insert_word(clean, "tq", seed=7)).mean() <= 0.1


def test_purge_removes_the_trigger_word(monitor):
    from peftshield.defenses.lmsanitator.purge import Purger

    clean = [e.text for e in toy_examples(40, seed=8)]
    triggered = None
    for word in PLANTED:
        candidate = insert_word(clean, word, seed=9)
        if monitor.predict(candidate).mean() > 0.8:
            triggered, trigger = candidate, word
            break
    assert triggered is not None
    results = Purger(monitor, max_rounds=2).purge(triggered + clean[:5])
    purged = [r for r in results[: len(triggered)] if r.flagged]
    assert len(purged) >= 0.8 * len(triggered)
    assert all(r.cleared and r.removed[0] == trigger and trigger not in r.text.split() for r in purged)
    assert all(not r.flagged and r.text == r.original and r.removed == () for r in results[len(triggered) :])
    text, removed = Purger(monitor).sanitize(purged[0].original)
    assert removed == [trigger] and trigger not in text.split()


def test_defended_asr_in_the_lmsanitator_convention(monitor):
    from peftshield.data.triggers import RareWordTrigger
    from peftshield.defenses.lmsanitator.evaluate import evaluate_defense

    triggers = [RareWordTrigger(w) for w in PLANTED]
    result = evaluate_defense(monitor, toy_examples(60, seed=13), triggers, seed=1)
    assert result["n_correct"] > 0
    assert result["frr"] <= 0.05 and result["recall"] >= 0.9 and result["auroc"] >= 0.95
    assert result["type1"] <= 0.05
    assert result["defended_asr"] <= min(0.05, result["asr_lms"])


def test_calibrated_monitor_and_save_load_round_trip(victim, por_scan, tmp_path):
    from peftshield.defenses.base import load_detector
    from peftshield.defenses.lmsanitator.monitor import PVMonitor, load_monitor

    clean = [e.text for e in toy_examples(100, seed=10)]
    mon = PVMonitor(victim, por_scan[0], threshold="calibrated", target_frr=0.05).fit(clean)
    assert mon.calibration_frr_ <= 0.05
    mon.save(tmp_path / "mon")
    again = load_monitor(tmp_path / "mon")
    probe = insert_word(clean[:20], "cf", seed=11) + clean[:20]
    np.testing.assert_allclose(again.score(probe), mon.score(probe))
    assert isinstance(load_detector(tmp_path / "mon"), PVMonitor)


def test_oracle_monitor_from_the_poisoned_folder(victim, por_tiny):
    from peftshield.defenses.lmsanitator.monitor import PVMonitor

    # The attack's own PVs (poison.json + pvs.safetensors) give an oracle monitor for comparisons.
    oracle = PVMonitor(victim, por_tiny).fit([])
    assert oracle.n_pvs_ == len(PLANTED) and oracle.backbone_fingerprint_
    flags = oracle.predict(insert_word([e.text for e in toy_examples(30, seed=14)], "mn", seed=15))
    assert flags.mean() >= 0.9


def test_monitor_refuses_a_victim_on_another_backbone(tiny_bert, por_scan, tmp_path):
    from peftshield.defenses.lmsanitator.monitor import PVMonitor
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import save_tuned, tune

    config = method_config("prefix", {"epochs": 1, "num_virtual_tokens": 4, "max_length": 32})
    other = save_tuned(tune(tiny_bert, toy_examples(40), [], config, progress=False), tmp_path / "other")
    with pytest.raises(PeftshieldError, match="another backbone"):
        PVMonitor(str(other), por_scan[0]).fit([])


def _scan_with_pvs_elsewhere(por_scan_folder: str, head: str, verdict: str, out: Path) -> str:
    """A copy of ``por_scan_folder`` whose PVs lie on a vector other than ``head`` (none on it)."""
    from safetensors.torch import save_file

    from peftshield.defenses.lmsanitator.scan import load_pvs

    found = load_pvs(por_scan_folder)
    other = "cls" if head != "cls" else "mean"
    pvs = found.pvs[:1] if verdict == "backdoored" else found.pvs[:0]
    out.mkdir()
    save_file(
        {"pvs": pvs.clone(), f"pvs.{other}": pvs.clone(), f"pvs.{head}": found.pvs[:0].clone()},
        str(out / "pvs.safetensors"),
    )
    info = json.loads((Path(por_scan_folder) / "scan.json").read_text())
    info.update(
        verdict=verdict,
        pooling=other,
        poolings=[other, head],
        vectors=[{"pooling": other, "n_pvs": int(pvs.shape[0])}, {"pooling": head, "n_pvs": 0}],
    )
    (out / "scan.json").write_text(json.dumps(info))
    return str(out)


@pytest.mark.parametrize("verdict", ["backdoored", "clean"])
def test_monitor_with_no_pv_on_the_head_vector_says_what_the_scan_found(victim, por_scan, tmp_path, verdict):
    # A scan may find PVs on [CLS] and the pooler but none on the vector the head reads (the
    # adaptive por-clean-pv attack): the monitor has nothing to watch, and says so without
    # calling a backdoored backbone clean.
    from peftshield.defenses.lmsanitator.monitor import NoPVToMonitor, PVMonitor
    from peftshield.defenses.victim import load_victim

    head = load_victim(victim).head_pooling
    folder = _scan_with_pvs_elsewhere(por_scan[0], head, verdict, tmp_path / "scan")
    with pytest.raises(NoPVToMonitor) as refused:
        PVMonitor(victim, folder).fit([])
    message = str(refused.value)
    assert f"no PV of the {head} vector" in message and "\n" not in message
    if verdict == "backdoored":
        assert "calls the backbone backdoored" in message and "do not deploy" in message
    else:
        assert "verdict clean" in message and "backdoored" not in message


# ------------------------------------------------------------------------------------- CLI


def test_cli_monitor_fit_and_predict_with_purge(victim, por_scan, tmp_path, capsys):
    out = tmp_path / "mon"
    clean = tmp_path / "clean.csv"
    clean.write_text("text\n" + "\n".join(e.text for e in toy_examples(50, seed=12)) + "\n")
    assert (
        main(
            [
                "monitor",
                "fit",
                "--victim",
                victim,
                "--pvs",
                por_scan[0],
                "--clean",
                str(clean),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("the movie was good cf and the plot\nthe movie was good and the plot\n")
    assert (
        main(["monitor", "predict", "--monitor", str(out), "--input", str(inputs), "--purge", "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    first, second = report["rows"]
    assert first["flagged"] and first["cleared"] and first["removed"] == ["cf"]
    assert not second["flagged"] and second["removed"] == []


def test_cli_bad_input_is_one_line_and_writes_nothing(victim, por_scan, tiny_bert, tmp_path, capsys):
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"pvs": torch.ones(2, 7)}, str(wrong))
    out = tmp_path / "mon"
    clean = tmp_path / "clean.csv"
    clean.write_text("text\nthe movie was good\na dull plot\n")
    args = [
        "monitor",
        "fit",
        "--victim",
        victim,
        "--pvs",
        str(wrong),
        "--clean",
        str(clean),
        "--out",
        str(out),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "width 7" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".mon")]
    with pytest.raises(PeftshieldError, match="width 7"):
        read_pv_file(wrong, hidden_size=32)
    assert main(["scan", str(tmp_path / "nowhere"), "--pvs-out", str(tmp_path / "scan")]) == 2
    assert not (tmp_path / "scan").exists()


def test_cli_scan_of_the_clean_model(tiny_bert, texts_csv, thresholds_file):
    report = _run_json(scan_args(tiny_bert, texts_csv, thresholds_file, "--attempts", "2"))
    assert report["verdict"] == "clean" and report["n_pvs"] == 0 and report["pvs_out"] is None
