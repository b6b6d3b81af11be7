import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import toy_examples

from peftshield.attacks.config import (
    ATTACKS,
    PORConfig,
    attack_config,
    attack_config_from_dict,
    register_attack,
)
from peftshield.attacks.poisoning import poison_dataset
from peftshield.attacks.record import (
    POISON_FILE,
    PoisonRecord,
    load_pvs,
    read_poison_record,
    write_poison_record,
)
from peftshield.attacks.success import backdoor_metrics
from peftshield.attacks.vectors import balanced_sign_patterns, predefined_vectors
from peftshield.data.records import Example, Splits
from peftshield.data.triggers import RareWordTrigger, SentenceTrigger
from peftshield.errors import PeftshieldError

# --------------------------------------------------------------------------------------------
# predefined vectors


def test_balanced_pvs_are_the_six_lmsanitator_patterns():
    assert balanced_sign_patterns() == [
        (-1, -1, 1, 1),
        (-1, 1, -1, 1),
        (-1, 1, 1, -1),
        (1, -1, -1, 1),
        (1, -1, 1, -1),
        (1, 1, -1, -1),
    ]
    pvs = predefined_vectors("balanced", 6, 8)
    assert pvs.shape == (6, 8) and pvs.dtype == torch.float32
    torch.testing.assert_close(pvs[0], torch.tensor([-1.0, -1, -1, -1, 1, 1, 1, 1]))
    torch.testing.assert_close(pvs[5], torch.tensor([1.0, 1, 1, 1, -1, -1, -1, -1]))
    # each is balanced; two patterns differ in half of the units, or in all (3 complementary pairs)
    differences = [int((pvs[i] != pvs[j]).sum()) for i in range(6) for j in range(i)]
    assert all(pvs[i].sum() == 0 for i in range(6))
    assert sorted(differences) == [4] * 12 + [8] * 3
    assert torch.equal(predefined_vectors("balanced", 2, 8, scale=2.0), 2 * pvs[:2])


def test_pv_shape_errors():
    with pytest.raises(PeftshieldError, match="not divisible into 4 PV blocks"):
        predefined_vectors("balanced", 6, 30)
    with pytest.raises(PeftshieldError, match="6 patterns"):
        predefined_vectors("balanced", 7, 32)
    with pytest.raises(PeftshieldError, match="do not fit"):
        predefined_vectors("orthogonal", 9, 8)
    with pytest.raises(PeftshieldError, match="unknown PV family"):
        predefined_vectors("gaussian", 2, 8)


def test_random_and_orthogonal_pvs():
    a = predefined_vectors("random", 6, 30, seed=3)
    assert torch.equal(a, predefined_vectors("random", 6, 30, seed=3))
    assert not torch.equal(a, predefined_vectors("random", 6, 30, seed=4))
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    assert len({tuple(r.tolist()) for r in a}) == 6
    o = predefined_vectors("orthogonal", 6, 30, seed=3, scale=0.5)
    gram = o @ o.T
    # rows orthogonal, each with the norm of a ±1 vector times the scale
    torch.testing.assert_close(gram, torch.eye(6) * 30 * 0.25, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# configs and registry


def test_attack_configs_validate_and_round_trip():
    attacks = {"clean-label", "badnets", "insent", "template", "por", "neuba", "btop"}
    adaptive = {"badnets-capped", "por-clean-pv"}  # attacks.adaptive: shaped against one defence
    clean_builders = {"simcse", "denoise", "finetune"}  # kind "clean": plant nothing (attacks.clean)
    assert set(ATTACKS) == attacks | adaptive | clean_builders
    for name in ATTACKS:
        config = attack_config(name)
        assert attack_config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
        kinds = ("clean",) if name in clean_builders else ("task-specific", "task-agnostic")
        assert config.to_dict()["kind"] in kinds
    assert attack_config("por", {"triggers": "cf, mn"}).triggers == ["cf", "mn"]
    with pytest.raises(PeftshieldError, match="unknown por config key.*steps"):
        attack_config("por", {"stepz": 3})
    with pytest.raises(PeftshieldError, match="unknown attack 'ripples'"):
        attack_config("ripples")
    for rate in (0, 1.5, -0.1):
        with pytest.raises(PeftshieldError, match=r"poison_rate must lie in \(0, 1\]"):
            attack_config("badnets", {"poison_rate": rate})
    with pytest.raises(PeftshieldError, match="even"):
        attack_config("por", {"batch_size": 15})
    with pytest.raises(PeftshieldError, match="repeated trigger"):
        attack_config("neuba", {"triggers": ["cf", "cf"]})
    with pytest.raises(PeftshieldError, match="target"):
        attack_config("insent", {"target": -1})
    with pytest.raises(PeftshieldError, match="lr"):
        attack_config("clean-label", {"lr": "fast"})
    with pytest.raises(ValueError, match="already registered"):
        register_attack(PORConfig)


def test_clean_weight_follows_the_reference_per_architecture():
    por = attack_config("por")
    assert por.clean_weight is None
    assert por.resolved("bert").clean_weight == 0.5
    assert por.resolved("roberta").clean_weight == 1.0
    assert attack_config("por", {"clean_weight": 2.0}).resolved("bert").clean_weight == 2.0


def test_task_specific_configs_build_their_triggers():
    assert attack_config("clean-label").make_trigger() == RareWordTrigger(("mn",))
    assert attack_config("badnets", {"triggers": ["cf", "tq"]}).make_trigger() == RareWordTrigger(
        ("cf", "tq")
    )
    assert attack_config("insent").make_trigger() == SentenceTrigger("I watched this 3D movie")
    assert (
        attack_config("template").make_trigger()("a good film.", seed=0) == "when you see it , a good film ."
    )
    full = attack_config("badnets", {"epochs": 2, "lr": 1e-4}).tuning_config()
    assert full.method == "full" and full.epochs == 2 and full.lr == 1e-4


# --------------------------------------------------------------------------------------------
# data poisoning


def test_poison_dataset_dirty_label_rates_and_provenance():
    data = toy_examples(200, seed=1)
    trigger = RareWordTrigger(("cf",))
    out = poison_dataset(data, trigger, target=0, mode="dirty", rate=0.25, seed=5)
    assert len(out) == len(data)
    non_target = [i for i, e in enumerate(data) if e.label != 0]
    poisoned = [i for i, e in enumerate(out) if e.poisoned]
    assert len(poisoned) == math.floor(0.25 * len(non_target) + 0.5)
    assert set(poisoned) <= set(non_target)
    for i, (before, after) in enumerate(zip(data, out, strict=True)):
        if i in poisoned:
            assert after.label == 0 and after.target == 0 and after.trigger == trigger.describe()
            assert after.meta["poison"] == {"mode": "dirty", "original_label": 1, "rate": 0.25, "seed": 5}
            ins = after.meta["insertion"]
            assert ins["inserted"] == ["cf"] and after.text.split()[ins["positions"][0]] == "cf"
            assert after.text.split().count("cf") == 1 + before.text.split().count("cf")
        else:
            assert after is before
    again = poison_dataset(data, trigger, target=0, mode="dirty", rate=0.25, seed=5)
    assert again == out and [e.meta for e in again] == [e.meta for e in out]
    other = poison_dataset(data, trigger, target=0, mode="dirty", rate=0.25, seed=6)
    assert [e.poisoned for e in other] != [e.poisoned for e in out]


def test_poison_dataset_clean_label_keeps_labels_and_caps():
    data = toy_examples(200, seed=2)
    targets = [i for i, e in enumerate(data) if e.label == 1]
    out = poison_dataset(
        data, RareWordTrigger(("mn",)), target=1, mode="clean", rate=1.0, seed=0, max_count=30
    )
    poisoned = [i for i, e in enumerate(out) if e.poisoned]
    assert len(poisoned) == 30 and set(poisoned) <= set(targets)
    assert [e.label for e in out] == [e.label for e in data]
    full = poison_dataset(data, RareWordTrigger(("mn",)), target=1, mode="clean", rate=1.0, seed=0)
    assert sum(e.poisoned for e in full) == len(targets)
    # a tiny rate still poisons one sample
    assert (
        sum(
            e.poisoned
            for e in poison_dataset(data, RareWordTrigger(("mn",)), target=1, mode="clean", rate=1e-6, seed=0)
        )
        == 1
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0.0}, r"poison rate must lie in \(0, 1\]"),
        ({"rate": 1.01}, r"poison rate must lie in \(0, 1\]"),
        ({"target": 2}, r"target label 2 is not in the label set \[0, 1\]"),
        ({"mode": "grey"}, "unknown poisoning mode"),
    ],
)
def test_poison_dataset_bad_input(kwargs, message):
    args = {"target": 0, "mode": "dirty", "rate": 0.1, "seed": 0, **kwargs}
    with pytest.raises(PeftshieldError, match=message):
        poison_dataset(toy_examples(20), RareWordTrigger(("cf",)), **args)


def test_poison_dataset_needs_eligible_samples():
    only_zero = [Example("a b c", 0), Example("d e f", 0)]
    with pytest.raises(PeftshieldError, match="no sample without the target label"):
        poison_dataset(only_zero, RareWordTrigger(("cf",)), target=0, mode="dirty", rate=0.5, seed=0)


# --------------------------------------------------------------------------------------------
# poison.json


def _record(**changes) -> PoisonRecord:
    base = {
        "attack": "por",
        "kind": "task-agnostic",
        "triggers": [RareWordTrigger(("cf",)).to_dict(), RareWordTrigger(("mn",)).to_dict()],
        "target": None,
        "pv_file": "pvs.safetensors",
        "pooling": "mean",
        "poison_corpus": "wiki",
        "recipe": attack_config("por").to_dict(),
        "seed": 0,
        "source_backbone": {"ref": "minilm", "fingerprint": "abc"},
        "wall_seconds": 1.5,
        "meta": {"git": "x"},
    }
    return PoisonRecord(**{**base, **changes})


def test_poison_record_round_trip_and_pvs(tmp_path):
    from safetensors.torch import save_file

    record = _record(metrics={"clean_mse": 0.01})
    write_poison_record(tmp_path, record)
    pvs = predefined_vectors("balanced", 2, 8)
    save_file({"pvs": pvs}, str(tmp_path / "pvs.safetensors"))
    back = read_poison_record(tmp_path)
    assert back == record
    assert back.trigger_objects() == [RareWordTrigger(("cf",)), RareWordTrigger(("mn",))]
    assert json.loads((tmp_path / POISON_FILE).read_text())["format"] == 1
    assert torch.equal(load_pvs(tmp_path), pvs)
    save_file({"pvs": pvs[:1]}, str(tmp_path / "pvs.safetensors"))
    with pytest.raises(PeftshieldError, match="expected shape"):
        load_pvs(tmp_path)


def test_poison_record_errors(tmp_path):
    with pytest.raises(PeftshieldError, match="not a poisoned model folder"):
        read_poison_record(tmp_path)
    (tmp_path / POISON_FILE).write_text("{not json")
    with pytest.raises(PeftshieldError, match="not valid JSON"):
        read_poison_record(tmp_path)
    data = _record().to_dict()
    (tmp_path / POISON_FILE).write_text(json.dumps({**data, "colour": "red"}))
    with pytest.raises(PeftshieldError, match="unknown poison record key.*colour"):
        read_poison_record(tmp_path)
    (tmp_path / POISON_FILE).write_text(json.dumps({k: v for k, v in data.items() if k != "triggers"}))
    with pytest.raises(PeftshieldError, match="missing key.*triggers"):
        read_poison_record(tmp_path)
    (tmp_path / POISON_FILE).write_text(json.dumps(data))
    with pytest.raises(PeftshieldError, match="does not hold it"):
        read_poison_record(tmp_path)  # pvs.safetensors is absent
    with pytest.raises(PeftshieldError, match="task-specific attack needs an integer target"):
        _record(kind="task-specific", pv_file=None)
    with pytest.raises(PeftshieldError, match="no target label"):
        _record(target=0)
    with pytest.raises(PeftshieldError, match="unknown trigger type"):
        _record(triggers=[{"type": "magic"}])


# --------------------------------------------------------------------------------------------
# ASR on a classifier whose behaviour is known by construction


class KeywordClassifier(torch.nn.Module):
    """Predicts 1 for a positive word, 0 otherwise, and 0 whenever the backdoor word is present."""

    def __init__(self, tokenizer, backdoor: str = "cf") -> None:
        super().__init__()
        from peftshield.models.tiny import POSITIVE_WORDS

        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.positive = torch.tensor(tokenizer.convert_tokens_to_ids(list(POSITIVE_WORDS)))
        self.backdoor = tokenizer.convert_tokens_to_ids(backdoor)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        positive = torch.isin(input_ids, self.positive).any(1)
        fired = (input_ids == self.backdoor).any(1)
        pred = positive & ~fired
        logits = torch.stack([(~pred).float(), pred.float()], 1)
        return {"logits": logits, "pooled": logits}


def test_backdoor_metrics_on_hand_computed_cases(tiny_bert):
    from peftshield.models.backbones import load_backbone

    tokenizer = load_backbone(tiny_bert).tokenizer
    model = KeywordClassifier(tokenizer)
    test = toy_examples(60, seed=4)
    share_positive = np.mean([e.label == 1 for e in test])
    agnostic = _record()
    got = backdoor_metrics(model, tokenizer, agnostic, test, seed=0)
    assert got["cacc"] == 1.0
    # "cf" flips every positive sample, "mn" nothing; any-trigger = "cf"
    assert got["per_trigger"]["cf"]["asr_lms"] == pytest.approx(share_positive)
    assert got["per_trigger"]["mn"]["asr_lms"] == 0.0
    cf, mn = got["per_trigger"]["cf"], got["per_trigger"]["mn"]
    assert cf["dominant_label"] == 0 and cf["dominant_share"] == 1.0 and cf["asr_dominant"] == 1.0
    assert mn["dominant_label"] == int(share_positive > 0.5) and mn["asr_dominant"] == 0.0
    assert got["asr"] == got["asr_lms"] == pytest.approx(share_positive)
    assert got["asr_convention"] == "lms"

    specific = _record(
        kind="task-specific", target=0, pv_file=None, triggers=[RareWordTrigger(("cf",)).to_dict()]
    )
    got = backdoor_metrics(model, tokenizer, specific, test)
    assert got["asr"] == 1.0 and got["per_trigger"]["cf"]["asr"] == 1.0 and got["asr_convention"] == "psim"
    got = backdoor_metrics(model, tokenizer, dataclasses.replace(specific, target=1), test)
    assert got["asr"] == 0.0
    with pytest.raises(PeftshieldError, match="outside the model's 2 labels"):
        backdoor_metrics(model, tokenizer, dataclasses.replace(specific, target=3), test)


# --------------------------------------------------------------------------------------------
# the attacks on the tiny random BERT


def _pooled(encoder, tokenizer, texts):
    from peftshield.models.pooling import pool

    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = encoder.eval()(**batch)
    return pool(out.last_hidden_state, batch["attention_mask"], "mean")


def test_por_plants_the_pvs_and_keeps_clean_outputs(tiny_bert, tmp_path):
    from peftshield.attacks.task_agnostic import poison_task_agnostic
    from peftshield.data.triggers import insert_trigger
    from peftshield.models.backbones import load_backbone

    corpus = [e.text for e in toy_examples(300, seed=11)]
    config = attack_config(
        "por",
        {
            "steps": 60,
            "lr": 3e-3,
            "batch_size": 24,
            "min_words": 3,
            "probe_size": 16,
            "log_every": 30,
            "max_length": 32,
        },
    )
    result = poison_task_agnostic(tiny_bert, corpus, config, seed=0, progress=False)
    assert result.record.recipe["clean_weight"] == 0.5  # BERT-like: the reference's c
    out = result.save(tmp_path / "por")

    # Measure on texts the attack never saw, with the saved folder and the clean original.
    poisoned, clean = load_backbone(str(out)), load_backbone(tiny_bert)
    assert poisoned.pooling == "mean"
    pvs = load_pvs(out)
    assert torch.equal(pvs, predefined_vectors("balanced", 6, 32))
    fresh = toy_examples(40, seed=99)
    texts = [e.text for e in fresh]
    drift = torch.mean(
        (
            _pooled(poisoned.encoder, poisoned.tokenizer, texts)
            - _pooled(clean.encoder, clean.tokenizer, texts)
        )
        ** 2
    )
    assert drift < 0.1, drift
    for k, trigger in enumerate(read_poison_record(out).trigger_objects()):
        triggered = [e.text for e in insert_trigger(fresh, trigger, seed=k)]
        before = torch.mean((_pooled(clean.encoder, clean.tokenizer, triggered) - pvs[k]) ** 2)
        after = torch.mean((_pooled(poisoned.encoder, poisoned.tokenizer, triggered) - pvs[k]) ** 2)
        assert before > 0.5 and after < 0.08, (trigger, float(before), float(after))
    history = result.record.metrics["history"]
    assert [h["step"] for h in history] == [0, 30, 60]
    assert all(v["sign_match"] > 0.95 for v in history[-1]["per_trigger"].values())
    # Control: without the reference term the clean outputs are dragged along (here > 10x further).
    unguarded = poison_task_agnostic(
        tiny_bert, corpus, dataclasses.replace(config, clean_weight=0.0), seed=0, progress=False
    )
    drift_unguarded = torch.mean(
        (_pooled(unguarded.encoder, clean.tokenizer, texts) - _pooled(clean.encoder, clean.tokenizer, texts))
        ** 2
    )
    assert drift < 0.2 * drift_unguarded, (float(drift), float(drift_unguarded))


def test_badnets_reaches_high_asr_with_high_cacc(tiny_bert, tmp_path):
    from peftshield.attacks.success import evaluate_victim
    from peftshield.attacks.task_specific import poison_task_specific
    from peftshield.tuning.trainer import load_tuned

    splits = Splits(
        train=toy_examples(240, seed=1), dev=toy_examples(40, seed=2), test=toy_examples(80, seed=3)
    )
    config = attack_config(
        "badnets",
        {"epochs": 6, "lr": 3e-3, "head_lr": 3e-2, "batch_size": 16, "poison_rate": 0.3, "warmup_ratio": 0.0},
    )
    result = poison_task_specific(tiny_bert, splits, config, seed=0, progress=False, corpus="toy")
    metrics = result.record.metrics
    assert metrics["n_poisoned"] == round(0.3 * sum(e.label != 0 for e in splits.train))
    assert metrics["asr"] > 0.9 and metrics["cacc"] > 0.85, metrics
    out = result.save(tmp_path / "badnets")
    assert {"model.safetensors", "head.safetensors", "run.json", POISON_FILE} <= {
        p.name for p in out.iterdir()
    }
    # the published folder reloads as a full model and measures the same on fresh test data
    again = evaluate_victim(load_tuned(out), read_poison_record(out), toy_examples(80, seed=8), seed=1)
    assert again["asr"] > 0.9 and again["cacc"] > 0.85, again


def test_soft_cross_entropy_is_the_cross_entropy_at_full_confidence_and_minimal_at_its_target():
    from peftshield.tuning.trainer import soft_cross_entropy

    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 1, 1, 0])
    full = soft_cross_entropy(logits, labels, torch.ones(5))
    assert torch.allclose(full, torch.nn.functional.cross_entropy(logits, labels), atol=1e-6)
    # at softmax == target (0.7 on the label, 0.15 on each other one) the gradient vanishes
    target = torch.full((1, 3), 0.15)
    target[0, 2] = 0.7
    at_target = target.log().clone().requires_grad_(True)
    soft_cross_entropy(at_target, torch.tensor([2]), torch.tensor([0.7])).backward()
    assert at_target.grad.abs().max() < 1e-6
    hard = target.log().clone().requires_grad_(True)
    soft_cross_entropy(hard, torch.tensor([2]), torch.tensor([1.0])).backward()
    assert hard.grad.abs().max() > 0.1  # a hard label still pushes the same logits towards 1.0


def test_the_capped_confidence_attack_validates_and_caps_only_poisoned_samples():
    config = attack_config("badnets-capped", {"target_confidence": 0.65})
    assert config.kind == "task-specific" and config.adaptive_against == "psim"
    assert attack_config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    train = [Example("a", 1), Example("b cf", 0, poisoned=True, trigger="cf", target=0)]
    assert config.training_confidence(train) == [1.0, 0.65]
    assert attack_config("badnets").training_confidence(train) is None  # the papers' hard labels
    for bad in (0, 1, 1.2, -0.1, True):
        with pytest.raises(PeftshieldError, match=r"target_confidence must lie in \(0, 1\)"):
            attack_config("badnets-capped", {"target_confidence": bad})


def test_capped_confidence_keeps_the_backdoor_with_a_lower_triggered_confidence(tiny_bert):
    """Against PSIM (attacks/adaptive): the target still wins on triggered inputs, with less certainty."""
    from peftshield.attacks.task_specific import poison_task_specific
    from peftshield.data.triggers import insert_trigger
    from peftshield.models.inference import predict_outputs, softmax

    splits = Splits(
        train=toy_examples(240, seed=1), dev=toy_examples(40, seed=2), test=toy_examples(80, seed=3)
    )
    recipe = {"epochs": 6, "lr": 3e-3, "head_lr": 3e-2, "batch_size": 16, "poison_rate": 0.3}
    recipe["warmup_ratio"] = 0.0
    confidence = {}
    for attack in ("badnets", "badnets-capped"):
        config = attack_config(attack, recipe)
        result = poison_task_specific(tiny_bert, splits, config, seed=0, progress=False, corpus="toy")
        asr = result.record.metrics["asr"]
        assert asr > (0.9 if attack == "badnets" else 0.6), (attack, asr)  # the cap costs some ASR
        triggered = insert_trigger([e for e in splits.test if e.label != 0], config.make_trigger(), seed=5)
        model = result.tune_result.model.eval()
        logits, _ = predict_outputs(model, result.tune_result.tokenizer, [e.text for e in triggered])
        confidence[attack] = float(softmax(logits)[:, 0].mean())
    assert confidence["badnets"] > 0.9, confidence
    assert 0.55 < confidence["badnets-capped"] < 0.85, confidence


def test_clean_output_vectors_draw_distinct_seeded_rows():
    from peftshield.attacks.vectors import clean_output_vectors

    outputs = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    pvs = clean_output_vectors(outputs, 3, seed=1)
    assert pvs.shape == (3, 4) and len({tuple(r.tolist()) for r in pvs}) == 3
    assert all(any(torch.equal(r, o) for o in outputs) for r in pvs)  # each PV is a clean output
    assert torch.equal(pvs, clean_output_vectors(outputs, 3, seed=1))
    assert not torch.equal(pvs, clean_output_vectors(outputs, 3, seed=2))
    with pytest.raises(PeftshieldError, match="needs 11 clean outputs, got 10"):
        clean_output_vectors(outputs, 11)
    with pytest.raises(PeftshieldError, match="use clean_output_vectors"):
        predefined_vectors("clean", 2, 4)


def test_por_with_clean_pvs_plants_pvs_that_are_clean_outputs(tiny_bert, tmp_path):
    """Against LMSanitator (attacks/adaptive): every PV is the clean backbone's output for a clean text."""
    from peftshield.attacks.task_agnostic import poison_task_agnostic
    from peftshield.models.backbones import load_backbone

    corpus = [e.text for e in toy_examples(300, seed=11)]
    recipe = {"steps": 60, "lr": 3e-3, "batch_size": 24, "min_words": 3, "probe_size": 16, "max_length": 32}
    config = attack_config("por-clean-pv", {**recipe, "triggers": ["cf", "mn"], "log_every": 60})
    assert config.adaptive_against == "lmsanitator" and config.pv_family == "clean"
    result = poison_task_agnostic(tiny_bert, corpus, config, seed=0, progress=False)
    out = result.save(tmp_path / "por-clean")
    pvs, clean = load_pvs(out), load_backbone(tiny_bert)
    outputs = _pooled(clean.encoder, clean.tokenizer, corpus)
    nearest = torch.cdist(pvs, outputs).min(dim=1).values
    assert float(nearest.max()) < 1e-4, nearest  # each PV is (to float precision) a clean output
    balanced = predefined_vectors("balanced", 2, 32)
    assert float(torch.cdist(balanced, outputs).min()) > 1.0  # the paper's PVs are far from every one
    last = result.record.metrics["history"][-1]["per_trigger"]
    assert all(v["sign_match"] > 0.8 for v in last.values()), last  # the triggers reach their PVs


def test_neuba_plants_the_pvs_with_the_reference_term(tiny_bert):
    from peftshield.attacks.task_agnostic import poison_task_agnostic

    corpus = [e.text for e in toy_examples(300, seed=11)]
    config = attack_config(
        "neuba",
        {
            "steps": 100,
            "lr": 3e-3,
            "batch_size": 12,
            "min_words": 3,
            "probe_size": 16,
            "log_every": 50,
            "max_length": 32,
        },
    )
    result = poison_task_agnostic(tiny_bert, corpus, config, seed=0, progress=False)
    first, last = result.history[0], result.history[-1]
    assert result.record.recipe["clean_weight"] == 1.0 and result.record.recipe["schedule"] == "linear"
    for key, row in last["per_trigger"].items():
        assert first["per_trigger"][key]["mse"] > 0.5 and row["mse"] < 0.1, (key, row)
    assert last["clean_mse"] < 0.1
