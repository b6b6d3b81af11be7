"""Clean builder ``finetune``: full fine-tuning on a labelled corpus, then the head stripped.

The backbone and a fresh head are fully fine-tuned (:func:`peftshield.tuning.trainer.tune`, method
``full``, best-dev checkpoint) on ``n_train`` examples of the corpus (split seed = the build seed,
so the seed also picks the examples), then only the encoder is published: the most common way a
task checkpoint becomes a "pretrained" backbone on a hub. Seed-zoo recipe: 400 examples, 1 epoch,
lr 5e-5, head lr 1e-3 (and 1,000 examples for 2 epochs for the longer variant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from peftshield.attacks.clean.base import CleanBuildConfig, CleanData
from peftshield.attacks.config import register_attack
from peftshield.utils.validate import require_positive


@register_attack
@dataclass
class FinetuneConfig(CleanBuildConfig):
    """Fine-tune-then-strip on a labelled corpus (module docstring)."""

    attack: ClassVar[str] = "finetune"
    default_corpus: ClassVar[str] = "movies"
    labelled: ClassVar[bool] = True
    n_train: int = 400
    n_eval: int = 100
    epochs: int = 1
    lr: float = 5e-5
    head_lr: float = 1e-3
    batch_size: int = 32
    max_length: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_train", "n_eval", "epochs"):
            require_positive("finetune config", name, getattr(self, name), integer=True)
        require_positive("finetune config", "head_lr", self.head_lr)

    def train(self, backbone: Any, data: CleanData, *, seed: int, device: Any) -> tuple[Any, dict[str, Any]]:
        """Fine-tune backbone + head; return the bare encoder and the best dev accuracy."""
        from peftshield.data.corpora import load_splits
        from peftshield.tuning.config import method_config
        from peftshield.tuning.trainer import tune

        splits = load_splits(
            {
                "corpus": data.corpus,
                "text_column": data.text_column,
                "label_column": data.label_column,
                "split_seed": seed,
                "max_train": self.n_train,
                "max_eval": self.n_eval,
            }
        )
        config = method_config(
            "full",
            {
                "epochs": self.epochs,
                "lr": self.lr,
                "head_lr": self.head_lr,
                "batch_size": self.batch_size,
                "max_length": self.max_length,
            },
        )
        result = tune(backbone, splits.train, splits.dev, config, seed=seed, device=device, progress=False)
        metrics = {"dev_accuracy": result.best_dev_accuracy, "n_train": len(splits.train)}
        return result.model.encoder, metrics
