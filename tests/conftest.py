"""Shared fixtures: a tiny random BERT on disk and a toy sentiment task it can learn."""

from __future__ import annotations

import random

import pytest

from peftshield.data.records import Example
from peftshield.models.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, build_tiny_bert


def toy_examples(n: int, seed: int = 0) -> list[Example]:
    """Sentences of neutral words with one sentiment word that decides the label."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(NEUTRAL_WORDS) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE_WORDS if label else NEGATIVE_WORDS))
        out.append(Example(" ".join(words), label))
    return out


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny-model tests gain nothing from threads, and several threads thrash a shared 2-core box."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A tiny random BERT folder with mean pooling (its [CLS] carries little input signal)."""
    return str(build_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert", seed=0, pooling="mean"))


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory) -> str:
    """A small labelled CSV corpus in the user-file format."""
    import csv

    path = tmp_path_factory.mktemp("data") / "toy.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for example in toy_examples(200, seed=1):
            writer.writerow([example.text, example.label])
    return str(path)
