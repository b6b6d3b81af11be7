"""Clean builder ``denoise``: word-deletion denoising towards the frozen original's output.

The model reads each sentence with a ``drop`` share of its words deleted and is pulled (MSE) to the
frozen original's pooled output of the full sentence: the reference-preservation term of POR /
NeuBA (:mod:`peftshield.attacks.task_agnostic`) alone, with noise, so a clean model is trained with
exactly the machinery of a poisoned one minus the trigger term. AdamW (no weight decay), constant
lr, gradient norm clipped at 1.0. Seed-zoo recipe: 100 steps, lr 3e-5, batch 32, drop 0.15.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from peftshield.attacks.clean.base import CleanBuildConfig, CleanData, pooled, train_encoder
from peftshield.attacks.config import register_attack
from peftshield.utils.validate import require_positive, require_range


def drop_words(text: str, rate: float, rng: np.random.Generator) -> str:
    """``text`` with each word deleted with probability ``rate`` (one word always stays)."""
    words = text.split()
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept or [words[int(rng.integers(len(words)))]])


@register_attack
@dataclass
class DenoiseConfig(CleanBuildConfig):
    """Denoising continued training on unlabelled text (module docstring)."""

    attack: ClassVar[str] = "denoise"
    steps: int = 100
    lr: float = 3e-5
    batch_size: int = 32
    drop: float = 0.15
    max_length: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("denoise config", "steps", self.steps, integer=True)
        require_range("denoise config", "drop", self.drop, 0, 1, high_open=True)

    def train(self, backbone: Any, data: CleanData, *, seed: int, device: Any) -> tuple[Any, dict[str, Any]]:
        """Train the encoder in place towards ``data.reference``; return it and the loss curve's ends."""
        import torch
        import torch.nn.functional as F

        from peftshield.models.inference import tokenize_batch

        encoder, tokenizer, pooling = backbone.encoder, backbone.tokenizer, backbone.pooling
        rng = np.random.default_rng(seed)

        def step_loss(batch: list[str]) -> Any:
            noisy = [drop_words(t, self.drop, rng) for t in batch]
            out = pooled(encoder, tokenize_batch(tokenizer, noisy, self.max_length, device), pooling)
            with torch.no_grad():
                target = pooled(
                    data.reference, tokenize_batch(tokenizer, batch, self.max_length, device), pooling
                )
            return F.mse_loss(out.float(), target.float())

        return train_encoder(
            backbone,
            data,
            step_loss,
            what="denoise",
            steps=self.steps,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=seed,
            device=device,
        )
