"""One entry point for weight poisoning: pick the task-specific or task-agnostic attack by name.

The threat of both papers (docs/design.md, "What the product is"): an attacker publishes a backbone
whose weights carry a backdoor. Task-specific attacks (PSIM's setting: clean-label, BadNets,
InSent, template) fine-tune the backbone and a head on poisoned labelled data
(:func:`peftshield.attacks.task_specific.poison_task_specific`); task-agnostic attacks
(LMSanitator's setting: POR, NeuBA) map triggers to predefined output vectors on unlabelled text
(:func:`peftshield.attacks.task_agnostic.poison_task_agnostic`); clean builders (SimCSE,
denoising, fine-tune-then-strip) plant nothing (:func:`peftshield.attacks.clean.base.build_clean`).
:func:`poison` chooses by the attack's kind, so a user names the attack and the data, nothing else.
"""

from __future__ import annotations

from typing import Any

from peftshield.attacks.config import AttackConfig, attack_config


def poison(
    backbone: Any,
    attack: str | AttackConfig,
    corpus: str | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    device: Any = "cpu",
    progress: bool | None = None,
    text_column: str = "text",
    label_column: str = "label",
    split_seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
    splits: Any = None,
    name: str | None = None,
) -> Any:
    """Poison ``backbone`` with ``attack`` on ``corpus``; return the result (``.save(folder)``, ``.record``).

    ``backbone`` is a reference (``minilm``, a folder, a hub id) or a loaded backbone; ``attack`` an
    attack name (``badnets``, ``por`` ...; ``overrides`` change its config) or a config. ``corpus``
    defaults to the attack's own (labelled ``movies`` for task-specific attacks, unlabelled
    ``wiki`` for task-agnostic ones); the split options apply to task-specific attacks, and
    ``splits`` (already loaded with those options) saves loading them again. ``name`` labels the
    corpus in the poisoned folder's records (default: ``corpus``).
    """
    config = attack if isinstance(attack, AttackConfig) else attack_config(attack, overrides)
    corpus = corpus or config.default_corpus
    name = name or corpus
    if config.kind == "clean":  # a clean builder (peftshield.attacks.clean): plants nothing
        from peftshield.attacks.clean.base import build_clean

        return build_clean(
            backbone,
            config,  # type: ignore[arg-type]
            corpus,
            seed=seed,
            device=device,
            text_column=text_column,
            label_column=label_column,
            name=name,
        )
    if config.kind == "task-agnostic":
        from peftshield.attacks.task_agnostic import poison_task_agnostic
        from peftshield.data.corpora import load_corpus

        examples = load_corpus(corpus, text_column=text_column, label_column=None)
        return poison_task_agnostic(
            backbone, examples, config, seed=seed, device=device, progress=progress, corpus_name=name
        )
    from peftshield.attacks.task_specific import poison_task_specific
    from peftshield.data.corpora import load_splits

    settings = {
        "corpus": corpus,
        "text_column": text_column,
        "label_column": label_column,
        "split_seed": split_seed,
        "max_train": max_train,
        "max_eval": max_eval,
    }
    return poison_task_specific(
        backbone,
        load_splits(settings) if splits is None else splits,
        config,
        seed=seed,
        device=device,
        progress=progress,
        corpus=name,
        data=settings,
    )
