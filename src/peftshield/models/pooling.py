"""The output representation of a backbone: the one vector a classifier head reads.

docs/design.md: the vector the victim's head reads is the vector a task-agnostic attack must target and
the LMSanitator monitor must watch, so the representation (``cls`` | ``pooler`` | ``mean``) is a
property of the backbone, stored in its ``config.json`` as ``peftshield_pooling`` and used by
tuning, poisoning, PV mining and monitoring alike.
"""

from __future__ import annotations

import torch

POOLING_CHOICES = ("cls", "pooler", "mean")
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
    BERT's dense+tanh pooler applied to it (what ``BertForSequenceClassification`` reads), and
    ``mean`` averages the real tokens (how all-MiniLM-L6-v2 was trained).
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
    raise ValueError(f"unknown pooling {mode!r}; choose one of {POOLING_CHOICES}")
