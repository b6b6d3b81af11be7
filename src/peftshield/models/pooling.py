"""The output representation of a backbone: the one vector a classifier head reads.

docs/design.md: the vector the victim's head reads is the vector a task-agnostic attack must target and
the LMSanitator monitor must watch, so the representation (``cls`` | ``pooler`` | ``mean``) is a
property of the backbone, stored in its ``config.json`` as ``peftshield_pooling`` and used by
tuning, poisoning, PV mining and monitoring alike. ``last`` is the last non-padding token, the
vector a decoder's sequence-classification head reads. A scan that does not know the victim
mines every candidate vector of the architecture (:func:`candidate_poolings`).
"""

from __future__ import annotations

from typing import Any

import torch

POOLING_CHOICES = ("cls", "pooler", "mean", "last")
CONFIG_KEY = "peftshield_pooling"


def real_token_states(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None, n_prompt: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop prepended virtual-token states and align the attention mask with the real tokens.

    Prompt tuning and P-tuning v1 prepend ``n_prompt`` virtual tokens to the sequence, so the
    hidden states hold them first; prefix tuning (P-tuning v2) adds key/value prefixes only, so
    the hidden states hold real tokens while peft's attention mask is longer by the prefix.
    Taking the last positions of both covers every case.
    """
    hidden = hidden[:, n_prompt:]
    length = hidden.shape[1]
    if attention_mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
    else:
        mask = attention_mask[:, -length:].to(hidden.dtype)
    return hidden, mask


def pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    mode: str,
    pooler: torch.nn.Module | None = None,
    n_prompt: int = 0,
) -> torch.Tensor:
    """Reduce last-layer hidden states (batch, length, hidden) to one vector per text.

    ``cls`` is the state at the [CLS] position (LMSanitator's monitored vector), ``pooler`` is
    BERT's dense+tanh pooler applied to it (what ``BertForSequenceClassification`` reads),
    ``mean`` averages the real tokens (how all-MiniLM-L6-v2 was trained) and ``last`` is the state
    of the last real token (the last 1 of the attention mask, so left and right padding both work:
    what ``LlamaForSequenceClassification`` reads).
    """
    hidden, mask = real_token_states(hidden, attention_mask, n_prompt)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "pooler":
        if pooler is None:
            raise ValueError("pooling 'pooler' needs the backbone's pooler layer")
        return pooler(hidden)
    if mode == "mean":
        weights = mask.unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if mode == "last":
        positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device)
        last = (mask.gt(0).long() * positions).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}; choose one of {POOLING_CHOICES}")


def is_decoder(config: Any) -> bool:
    """Whether a transformers config describes a causal (left-to-right) decoder.

    A model type with a masked-LM class in transformers (BERT, RoBERTa, MPNet, DeBERTa, ELECTRA …)
    is a bidirectional encoder; one with only a causal-LM class (Llama, GPT-2, Mistral …) is a
    decoder, as is any config that sets ``is_decoder``.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_decoder", False):
        return True
    model_type = getattr(config, "model_type", None)
    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return not encoder and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def candidate_poolings(model_or_config: Any, has_pooler: bool | None = None) -> tuple[str, ...]:
    """Every output vector a classifier head of this architecture may read, registered one first.

    docs/design.md, "The artifacts users bring": a victim's head may read [CLS], the mean of the
    tokens, BERT's pooler or (decoders) the last real token, whatever the backbone was trained
    for, so a scan that does not know the victim watches them all (issue 11). Encoders give
    ``cls``, ``mean`` and ``pooler`` where the model has a pooler layer; decoders ``last`` and
    ``mean`` (their first token sees only itself, so its state does not depend on the text).
    The backbone's registered pooling (``peftshield_pooling`` in its config) comes first, so a
    budget-bound scan looks there first. ``model_or_config`` is a model (its ``pooler`` attribute
    decides ``has_pooler``) or a config (then pass ``has_pooler``; default: no pooler).
    """
    config = getattr(model_or_config, "config", model_or_config)
    if has_pooler is None:
        has_pooler = getattr(model_or_config, "pooler", None) is not None
    if is_decoder(config):
        found: tuple[str, ...] = ("last", "mean")
    else:
        found = ("cls", "mean", "pooler") if has_pooler else ("cls", "mean")
    registered = getattr(config, CONFIG_KEY, None)
    if registered in found:
        found = (registered, *(p for p in found if p != registered))
    return found
