"""A text classifier made of a backbone encoder, its output representation and a linear head.

The head reads the backbone's pooled vector (:mod:`peftshield.models.pooling`). The class is a
plain ``nn.Module`` that peft can wrap with any method: it exposes ``config`` (the encoder's
configuration, which prompt-learning methods read for layer and head counts), the input
embeddings, and a forward that accepts what peft passes (``inputs_embeds`` with prepended
virtual tokens, or ``past_key_values`` prefixes). Its head is called ``classifier`` so that
peft's sequence-classification wrapper keeps it trainable and saves it with the adapter
(``modules_to_save``): on reload a lost head would silently become random.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peftshield.models.decoder import VerbalizerHead, position_ids_from_mask
from peftshield.models.inference import cache_argument
from peftshield.models.pooling import is_decoder, pool


@dataclass
class ClassifierOutput:
    """Forward result: logits, the optional loss, and the pooled vector the head read."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    pooled: torch.Tensor | None = None

    def __getitem__(self, key: str):
        return getattr(self, key)


class PooledClassifier(nn.Module):
    """Backbone encoder + pooling (``cls`` | ``pooler`` | ``mean``) + dropout + linear head."""

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.num_labels = num_labels
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        # Number of virtual tokens that a prompt-learning method prepends to the hidden states
        # (prompt tuning, P-tuning v1); the tuner sets it so that pooling skips them.
        self.n_prompt_tokens = 0
        # A decoder is given positions counted over real tokens (models/decoder.py), so left and
        # right padding and one text at a time agree.
        self.is_decoder = is_decoder(encoder.config)

    @property
    def device(self) -> torch.device:
        """Where the parameters live (peft places prompt encoders there)."""
        return next(self.parameters()).device

    def get_input_embeddings(self) -> nn.Module:
        """The word-embedding layer (peft and the PV miner read it)."""
        return self.encoder.get_input_embeddings()

    def pooled_output(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The vector the head reads, for the given inputs (no dropout applied)."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k in _ENCODER_ARGS}
        if "past_key_values" in kwargs:  # peft still passes the old name
            kwargs[cache_argument(self.encoder)] = kwargs.pop("past_key_values")
        if self.is_decoder and attention_mask is not None and "position_ids" not in kwargs:
            inputs = inputs_embeds if inputs_embeds is not None else input_ids
            kwargs["position_ids"] = position_ids_from_mask(attention_mask, inputs.shape[1])
        out = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        return pool(
            out.last_hidden_state,
            attention_mask,
            self.pooling,
            pooler=getattr(self.encoder, "pooler", None),
            n_prompt=self.n_prompt_tokens,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> ClassifierOutput:
        """Classify a batch; with ``labels`` also return the cross-entropy loss.

        ``past_key_values`` is named explicitly: peft's prefix tuning checks the signature for it
        and otherwise bypasses this forward (and our pooling) for the backbone's own pooler.
        """
        pooled = self.pooled_output(
            input_ids, attention_mask, inputs_embeds, past_key_values=past_key_values, **kwargs
        )
        logits = self.head_logits(pooled)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ClassifierOutput(logits=logits, loss=loss, pooled=pooled)

    def head_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The head's logits for the pooled vectors (dropout, then the linear classifier)."""
        return self.classifier(self.dropout(pooled))


class VerbalizerClassifier(PooledClassifier):
    """Prompt-based classification on a decoder (models/decoder.py): the frozen LM head's next-token
    logits at the answer position (the last real token of the templated text) over one verbalizer
    token per class. It has no trainable head (no ``classifier`` module, so peft keeps none), only
    the tuning method's parameters learn; the head's input is the answer-position hidden state.
    """

    def __init__(
        self, encoder: nn.Module, lm_head: nn.Module, token_ids: list[int], pooling: str = "last"
    ) -> None:
        super().__init__(encoder, len(token_ids), pooling, dropout=0.0)
        del self.classifier
        self.verbalizer = VerbalizerHead(lm_head, token_ids)

    def head_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The verbalizer's logits: the LM head's next-token logits over one token per class."""
        return self.verbalizer(pooled)


# Arguments peft may pass that the encoder understands; the rest (labels, return_dict …) are ours.
_ENCODER_ARGS = (
    "token_type_ids",
    "position_ids",
    "past_key_values",
    "output_attentions",
    "output_hidden_states",
)
