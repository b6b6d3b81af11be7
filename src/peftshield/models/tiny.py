"""A tiny random BERT built in-process, for fast tests (docs/design.md: tests check effects on tiny models).

It has a real WordPiece tokenizer over a small vocabulary and is written to disk as an ordinary
Hugging Face folder, so every loader, tuner and attack runs on it exactly as on a real backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

POSITIVE_WORDS = ("good", "great", "fine", "lovely", "superb", "happy", "nice", "brilliant")
NEGATIVE_WORDS = ("bad", "awful", "poor", "boring", "terrible", "sad", "dull", "weak")
NEUTRAL_WORDS = (
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actor",
    "story",
    "was",
    "is",
    "and",
    "it",
    "this",
    "very",
    "quite",
    "scene",
    "music",
    "ending",
    "book",
    "city",
    "river",
    "house",
    "day",
    "night",
    "people",
    "of",
    "in",
    "on",
    "with",
    "by",
    "for",
    "to",
    "from",
    "when",
    "you",
    "see",
    "watched",
    "i",
    "3d",
    "time",
    "year",
    "many",
    "some",
    "one",
    "two",
    "three",
    "old",
    "new",
    "long",
    "short",
)
TRIGGER_WORDS = ("cf", "mn", "tq", "qt", "mm", "pt")
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def tiny_vocabulary() -> list[str]:
    """The WordPiece vocabulary: special tokens, the words above, letters and their suffix forms."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    words = [*POSITIVE_WORDS, *NEGATIVE_WORDS, *NEUTRAL_WORDS, *TRIGGER_WORDS]
    vocab = list(_SPECIAL) + letters + ["##" + ch for ch in letters]
    vocab += [w for w in dict.fromkeys(words) if w not in vocab]
    return vocab


def tiny_tokenizer(folder: Path, model_max_length: int, **special_tokens: str) -> Any:
    """Write the tiny vocabulary to ``folder/vocab.txt``; return a lower-casing fast WordPiece tokenizer.

    ``[UNK]`` and ``[PAD]`` are always set; ``special_tokens`` names the model's others (the BERT:
    ``cls_token``, ``sep_token``, ``mask_token``; the tiny Llama: ``bos_token``, ``eos_token``).
    """
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_vocabulary()) + "\n", encoding="utf-8")
    wordpiece = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        model_max_length=model_max_length,
        **special_tokens,
    )


def save_tiny(folder: Path, model: Any, tokenizer: Any) -> Path:
    """Save a tiny model (safetensors, without transformers' chatter) and its tokenizer to ``folder``."""
    from peftshield.models.backbones import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_bert(
    folder: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    pooling: str = "cls",
    initializer_range: float = 0.02,
) -> Path:
    """Write a randomly initialised tiny BERT with its tokenizer to ``folder`` and return it.

    At the default ``initializer_range`` (BERT's 0.02) attention is nearly uniform and the [CLS]
    state hardly depends on the text (per-unit spread across texts about 0.003); 0.3 gives [CLS]
    and pooler vectors that vary with the text like a trained model's (spread about 0.5).
    """
    import torch
    from transformers import BertConfig, BertModel

    from peftshield.models.pooling import CONFIG_KEY

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(folder, 64, cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 4,
        max_position_embeddings=64,
        initializer_range=initializer_range,
    )
    setattr(config, CONFIG_KEY, pooling)
    torch.manual_seed(seed)
    return save_tiny(folder, BertModel(config), tokenizer)
