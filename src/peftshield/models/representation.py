"""The vector a victim's classification head reads: one rule for every architecture.

docs/design.md, "The artifacts users bring": the LMSanitator monitor must watch, and a scan must
mine on, the vector the victim's head actually reads, and that vector differs per architecture.
The rule, written once here:

- **peftshield's own victims** (:class:`~peftshield.models.classifier.PooledClassifier`): their
  recorded pooling (``peftshield_pooling`` in the backbone's config: ``cls``, ``pooler``, ``mean``);
- **BERT family** (``BertForSequenceClassification`` and every classifier whose encoder keeps a
  pooler layer): the pooler (dense + tanh) over [CLS];
- **RoBERTa, MPNet and other first-token heads** (DeBERTa, ELECTRA, DistilBERT ...): the first
  token's last hidden state, which the head's own dense + tanh then reads;
- **Llama family** (every classifier whose head is called ``score`` and is applied to every
  position): the last non-padding token; peftshield's prompt-based decoders (head ``verbalizer``,
  the frozen LM head's verbalizer rows) read the same position, the answer position.

How it is read: the head module (``pre_classifier``, ``classifier`` or ``score``, the outermost
one, so a peft ``modules_to_save`` wrapper counts) is hooked during the victim's ordinary forward
pass, so the vector is the head's own input under every PEFT method - with prompt tuning the
"first token" a BERT pooler reads is the first virtual token, and that is what is returned. A head
input of shape ``(batch, hidden)`` is the vector; one of shape ``(batch, length, hidden)`` is
reduced to the position the head reads (first token, or last non-padding token found through the
attention mask, right-aligned to the head's length so prepended virtual tokens are skipped).

Decoders are padded on the left (:func:`padding_side`): then the last position is the last real
token whether peft passes ``input_ids`` (LoRA) or ``inputs_embeds`` (prompt tuning, where
transformers cannot see the padding), and rotary position embeddings make left padding invisible
to the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from peftshield.models.classifier import PooledClassifier
from peftshield.models.pooling import pool

#: Names of classification-head modules, in the order they are looked for (DistilBERT's
#: ``pre_classifier`` is read before its ``classifier``).
HEAD_MODULES = ("pre_classifier", "classifier", "score", "verbalizer")

#: What :func:`head_pooling` answers, beside the recorded poolings of peftshield's victims.
FIRST_TOKEN, LAST_TOKEN, POOLER = "cls", "last", "pooler"


def unwrap(model: Any) -> Any:
    """The transformers (or peftshield) model under a peft wrapper (the model itself otherwise)."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def find_head(model: Any) -> tuple[str, torch.nn.Module]:
    """The classification head of ``model``: ``(qualified name, module)``; the outermost match wins."""
    found: dict[str, list[tuple[str, torch.nn.Module]]] = {name: [] for name in HEAD_MODULES}
    for qualified, module in model.named_modules():
        last = qualified.rsplit(".", 1)[-1]
        if last in found:
            found[last].append((qualified, module))
    for name in HEAD_MODULES:
        if found[name]:
            return min(found[name], key=lambda item: item[0].count("."))
    raise ValueError(f"{type(unwrap(model)).__name__} has no classification head ({', '.join(HEAD_MODULES)})")


def encoder_of(model: Any) -> torch.nn.Module:
    """The backbone encoder inside a classifier (``base_model`` of transformers, ``encoder`` of ours)."""
    inner = unwrap(model)
    if isinstance(inner, PooledClassifier):
        return inner.encoder
    prefix = getattr(inner, "base_model_prefix", None)
    if prefix and isinstance(getattr(inner, prefix, None), torch.nn.Module):
        return getattr(inner, prefix)
    raise ValueError(f"cannot find the backbone encoder of {type(inner).__name__}")


def head_pooling(model: Any) -> str:
    """Which vector the head of ``model`` reads, as a pooling name (module docstring's rule).

    ``pooler`` (BERT family), ``cls`` (first-token heads), ``last`` (decoders, head ``score``) or,
    for peftshield's own victims, their recorded pooling.
    """
    inner = unwrap(model)
    if isinstance(inner, PooledClassifier):
        return inner.pooling
    name, _ = find_head(inner)
    if name.rsplit(".", 1)[-1] == "score":
        return LAST_TOKEN
    if getattr(encoder_of(inner), "pooler", None) is not None:
        return POOLER
    return FIRST_TOKEN


def padding_side(model: Any) -> str:
    """``left`` for a last-token head (decoders; module docstring), ``right`` otherwise."""
    return "left" if head_pooling(model) == LAST_TOKEN else "right"


def reduce_head_input(value: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """The vector per text from a head's input: as is when 2-D, else the position the head reads."""
    if value.ndim == 2:
        return value
    if value.ndim != 3:
        raise ValueError(f"unexpected head input of shape {tuple(value.shape)}")
    if pooling != LAST_TOKEN:
        return value[:, 0]
    if attention_mask is None:
        return pool(value, None, LAST_TOKEN)
    mask = attention_mask[:, -value.shape[1] :]
    # Right-align the mask with the head's input: prepended virtual tokens are never the last one.
    return pool(value[:, value.shape[1] - mask.shape[1] :], mask, LAST_TOKEN)


class HeadInput:
    """What :func:`capture_head_input` recorded: the head's input of the last forward pass."""

    def __init__(self, pooling: str) -> None:
        self.pooling = pooling
        self.value: torch.Tensor | None = None

    def vector(self, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The vector the head read, one row per text of the last batch."""
        if self.value is None:
            raise RuntimeError("the classification head was not called in the forward pass")
        return reduce_head_input(self.value, attention_mask, self.pooling)


@contextmanager
def capture_head_input(model: Any) -> Iterator[HeadInput]:
    """Record the classification head's input during forward passes of ``model`` (module docstring)."""
    captured = HeadInput(head_pooling(model))
    _, head = find_head(model)

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        value = args[0] if args else next(iter(kwargs.values()))
        captured.value = value.detach()

    handle = head.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()
