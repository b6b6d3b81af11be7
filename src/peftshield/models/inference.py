"""Batched inference shared by evaluation, detectors and the guard.

Texts are sorted by length before batching so that padding (wasted compute) stays small, then
results are returned in the caller's order.
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
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return the logits (n, labels) and, if asked, the pooled vectors (n, hidden) for ``texts``."""
    if len(texts) == 0:
        raise PeftshieldError("no texts to predict")
    if any(not isinstance(t, str) for t in texts):
        raise PeftshieldError("every input must be a string")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = length_order(tokenizer, texts)
    logits_out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    pooled_out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenize_batch(tokenizer, [texts[i] for i in idx], max_length, device)
        out = model(**batch)
        logits = out["logits"].float().cpu().numpy()
        pooled = out["pooled"].float().cpu().numpy() if return_pooled else None
        for j, i in enumerate(idx):
            logits_out[i] = logits[j]
            if pooled is not None:
                pooled_out[i] = pooled[j]
    model.train(was_training)
    return np.stack(logits_out), (np.stack(pooled_out) if return_pooled else None)


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
