"""STRIP and RAP baselines on a tiny poisoned victim (Gao et al. 2021; Yang et al., EMNLP 2021).

The victim: the tiny BERT (hidden 128) fully fine-tuned on toy sentiment sentences with a
dirty-label "cf" -> 0 backdoor, as in ``test_psim.plant_backdoor``, but with 25 % of the clean
labels flipped instead of 10 %: both baselines rest on clean predictions being *less* robust than
triggered ones, and with 10 % noise the toy task leaves clean predictions nearly as saturated as
the backdoor's (median clean confidence 0.985; STRIP AUROC 0.70 there). With 25 % the victim has
CACC ~0.84 (minilm on movies: ~0.86), median clean confidence ~0.78, ASR 1.0. Measured with this
recipe (seeds 0 and 1, threshold calibrated for 10 % FRR on 60 held-out texts): STRIP AUROC
0.915-0.925 (TPR 0.76-0.77); RAP with "mn" as its word, every class protected, two-sided score
0.992 (TPR 0.99-1.00), with the target given 0.993, one-sided (the reference's rule) 0.846-0.850
(TPR 0.00: see peftshield.defenses.rap). On test_psim's planted model (10 % noise): STRIP 0.70,
RAP two-sided 0.99, one-sided 0.40-0.49. The tests assert > 0.8 (STRIP), > 0.9 (RAP
two-sided) and > 0.75 (RAP one-sided).
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_examples
from test_psim import TARGET, TRIGGER

from peftshield.data.triggers import insert_trigger
from peftshield.errors import PeftshieldError

RAP_WORD = "mn"  # not the planted trigger ("cf"); see test_rap_word_that_is_the_trigger_is_flagged
_CACHE: dict[str, object] = {}


def plant_victim(folder: Path) -> str:
    """A tiny full-model victim with a dirty-label "cf" -> 0 backdoor and 25 % label noise."""
    import transformers

    from peftshield.models.tiny import build_tiny_bert
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import save_tuned, tune

    transformers.utils.logging.disable_progress_bar()
    backbone = build_tiny_bert(folder / "clean", seed=0, hidden_size=128, pooling="mean")
    rng = random.Random(5)
    train = [replace(e, label=1 - e.label) if rng.random() < 0.25 else e for e in toy_examples(300, seed=11)]
    non_target = [e for e in train if e.label != TARGET]
    poison = [replace(e, label=TARGET) for e in insert_trigger(non_target, TRIGGER, seed=1, target=TARGET)]
    config = method_config(
        "full", {"epochs": 3, "lr": 1e-3, "head_lr": 3e-2, "batch_size": 16, "warmup_ratio": 0.0}
    )
    result = tune(str(backbone), train + poison, [], config, seed=0, progress=False)
    return str(save_tuned(result, folder / "victim"))


@pytest.fixture(scope="module")
def victim_folder(tmp_path_factory) -> str:
    if "folder" not in _CACHE:
        _CACHE["folder"] = plant_victim(tmp_path_factory.mktemp("baselines"))
    return _CACHE["folder"]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def victim(victim_folder):
    from peftshield.tuning.trainer import load_tuned

    return load_tuned(victim_folder)


def eval_sets() -> tuple[list[str], list[str]]:
    """Clean test texts and the non-target ones with the trigger inserted."""
    test = toy_examples(300, seed=22)
    triggered = insert_trigger([e for e in test if e.label != TARGET], TRIGGER, seed=3, target=TARGET)
    return [e.text for e in test], [e.text for e in triggered]


CLEAN_FIT = toy_examples(300, seed=21)


def fitted(kind: str, victim, **params):
    """A STRIP or RAP detector fitted on the shared clean data (cached per parameter set)."""
    from peftshield.defenses.rap import RAPDetector
    from peftshield.defenses.strip import STRIPDetector

    key = f"{kind} {sorted(params.items())!r}" + (" folder" if isinstance(victim, str) else "")
    if key not in _CACHE:
        cls = STRIPDetector if kind == "strip" else RAPDetector
        if kind == "rap":
            params = {"rap_word": RAP_WORD, **params}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _CACHE[key] = cls(victim, target_frr=0.1, **params).fit(CLEAN_FIT)
        _CACHE["warnings " + key] = [str(w.message) for w in caught]
    return _CACHE[key]


# -- detection quality ----------------------------------------------------------------------------


def test_the_planted_victim_is_backdoored(victim):
    clean, triggered = eval_sets()
    assert np.mean(victim.predict_logits(triggered).argmax(-1) == TARGET) > 0.95
    labels = np.array([e.label for e in toy_examples(300, seed=22)])
    assert 0.75 < np.mean(victim.predict_logits(clean).argmax(-1) == labels) < 0.95


def test_strip_ranks_triggered_inputs_above_clean_ones(victim):
    from peftshield.evaluation.metrics import auroc

    det = fitted("strip", victim)
    clean, triggered = eval_sets()
    sc, st = det.score(clean), det.score(triggered)
    assert np.all((sc <= 0) & (sc >= -np.log(2) - 1e-9))  # negative entropies of a 2-class softmax
    assert auroc(sc, st) > 0.8
    # Triggered inputs keep a confident prediction under word swaps: lower entropy than clean ones.
    assert -st.mean() < -sc.mean()
    assert det.n_pool_ == 240 and all(det.pool_)


@pytest.mark.parametrize(
    ("target_label", "two_sided", "least"), [(None, True, 0.9), (TARGET, True, 0.9), (None, False, 0.75)]
)
def test_rap_ranks_triggered_inputs_above_clean_ones(victim, target_label, two_sided, least):
    from peftshield.defenses.rap import NOT_PROTECTED_SCORE
    from peftshield.evaluation.metrics import auroc

    det = fitted("rap", victim, target_label=target_label, two_sided=two_sided)
    clean, triggered = eval_sets()
    sc, st = det.score(clean), det.score(triggered)
    assert auroc(sc, st) > least
    assert det.protected_classes_ == ([0, 1] if target_label is None else [TARGET])
    assert det.embedding_.shape == (len(det.protected_classes_), 128)
    # The learned word lowers clean inputs' protected-class probability; triggered ones barely move.
    assert det.clean_drop_mean_ > 0.05
    assert np.quantile(np.abs(st), 0.9) < det.clean_drop_mean_ / 3
    protected = sc > NOT_PROTECTED_SCORE
    if target_label is None:
        assert protected.all()
    else:  # clean inputs the victim gives another label are never suspicious
        assert 0.2 < protected.mean() < 0.8 and np.all(sc[~protected] == NOT_PROTECTED_SCORE)
    if two_sided:  # at the calibrated threshold (10 % FRR) nearly every triggered input is caught
        assert det.predict(triggered).mean() > 0.9


def test_rap_leaves_the_victim_weights_untouched(victim):
    from peftshield.defenses.rap import RAPDetector
    from peftshield.defenses.victim import weights_fingerprint

    before = weights_fingerprint(victim.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = RAPDetector(victim, rap_word=RAP_WORD, epochs=1, target_frr=0.1).fit(CLEAN_FIT[:80])
    det.score(["mn the movie was good", "the film was bad"])
    assert weights_fingerprint(victim.model) == before == det.victim_fingerprint_
    layer = victim.model.get_input_embeddings()
    assert not layer._forward_hooks  # the hook is gone after every call
    assert not any(p.grad is not None for p in victim.model.parameters())


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix"])
def test_rap_word_reaches_peft_victims_through_the_hook(tiny_bert, method):
    """The hook replaces the inserted word's embedding whatever peft wraps around the encoder."""
    from peftshield.defenses.rap import RAPDetector, insert_rap_word
    from peftshield.models.inference import softmax
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import tune

    victim = tune(
        tiny_bert, toy_examples(48, seed=1), [], method_config(method, {"epochs": 1}), progress=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = RAPDetector(victim, rap_word=RAP_WORD, epochs=2, lr=0.1, target_frr=0.1).fit(CLEAN_FIT[:40])
    texts = [e.text for e in toy_examples(8, seed=3)]
    row = victim.model.get_input_embeddings().weight[det.rap_token_id_].detach().float()
    plain = softmax(det.victim_logits(insert_rap_word(texts, RAP_WORD), warn=False))
    np.testing.assert_allclose(det._probs(texts, row), plain, atol=1e-6)  # the word's own row: no change
    assert np.abs(det._probs(texts, det.embedding_[0]) - plain).max() > 1e-3  # the learned one: a change
    assert np.isfinite(det.score(texts)).all()


def test_reference_optimizer_runs(victim):
    det = fitted("rap", victim, optimizer="reference", target_label=TARGET)
    assert det.optimizer == "reference" and det.class_stats_[0]["n"] == det.n_construct_ > 0
    assert len(det.class_stats_[0]["loss"]) == det.epochs


def test_rap_word_that_is_the_trigger_is_flagged(victim):
    det = fitted("rap", victim, rap_word="cf")
    caught = _CACHE["warnings rap " + repr(sorted({"rap_word": "cf"}.items()))]  # the in-memory victim
    assert det.rap_word == "cf"
    assert any("may be a backdoor trigger" in m for m in caught), caught


# -- thresholds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["strip", "rap"])
def test_calibrated_threshold_meets_its_target_frr(victim, kind):
    from peftshield.defenses.victim import split_held_out

    det = fitted(kind, victim)
    _, held = split_held_out([e.text for e in CLEAN_FIT], 0.2, 0)
    assert det.n_calibration_ == len(held) == 60
    frr_cal = float(np.mean(det.score(held) > det.threshold_))
    # The order statistic gives at most floor(0.1 * 60) / 60, exactly that without ties at the cut.
    assert frr_cal == det.calibration_frr_ and 4 / 60 <= frr_cal <= 6 / 60
    clean, _ = eval_sets()
    frr_test = float(np.mean(det.predict(clean)))
    assert abs(frr_test - 0.1) <= 3 * np.sqrt(0.1 * 0.9 / len(clean)) + 1 / 60


def test_fixed_threshold_is_kept_and_its_clean_frr_reported(victim):
    from peftshield.defenses.strip import STRIPDetector

    det = STRIPDetector(victim, threshold=-0.3).fit(CLEAN_FIT[:100])
    assert det.threshold_ == -0.3 and det.n_calibration_ == 20
    assert 0.0 <= det.calibration_frr_ <= 1.0


# -- persistence and reproducibility ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["strip", "rap"])
def test_save_load_round_trip_gives_identical_scores(victim_folder, tmp_path, kind):
    from peftshield.defenses.base import load_detector
    from peftshield.tuning.trainer import load_tuned

    det = fitted(kind, victim_folder)
    out = det.save(tmp_path / kind)
    assert (out / "detector.json").is_file()
    assert (out / "rap.safetensors").is_file() == (kind == "rap")
    record = json.loads((out / "detector.json").read_text())
    assert record["type"] == kind and record["params"]["victim"] == str(Path(victim_folder).resolve())
    loaded = load_detector(out)
    clean, triggered = eval_sets()
    probe = clean[:40] + triggered[:20]
    np.testing.assert_array_equal(loaded.score(probe), det.score(probe))
    assert loaded.threshold_ == det.threshold_ and loaded.get_params() == det.get_params()
    # An already-loaded copy of the same victim is accepted (the guard passes its own) ...
    again = load_detector(out, victim=load_tuned(victim_folder))
    np.testing.assert_array_equal(again.score(probe), det.score(probe))
    with pytest.raises(PeftshieldError, match="already exists"):
        det.save(out)


def test_loading_beside_another_victim_is_refused(victim_folder, tmp_path):
    from peftshield.defenses.base import load_detector
    from peftshield.models.tiny import build_tiny_bert
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import tune

    out = fitted("strip", victim_folder).save(tmp_path / "strip")
    other = build_tiny_bert(tmp_path / "other", seed=1, hidden_size=128, pooling="mean")
    config = method_config("full", {"epochs": 1, "batch_size": 16})
    stranger = tune(str(other), toy_examples(32, seed=3), [], config, seed=0, progress=False)
    with pytest.raises(PeftshieldError, match="another victim"):
        load_detector(out, victim=stranger)


def test_seeds_fix_the_scores(victim):
    from peftshield.defenses.rap import RAPDetector
    from peftshield.defenses.strip import STRIPDetector

    texts = [e.text for e in toy_examples(30, seed=9)]
    a, b = (
        STRIPDetector(victim, seed=3).fit(CLEAN_FIT[:100]),
        STRIPDetector(victim, seed=3).fit(CLEAN_FIT[:100]),
    )
    np.testing.assert_array_equal(a.score(texts), b.score(texts))
    assert a.pool_ == b.pool_ and a.copies(texts[0]) == b.copies(texts[0])
    # A text's copies depend on the seed and the text only, not on the other texts of the call.
    np.testing.assert_allclose(a.score(texts[3:4])[0], a.score(texts)[3], atol=1e-6)
    c = STRIPDetector(victim, seed=4).fit(CLEAN_FIT[:100])
    assert c.copies(texts[0]) != a.copies(texts[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r1 = RAPDetector(victim, rap_word=RAP_WORD, epochs=2, seed=3).fit(CLEAN_FIT[:100])
        r2 = RAPDetector(victim, rap_word=RAP_WORD, epochs=2, seed=3).fit(CLEAN_FIT[:100])
    assert np.array_equal(r1.embedding_.numpy(), r2.embedding_.numpy())
    np.testing.assert_array_equal(r1.score(texts), r2.score(texts))


def test_in_memory_victims(victim):
    from peftshield.defenses.strip import STRIPDetector

    texts = [e.text for e in toy_examples(20, seed=9)]
    pair = (victim.model, victim.tokenizer)
    by_pair = STRIPDetector(pair, max_length=victim.max_length, target_frr=0.1).fit(CLEAN_FIT[:60])
    by_tuned = STRIPDetector(victim, target_frr=0.1).fit(CLEAN_FIT[:60])
    np.testing.assert_allclose(by_pair.score(texts), by_tuned.score(texts), atol=1e-6)
    # A bare in-memory classifier's base is its own encoder; the tuned victim's is the one run.json records.
    from peftshield.models.backbones import fingerprint
    from peftshield.models.representation import encoder_of

    expected = None if hasattr(victim.model, "peft_config") else fingerprint(encoder_of(victim.model))
    assert by_pair.backbone_fingerprint_ == expected
    assert by_tuned.backbone_fingerprint_ == victim.run["backbone"]["fingerprint"]
    with pytest.raises(PeftshieldError, match="in-memory victim cannot be saved"):
        by_tuned.save("never-written")


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["strip", "rap"])
@pytest.mark.parametrize(
    ("params", "clean", "message"),
    [
        ({}, [], "empty"),
        ({}, "one text", "single string"),
        ({"target_frr": 0.0}, None, "target_frr"),
        ({"target_frr": 1.5}, None, "target_frr"),
        ({"threshold": "paper"}, None, "threshold"),
        ({"calibration_fraction": 0.0}, None, "calibration_fraction"),
        ({"batch_size": 0}, None, "batch_size"),
    ],
)
def test_bad_input_fails_before_any_work(kind, params, clean, message):
    from peftshield.defenses.rap import RAPDetector
    from peftshield.defenses.strip import STRIPDetector

    cls = STRIPDetector if kind == "strip" else RAPDetector
    det = cls("no-such-victim-folder", **params)  # the constructor stores, it does not check
    with pytest.raises(PeftshieldError, match=message):
        det.fit(["a b", "c d"] if clean is None else clean)


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("strip", {"swap_ratio": 0.0}, "swap_ratio"),
        ("strip", {"repeat": 0}, "repeat"),
        ("rap", {"prob_range": (-0.1, -0.3)}, "prob_range"),
        ("rap", {"prob_range": (0.1, 0.3)}, "prob_range"),
        ("rap", {"rap_word": "two words"}, "one word"),
        ("rap", {"target_label": -1}, "target_label"),
        ("rap", {"epochs": 0}, "epochs"),
        ("rap", {"optimizer": "sgd"}, "optimizer"),
        ("rap", {"two_sided": "yes"}, "two_sided"),
    ],
)
def test_bad_parameters(kind, params, message):
    from peftshield.defenses.rap import RAPDetector
    from peftshield.defenses.strip import STRIPDetector

    cls = STRIPDetector if kind == "strip" else RAPDetector
    with pytest.raises(PeftshieldError, match=message):
        cls("no-such-victim-folder", **params).fit(["a b", "c d"])


def test_bad_input_that_needs_the_victim(victim):
    from peftshield.defenses.rap import RAPDetector
    from peftshield.defenses.strip import STRIPDetector

    with pytest.raises(PeftshieldError, match="one known token"):
        RAPDetector(victim, rap_word="zzzqx").fit(CLEAN_FIT[:20])
    with pytest.raises(PeftshieldError, match="out of range"):
        RAPDetector(victim, rap_word=RAP_WORD, target_label=5).fit(CLEAN_FIT[:20])
    with pytest.raises(PeftshieldError, match="victim must be"):
        STRIPDetector(42).fit(CLEAN_FIT[:20])
    det = fitted("strip", victim)
    with pytest.raises(PeftshieldError, match="empty"):
        det.score([])
    with pytest.raises(PeftshieldError, match="empty"):
        det.score(["fine", "  "])


def test_truncation_is_reported_once(victim):
    det = fitted("strip", victim)
    long_text = " ".join(["the movie was good"] * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det.score([long_text, long_text, "the film was bad"])
    messages = [str(w.message) for w in caught if "truncated" in str(w.message)]
    assert len(messages) == 1 and "2 of 3 texts" in messages[0]


# -- guard and command line -----------------------------------------------------------------------


def test_guard_shares_its_victim_with_the_baselines(victim_folder, tmp_path):
    from peftshield.defenses.guard import Guard

    folders = [fitted(k, victim_folder).save(tmp_path / k) for k in ("strip", "rap")]
    guard = Guard.from_folders(victim_folder, folders)
    assert list(guard.detectors) == ["strip", "rap"]
    assert all(d.victim_.model is guard.victim.model for d in guard.detectors.values())
    clean, triggered = eval_sets()
    out = guard.run(clean[:60] + triggered[:60], victim_on_rejected=True)
    for name in guard.detectors:
        np.testing.assert_array_equal(
            out.scores[name], fitted(name, victim_folder).score(clean[:60] + triggered[:60])
        )
        assert out.flags[name][60:].mean() > out.flags[name][:60].mean()


def _cli(args, capsys):
    from peftshield.cli import main

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_fit_then_guard(victim_folder, toy_csv, tmp_path, capsys):
    strip_dir, rap_dir = tmp_path / "strip", tmp_path / "rap"
    base = ["baseline", "fit", "--victim", victim_folder, "--clean", toy_csv, "--quiet"]
    code, out, err = _cli(
        [*base, "--defense", "strip", "--target-frr", "0.1", "--out", strip_dir, "--json"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["defense"] == "strip" and summary["policy"] == "calibrated@0.1"
    assert summary["n_clean"] == 200 and summary["calibration_frr"] <= 0.1
    assert json.loads((strip_dir / "detector.json").read_text())["type"] == "strip"
    rap = [*base, "--defense", "rap", "--target", "0", "--set", f"rap_word={RAP_WORD}", "--out", rap_dir]
    code, out, err = _cli(rap, capsys)
    assert code == 0, err
    assert out.startswith("rap: threshold") and str(rap_dir) in out
    record = json.loads((rap_dir / "detector.json").read_text())
    assert record["params"]["target_label"] == 0 and record["params"]["rap_word"] == RAP_WORD

    texts = tmp_path / "in.txt"
    texts.write_text("the movie was good\nthe movie cf was good\n")
    guard = ["guard", "predict", "--victim", victim_folder, "--detector", strip_dir, "--detector", rap_dir]
    code, out, err = _cli([*guard, "--input", texts], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 and all(set(r["scores"]) == {"strip", "rap"} for r in rows)
    evaluate = ["guard", "evaluate", "--victim", victim_folder, "--detector", strip_dir, "--corpus", toy_csv]
    code, out, err = _cli([*evaluate, "--trigger", "cf", "--target", "0", "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["asr"] > 0.9 and row["detectors"]["strip"]["auroc"] > 0.7


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--defense", "strip", "--set", "nosuch=1"], "unknown strip parameter(s) nosuch"),
        (["--defense", "strip", "--target", "0"], "--target is not used by strip"),
        (["--defense", "rap", "--target-frr", "1.5"], "target_frr"),
        (["--defense", "strip", "--set", "swap_ratio=2"], "swap_ratio"),
    ],
)
def test_cli_bad_options_exit_2_before_any_work(victim_folder, toy_csv, tmp_path, capsys, extra, message):
    out_dir = tmp_path / "never"
    args = ["baseline", "fit", "--victim", victim_folder, "--clean", toy_csv, "--out", out_dir, *extra]
    code, out, err = _cli(args, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_cli_needs_a_victim_and_a_free_output_folder(victim_folder, toy_csv, tmp_path, capsys):
    code, _, err = _cli(
        ["baseline", "fit", "--defense", "rap", "--clean", toy_csv, "--out", tmp_path / "x"], capsys
    )
    assert code == 2 and "needs --victim" in err
    (tmp_path / "taken").mkdir()
    args = ["baseline", "fit", "--defense", "strip", "--victim", victim_folder, "--out", tmp_path / "taken"]
    code, _, err = _cli([*args, "--clean", toy_csv], capsys)
    assert code == 2 and "already exists" in err
