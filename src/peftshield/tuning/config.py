"""Fine-tuning method configurations: one validated dataclass per method, registered once.

Methods (docs/design.md; PSIM §4 "five fine-tuning strategies"): ``full`` fine-tuning, ``lora``,
``prompt`` tuning, ``ptuning`` (P-tuning v1, peft ``PromptEncoderConfig``) and ``prefix``
(P-tuning v2, peft ``PrefixTuningConfig`` with ``prefix_projection=True``); ``peft-lora`` is
LoRA trained by a plain transformers + peft loop into a plain peft adapter folder
(:mod:`peftshield.tuning.plain_peft`, the artifact users bring). Each config carries
its own training hyperparameters with defaults measured on ``minilm`` / ``movies``
(``bench/README.md``), rejects unknown keys with a clear message, and round-trips through JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from peftshield.errors import PeftshieldError
from peftshield.utils import strict
from peftshield.utils.validate import (
    require_finite_fields,
    require_positive,
    require_range,
    require_string_list,
)


@dataclass
class MethodConfig:
    """Training hyperparameters shared by every method (the base of each method's config)."""

    method: ClassVar[str] = ""
    #: Who trains the victim: ``peftshield`` (:func:`peftshield.tuning.trainer.tune`) or
    #: ``plain-peft`` (:func:`peftshield.tuning.plain_peft.train_plain_peft`).
    trainer: ClassVar[str] = "peftshield"
    lr: float = 1e-3
    head_lr: float | None = field(default=None, metadata={"help": "learning rate of the head (default: lr)"})
    epochs: int = 2
    batch_size: int = 32
    max_length: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    eval_batch_size: int = 128
    # Prompt-based classification (decoders; docs/design.md "Decoder backbones"): each text is put
    # into ``template`` (it holds ``{text}``) and, with ``verbalizer`` (one word per class), the class
    # is the frozen LM head's next-token argmax over those words instead of a linear head.
    template: str | None = field(default=None, metadata={"help": "text template holding {text}"})
    verbalizer: list[str] | None = field(
        default=None, metadata={"help": "one word per class: classify with the frozen LM head (decoders)"}
    )

    def __post_init__(self) -> None:
        what = f"{self.method} config"
        require_finite_fields(what, self)
        if self.template is not None:
            from peftshield.models.templates import check_template

            check_template(self.template)
        if self.verbalizer is not None:
            if isinstance(self.verbalizer, str):
                self.verbalizer = self.verbalizer.split(",")
            require_string_list(what, "verbalizer", self.verbalizer)
            if len(self.verbalizer) < 2 or len(set(self.verbalizer)) != len(self.verbalizer):
                raise PeftshieldError(
                    f"{what}: verbalizer needs two or more distinct words, got {self.verbalizer}"
                )
        for name in ("epochs", "batch_size", "max_length", "eval_batch_size"):
            require_positive(what, name, getattr(self, name), integer=True)
        require_positive(what, "lr", self.lr)
        if self.head_lr is not None:
            require_positive(what, "head_lr", self.head_lr)
        require_range(what, "warmup_ratio", self.warmup_ratio, 0, 1, high_open=True)
        for name in ("weight_decay", "grad_clip"):
            require_range(what, name, getattr(self, name), 0, float("inf"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the method name."""
        return {"method": self.method, **dataclasses.asdict(self)}

    @property
    def n_prompt_tokens(self) -> int:
        """Virtual tokens this method prepends to the hidden states (0 unless prompt/ptuning)."""
        return 0

    def peft_config(self, model_config: Any):
        """The peft configuration, or ``None`` for full fine-tuning."""
        return None


@dataclass
class FullConfig(MethodConfig):
    """Full fine-tuning: every backbone weight and the head are trained."""

    method: ClassVar[str] = "full"
    lr: float = 5e-5
    head_lr: float | None = 1e-3


#: LoRA's default targets (BERT's query and value projections) and their names in other architectures.
DEFAULT_LORA_TARGETS = ["query", "value"]
ARCHITECTURE_LORA_TARGETS = {"llama": ("q_proj", "v_proj"), "mpnet": ("q", "v")}


@dataclass
class LoraMethodConfig(MethodConfig):
    """LoRA (Hu et al. 2021) on the attention projections; PSIM's code uses r=8, alpha=16, dropout 0.1."""

    method: ClassVar[str] = "lora"
    lr: float = 1e-3
    epochs: int = 3
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive("lora config", "r", self.r, integer=True)
        require_positive("lora config", "alpha", self.alpha)
        require_range("lora config", "dropout", self.dropout, 0, 1, high_open=True)
        require_string_list("lora config", "target_modules", self.target_modules)

    def peft_config(self, model_config: Any):
        """peft ``LoraConfig`` for sequence classification."""
        from peft import LoraConfig, TaskType

        targets = list(self.target_modules)
        model_type = getattr(model_config, "model_type", "")
        if targets == DEFAULT_LORA_TARGETS and model_type in ARCHITECTURE_LORA_TARGETS:
            targets = list(ARCHITECTURE_LORA_TARGETS[model_type])  # the same layers under their own names
        return LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets,
        )


@dataclass
class _VirtualTokenConfig(MethodConfig):
    num_virtual_tokens: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(f"{self.method} config", "num_virtual_tokens", self.num_virtual_tokens, integer=True)
        if hasattr(self, "encoder_hidden_size"):
            require_positive(
                f"{self.method} config", "encoder_hidden_size", self.encoder_hidden_size, integer=True
            )


@dataclass
class PromptConfig(_VirtualTokenConfig):
    """Prompt tuning (Lester et al. 2021): trainable input embeddings prepended to the text."""

    method: ClassVar[str] = "prompt"
    lr: float = 1e-1
    head_lr: float | None = 3e-3
    epochs: int = 3

    @property
    def n_prompt_tokens(self) -> int:
        """Prompt tuning prepends its virtual tokens to the sequence."""
        return self.num_virtual_tokens

    def peft_config(self, model_config: Any):
        """peft ``PromptTuningConfig`` (random initialisation)."""
        from peft import PromptTuningConfig, TaskType

        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=self.num_virtual_tokens)


@dataclass
class PTuningConfig(_VirtualTokenConfig):
    """P-tuning v1 (Liu et al. 2021): virtual tokens produced by a small MLP prompt encoder."""

    method: ClassVar[str] = "ptuning"
    lr: float = 3e-3
    head_lr: float | None = 3e-3
    epochs: int = 3
    encoder_hidden_size: int = 128

    @property
    def n_prompt_tokens(self) -> int:
        """P-tuning prepends its virtual tokens to the sequence."""
        return self.num_virtual_tokens

    def peft_config(self, model_config: Any):
        """peft ``PromptEncoderConfig`` (MLP reparameterisation)."""
        from peft import PromptEncoderConfig, TaskType

        return PromptEncoderConfig(
            task_type=TaskType.SEQ_CLS,
            num_virtual_tokens=self.num_virtual_tokens,
            encoder_hidden_size=self.encoder_hidden_size,
        )


@dataclass
class PrefixConfig(_VirtualTokenConfig):
    """P-tuning v2 / prefix tuning (Liu et al. 2022): trainable key/value prefixes in every layer."""

    method: ClassVar[str] = "prefix"
    lr: float = 5e-3
    head_lr: float | None = 3e-3
    epochs: int = 3
    prefix_projection: bool = True
    encoder_hidden_size: int = 128

    def peft_config(self, model_config: Any):
        """peft ``PrefixTuningConfig``; prefixes live in the attention, not in the hidden states."""
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(
            task_type=TaskType.SEQ_CLS,
            num_virtual_tokens=self.num_virtual_tokens,
            prefix_projection=self.prefix_projection,
            encoder_hidden_size=self.encoder_hidden_size,
        )


@dataclass
class PlainLoraConfig(LoraMethodConfig):
    """LoRA as a user trains it: ``AutoModelForSequenceClassification`` + peft, a plain loop
    (:mod:`peftshield.tuning.plain_peft`), saved as a plain peft adapter folder; same
    hyperparameters as ``lora``. The byom benchmark's user artifact (issue 11)."""

    method: ClassVar[str] = "peft-lora"
    trainer: ClassVar[str] = "plain-peft"


METHODS: dict[str, type[MethodConfig]] = {}


def register_method(config_cls: type[MethodConfig]) -> type[MethodConfig]:
    """Register a method's config class under its ``method`` name; a name is registered once."""
    name = config_cls.method
    if not name or name != name.lower() or name in METHODS:
        raise ValueError(f"cannot register method {name!r}: empty, not lower case, or already registered")
    METHODS[name] = config_cls
    return config_cls


for _cls in (FullConfig, LoraMethodConfig, PromptConfig, PTuningConfig, PrefixConfig, PlainLoraConfig):
    register_method(_cls)


def own_methods() -> list[str]:
    """The methods peftshield's own trainer runs (``tune``, ``psim fit``), without the plain-peft ones."""
    return [name for name, cls in METHODS.items() if cls.trainer == "peftshield"]


def method_config(method: str, overrides: dict[str, Any] | None = None) -> MethodConfig:
    """Build the config of ``method`` with ``overrides``; unknown methods or keys are errors."""
    if method not in METHODS:
        raise PeftshieldError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return strict.from_dict(METHODS[method], dict(overrides or {}), f"{method} config", ignore=("method",))


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Rebuild a config from :meth:`MethodConfig.to_dict` output."""
    if "method" not in data:
        raise PeftshieldError("config has no 'method' key")
    return method_config(data["method"], data)
