"""Batched inference shared by evaluation, detectors and the guard.

Texts are sorted by length before batching so that padding (wasted compute) stays small, then
results are returned in the caller's order. The padding side is the tokenizer's own (victims with
a last-token head are given left padding when loaded, :mod:`peftshield.models.representation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from peftshield.errors import PeftshieldError


def tokenize_batch(tokenizer, texts: Sequence[str], max_length: int, device) -> dict[str, torch.Tensor]:
    """Tokenise, truncate to ``max_length`` and pad one batch, on ``device``."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def length_order(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """Indices that sort ``texts`` by token count (stable)."""
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return np.argsort(np.asarray(lengths), kind="stable")


@torch.no_grad()
def predict_outputs(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 128,
    max_length: int = 64,
    device=None,
    return_pooled: bool = False,
    equal_length: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the logits (n, labels) and, if asked, the pooled vectors (n, hidden) for ``texts``.

    The pooled vector is the one the classification head reads: the ``pooled`` output of
    peftshield's classifier, or for any other classifier the head's input captured during the same
    forward pass (:func:`peftshield.models.representation.capture_head_input`). ``equal_length``
    batches only texts of the same token count, so nothing is padded: a decoder with prepended
    virtual tokens would otherwise see pads between its prompt and the text.
    """
    from contextlib import nullcontext

    from peftshield.models.classifier import PooledClassifier
    from peftshield.models.representation import capture_head_input, unwrap

    if len(texts) == 0:
        raise PeftshieldError("no texts to predict")
    if any(not isinstance(t, str) for t in texts):
        raise PeftshieldError("every input must be a string")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits_out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    pooled_out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    # peftshield's classifier returns its pooled vector; any other head's input is captured (once
    # hooked for the whole call, so the hook costs nothing per batch).
    hook = return_pooled and not isinstance(unwrap(model), PooledClassifier)
    with capture_head_input(model) if hook else nullcontext() as captured:
        for idx in _batches(tokenizer, texts, batch_size, max_length, equal_length):
            batch = tokenize_batch(tokenizer, [texts[i] for i in idx], max_length, device)
            out = model(**batch)
            logits = out["logits"].float().cpu().numpy()
            pooled = None
            if return_pooled:
                vector = captured.vector(batch.get("attention_mask")) if hook else out["pooled"]
                pooled = vector.float().cpu().numpy()
            for j, i in enumerate(idx):
                logits_out[i] = logits[j]
                if pooled is not None:
                    pooled_out[i] = pooled[j]
    model.train(was_training)
    return np.stack(logits_out), (np.stack(pooled_out) if return_pooled else None)


def _batches(
    tokenizer, texts: Sequence[str], batch_size: int, max_length: int, equal_length: bool
) -> list[np.ndarray]:
    """Index batches in length order; with ``equal_length`` a batch never mixes token counts."""
    if not equal_length:
        order = length_order(tokenizer, texts)
        return [order[start : start + batch_size] for start in range(0, len(texts), batch_size)]
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = np.asarray([len(ids) for ids in encoded])
    order = np.argsort(lengths, kind="stable")
    out = []
    for length in np.unique(lengths):
        same = order[lengths[order] == length]
        out += [same[start : start + batch_size] for start in range(0, len(same), batch_size)]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a logits array."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def cache_argument(model: Any) -> str:
    """The name under which ``model``'s forward takes key/value prefixes: ``cache`` since
    transformers 5 renamed ``past_key_values`` (the old name warns on every call)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"
