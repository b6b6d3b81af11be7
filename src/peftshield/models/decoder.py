"""Decoder backbones (Llama family, e.g. ``smollm2``) as classifiers: LM head, templates, verbalizers.

docs/design.md, "Decoder backbones". A decoder classifies in one of two ways, both reading the
hidden state at the *answer position*, the last real token of the (templated) text:

- **sequence classification**: a linear head on the last non-padding token, the convention of
  ``LlamaForSequenceClassification`` (:class:`~peftshield.models.classifier.PooledClassifier` with
  pooling ``last``);
- **prompt-based classification** (PET-style cloze, the decoder analogue of [MASK] classification
  that LMSanitator's P-tuning victims use): the text is put into a template such as
  ``"Review: {text}\\nSentiment:"`` and the class is the argmax of the frozen LM head's next-token
  logits over the verbalizer tokens (one per class, e.g. ``" negative"``, ``" positive"``):
  :class:`VerbalizerClassifier`. Only the tuning method's parameters learn.

Positions: peftshield's decoder classifiers compute ``position_ids`` from the attention mask
(:func:`position_ids_from_mask`), so a left-padded batch, a right-padded batch and one text at a
time give the same logits, also with prepended virtual tokens or key/value prefixes.

Saving: a decoder backbone is written as an ordinary causal-LM folder (``model.`` weights plus
``lm_head.weight``, :func:`save_decoder`), so the LM head travels with poisoned or fully tuned
weights and every loader (``AutoModel`` for the encoder, ``AutoModelForCausalLM`` for ONION)
reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftshield.errors import PeftshieldError

LM_HEAD_KEY = "lm_head.weight"


def position_ids_from_mask(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Positions counting real tokens only (pads keep their neighbour's), for the last ``length`` columns.

    ``attention_mask`` may be longer than the inputs (peft prepends ones for virtual tokens or
    prefixes); the positions of the inputs are then those after the prefix, as a key/value cache
    of that length would give them.
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp_min(0)[:, -length:]


def load_lm_head(location: str, encoder: nn.Module) -> nn.Linear | None:
    """The frozen LM head of a decoder folder: ``lm_head.weight``, or the input embeddings when tied.

    ``None`` when the folder has neither (a bare decoder saved without its LM head).
    """
    from safetensors import safe_open

    folder = Path(location)
    weight = None
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            if LM_HEAD_KEY in handle.keys():
                weight = handle.get_tensor(LM_HEAD_KEY)
                break
    embeddings = encoder.get_input_embeddings().weight
    if weight is None:
        if not getattr(encoder.config, "tie_word_embeddings", False):
            return None
        weight = embeddings.detach().clone()
    if tuple(weight.shape) != tuple(embeddings.shape):
        raise PeftshieldError(
            f"the LM head in {location} has shape {tuple(weight.shape)}, the vocabulary needs "
            f"{tuple(embeddings.shape)}"
        )
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
    head.requires_grad_(False)
    return head


def save_decoder(folder: Path, encoder: nn.Module, lm_head: nn.Module | None) -> None:
    """Write a decoder backbone as a causal-LM folder (config + ``model.safetensors``) into ``folder``.

    With ``lm_head`` the weights are the encoder's under ``model.`` plus ``lm_head.weight`` and the
    config names the causal-LM class; the head is written out (never tied), since full fine-tuning
    may have changed the embeddings while the LM head stayed frozen. Without one, the encoder is
    saved as it is.
    """
    from safetensors.torch import save_file

    from peftshield.models.backbones import quiet_transformers

    if lm_head is None:
        with quiet_transformers():
            encoder.save_pretrained(folder, safe_serialization=True)
        return
    config = encoder.config
    prefix = getattr(encoder, "base_model_prefix", "model") or "model"
    state = {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    state[LM_HEAD_KEY] = lm_head.weight.detach().cpu().contiguous()
    kind = getattr(config, "model_type", "llama")
    previous = (config.architectures, config.tie_word_embeddings)
    config.architectures = [_causal_lm_class(kind)]
    config.tie_word_embeddings = False
    try:
        config.save_pretrained(folder)
    finally:
        config.architectures, config.tie_word_embeddings = previous
    save_file(state, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})


def _causal_lm_class(model_type: str) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if name is None:
        raise PeftshieldError(f"model type {model_type!r} has no causal-LM class")
    return name


class VerbalizerHead(nn.Module):
    """The LM head restricted to the verbalizer tokens: logits ``h @ W[ids].T`` (frozen).

    The rows are a non-persistent buffer: never trained, never saved with an adapter, rebuilt from
    the backbone's LM head on every load (the argmax over them is the argmax of the full LM head's
    next-token logits over the verbalizer tokens).
    """

    def __init__(self, lm_head: nn.Module, token_ids: Sequence[int]) -> None:
        super().__init__()
        rows = lm_head.weight.detach()[torch.as_tensor(list(token_ids), dtype=torch.long)].clone()
        self.register_buffer("rows", rows, persistent=False)
        self.token_ids = list(token_ids)
        bias = getattr(lm_head, "bias", None)
        if bias is not None:
            self.register_buffer("bias", bias.detach()[list(token_ids)].clone(), persistent=False)
        else:
            self.bias = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Verbalizer logits ``(batch, classes)`` of answer-position states ``(batch, hidden)``."""
        logits = hidden @ self.rows.to(hidden.dtype).T
        return logits if self.bias is None else logits + self.bias


def ensure_pad_token(tokenizer: Any, config: Any) -> None:
    """A decoder without a pad token pads with its end-of-sequence token (the config learns its id)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PeftshieldError("a decoder backbone needs a pad or end-of-sequence token to batch")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
