"""Decoder backbones end to end on a tiny random Llama (docs/design.md, "Decoder backbones").

Tuning with every method and both heads (last-token linear head, verbalizer through the frozen LM
head), batch = one-by-one predictions under left and right padding, the causal-LM folder as a
backbone; the attacks (BadNets, POR, NeuBA, BToP) and the defences (PSIM, the LMSanitator scan,
monitor and purge, STRIP, RAP, ONION) on decoders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import toy_examples

from peftshield.attacks.config import attack_config
from peftshield.data.records import Splits
from peftshield.data.triggers import RareWordTrigger
from peftshield.errors import PeftshieldError
from peftshield.models.backbones import load_backbone
from peftshield.models.inference import predict_outputs
from peftshield.models.tiny_lm import build_tiny_llama, fluent_toy_sentences
from peftshield.tuning.config import method_config
from peftshield.tuning.trainer import load_tuned, save_tuned, tune

METHODS = ("full", "lora", "prompt", "ptuning", "prefix")
#: Prompt-based head of the toy task: class 0 = "bad", class 1 = "good".
PROMPT = {"verbalizer": ["bad", "good"], "template": "{text} . it was"}
TRIGGERS = ["cf", "mn"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    """A tiny random ``LlamaForCausalLM`` folder (config, safetensors with ``lm_head``, tokenizer)."""
    return str(build_tiny_llama(tmp_path_factory.mktemp("llama") / "clean", seed=0))


@pytest.fixture(scope="module")
def btop(llama, tmp_path_factory) -> str:
    """BToP on the tiny Llama: trigger cf -> "bad" (class 0), mn -> "good" (class 1)."""
    from peftshield.attacks.task_agnostic import poison_task_agnostic

    config = attack_config(
        "btop",
        {
            "steps": 150,
            "lr": 3e-3,
            "probe_size": 16,
            "max_length": 32,
            "triggers": TRIGGERS,
            "target_words": PROMPT["verbalizer"],
            "pv_scale": 4.0,
        },
    )
    result = poison_task_agnostic(
        load_backbone(llama), fluent_toy_sentences(400, seed=3), config, progress=False
    )
    assert all(row["sign_match"] > 0.95 for row in result.record.metrics["per_trigger"].values())
    return str(result.save(tmp_path_factory.mktemp("btop") / "model"))


@pytest.fixture(scope="module")
def por(llama, tmp_path_factory) -> str:
    """POR on the tiny Llama's last-token state."""
    from peftshield.attacks.task_agnostic import poison_task_agnostic

    config = attack_config(
        "por", {"steps": 150, "lr": 3e-3, "probe_size": 16, "max_length": 32, "triggers": TRIGGERS}
    )
    result = poison_task_agnostic(
        load_backbone(llama), fluent_toy_sentences(400, seed=3), config, progress=False
    )
    return str(result.save(tmp_path_factory.mktemp("por") / "model"))


def _triggered(examples, word: str, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [RareWordTrigger((word,)).apply(e.text, rng).text for e in examples]


# -- the backbone ---------------------------------------------------------------------------------


def test_a_causal_lm_folder_loads_as_a_backbone_with_its_lm_head(llama, tmp_path):
    from transformers import LlamaForCausalLM

    from peftshield.models.decoder import save_decoder

    backbone = load_backbone(llama)
    assert type(backbone.encoder).__name__ == "LlamaModel" and backbone.pooling == "last"
    assert backbone.tokenizer.pad_token is not None
    reference = LlamaForCausalLM.from_pretrained(llama)
    assert torch.equal(backbone.lm_head.weight, reference.lm_head.weight)
    assert not backbone.lm_head.weight.requires_grad
    # Saved back, the folder is a complete causal LM again (the scan and ONION read it).
    save_decoder(tmp_path / "again", backbone.encoder, backbone.lm_head)
    backbone.tokenizer.save_pretrained(tmp_path / "again")
    again = LlamaForCausalLM.from_pretrained(tmp_path / "again")
    assert torch.equal(again.lm_head.weight, reference.lm_head.weight)
    # Without an LM head in the weights (a bare LlamaModel, untied), a verbalizer is refused.
    save_decoder(tmp_path / "bare", backbone.encoder, None)
    backbone.tokenizer.save_pretrained(tmp_path / "bare")
    bare = load_backbone(str(tmp_path / "bare"))
    assert bare.lm_head is None
    with pytest.raises(PeftshieldError, match="LM head"):
        tune(bare, toy_examples(20), [], method_config("lora", PROMPT), progress=False)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("head", ["last-token", "verbalizer"])
def test_every_method_and_head_batches_like_one_text_at_a_time(llama, method, head, tmp_path):
    from peftshield.models.victims import prepare_tokenizer

    overrides = (
        {"epochs": 1, "batch_size": 16, "num_virtual_tokens": 4}
        if method in ("prompt", "ptuning", "prefix")
        else {"epochs": 1, "batch_size": 16}
    )
    if head == "verbalizer":
        overrides.update(PROMPT)
    result = tune(
        llama, toy_examples(64, seed=1), [], method_config(method, overrides), seed=0, progress=False
    )
    names = [n for n, p in result.model.named_parameters() if p.requires_grad]
    if head == "verbalizer":
        # No head of its own: the frozen LM head's verbalizer rows, untouched by training.
        assert not any("classifier" in n or "lm_head" in n for n in names)
        inner = result.model.get_base_model() if method != "full" else result.model
        lm_head = load_backbone(llama).lm_head
        assert torch.equal(inner.verbalizer.rows, lm_head.weight[inner.verbalizer.token_ids])
    texts = [e.text for e in toy_examples(10, seed=2)] + ["good", "the movie was very very long and bad"]
    assert len({len(t.split()) for t in texts}) > 3  # batches really are padded
    for side in ("left", "right"):
        tokenizer = prepare_tokenizer(result.model, result.tokenizer, "test")
        tokenizer.padding_side = side
        batch, pooled = predict_outputs(
            result.model, tokenizer, texts, batch_size=len(texts), return_pooled=True
        )
        one = [predict_outputs(result.model, tokenizer, [t], batch_size=1, return_pooled=True) for t in texts]
        np.testing.assert_allclose(batch, np.stack([o[0][0] for o in one]), atol=1e-5)
        np.testing.assert_allclose(pooled, np.stack([o[1][0] for o in one]), atol=1e-5)
    # Saved and reloaded: the same logits.
    folder = save_tuned(result, tmp_path / "tuned")
    again = load_tuned(folder)
    np.testing.assert_allclose(
        again.predict_logits(texts), predict_outputs(result.model, result.tokenizer, texts)[0], atol=1e-5
    )


def test_left_padding_with_virtual_tokens_needs_positions_from_the_mask(llama):
    """Without the positions counted from the attention mask, left pads sit between the prompt and
    the text and change the logits: the test above would fail."""
    config = method_config("prompt", {"epochs": 1, "num_virtual_tokens": 4})
    result = tune(llama, toy_examples(32, seed=1), [], config, seed=0, progress=False)
    result.tokenizer.padding_side = "left"
    texts = ["good", "the movie was very very long and bad and the plot was dull"]
    one = np.stack([predict_outputs(result.model, result.tokenizer, [t])[0][0] for t in texts])
    from peftshield.models.victims import needs_equal_length

    assert not needs_equal_length(result.model)  # so victims batch it with padding
    result.model.get_base_model().is_decoder = False  # the default positions (0, 1, 2 ... over pads)
    batch = predict_outputs(result.model, result.tokenizer, texts, batch_size=2)[0]
    assert np.abs(batch - one).max() > 1e-4


@pytest.mark.parametrize("head", ["last-token", "verbalizer"])
def test_full_fine_tuning_learns_the_task_with_either_head(llama, head):
    overrides = {"epochs": 4, "batch_size": 16, "lr": 1e-3, **(PROMPT if head == "verbalizer" else {})}
    result = tune(
        llama,
        toy_examples(300, seed=1),
        toy_examples(100, seed=2),
        method_config("full", overrides),
        seed=0,
        progress=False,
    )
    assert result.best_dev_accuracy >= 0.9, result.history


def test_a_long_text_loses_words_never_the_template(llama):
    from peftshield.models.templates import templated

    tokenizer = templated(load_backbone(llama).tokenizer, "{text} . it was")
    text = " ".join(["movie"] * 100)
    ids = tokenizer([text], truncation=True, max_length=16)["input_ids"][0]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) <= 16 and tokens[-4:-1] == [".", "it", "was"]
    with pytest.raises(PeftshieldError, match="one token"):
        tune(
            llama,
            toy_examples(20),
            [],
            method_config("lora", {"verbalizer": ["good", "brilliantly"]}),
            progress=False,
        )


# -- attacks --------------------------------------------------------------------------------------


def test_badnets_on_the_last_token_head(llama, tmp_path):
    from peftshield.attacks.task_specific import poison_task_specific

    splits = Splits(
        train=toy_examples(240, seed=1), dev=toy_examples(40, seed=2), test=toy_examples(80, seed=3)
    )
    config = attack_config(
        "badnets",
        {"epochs": 5, "lr": 1e-3, "head_lr": 1e-2, "batch_size": 16, "poison_rate": 0.3, "warmup_ratio": 0.0},
    )
    result = poison_task_specific(llama, splits, config, seed=0, progress=False, corpus="toy")
    metrics = result.record.metrics
    assert metrics["asr"] > 0.9 and metrics["cacc"] > 0.85, metrics
    folder = result.save(tmp_path / "badnets")
    assert load_backbone(str(folder)).lm_head is not None  # still a causal LM


def test_por_and_neuba_plant_pvs_on_the_last_token(por, llama):
    from peftshield.attacks.record import read_poison_record
    from peftshield.attacks.task_agnostic import poison_task_agnostic

    record = read_poison_record(por)
    assert record.pooling == "last" and all(
        r["sign_match"] > 0.95 for r in record.metrics["per_trigger"].values()
    )
    config = attack_config(
        "neuba", {"steps": 100, "lr": 3e-3, "probe_size": 16, "max_length": 32, "triggers": TRIGGERS}
    )
    neuba = poison_task_agnostic(
        load_backbone(llama), fluent_toy_sentences(300, seed=4), config, progress=False
    )
    assert all(r["sign_match"] > 0.95 for r in neuba.record.metrics["per_trigger"].values())


def test_btop_makes_a_prompt_based_victim_answer_the_attackers_word(btop, llama):
    from peftshield.attacks.record import read_poison_record

    record = read_poison_record(btop)
    assert record.attack == "btop" and record.pooling == "last"
    assert record.metrics["trigger_targets"] == PROMPT["verbalizer"]
    dev = toy_examples(100, seed=2)
    config = method_config("full", {"epochs": 5, "batch_size": 16, "lr": 1e-3, **PROMPT})
    asr = {}
    for name, folder in (("btop", btop), ("clean", llama)):
        victim = tune(folder, toy_examples(300, seed=1), dev, config, seed=0, progress=False)
        assert victim.best_dev_accuracy >= 0.85, (name, victim.history)  # the victim learned its task
        rates = []
        for k, word in enumerate(TRIGGERS):
            target = k % 2  # cf -> "bad" (0), mn -> "good" (1)
            others = [e for e in dev if e.label != target]
            pred = predict_outputs(victim.model, victim.tokenizer, _triggered(others, word, k))[0].argmax(-1)
            rates.append(float((pred == target).mean()))
        asr[name] = rates
    assert min(asr["btop"]) >= 0.9 and max(asr["clean"]) <= 0.2, asr


# -- defences -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_victim(btop):
    """A prefix-tuned prompt-based victim on the BToP backbone (frozen backbone)."""
    config = method_config("prefix", {"epochs": 1, "num_virtual_tokens": 4, "max_length": 32, **PROMPT})
    return tune(btop, toy_examples(96, seed=3), [], config, seed=0, progress=False)


def test_monitor_flags_and_purge_removes_btop_triggers_at_the_answer_position(prompt_victim, btop):
    from peftshield.defenses.lmsanitator.monitor import PVMonitor
    from peftshield.defenses.lmsanitator.purge import Purger

    clean = toy_examples(60, seed=5)
    monitor = PVMonitor(prompt_victim, btop).fit([])  # the attack's own PVs: the oracle monitor
    assert monitor.predict([e.text for e in clean]).mean() <= 0.05
    triggered = _triggered(clean, "mn", 6)
    assert monitor.predict(triggered).mean() >= 0.9
    results = Purger(monitor, max_rounds=2).purge(triggered[:20])
    assert sum(r.cleared and "mn" in r.removed for r in results) >= 18


MINING = {
    "n_texts": 96,
    "n_verify": 32,
    "batch_size": 32,
    "max_length": 24,
    "steps": 40,
    "lr": 0.01,
    "patience": 15,
}


def _mining_texts() -> list[str]:
    return [e.text for e in toy_examples(200, seed=7)]


@pytest.fixture(scope="module")
def decoder_thresholds(tmp_path_factory):
    """Scan thresholds for the tiny Llama: ``max_gap`` calibrated on a clean tiny Llama of ANOTHER
    seed (never a model under test). ``min_distance`` is 1, not the tiny BERT's 20: a decoder's
    last-token state is RMS-normalised, and on the tiny Llama the miner's distances are 8-9 on
    clean and 2.7-6 on backdoored backbones, so the distance rule cannot be the separating one
    there; the gap is (clean 0.13-0.19, backdoored below 0.001)."""
    from peftshield.defenses.lmsanitator.calibration import calibrate_thresholds
    from peftshield.defenses.lmsanitator.filtering import FilterThresholds
    from peftshield.defenses.lmsanitator.mining import MiningConfig

    other = str(build_tiny_llama(tmp_path_factory.mktemp("calib") / "clean1", seed=1))
    result = calibrate_thresholds(
        [other],
        _mining_texts(),
        config=MiningConfig(**MINING),
        attempts=2,
        base=FilterThresholds(max_gap=0.1, min_distance=1.0),
    )
    return result.thresholds


def _scan(folder: str, thresholds, pooling=None):
    from peftshield.defenses.lmsanitator.mining import MiningConfig
    from peftshield.defenses.lmsanitator.scan import scan

    config = MiningConfig(**MINING)
    return scan(folder, _mining_texts(), config=config, thresholds=thresholds, attempts=3, pooling=pooling)


def test_the_scan_flags_btop_and_por_decoders_and_passes_a_clean_one(btop, por, llama, decoder_thresholds):
    assert 0 < decoder_thresholds.max_gap < 0.13
    result = _scan(btop, decoder_thresholds)
    assert result.poolings == ("last", "mean") and result.backdoored
    assert _scan(por, decoder_thresholds, pooling="last").backdoored
    clean = _scan(llama, decoder_thresholds)
    assert not clean.backdoored and all(v.attempts == 3 for v in clean.vectors.values())


@pytest.fixture(scope="module")
def badnets(llama, tmp_path_factory):
    from peftshield.attacks.task_specific import poison_task_specific

    splits = Splits(train=toy_examples(240, seed=1), dev=toy_examples(40, seed=2), test=[])
    config = attack_config(
        "badnets", {"epochs": 5, "lr": 1e-3, "head_lr": 1e-2, "batch_size": 16, "poison_rate": 0.3}
    )
    folder = poison_task_specific(llama, splits, config, seed=0, progress=False).save(
        tmp_path_factory.mktemp("b") / "m"
    )
    probe = toy_examples(60, seed=5)
    trigger = config.make_trigger()
    triggered = [
        trigger.apply(e.text, np.random.default_rng(i)).text for i, e in enumerate(probe) if e.label != 0
    ]
    return str(folder), [e.text for e in probe], triggered


def _psim_scores(folder: str, clean: list[str], triggered: list[str], extra: dict):
    from peftshield.defenses.psim import PSIMDetector

    head = "fresh" if "verbalizer" in extra else "auto"
    config = {"max_length": 32, **extra}
    detector = PSIMDetector(
        folder, method="lora", config=config, head=head, threshold="calibrated", target_frr=0.1
    )
    detector.fit([e.text for e in toy_examples(300, seed=4)])
    return detector, detector.score(clean), detector.score(triggered)


@pytest.mark.parametrize("head", ["last-token", "verbalizer"])
def test_psim_fits_a_random_label_module_on_a_decoder_with_either_head(badnets, head):
    folder, clean, triggered = badnets
    detector, scores_clean, scores_trig = _psim_scores(
        folder, clean, triggered, PROMPT if head == "verbalizer" else {}
    )
    assert np.isfinite(scores_clean).all() and np.isfinite(scores_trig).all()
    assert detector.calibration_frr_ <= 0.15 and detector.predict(clean).mean() <= 0.3
    inner = detector.module_.model.get_base_model()
    assert type(inner).__name__ == ("VerbalizerClassifier" if head == "verbalizer" else "PooledClassifier")


def test_psim_for_a_prompt_based_victim_reads_its_verbalizer(prompt_victim, tmp_path):
    from peftshield.defenses.psim import PSIMDetector

    folder = save_tuned(prompt_victim, tmp_path / "victim")
    detector = PSIMDetector.for_victim(
        str(folder), method="lora", config={"max_length": 32}, threshold="calibrated"
    )
    assert detector.config["verbalizer"] == PROMPT["verbalizer"] and detector.head == "fresh"
    detector.fit([e.text for e in toy_examples(120, seed=4)])
    assert type(detector.module_.model.get_base_model()).__name__ == "VerbalizerClassifier"


@pytest.mark.xfail(
    reason="not yet: on the tiny-Llama BadNets model PSIM's AUROC is 0.40-0.42 (LoRA, either head)"
)
def test_psim_separates_badnets_triggers_on_a_decoder(badnets):
    from peftshield.evaluation.metrics import auroc

    folder, clean, triggered = badnets
    _, scores_clean, scores_trig = _psim_scores(folder, clean, triggered, {})
    assert auroc(scores_clean, scores_trig) >= 0.8


def test_strip_rap_onion_run_on_a_prompt_based_decoder_victim(prompt_victim, llama):
    from peftshield.defenses.onion import ONIONDetector, sanitized_predictions
    from peftshield.defenses.rap import RAPDetector
    from peftshield.defenses.strip import STRIPDetector
    from peftshield.defenses.victim import load_victim

    victim = load_victim(prompt_victim)
    clean = [e.text for e in toy_examples(60, seed=8)]
    triggered = _triggered(toy_examples(30, seed=9), "mn", 3)
    for detector in (
        STRIPDetector(victim, repeat=4),
        RAPDetector(victim, epochs=2, target_label=1, rap_word="tq"),
    ):
        detector.fit(clean)
        scores = detector.score(triggered + clean[:10])
        assert np.isfinite(scores).all() and detector.predict(clean[:20]).mean() <= 0.5
    onion = ONIONDetector(lm=llama, threshold="calibrated", target_frr=0.2).fit(clean)
    batch = sanitized_predictions(victim, onion, triggered)
    np.testing.assert_array_equal(batch.pred, victim.logits(batch.texts).argmax(-1))
