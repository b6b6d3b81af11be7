"""The shared part of the clean builders (:mod:`peftshield.attacks.clean`): config base and the build.

:func:`build_clean` loads the backbone, holds ``n_drift`` texts of ``drift_corpus`` out of every
training (the first ``n_drift`` sentences of at least five words after a fixed shuffle, seed
12345), runs the builder's :meth:`CleanBuildConfig.train`, measures the output drift from the
original on the held-out texts (the attacks' ``clean_drift``, :func:`~peftshield.attacks.task_agnostic.probe`:
0 = unchanged, 1 = as far as one text is from another) and returns a :class:`CleanBuild` whose
``save`` writes a bare backbone folder (safetensors, tokenizer, pooling in ``config.json``) and a
``poison.json`` of kind ``clean``. The recipes are those of the LMSanitator benchmark's seed zoo
(bench/README.md "LMSanitator"); defaults were set there on ``minilm``, never on a test split.
"""

from __future__ import annotations

import copy
import math
import os
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from peftshield.attacks.config import AttackConfig
from peftshield.errors import PeftshieldError
from peftshield.utils.validate import require_positive

#: The shuffle that picks the held-out drift texts (the seed zoo's, so drift is comparable).
DRIFT_SEED = 12345
MIN_WORDS = 5


@dataclass
class CleanBuildConfig(AttackConfig):
    """Settings shared by the clean builders: the drift measurement (held-out texts of ``drift_corpus``)."""

    kind: ClassVar[str] = "clean"
    default_corpus: ClassVar[str] = "wiki"
    #: whether the builder trains on a labelled corpus (the grid then checks the corpus has labels)
    labelled: ClassVar[bool] = False
    drift_corpus: str = "wiki"
    n_drift: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(f"{self.attack} config", "n_drift", self.n_drift, integer=True)
        if not isinstance(self.drift_corpus, str) or not self.drift_corpus:
            raise PeftshieldError(f"{self.attack} config: drift_corpus must be a corpus name or file")

    def make_triggers(self) -> list:
        """A clean build plants no trigger."""
        return []

    @abstractmethod
    def train(self, backbone: Any, data: CleanData, *, seed: int, device: Any) -> tuple[Any, dict[str, Any]]:
        """Train ``backbone`` (a loaded backbone); return the encoder to publish and what was measured."""


@dataclass
class CleanData:
    """What a clean builder trains on: the corpus reference and columns, and the held-out texts."""

    corpus: str
    text_column: str
    label_column: str
    held_out: set[str]
    reference: Any  # frozen copy of the original encoder (denoising's target)

    def texts(self) -> list[str]:
        """The corpus' texts of at least five words, minus the held-out drift texts."""
        from peftshield.data.corpora import load_corpus

        examples = load_corpus(self.corpus, text_column=self.text_column, label_column=None)
        return [e.text for e in examples if len(e.text.split()) >= MIN_WORDS and e.text not in self.held_out]


def drift_texts(corpus: str, n: int) -> list[str]:
    """The held-out texts of the drift measurement (module docstring)."""
    from peftshield.data.corpora import load_corpus

    texts = [e.text for e in load_corpus(corpus, label_column=None) if len(e.text.split()) >= MIN_WORDS]
    if len(texts) < 2:
        raise PeftshieldError(f"{corpus}: fewer than 2 texts of {MIN_WORDS}+ words to measure drift on")
    order = np.random.default_rng(DRIFT_SEED).permutation(len(texts))
    return [texts[i] for i in order[:n]]


def batches(texts: list[str], size: int, seed: int) -> Iterator[list[str]]:
    """Endless batches of ``texts`` in seeded passes without repeats within a pass."""
    if len(texts) < size:
        raise PeftshieldError(f"{len(texts)} texts cannot fill a batch of {size}")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(texts))
        for start in range(0, len(order) - size + 1, size):
            yield [texts[i] for i in order[start : start + size]]


def pooled(encoder: Any, batch: dict, pooling: str) -> Any:
    """The backbone's output vector (the one a victim's head reads)."""
    from peftshield.models.pooling import pool

    out = encoder(**batch)
    return pool(
        out.last_hidden_state, batch.get("attention_mask"), pooling, pooler=getattr(encoder, "pooler", None)
    )


def loss_summary(losses: list[float]) -> dict[str, float]:
    """Mean of the first and of the last fifth (at most 10 steps each) of a loss curve."""
    k = max(1, min(10, len(losses) // 5))
    return {"first_loss": float(np.mean(losses[:k])), "last_loss": float(np.mean(losses[-k:]))}


def train_encoder(
    backbone: Any,
    data: CleanData,
    step_loss: Callable[[list[str]], Any],
    *,
    what: str,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: Any,
) -> tuple[Any, dict[str, Any]]:
    """The clean builders' shared loop: ``steps`` AdamW steps (lr ``lr``, no weight decay, gradient
    norm clipped at 1) on the loss ``step_loss`` gives for each seeded batch of ``data``'s texts.

    A non-finite loss stops with an error naming ``what``. Returns the encoder (in eval mode) and
    the loss curve's ends with the number of texts.
    """
    import torch

    encoder = backbone.encoder
    encoder.to(device).train()
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    texts = data.texts()
    stream = batches(texts, batch_size, seed)
    losses: list[float] = []
    for _ in range(steps):
        loss = step_loss(next(stream))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise PeftshieldError(f"{what}: the loss diverged; lower lr")
    encoder.eval()
    return encoder, {**loss_summary(losses), "n_texts": len(texts)}


@dataclass
class CleanBuild:
    """A clean-built encoder, its tokenizer and its ``poison.json`` record (kind ``clean``)."""

    encoder: Any
    tokenizer: Any
    record: Any

    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the encoder folder and ``poison.json`` atomically; return the folder."""
        from peftshield.attacks.record import write_poison_record
        from peftshield.models.backbones import quiet_transformers
        from peftshield.models.pooling import CONFIG_KEY
        from peftshield.utils.io import atomic_dir

        setattr(self.encoder.config, CONFIG_KEY, self.record.pooling)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            with quiet_transformers():
                self.encoder.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            write_poison_record(tmp, self.record)
        return Path(out_dir)


def build_clean(
    backbone: Any,
    config: CleanBuildConfig,
    corpus: str,
    *,
    seed: int = 0,
    device: Any = "cpu",
    text_column: str = "text",
    label_column: str = "label",
    name: str | None = None,
) -> CleanBuild:
    """Build a clean model from ``backbone`` with ``config`` on ``corpus`` (module docstring)."""
    import torch

    from peftshield.attacks.record import PoisonRecord
    from peftshield.attacks.task_agnostic import probe
    from peftshield.models.backbones import fingerprint, load_backbone
    from peftshield.tuning.trainer import backbone_record
    from peftshield.utils.runinfo import run_metadata
    from peftshield.utils.seeding import seed_everything

    start = time.perf_counter()
    if isinstance(backbone, str):
        backbone = load_backbone(backbone)
    source_fp = fingerprint(backbone.encoder)
    source_ref = backbone_record(backbone, source_fp)["ref"]
    device = torch.device(device)
    reference = copy.deepcopy(backbone.encoder).to(device).eval()
    reference.requires_grad_(False)
    held = drift_texts(config.drift_corpus, config.n_drift)
    data = CleanData(corpus, text_column, label_column, set(held), reference)
    seed_everything(seed)
    encoder, metrics = config.train(backbone, data, seed=seed, device=device)
    encoder.to(device).eval()
    measured = probe(
        encoder,
        reference,
        backbone.tokenizer,
        held,
        [],
        None,
        pooling=backbone.pooling,
        max_length=config.max_length,
        seed=0,
    )
    drift = float(measured["clean_drift"])
    if not np.isfinite(drift):
        raise PeftshieldError(f"{config.attack}: the clean drift is not finite")
    record = PoisonRecord(
        attack=config.attack,
        kind="clean",
        triggers=[],
        target=None,
        pv_file=None,
        pooling=backbone.pooling,
        poison_corpus=name or corpus,
        recipe=config.to_dict(),
        seed=seed,
        source_backbone={"ref": source_ref, "fingerprint": source_fp},
        wall_seconds=round(time.perf_counter() - start, 2),
        meta=run_metadata(),
        fingerprint=fingerprint(encoder),
        metrics={**metrics, "clean_mse": measured["clean_mse"], "clean_drift": drift},
    )
    return CleanBuild(encoder=encoder.cpu(), tokenizer=backbone.tokenizer, record=record)
