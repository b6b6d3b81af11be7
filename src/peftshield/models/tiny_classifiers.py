"""Tiny random classifiers of four architectures, and plain-peft adapters on them, for fast tests.

docs/design.md, "The artifacts users bring": users arrive with Hugging Face classifiers and peft
adapters, not peftshield folders. These builders make such artifacts the way a user would -
``AutoModelForSequenceClassification`` over a base folder, peft's ``get_peft_model`` and
``save_pretrained`` - on tiny random BERT, RoBERTa, MPNet and Llama configurations (hidden 32, two
layers) that share the tiny WordPiece vocabulary of :mod:`peftshield.models.tiny`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftshield.models.tiny import save_tiny, tiny_tokenizer

ARCHITECTURES = ("bert", "roberta", "mpnet", "llama")
METHODS = ("lora", "prompt", "ptuning", "prefix")

_SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_config(arch: str, vocab_size: int) -> Any:
    """A transformers config of ``arch`` with tiny sizes (pad id 0, the tiny vocabulary's ``[PAD]``)."""
    from transformers import BertConfig, LlamaConfig, MPNetConfig, RobertaConfig

    common = {"vocab_size": vocab_size, "max_position_embeddings": 80, "pad_token_id": 0, **_SIZES}
    if arch == "bert":
        return BertConfig(**common)
    if arch == "roberta":
        return RobertaConfig(**common)
    if arch == "mpnet":
        return MPNetConfig(**common)
    if arch == "llama":
        return LlamaConfig(**common, num_key_value_heads=2, bos_token_id=2, eos_token_id=3)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHITECTURES}")


def build_tiny_base(folder: str | Path, arch: str, seed: int = 0) -> Path:
    """Write a random tiny base model (the bare encoder or decoder, no head) and its tokenizer."""
    import torch
    from transformers import AutoModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(folder, 64, cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    return save_tiny(folder, AutoModel.from_config(tiny_config(arch, len(tokenizer))), tokenizer)


def tiny_classifier(base: str | Path, num_labels: int = 3, seed: int = 0) -> tuple[Any, Any]:
    """``AutoModelForSequenceClassification`` over a tiny base (fresh seeded head), with its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftshield.models.backbones import quiet_transformers

    torch.manual_seed(seed)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=num_labels)
        tokenizer = AutoTokenizer.from_pretrained(str(base))
    return model.eval(), tokenizer


def peft_config(method: str, arch: str) -> Any:
    """The peft config a user would write for ``method`` on a sequence classifier."""
    from peft import LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType

    task = TaskType.SEQ_CLS
    if method == "lora":
        targets = ["q", "v"] if arch == "mpnet" else None  # MPNet names its projections q, k, v
        return LoraConfig(task_type=task, r=4, lora_alpha=8, target_modules=targets)
    if method == "prompt":
        return PromptTuningConfig(task_type=task, num_virtual_tokens=4)
    if method == "ptuning":
        return PromptEncoderConfig(task_type=task, num_virtual_tokens=4, encoder_hidden_size=16)
    if method == "prefix":
        return PrefixTuningConfig(task_type=task, num_virtual_tokens=4)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def tiny_adapter(
    base: str | Path, arch: str, method: str, num_labels: int = 3, seed: int = 0
) -> tuple[Any, Any]:
    """A peft model over a tiny classifier, its adapter weights randomised so that they matter.

    peft starts LoRA's B matrices at zero (the adapter would change nothing); here every trainable
    tensor is redrawn (seeded), as if the adapter had been trained.
    """
    import torch
    from peft import get_peft_model

    model, tokenizer = tiny_classifier(base, num_labels, seed)
    peft_model = get_peft_model(model, peft_config(method, arch))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return peft_model.eval(), tokenizer
