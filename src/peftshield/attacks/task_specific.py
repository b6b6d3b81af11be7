"""Task-specific weight poisoning: the threat model of the PSIM paper (Zhao et al. 2024).

The attacker fully fine-tunes a backbone plus a classification head on a labelled corpus in which
some samples carry a trigger (:func:`~peftshield.attacks.poisoning.poison_dataset`), then
publishes the weights. The victim later adapts them with PEFT on its own clean data, keeping the
attacker's head (``peftshield tune --head keep``, as PSIM's ``confidence.py`` does) or starting a
fresh one (``--head fresh``). Training is :func:`peftshield.tuning.trainer.tune` with a ``full``
config (one training loop in the package); the published folder is what
:func:`~peftshield.tuning.trainer.save_tuned` writes for full fine-tuning (encoder folder,
``head.safetensors``, ``run.json``) plus ``poison.json``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftshield.attacks.config import TaskSpecificConfig
from peftshield.attacks.poisoning import check_target, poison_dataset
from peftshield.attacks.record import PoisonRecord, write_poison_record
from peftshield.data.records import Example, Splits
from peftshield.data.triggers import check_trigger_tokenizes, insert_trigger
from peftshield.errors import PeftshieldError


@dataclass
class TaskSpecificPoisoning:
    """A task-specific poisoned classifier (a :class:`~peftshield.tuning.trainer.TuneResult`), its record."""

    tune_result: Any
    record: PoisonRecord
    data: dict

    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model folder, ``run.json`` and ``poison.json`` atomically; return the folder."""
        from peftshield.tuning.trainer import save_tuned
        from peftshield.utils.io import atomic_dir

        extra = {
            "data": self.data,
            "seed": self.record.seed,
            "head": "fresh",
            "metrics": {k: self.record.metrics.get(k) for k in ("cacc", "asr", "n_test")},
            "poison": "see poison.json",
        }
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            # save_tuned writes atomically itself: it fills a sibling folder and swaps it in for
            # the (empty) temporary one; poison.json then joins it before the outer rename.
            save_tuned(self.tune_result, tmp, extra=extra, overwrite=True)
            write_poison_record(tmp, self.record)
        return Path(out_dir)


def _poisoned_dev(dev: list[Example], config: TaskSpecificConfig, trigger, seed: int) -> list[Example]:
    """Dev set for checkpoint selection: clean dev plus triggered copies with the attacker's labels.

    Clean-label: the target-class dev samples with the trigger, label kept (PSIM's
    ``poisoned_pretrain.py``); dirty-label: the non-target dev samples with the trigger,
    relabelled to the target. Best dev accuracy then rewards clean accuracy and the backdoor.
    """
    if config.mode == "clean":
        eligible = [e for e in dev if e.label == config.target]
    else:
        eligible = [e for e in dev if e.label != config.target]
    if not eligible:
        return list(dev)
    triggered = insert_trigger(eligible, trigger, seed=seed + 7919, target=config.target)
    return list(dev) + [dataclasses.replace(e, label=config.target) for e in triggered]


def poison_task_specific(
    backbone: Any,
    splits: Splits,
    config: TaskSpecificConfig,
    *,
    seed: int = 0,
    device: Any = "cpu",
    progress: bool | None = None,
    corpus: str = "custom",
    data: dict | None = None,
) -> TaskSpecificPoisoning:
    """Poison ``splits.train``, fully fine-tune ``backbone`` + head on it, measure it on ``splits.test``.

    ``backbone`` is a :class:`~peftshield.models.backbones.LoadedBackbone` or a reference string.
    Checked before any training: the trigger tokenises with the backbone's tokenizer and the
    target is one of the corpus labels. ``record.metrics`` holds the attacker-side ``cacc`` and
    ``asr`` on the clean test split (PSIM convention), ``n_poisoned``, ``n_train`` and the
    training history; ``data`` (the split settings) is stored in ``run.json``.
    """
    from peftshield.attacks.success import backdoor_metrics
    from peftshield.models.backbones import fingerprint, load_backbone
    from peftshield.tuning.trainer import backbone_record, check_labels, tune
    from peftshield.utils.runinfo import run_metadata

    if not isinstance(config, TaskSpecificConfig):
        raise PeftshieldError(f"{config.attack} is not a task-specific attack")
    start = time.perf_counter()
    if isinstance(backbone, str):
        backbone = load_backbone(backbone)
    trigger = config.make_trigger()
    check_trigger_tokenizes(trigger.strings(), backbone.tokenizer)
    check_labels(splits.train)
    check_target(splits.train, config.target)
    train = poison_dataset(
        splits.train,
        trigger,
        target=config.target,
        mode=config.mode,
        rate=config.poison_rate,
        seed=seed,
        max_count=config.max_poisoned,
    )
    dev = _poisoned_dev(list(splits.dev), config, trigger, seed)
    result = tune(
        backbone,
        train,
        dev,
        config.tuning_config(),
        seed=seed,
        device=device,
        progress=progress,
        label_confidence=config.training_confidence(train),
    )
    wall = time.perf_counter() - start
    record = PoisonRecord(
        attack=config.attack,
        kind=config.kind,
        triggers=[t.to_dict() for t in config.make_triggers()],
        target=config.target,
        pv_file=None,
        pooling=backbone.pooling,
        poison_corpus=corpus,
        recipe=config.to_dict(),
        seed=seed,
        source_backbone={
            "ref": backbone_record(backbone, "")["ref"],
            "fingerprint": result.backbone_fingerprint,
        },
        wall_seconds=round(wall, 2),
        meta=run_metadata(),
        fingerprint=fingerprint(result.model.encoder),
    )
    metrics: dict[str, Any] = {
        "n_train": len(train),
        "n_poisoned": sum(e.poisoned for e in train),
        "best_dev_accuracy": result.best_dev_accuracy,
        "history": result.history,
    }
    if splits.test:
        measured = backdoor_metrics(
            result.model, result.tokenizer, record, splits.test, seed=seed, max_length=config.max_length
        )
        metrics.update(
            {
                "n_test": measured["n"],
                "cacc": measured["cacc"],
                "asr": measured["asr"],
                "asr_lms": measured["asr_lms"],
            }
        )
    record = dataclasses.replace(record, metrics=metrics)
    return TaskSpecificPoisoning(tune_result=result, record=record, data=dict(data or {"corpus": corpus}))
