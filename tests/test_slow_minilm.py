"""Real-model tests: minilm on movies (fetched by `make test-slow`, which runs `peftshield data fetch`)."""

import pytest

pytestmark = pytest.mark.slow


def test_lora_on_500_movies_examples_beats_chance_clearly():
    from peftshield.data.corpora import load_splits
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import accuracy_on, tune

    splits = load_splits({"corpus": "movies", "split_seed": 0, "max_train": 500, "max_eval": 500})
    result = tune("minilm", splits.train, splits.dev, method_config("lora"), seed=0, progress=False)
    cacc = accuracy_on(result.model, result.tokenizer, splits.test, max_length=64)
    # chance is ~0.50 (movies is balanced); 500 examples with LoRA reach well above it
    assert cacc > 0.70, cacc
