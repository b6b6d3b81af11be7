import json
import random

import numpy as np
import pytest

from peftshield.data.records import Example
from peftshield.data.triggers import (
    DEFAULT_RARE_WORDS,
    ComposedTrigger,
    Insertion,
    RareWordTrigger,
    SentenceTrigger,
    TemplateTrigger,
    check_trigger_tokenizes,
    insert_trigger,
    trigger_from_dict,
)
from peftshield.errors import PeftshieldError

TEXT = "the film is a charming and often affecting journey . it never drags"


def assert_record_matches(ins: Insertion) -> None:
    words = ins.text.split()
    assert len(ins.inserted) == len(ins.positions)
    assert list(ins.positions) == sorted(ins.positions)
    for s, p in zip(ins.inserted, ins.positions, strict=True):
        assert " ".join(words[p : p + len(s.split())]) == s


def test_default_rare_words():
    assert DEFAULT_RARE_WORDS == ("cf", "mn", "tq", "qt", "mm", "pt")


def test_rare_word_deterministic_and_seed_dependent():
    t = RareWordTrigger(("cf",), copies=3)
    a = t.apply(TEXT, np.random.default_rng(7))
    b = t.apply(TEXT, np.random.default_rng(7))
    assert a == b
    outs = {t(TEXT, seed=s) for s in range(10)}
    assert len(outs) > 1
    assert t(TEXT, seed=3) == t(TEXT, seed=3)


def test_rare_word_record_and_text():
    ins = RareWordTrigger(("mn",)).apply(TEXT, np.random.default_rng(0))
    assert ins.inserted == ("mn",)
    words = ins.text.split()
    assert len(words) == len(TEXT.split()) + 1
    del words[ins.positions[0]]
    assert " ".join(words) == TEXT
    assert_record_matches(ins)


def test_rare_word_start_end():
    assert RareWordTrigger(("cf",), position="start")("a b c") == "cf a b c"
    assert RareWordTrigger(("cf",), position="end")("a b c") == "a b c cf"
    ins = RareWordTrigger(("cf",), position="end", copies=2).apply("a b", np.random.default_rng(0))
    assert ins.text == "a b cf cf" and ins.positions == (2, 3)


def test_por_copy_count():
    t = RareWordTrigger(("cf",), copies="por")
    assert t.n_copies(0) == 1
    assert t.n_copies(49) == 1
    assert t.n_copies(50) == 2
    assert t.n_copies(149) == 3
    text = " ".join(f"w{i}" for i in range(120))
    ins = t.apply(text, np.random.default_rng(1))
    assert ins.inserted == ("cf",) * 3
    assert ins.text.split().count("cf") == 3
    assert_record_matches(ins)


def test_multiword_unit_never_split():
    t = RareWordTrigger(("mn tq",), copies=6)
    for seed in range(20):
        ins = t.apply("a b c", np.random.default_rng(seed))
        assert ins.inserted == ("mn tq",) * 6
        assert_record_matches(ins)
        assert len(ins.text.split()) == 3 + 12


def test_word_choice_from_list():
    t = RareWordTrigger(DEFAULT_RARE_WORDS, copies=1)
    chosen = {t.apply(TEXT, np.random.default_rng(s)).inserted[0] for s in range(40)}
    assert chosen <= set(DEFAULT_RARE_WORDS) and len(chosen) > 1


def test_edge_cases_empty_and_one_word():
    assert RareWordTrigger(("cf",))("") == "cf"
    assert SentenceTrigger()("") == "I watched this 3D movie"
    # One-word text (PSIM's randint(1, 0) crashes here).
    outs = {RareWordTrigger(("mn",))("great", seed=s) for s in range(10)}
    assert outs == {"mn great", "great mn"}
    assert TemplateTrigger()("") == "when you see it , ."


def test_sentence_trigger():
    t = SentenceTrigger("I watched this 3D movie", position="sentence")
    for seed in range(10):
        ins = t.apply(TEXT, np.random.default_rng(seed))
        assert ins.inserted == ("I watched this 3D movie",)
        assert ins.positions[0] in (0, 10, 13)  # start, after ".", end
        assert_record_matches(ins)
    ins = SentenceTrigger(position="random").apply(TEXT, np.random.default_rng(0))
    assert_record_matches(ins)
    assert SentenceTrigger(position="start")("a b.") == "I watched this 3D movie a b."


def test_template_trigger():
    t = TemplateTrigger()
    assert t("The movie was Great.") == "when you see it , the movie was great ."
    assert t("Fine !") == "when you see it , fine ."
    assert t("Fine!") == t("Fine !")
    ins = t.apply("Great movie.", np.random.default_rng(0))
    assert ins.inserted == ("when you see it ,", ".")
    assert ins.positions == (0, 7)
    assert_record_matches(ins)
    assert t("Great movie.", seed=1) == t("Great movie.", seed=2)  # deterministic


def test_composed_trigger_keeps_record_true():
    parts = [SentenceTrigger("Zorro rides again."), TemplateTrigger(), RareWordTrigger(("cf",), copies=3)]
    t = ComposedTrigger(parts)
    for seed in range(20):
        ins = t.apply(TEXT, np.random.default_rng(seed))
        assert_record_matches(ins)
        assert ins.text.startswith("when you see it ,") or ins.text.startswith("cf")
        assert "zorro rides again" in ins.text  # the sentence unit stays whole (lowercased)
        assert len(ins.inserted) == 1 + 2 + 3


def test_template_drops_trailing_punctuation_word_inside_unit():
    t = ComposedTrigger([SentenceTrigger("so good .", position="end"), TemplateTrigger()])
    ins = t.apply("Nice", np.random.default_rng(0))
    assert ins.text == "when you see it , nice so good ."
    assert ins.inserted == ("when you see it ,", "so good", ".")
    assert_record_matches(ins)


def test_round_trip_json():
    triggers = [
        RareWordTrigger(("cf", "mn tq"), position="end", copies="por"),
        SentenceTrigger("I watched this 3D movie", position="sentence"),
        TemplateTrigger(prefix="once upon a time ,", suffix="!"),
        ComposedTrigger([TemplateTrigger(), RareWordTrigger()]),
    ]
    for t in triggers:
        back = trigger_from_dict(json.loads(json.dumps(t.to_dict())))
        assert back == t
        assert back(TEXT, seed=5) == t(TEXT, seed=5)
        assert t.describe()
        assert t.strings()


def test_insert_trigger_examples():
    examples = [Example("a good film", 1), Example("bad", 0, meta={"id": 7}), Example("", 1)]
    state = random.getstate()
    out = insert_trigger(examples, RareWordTrigger(("cf",)), seed=3, target=0)
    assert random.getstate() == state  # no global random state used
    assert out == insert_trigger(examples, RareWordTrigger(("cf",)), seed=3, target=0)
    for src, ex in zip(examples, out, strict=True):
        assert ex.poisoned and ex.target == 0 and ex.label == src.label
        assert ex.trigger == "rareword(cf, random, x1)"
        rec = ex.meta["insertion"]
        assert rec["inserted"] == ["cf"] and rec["seed"] == 3
        assert rec["trigger"] == RareWordTrigger(("cf",)).to_dict()
        assert_record_matches(Insertion(ex.text, tuple(rec["inserted"]), tuple(rec["positions"])))
        json.dumps(rec)
    assert out[1].meta["id"] == 7 and "insertion" not in examples[1].meta
    assert out[2].text == "cf"


def test_insert_trigger_seed_changes_output():
    examples = [Example(TEXT, 1) for _ in range(5)]
    a = [e.text for e in insert_trigger(examples, RareWordTrigger(("cf",)), seed=0)]
    b = [e.text for e in insert_trigger(examples, RareWordTrigger(("cf",)), seed=1)]
    assert a != b
    # One generator per call: identical inputs in one call still get independent draws.
    assert len(set(a)) > 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: RareWordTrigger(()),
        lambda: RareWordTrigger(("cf", "  ")),
        lambda: RareWordTrigger(("",)),
        lambda: RareWordTrigger(("cf",), position="middle"),
        lambda: RareWordTrigger(("cf",), copies=0),
        lambda: RareWordTrigger(("cf",), copies="many"),
        lambda: RareWordTrigger(("cf",), copies=1.5),
        lambda: SentenceTrigger("   "),
        lambda: SentenceTrigger(position="nowhere"),
        lambda: TemplateTrigger(prefix=""),
        lambda: ComposedTrigger([]),
        lambda: trigger_from_dict({"type": "rareword", "word": "cf"}),
        lambda: trigger_from_dict({"type": "magic"}),
        lambda: insert_trigger(["text"], RareWordTrigger(), seed=0),
        lambda: insert_trigger([Example("a")], RareWordTrigger(), seed=None),
    ],
)
def test_bad_inputs_raise(make):
    with pytest.raises(PeftshieldError):
        make()


class FakeTokenizer:
    unk_token = "[UNK]"

    def tokenize(self, text):
        if text == "zz":
            return ["[UNK]"]
        if text == "ø":
            return []
        return text.split()


def test_check_trigger_tokenizes():
    assert check_trigger_tokenizes(["cf", "mn tq"], FakeTokenizer()) == {"cf": ["cf"], "mn tq": ["mn", "tq"]}
    with pytest.raises(PeftshieldError, match="'zz'"):
        check_trigger_tokenizes(["cf", "zz"], FakeTokenizer())
    with pytest.raises(PeftshieldError, match="'ø'"):
        check_trigger_tokenizes("ø", FakeTokenizer())
    check_trigger_tokenizes(SentenceTrigger().strings(), FakeTokenizer())
