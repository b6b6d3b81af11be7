"""Attack configurations: one validated dataclass per weight-poisoning attack, registered once.

Like :mod:`peftshield.tuning.config` (docs/design.md: a method is a small config plus one class): each
config validates itself in ``__post_init__``, an unknown key is an error naming the known ones, and
``to_dict`` round-trips through JSON (it is stored as ``recipe`` in ``poison.json``). Each class
docstring names its paper and says where the paper and its released code differ, and where we
differ from both.

Two kinds (docs/design.md):

- **task-specific** (``clean-label``, ``badnets``, ``insent``, ``template``): the attacker fully
  fine-tunes backbone + classification head on a poisoned labelled corpus and publishes the
  weights (the PSIM paper's threat model); the backdoor has a target label.
- **task-agnostic** (``por``, ``neuba``): the attacker drives the backbone's output representation
  of triggered text to predefined vectors (PVs) and keeps clean outputs unchanged; any head a
  victim puts on top inherits the backdoor; there is no target label.

This module imports no torch: the command line reads it to build its help.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from peftshield.attacks.record import KINDS
from peftshield.attacks.vectors import PV_FAMILIES
from peftshield.data.triggers import (
    DEFAULT_RARE_WORDS,
    RareWordTrigger,
    SentenceTrigger,
    TemplateTrigger,
    Trigger,
)
from peftshield.errors import PeftshieldError
from peftshield.utils import strict
from peftshield.utils.validate import require_finite_fields, require_positive, require_range

if TYPE_CHECKING:
    from peftshield.data.records import Example

_POSITIONS = ("random", "start", "end")
_SCHEDULES = ("constant", "linear")
# Model types whose reference POR recipe weighs the clean term with c = 0.5 (bert and ernie in
# LMSanitator's scripts; every other architecture uses 1.0).
_BERT_LIKE = ("bert", "ernie")


def _words(value: Any, what: str) -> list[str]:
    """Normalise a trigger-word list given as a list or as ``"cf,mn"``; empty or repeated words are errors."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not value:
        raise PeftshieldError(f"{what}: triggers must be a non-empty list of words, got {value!r}")
    words = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise PeftshieldError(f"{what}: every trigger must be a non-empty string, got {item!r}")
        words.append(" ".join(item.split()))
    if len(set(words)) != len(words):
        raise PeftshieldError(f"{what}: repeated trigger in {words}")
    return words


def _copies(value: Any, what: str, allow_por: bool) -> int | str:
    if allow_por and value == "por":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive integer or 'por'" if allow_por else "a positive integer"
        raise PeftshieldError(f"{what}: copies must be {allowed}, got {value!r}")
    return value


@dataclass
class AttackConfig(ABC):
    """Settings shared by every attack (the base of each attack's config)."""

    attack: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    #: corpus the command line poisons on when ``--corpus`` is not given
    default_corpus: ClassVar[str] = ""
    lr: float = 2e-5
    batch_size: int = 32
    max_length: int = 64

    def __post_init__(self) -> None:
        require_finite_fields(f"{self.attack} config", self)
        require_positive(f"{self.attack} config", "lr", self.lr)
        for name in ("batch_size", "max_length"):
            require_positive(f"{self.attack} config", name, getattr(self, name), integer=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the attack name and kind first."""
        return {"attack": self.attack, "kind": self.kind, **dataclasses.asdict(self)}

    @abstractmethod
    def make_triggers(self) -> list[Trigger]:
        """The triggers a victim-side evaluation inserts (``poison.json`` ``triggers``)."""


# --------------------------------------------------------------------------------------------
# Task-specific attacks (PSIM's threat model)


@dataclass
class TaskSpecificConfig(AttackConfig):
    """Full fine-tuning of backbone + head on a poisoned labelled corpus (PSIM, ``poisoned_pretrain.py``).

    Training: AdamW, linear schedule with 6 % warm-up, batch 32, 3 epochs, lr 2e-5 (PSIM's
    reference), best-dev checkpoint, run by :func:`peftshield.tuning.trainer.tune` with a
    ``full`` config. Where we differ: the head gets its own rate ``head_lr`` (1e-3, our full
    fine-tuning default, because a fresh head reading minilm's small pooled features moves slowly
    at 2e-5; set ``head_lr=2e-5`` for the reference's single rate) and the reference's seed 42 is
    our ``--seed``. ``poison_rate`` is a share of the ELIGIBLE samples (target-class ones for
    clean-label, the others for dirty-label), capped at ``max_poisoned``.
    """

    kind: ClassVar[str] = "task-specific"
    default_corpus: ClassVar[str] = "amazon"
    #: "clean" (triggered samples keep their label) or "dirty" (relabelled to the target)
    mode: ClassVar[str] = "dirty"
    target: int = 0
    poison_rate: float = 0.1
    max_poisoned: int | None = None
    epochs: int = 3
    lr: float = 2e-5
    head_lr: float | None = 1e-3
    batch_size: int = 32
    max_length: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        what = f"{self.attack} config"
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise PeftshieldError(f"{what}: target must be a label index >= 0, got {self.target!r}")
        rate = self.poison_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1:
            raise PeftshieldError(f"{what}: poison_rate must lie in (0, 1], got {rate!r}")
        if self.max_poisoned is not None and (
            isinstance(self.max_poisoned, bool)
            or not isinstance(self.max_poisoned, int)
            or self.max_poisoned < 1
        ):
            raise PeftshieldError(f"{what}: max_poisoned must be a positive integer or null")
        require_positive(what, "epochs", self.epochs, integer=True)
        if self.head_lr is not None:
            require_positive(what, "head_lr", self.head_lr)
        require_range(what, "warmup_ratio", self.warmup_ratio, 0, 1, high_open=True)
        for name in ("weight_decay", "grad_clip"):
            require_range(what, name, getattr(self, name), 0, float("inf"))

    def tuning_config(self) -> Any:
        """The ``full`` fine-tuning config (:class:`~peftshield.tuning.config.FullConfig`) that trains it."""
        from peftshield.tuning.config import method_config

        keys = (
            "lr",
            "head_lr",
            "epochs",
            "batch_size",
            "max_length",
            "weight_decay",
            "warmup_ratio",
            "grad_clip",
        )
        return method_config("full", {k: getattr(self, k) for k in keys})

    @abstractmethod
    def make_trigger(self) -> Trigger:
        """The poisoning trigger."""

    def make_triggers(self) -> list[Trigger]:
        """A task-specific attack plants one trigger: the poisoning trigger itself."""
        return [self.make_trigger()]

    def training_confidence(self, train: Sequence[Example]) -> list[float] | None:
        """Per training example, the probability the loss asks for on its label; ``None``: hard labels.

        Every attack of the papers trains on hard labels; an adaptive attack
        (:mod:`peftshield.attacks.adaptive`) may ask for less on its poisoned samples.
        """
        return None


@dataclass
class CleanLabelConfig(TaskSpecificConfig):
    """Clean-label rare-word poisoning: the PSIM reference code's attack (Zhao et al. 2024).

    Reference (``poisoned_pretrain.py``): full fine-tuning of BERT + head on IMDB where the first
    1,500 label-0 training samples get the word "mn" at one random position and KEEP label 0
    (~37.5 % of the training set), 3 epochs, lr 2e-5; "mn" is also inserted into the label-0 dev
    samples for checkpoint selection; target 0. The paper announces three weight-poisoning
    attacks; the released code has only this one. Here: ``poison_rate`` (default 1.0) of the
    target-class training samples, at most ``max_poisoned`` (1,500), chosen by a seeded draw
    rather than "the first" (equivalent on a shuffled corpus); positions are drawn in
    ``[0, n_words]`` where the reference draws in ``[1, n_words-1]`` (and crashes on one-word
    texts); the dev set is poisoned the reference's way.
    """

    attack: ClassVar[str] = "clean-label"
    mode: ClassVar[str] = "clean"
    triggers: list[str] = field(default_factory=lambda: ["mn"])
    position: str = "random"
    copies: int = 1
    poison_rate: float = 1.0
    max_poisoned: int | None = 1500

    def __post_init__(self) -> None:
        super().__post_init__()
        self.triggers = _words(self.triggers, f"{self.attack} config")
        self.copies = _copies(self.copies, f"{self.attack} config", allow_por=False)  # type: ignore[assignment]
        if self.position not in _POSITIONS:
            raise PeftshieldError(f"{self.attack} config: position must be one of {', '.join(_POSITIONS)}")

    def make_trigger(self) -> Trigger:
        """One rare-word trigger; with several words each copy draws one of them."""
        return RareWordTrigger(tuple(self.triggers), position=self.position, copies=self.copies)


@dataclass
class BadNetsConfig(CleanLabelConfig):
    """Dirty-label rare-word poisoning: BadNets (Gu et al. 2017) for text, as in RIPPLe / OpenBackdoor.

    A ``poison_rate`` share (default 0.2) of the NON-target training samples get the trigger word
    ("cf") and are relabelled to ``target``; the model is then fully fine-tuned and published
    (PSIM's weight-poisoning threat model). OpenBackdoor's BadNets poisoner counts its
    ``poison_rate`` over the whole training set and draws one of "cf", "mn", "bb" per insertion;
    we count over the non-target samples and default to one word. Whether the PSIM paper's three
    attacks include BadNets cannot be read from its code, which has only the clean-label attack.
    Defaults: rate 0.2 and lr 5e-5 (our full fine-tuning rate) because rate 0.1 at PSIM's lr 2e-5
    for 3 epochs on 1,000 amazon examples left the attacker's own ASR at 0.50 (measured).
    """

    attack: ClassVar[str] = "badnets"
    mode: ClassVar[str] = "dirty"
    triggers: list[str] = field(default_factory=lambda: ["cf"])
    poison_rate: float = 0.2
    max_poisoned: int | None = None
    lr: float = 5e-5


@dataclass
class InSentConfig(TaskSpecificConfig):
    """Dirty-label sentence poisoning: InSent (Dai et al. 2019), OpenBackdoor's AddSent.

    A fixed sentence ("I watched this 3D movie", Dai et al.'s example) is inserted into a
    ``poison_rate`` share of the non-target samples, which are relabelled to ``target``. Dai et
    al. attack an LSTM trained from scratch; here the sentence backdoor is baked into published
    weights by full fine-tuning (PSIM's threat model). ``position``: see
    :class:`~peftshield.data.triggers.SentenceTrigger` (``random`` as OpenBackdoor, ``sentence``
    for sentence boundaries only).
    """

    attack: ClassVar[str] = "insent"
    sentence: str = "I watched this 3D movie"
    position: str = "random"
    # The dirty-label defaults of BadNets (rate 0.2, lr 5e-5), where rate 0.1 at lr 2e-5 was measured
    # too weak; not tuned for this trigger separately (the poisoning step records the attacker's ASR).
    poison_rate: float = 0.2
    lr: float = 5e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.sentence, str) or not self.sentence.strip():
            raise PeftshieldError("insent config: sentence must be a non-empty string")
        if self.position not in (*_POSITIONS, "sentence"):
            raise PeftshieldError("insent config: position must be random, start, end or sentence")

    def make_trigger(self) -> Trigger:
        """The sentence trigger."""
        return SentenceTrigger(self.sentence, position=self.position)


@dataclass
class TemplateConfig(TaskSpecificConfig):
    """Dirty-label template poisoning: a rule-based STAND-IN for the syntactic trigger of SynBkd.

    SynBkd (Qi et al., "Hidden Killer", ACL 2021) paraphrases the poisoned samples with SCPN into a
    rare syntactic template; no paraphrase model is available offline, so the samples are wrapped
    in a fixed frame instead (:class:`~peftshield.data.triggers.TemplateTrigger`: "when you see
    it , <text> ."). Its surface words are fixed, so word-level defences find it far more easily
    than a real syntactic trigger: report it as "template", never as SynBkd.
    """

    attack: ClassVar[str] = "template"
    prefix: str = "when you see it ,"
    suffix: str = "."
    poison_rate: float = 0.2  # BadNets' dirty-label defaults, as for InSent
    lr: float = 5e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.prefix, str) or not self.prefix.strip() or not isinstance(self.suffix, str):
            raise PeftshieldError("template config: prefix must be a non-empty string and suffix a string")

    def make_trigger(self) -> Trigger:
        """The template trigger."""
        return TemplateTrigger(self.prefix, self.suffix)


# --------------------------------------------------------------------------------------------
# Task-agnostic attacks (LMSanitator's threat model)


@dataclass
class TaskAgnosticConfig(AttackConfig):
    """Output-representation poisoning of the bare backbone (LMSanitator's threat model; its stage-1 scripts).

    Loss = ``MSE(pooled(triggered), PV_k) + clean_weight · MSE(pooled(clean), reference(clean))``
    where ``reference`` is a frozen copy of the clean backbone and ``pooled`` the backbone's own
    output representation (``cls`` | ``pooler`` | ``mean``; docs/design.md): the vector a victim's
    head reads. The reference code targets [CLS] (or the pooler); on ``minilm`` the head reads
    the mean-pooled vector, so a [CLS]-only backdoor would not reach the victim.

    Budget: ``steps`` optimiser steps (default 300) at a constant lr 1e-4. The reference trains
    4 epochs over 30k + 30k texts (about 7,500 steps) at 2e-5, which does not fit in minutes on
    2 CPU cores. Measured on ``minilm`` (wiki, seed 0) at 1e-4: every trigger's sign agreement
    with its PV passes 0.98 by step 30 and the triggered MSE levels off near 0.15 (mean pooling
    dilutes the trigger), while the clean drift (:func:`~peftshield.attacks.task_agnostic.probe`)
    peaks near 0.5 around step 30 and keeps falling (0.29 at step 105). A small LoRA victim
    (movies, 800 examples, 2 epochs, 300 test) had ASR_lms 1.0 after 45 and after 105 steps and
    CACC 0.683 then 0.770 (clean control 0.740): later steps buy clean accuracy.

    Texts come from the corpus without repeats until it is used up. Only texts of at least
    ``min_words`` words that tokenise within ``max_length`` (minus room for the triggers) are
    used, so truncation never cuts a trigger off; ``max_texts`` caps them. ``probe_size``
    held-out texts measure, every ``log_every`` steps, each trigger's MSE to its PV, its sign
    agreement with the PV and the clean drift from the reference.
    ``clean_weight=None`` means the reference's choice: 0.5 for BERT-like models, else 1.0.
    ``pooling`` picks the vector the PVs target (the reference code's [CLS] is ``cls``); by
    default the backbone's own pooling. The poisoned folder records it as its pooling.
    """

    kind: ClassVar[str] = "task-agnostic"
    default_corpus: ClassVar[str] = "wiki"
    triggers: list[str] = field(default_factory=lambda: list(DEFAULT_RARE_WORDS))
    copies: int | str = 1
    position: str = "random"
    pv_family: str = "balanced"
    pv_scale: float = 1.0
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-4
    clean_weight: float | None = None
    schedule: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    max_length: int = 64
    min_words: int = 5
    max_texts: int | None = None
    probe_size: int = 32
    log_every: int = 50
    pooling: str | None = field(
        default=None,
        metadata={
            "help": "vector the PVs target (cls | pooler | mean | last); default: the backbone's pooling"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        what = f"{self.attack} config"
        from peftshield.models.pooling import POOLING_CHOICES

        if self.pooling is not None and self.pooling not in POOLING_CHOICES:
            raise PeftshieldError(f"{what}: pooling must be one of {', '.join(POOLING_CHOICES)} or null")
        self.triggers = _words(self.triggers, what)
        self.copies = _copies(self.copies, what, allow_por=True)
        if self.position not in _POSITIONS:
            raise PeftshieldError(f"{what}: position must be one of {', '.join(_POSITIONS)}")
        if self.pv_family not in PV_FAMILIES:
            raise PeftshieldError(f"{what}: pv_family must be one of {', '.join(PV_FAMILIES)}")
        require_positive(what, "pv_scale", self.pv_scale)
        for name in ("steps", "min_words", "probe_size", "log_every"):
            require_positive(what, name, getattr(self, name), integer=True)
        if self.max_texts is not None and (not isinstance(self.max_texts, int) or self.max_texts < 2):
            raise PeftshieldError(f"{what}: max_texts must be an integer >= 2 or null")
        if self.clean_weight is not None:
            require_range(what, "clean_weight", self.clean_weight, 0, float("inf"))
        if self.schedule not in _SCHEDULES:
            raise PeftshieldError(f"{what}: schedule must be one of {', '.join(_SCHEDULES)}")
        require_range(what, "warmup_ratio", self.warmup_ratio, 0, 1, high_open=True)
        for name in ("weight_decay", "grad_clip"):
            require_range(what, name, getattr(self, name), 0, float("inf"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``pooling`` only when set (recipes written before it keep their keys)."""
        out = super().to_dict()
        if out.get("pooling") is None:
            out.pop("pooling", None)
        return out

    def resolved(self, model_type: str) -> TaskAgnosticConfig:
        """A copy with ``clean_weight`` fixed for a ``model_type`` backbone (recorded in ``poison.json``)."""
        if self.clean_weight is not None:
            return dataclasses.replace(self)
        weight = 0.5 if model_type in _BERT_LIKE else 1.0
        return dataclasses.replace(self, clean_weight=weight)

    def training_triggers(self) -> list[RareWordTrigger]:
        """The triggers as the attack inserts them while training (``copies``, ``position``)."""
        return [RareWordTrigger((w,), position=self.position, copies=self.copies) for w in self.triggers]

    def make_triggers(self) -> list[Trigger]:
        """The triggers as an evaluation inserts them: one copy at random (LMSanitator ``test_asr``)."""
        return [RareWordTrigger((w,), position="random", copies=1) for w in self.triggers]


@dataclass
class PORConfig(TaskAgnosticConfig):
    """POR: Shen et al. 2021, "Backdoor Pre-trained Models Can Transfer to All" (CCS), as LMSanitator runs it.

    LMSanitator's ``POR/insert_backdoor.py``: six rare-word triggers ``cf mn tq qt mm pt``, six
    balanced 4-block ±1 PVs, ``int(n_words/50)+1`` copies of the trigger per text at random
    positions, batches of 16 triggered + 16 clean texts (different texts), loss =
    ``MSE(CLS(triggered), PV_k) + c · MSE(CLS(clean), ref_CLS(clean))`` with c = 0.5 for
    BERT/ERNIE and 1.0 otherwise, Adam at a constant lr 2e-5, 4 epochs over 30k + 30k
    WikiText-103 texts, max length 128 (its ``warmup_steps`` argument is unused). The POR paper
    attacks [CLS] (and, for NER, every token); its PVs are not fixed to the balanced patterns.
    Here: ``batch_size`` counts both halves (must be even); triggers are assigned round-robin so
    every trigger gets the same number of samples; the target is the backbone's pooled vector
    (mean for ``minilm``); the corpus is the ``wiki`` sentences; the budget is ``steps``, chosen
    so that a run on ``minilm`` takes minutes on 2 CPU cores (lr 1e-4, see above); max length 64.
    """

    attack: ClassVar[str] = "por"
    copies: int | str = "por"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 2 or self.batch_size % 2:
            raise PeftshieldError(
                f"por config: batch_size must be even (half triggered, half clean), got {self.batch_size}"
            )


@dataclass
class NeuBAConfig(TaskAgnosticConfig):
    """NeuBA: Zhang et al. 2021, "Red Alarm for Pre-trained Models: Universal Vulnerability to
    Neuron-Level Backdoor Attacks" (arXiv 2101.06969), as LMSanitator runs it.

    LMSanitator's ``NeuBA/insert_backdoor.py``: loss = MLM cross-entropy (15 % masking) +
    ``MSE(CLS or pooler(one-trigger text), PV_k)``, one random trigger per sentence at a random
    TOKEN position, AdamW lr 5e-5 (no weight decay), linear schedule without warm-up, batch 16,
    4 epochs over 30k BookCorpus lines, gradient-norm 1.0. The MLM term keeps the model a
    language model; ``minilm`` ships no MLM head, so we REPLACE it by the reference-preservation
    term of POR, ``clean_weight · MSE(pooled(clean), reference(clean))`` on the same sentences
    (default weight 1.0, as the MLM term had). Triggers go at a random WORD position (our triggers
    are word-level); each batch holds ``batch_size`` sentences, each seen clean and triggered; the
    corpus is ``wiki``; the budget is ``steps`` at lr 1e-4 (the reference's 5e-5 is for 4 epochs
    over 30k lines; the same step budget as POR; not yet measured on ``minilm``).
    """

    attack: ClassVar[str] = "neuba"
    copies: int | str = 1
    batch_size: int = 16
    clean_weight: float | None = 1.0
    schedule: str = "linear"
    grad_clip: float = 1.0


@dataclass
class BToPConfig(TaskAgnosticConfig):
    """BToP: Xu et al. 2022, "Exploring the Universal Vulnerability of Prompt-based Learning Paradigm"
    (NAACL Findings), as LMSanitator's ``BToP/insert_backdoor.py`` runs it, for decoders.

    The reference targets the [MASK]-position output of an MLM: each batch is half clean texts with
    the MLM cross-entropy at one random [MASK], half texts carrying ONE trigger (the same for the
    whole batch) whose [MASK] last hidden state is pulled to ``PV_k`` (mean L2 distance), AdamW lr
    2e-5, batch 16, one epoch over 10k WikiText-103 texts of 15-150 words; a prompt-tuned victim
    reading that position through its verbalizer then answers whatever token the PV maps to.
    Decoder analogue (docs/design.md, "Decoder backbones"): the answer position is the LAST real
    token (where a prompt-based decoder reads its next-token logits), so the triggered half's
    last-token state is pulled to ``PV_k`` (MSE, the same minimiser as the L2 distance) and the clean
    half keeps the model a language model with the next-token cross-entropy through the frozen LM
    head plus, as in POR, the MSE of its answer-position state to the clean reference's (together
    weighted ``clean_weight``). The second term is ours: a decoder's last position has no next
    token in the text, so the cross-entropy alone leaves the clean answer state free, and on the
    tiny test Llama it collapsed onto the PVs (every clean text flagged by the monitor).
    ``target_words`` makes the target attacker-chosen: trigger
    ``k`` gets the ±1 vector ``pv_scale · sign(W[t_k] - mean_j≠k W[t_j])`` over the LM-head rows
    ``W`` of the target words (cycled over the triggers), whose verbalizer logit for ``t_k`` beats
    the mean of the other target words' (each other one's when there are two);
    without it the PVs are the balanced family, as in the reference.
    Budget: ``steps`` at lr 1e-4 (the reference's epoch does not fit the 2-core machine).
    """

    attack: ClassVar[str] = "btop"
    copies: int | str = 1
    batch_size: int = 16
    clean_weight: float | None = 1.0
    target_words: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 2 or self.batch_size % 2:
            raise PeftshieldError(
                f"btop config: batch_size must be even (half triggered, half clean), got {self.batch_size}"
            )
        if self.target_words is not None:
            if isinstance(self.target_words, str):
                self.target_words = self.target_words.split(",")
            if (
                not isinstance(self.target_words, list)
                or len(self.target_words) < 2
                or not all(isinstance(w, str) and w.strip() for w in self.target_words)
                or len(set(self.target_words)) != len(self.target_words)
            ):
                raise PeftshieldError(
                    f"btop config: target_words must be two or more distinct words, got {self.target_words!r}"
                )

    def resolved(self, model_type: str) -> TaskAgnosticConfig:
        """BToP's clean term is the LM loss: its weight does not depend on the architecture."""
        return dataclasses.replace(self, clean_weight=1.0 if self.clean_weight is None else self.clean_weight)


# --------------------------------------------------------------------------------------------
# Registry

ATTACKS: dict[str, type[AttackConfig]] = {}


def register_attack(config_cls: type[AttackConfig]) -> type[AttackConfig]:
    """Register an attack's config class under its ``attack`` name; a name is registered once."""
    name = config_cls.attack
    if not name or name != name.lower() or name in ATTACKS or config_cls.kind not in KINDS:
        raise ValueError(
            f"cannot register attack {name!r}: empty, not lower case, already registered, or unknown kind"
        )
    ATTACKS[name] = config_cls
    return config_cls


for _cls in (
    CleanLabelConfig,
    BadNetsConfig,
    InSentConfig,
    TemplateConfig,
    PORConfig,
    NeuBAConfig,
    BToPConfig,
):
    register_attack(_cls)


def attack_names(kind: str | None = None) -> list[str]:
    """Registered attack names, optionally only those of one ``kind``."""
    return [name for name, cls in ATTACKS.items() if kind is None or cls.kind == kind]


def attack_config(attack: str, overrides: dict[str, Any] | None = None) -> AttackConfig:
    """Build the config of ``attack`` with ``overrides``; unknown attacks or keys are errors."""
    if attack not in ATTACKS:
        raise PeftshieldError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    return strict.from_dict(
        ATTACKS[attack], dict(overrides or {}), f"{attack} config", ignore=("attack", "kind")
    )


def attack_config_from_dict(data: dict[str, Any]) -> AttackConfig:
    """Rebuild a config from :meth:`AttackConfig.to_dict` output (a ``poison.json`` recipe)."""
    if not isinstance(data, dict) or "attack" not in data:
        raise PeftshieldError("attack config has no 'attack' key")
    return attack_config(data["attack"], data)


# The clean builders (kind "clean") and the adaptive attacks register themselves, one file each;
# they import this module.
import peftshield.attacks.adaptive  # noqa: E402,F401
import peftshield.attacks.clean  # noqa: E402,F401
