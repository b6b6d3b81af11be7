"""Victims made as a user makes them: a plain transformers + peft loop, saved as a plain peft adapter.

Issue 11's benchmark (docs/design.md, "The artifacts users bring") measures every defence on the
artifact people already have: ``AutoModelForSequenceClassification`` on the (suspect) base model,
wrapped by ``peft.get_peft_model`` with ``task_type=SEQ_CLS`` (peft then keeps the head through
``modules_to_save``), trained by a hand-written torch loop and written by ``save_pretrained``.
Nothing of peftshield's own tuning (:mod:`peftshield.tuning.trainer`, its
:class:`~peftshield.models.classifier.PooledClassifier` and pooling) is used: the head reads what
transformers' head reads (BERT's pooler over [CLS], the first token through MPNet's dense + tanh),
not the backbone's registered pooling. The grid loads the folder back through
:func:`peftshield.defenses.victim.load_victim`, as it would load any user's adapter.

The loop is the usual one of the peft examples: AdamW, a linear schedule with warm-up
(``transformers.get_linear_schedule_with_warmup``), gradient clipping and the best dev epoch kept
(what ``Trainer(load_best_model_at_end=True)`` does), with the hyperparameters of the method's
config (the same numbers as peftshield's own method of the same name, so the two are compared on
the artifact alone). The same seed gives the same adapter on the same device.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from peftshield.data.records import Example
from peftshield.errors import PeftshieldError

#: What the method configs with this trainer say in their ``trainer`` class attribute.
TRAINER = "plain-peft"


def _seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _accuracy(model: Any, tokenizer: Any, examples: Sequence[Example], max_length: int, batch: int) -> float:
    import torch

    correct = 0
    model.eval()
    with torch.no_grad():
        for first in range(0, len(examples), batch):
            part = examples[first : first + batch]
            enc = tokenizer(
                [e.text for e in part],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(model.device)
            pred = model(**enc).logits.argmax(-1).cpu().tolist()
            correct += sum(int(p == e.label) for p, e in zip(pred, part, strict=True))
    return correct / len(examples)


def train_plain_peft(
    base: str,
    train: Sequence[Example],
    dev: Sequence[Example],
    config: Any,
    out: str | Path,
    *,
    seed: int = 0,
    device: Any = "cpu",
) -> dict[str, Any]:
    """Train ``config``'s peft method on the base model folder ``base`` and save the adapter into ``out``.

    ``config`` is a method config whose ``peft_config`` gives the peft configuration (a
    ``peft-*`` method of :mod:`peftshield.tuning.config`). ``out`` is written atomically: the
    adapter folder (``adapter_config.json`` naming ``base``, ``adapter_model.safetensors`` with the
    head) and the tokenizer. Returns the training figures (dev accuracy, seconds, parameters).
    """
    import torch
    from peft import get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    from peftshield.models.backbones import quiet_transformers
    from peftshield.utils.io import atomic_dir

    labels = sorted({e.label for e in train})
    if len(labels) < 2 or labels != list(range(len(labels))):
        raise PeftshieldError(f"plain-peft training needs labels 0..K-1 with K >= 2, got {labels}")
    num_labels = len(labels)
    _seed(seed)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=num_labels, use_safetensors=True, trust_remote_code=False
        )
    try:
        model = get_peft_model(model, config.peft_config(model.config))
    except ValueError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PeftshieldError(f"{config.method} config does not fit base {base}: {first}") from None
    device = torch.device(device)
    model.to(device)
    head, body = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if "modules_to_save" in name else body).append(param)
    groups = [{"params": body, "lr": config.lr}] if body else []
    groups.append({"params": head, "lr": config.head_lr or config.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    total = math.ceil(len(train) / config.batch_size) * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    trainable = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    best, best_state = -1.0, None
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        losses = []
        epoch_start = time.perf_counter()
        for first in range(0, len(order), config.batch_size):
            part = [train[i] for i in order[first : first + config.batch_size]]
            enc = tokenizer(
                [e.text for e in part],
                padding=True,
                truncation=True,
                max_length=config.max_length,
                return_tensors="pt",
            ).to(device)
            loss = model(**enc, labels=torch.tensor([e.label for e in part], device=device)).loss
            if not torch.isfinite(loss):
                raise PeftshieldError(
                    f"plain-peft training diverged: loss {loss.item()} at epoch {epoch + 1}"
                )
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            # the training steps alone, as tune's history times them (dev evaluation excluded)
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        if dev:
            record["dev_accuracy"] = _accuracy(
                model, tokenizer, dev, config.max_length, config.eval_batch_size
            )
            if record["dev_accuracy"] > best:
                best = record["dev_accuracy"]
                best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        history.append(record)
    if best_state is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in best_state.items():
                params[name].copy_(value)
    seconds = time.perf_counter() - start
    model.eval()
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return {
        "dev_accuracy": best if dev else float("nan"),
        "tune_seconds": round(seconds, 3),
        "trainable_params": sum(p.numel() for p in trainable),
        "total_params": sum(p.numel() for p in model.parameters()),
        "n_train": len(train),
        "history": history,
        "trainer": TRAINER,
    }
