import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_examples

from peftshield.errors import PeftshieldError
from peftshield.models.backbones import fingerprint, load_backbone
from peftshield.models.inference import predict_outputs
from peftshield.tuning.config import config_from_dict, method_config, own_methods
from peftshield.tuning.trainer import build_classifier, load_tuned, save_tuned, tune
from peftshield.utils.seeding import seed_everything

# High learning rates so that a few steps on the tiny random model move the loss measurably.
FAST = {"full": 3e-3, "lora": 3e-2, "prompt": 3e-2, "ptuning": 3e-2, "prefix": 3e-2}


def _fixed_batch_loss(model, tokenizer, examples) -> float:
    batch = tokenizer([e.text for e in examples], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**batch, labels=torch.tensor([e.label for e in examples]))["loss"].item()


@pytest.mark.parametrize("method", sorted(own_methods()))
def test_training_lowers_the_loss_and_reload_is_identical(method, tiny_bert, tmp_path):
    train = toy_examples(32, seed=3)
    config = method_config(
        method, {"epochs": 12, "lr": FAST[method], "head_lr": 3e-2, "batch_size": 8, "warmup_ratio": 0.0}
    )
    seed_everything(0)  # the same initialisation as tune(seed=0) builds
    backbone = load_backbone(tiny_bert)
    untouched = build_classifier(backbone, 2, config)
    result = tune(tiny_bert, train, [], config, seed=0, progress=False)
    before = _fixed_batch_loss(untouched, backbone.tokenizer, train)
    after = _fixed_batch_loss(result.model, result.tokenizer, train)
    assert after < before - 0.05, (method, before, after)

    out = save_tuned(result, tmp_path / method)
    texts = [e.text for e in toy_examples(40, seed=9)]
    expected, _ = predict_outputs(result.model, result.tokenizer, texts)
    reloaded = load_tuned(out)
    got = reloaded.predict_logits(texts)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # A victim's identity (detectors fitted on it refuse any other) must survive a reload: peft's
    # unused, randomly re-initialised copy of the head must not enter it.
    from peftshield.models.backbones import fingerprint

    assert fingerprint(load_tuned(out).model) == fingerprint(reloaded.model)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == method and run["num_labels"] == 2
    assert "meta" in run and "torch" in run["meta"]["versions"]


def test_head_is_saved_with_the_adapter(tiny_bert, tmp_path):
    config = method_config("lora", {"epochs": 2, "lr": 3e-2, "head_lr": 0.3})
    result = tune(tiny_bert, toy_examples(32), [], config, seed=0, progress=False)
    out = save_tuned(result, tmp_path / "a")
    reloaded = load_tuned(out)
    trained = result.model.base_model.model.classifier.modules_to_save["default"].weight
    loaded = reloaded.model.base_model.model.classifier.modules_to_save["default"].weight
    torch.testing.assert_close(trained, loaded)
    fresh = build_classifier(load_backbone(tiny_bert), 2, config)
    assert not torch.allclose(fresh.base_model.model.classifier.modules_to_save["default"].weight, loaded)


def test_prefix_tuning_goes_through_our_pooling(tiny_bert):
    """The prefix-tuned logits are the head over OUR pooled vector, not over peft's pooler path.

    peft bypasses a forward without an explicit ``past_key_values`` argument and reads the
    backbone's pooler output instead. Here the pooled vector is recomputed independently (the
    encoder called by hand with peft's prefixes, then mean pooling over the real tokens): the
    model's logits must equal the head on it, and differ from the head on the encoder's pooler
    output (what the bypass would read) and from the head on the prefix-free vector.
    """
    import warnings

    from peftshield.models.pooling import pool

    backbone = load_backbone(tiny_bert)
    assert backbone.pooling == "mean"
    model = build_classifier(backbone, 2, method_config("prefix")).eval()
    batch = backbone.tokenizer(["the movie was good", "bad film"], padding=True, return_tensors="pt")
    n_virtual = model.peft_config["default"].num_virtual_tokens
    head = model.base_model.classifier.modules_to_save["default"]
    encoder = model.base_model.encoder
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        logits = model(**batch)["logits"]
        prefix_mask = torch.ones(2, n_virtual, dtype=batch["attention_mask"].dtype)
        hand = encoder(
            input_ids=batch["input_ids"],
            attention_mask=torch.cat([prefix_mask, batch["attention_mask"]], 1),
            token_type_ids=batch.get("token_type_ids"),
            past_key_values=model.get_prompt(batch_size=2),
        )
        ours = pool(hand.last_hidden_state, batch["attention_mask"], "mean")
        plain = encoder(**batch)
        without_prefix = pool(plain.last_hidden_state, batch["attention_mask"], "mean")
    torch.testing.assert_close(logits, head(ours))
    assert (logits - head(hand.pooler_output)).abs().max() > 1e-3  # peft's bypass would read this
    assert (logits - head(without_prefix)).abs().max() > 1e-3  # the prefix did reach the encoder


def test_same_seed_same_model(tiny_bert):
    config = method_config("lora", {"epochs": 1, "lr": 1e-2})
    texts = [e.text for e in toy_examples(10, seed=5)]
    runs = []
    for _ in range(2):
        result = tune(tiny_bert, toy_examples(48), toy_examples(16, seed=2), config, seed=7, progress=False)
        runs.append(predict_outputs(result.model, result.tokenizer, texts)[0])
    np.testing.assert_array_equal(runs[0], runs[1])


def test_dev_checkpoint_selection_keeps_the_best_epoch(tiny_bert):
    config = method_config("full", {"epochs": 4, "lr": 3e-3, "head_lr": 3e-2, "batch_size": 8})
    dev = toy_examples(32, seed=4)
    result = tune(tiny_bert, toy_examples(64), dev, config, seed=0, progress=False)
    best = max(h["dev_accuracy"] for h in result.history)
    assert result.best_dev_accuracy == best
    from peftshield.tuning.trainer import accuracy_on

    assert accuracy_on(result.model, result.tokenizer, dev, max_length=64) == pytest.approx(best)


def test_adapter_refuses_a_different_backbone(tiny_bert, tmp_path):
    from peftshield.models.tiny import build_tiny_bert

    result = tune(tiny_bert, toy_examples(16), [], method_config("lora", {"epochs": 1}), progress=False)
    out = save_tuned(result, tmp_path / "a")
    other = build_tiny_bert(tmp_path / "other", seed=1, pooling="mean")
    with pytest.raises(PeftshieldError, match="different backbone"):
        load_tuned(out, backbone=str(other))


def test_full_model_folder_is_a_backbone_with_its_head(tiny_bert, tmp_path):
    config = method_config("full", {"epochs": 2, "lr": 3e-3, "head_lr": 3e-2})
    result = tune(tiny_bert, toy_examples(32), [], config, seed=0, progress=False)
    out = save_tuned(result, tmp_path / "full")
    assert (out / "model.safetensors").is_file() and (out / "head.safetensors").is_file()
    as_backbone = load_backbone(str(out))
    assert fingerprint(as_backbone.encoder) == fingerprint(result.model.encoder)
    # keep: a victim reusing the published head starts from the trained head
    kept = build_classifier(as_backbone, 2, method_config("lora"), head="keep")
    torch.testing.assert_close(
        kept.base_model.model.classifier.original_module.weight, result.model.classifier.weight
    )


def test_config_validation():
    with pytest.raises(PeftshieldError, match="unknown method"):
        method_config("adapterx")
    with pytest.raises(PeftshieldError, match="unknown lora config key"):
        method_config("lora", {"rank": 4})
    with pytest.raises(PeftshieldError, match="lr must be positive"):
        method_config("prefix", {"lr": 0})
    with pytest.raises(PeftshieldError):
        method_config("prompt", {"num_virtual_tokens": 0})
    config = method_config("prefix", {"num_virtual_tokens": 4})
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        ([("a b", 0), ("c d", 0)], "single class"),
        ([("a b", 0), ("c d", -1)], "non-negative"),
        ([("a b", 0), ("   ", 1)], "empty text"),
    ],
)
def test_bad_training_data(examples, message, tiny_bert):
    from peftshield.data.records import Example

    with pytest.raises(PeftshieldError, match=message):
        tune(tiny_bert, [Example(t, lab) for t, lab in examples], [], method_config("lora"), progress=False)


def test_labels_out_of_range(tiny_bert):
    from peftshield.data.records import Example

    with pytest.raises(PeftshieldError, match="out of range"):
        tune(
            tiny_bert,
            [Example("a", 0), Example("b", 3)],
            [],
            method_config("lora"),
            num_labels=2,
            progress=False,
        )


def test_backbone_folder_checks(tmp_path):
    with pytest.raises(PeftshieldError, match="unknown backbone"):
        load_backbone("no-such-backbone")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PeftshieldError, match="no config.json"):
        load_backbone(str(empty))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(PeftshieldError, match="pickle"):
        load_backbone(str(pickled))


def test_failed_save_leaves_nothing(tiny_bert, tmp_path, monkeypatch):
    result = tune(tiny_bert, toy_examples(16), [], method_config("lora", {"epochs": 1}), progress=False)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("peftshield.tuning.trainer.write_json", boom)
    with pytest.raises(RuntimeError):
        save_tuned(result, tmp_path / "out")
    assert list(Path(tmp_path).iterdir()) == []
