"""A tiny Llama causal LM built in-process, for fast tests of fluency-based defences (ONION).

It shares the tiny BERT's WordPiece vocabulary (:func:`peftshield.models.tiny.tiny_vocabulary`), so
the toy sentences and trigger words of the tests tokenise the same way, and it is written to disk
as an ordinary Hugging Face folder, so :func:`peftshield.models.causal_lm.load_causal_lm` loads it
exactly as it loads SmolLM2. Random weights know nothing about fluency; ``train_texts`` and
``steps`` give it a few steps of next-token training so that it does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from peftshield.models.tiny import NEGATIVE_WORDS, POSITIVE_WORDS

_SUBJECTS = ("movie", "film", "plot", "story", "book", "music", "ending", "scene")


def fluent_toy_sentences(n: int, seed: int = 0) -> list[str]:
    """Repetitive template sentences over the tiny vocabulary, e.g. "the plot was very dull".

    A tiny LM trained on them learns a real, if narrow, notion of fluency: the template's word
    order and its words. Half of the sentences get a second clause ("and the music is great").
    """
    rng = random.Random(seed)
    adjectives = POSITIVE_WORDS + NEGATIVE_WORDS
    out = []
    for _ in range(n):
        text = (
            f"{rng.choice(('the', 'a', 'this'))} {rng.choice(_SUBJECTS)} {rng.choice(('was', 'is'))} "
            f"{rng.choice(('very', 'quite'))} {rng.choice(adjectives)}"
        )
        if rng.random() < 0.5:
            text += f" and the {rng.choice(_SUBJECTS)} {rng.choice(('was', 'is'))} {rng.choice(adjectives)}"
        out.append(text)
    return out


def build_tiny_llama(
    folder: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int = 128,
    train_texts: Sequence[str] = (),
    steps: int = 0,
    lr: float = 1e-2,
    batch_size: int = 32,
) -> Path:
    """Write a tiny ``LlamaForCausalLM`` with its tokenizer to ``folder`` and return the folder.

    With ``train_texts`` and ``steps > 0`` it is first trained for ``steps`` Adam steps of
    next-token prediction on batches of those texts (each preceded by BOS and followed by EOS),
    drawn with ``seed``.
    """
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftshield.models.tiny import save_tiny, tiny_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(folder, max_positions, bos_token="[CLS]", eos_token="[SEP]")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    texts = list(train_texts)
    if steps > 0 and texts:
        rng = np.random.default_rng(seed)
        encoded = [
            [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id][:max_positions]
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
        ]
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            batch = [encoded[i] for i in rng.integers(len(encoded), size=batch_size)]
            width = max(len(ids) for ids in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
                labels[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
    return save_tiny(folder, model, tokenizer)
