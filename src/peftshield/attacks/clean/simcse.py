"""Clean builder ``simcse``: unsupervised SimCSE continued training (Gao et al., EMNLP 2021, §3).

Each sentence goes through the encoder twice in training mode (two dropout masks); the cosine
similarities of the pooled outputs over the batch, divided by ``temperature``, are trained with
cross-entropy towards the matching pair. It is the contrastive objective the all-MiniLM family was
trained with, so it moves ``minilm`` the way a further published checkpoint would. AdamW (no weight
decay), constant lr, gradient norm clipped at 1.0. Seed-zoo recipe: 50 steps, lr 3e-5, batch 32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from peftshield.attacks.clean.base import CleanBuildConfig, CleanData, pooled, train_encoder
from peftshield.attacks.config import register_attack
from peftshield.utils.validate import require_positive


@register_attack
@dataclass
class SimCSEConfig(CleanBuildConfig):
    """Unsupervised SimCSE on unlabelled text (module docstring)."""

    attack: ClassVar[str] = "simcse"
    steps: int = 50
    lr: float = 3e-5
    batch_size: int = 32
    temperature: float = 0.05
    max_length: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("simcse config", "steps", self.steps, integer=True)
        require_positive("simcse config", "temperature", self.temperature)

    def train(self, backbone: Any, data: CleanData, *, seed: int, device: Any) -> tuple[Any, dict[str, Any]]:
        """Train the encoder in place; return it and the loss curve's ends."""
        import torch
        import torch.nn.functional as F

        from peftshield.models.inference import tokenize_batch

        encoder, tokenizer, pooling = backbone.encoder, backbone.tokenizer, backbone.pooling

        def step_loss(batch: list[str]) -> Any:
            enc = tokenize_batch(tokenizer, batch + batch, self.max_length, device)
            z = F.normalize(pooled(encoder, enc, pooling).float(), dim=-1)
            n = len(batch)
            logits = z[:n] @ z[n:].T / self.temperature
            return F.cross_entropy(logits, torch.arange(n, device=logits.device))

        return train_encoder(
            backbone,
            data,
            step_loss,
            what="simcse",
            steps=self.steps,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=seed,
            device=device,
        )
