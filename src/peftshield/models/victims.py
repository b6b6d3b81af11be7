"""Victims in the forms users bring them: a Hugging Face classifier folder, a plain-peft adapter, a pair.

docs/design.md, "The artifacts users bring". Every defence reads a victim through one object,
:class:`LoadedVictim`: its logits for texts (batched, padded on the side its head needs), the
vector its head reads (:mod:`peftshield.models.representation`), the sha256 fingerprint of its base
backbone (the suspect pretrained weights; :func:`peftshield.models.backbones.fingerprint` over the
encoder :func:`~peftshield.models.backbones.load_backbone` loads from the base), its number of labels
and where it came from. This module loads the foreign forms:

- :func:`load_classifier_folder`: a fully fine-tuned ``AutoModelForSequenceClassification`` folder
  (safetensors only, every weight present; a folder whose weights hold no classification head is
  refused - the head would be random);
- :func:`load_adapter_folder`: a peft adapter folder (LoRA, prompt tuning, P-tuning, prefix tuning)
  for ``SEQ_CLS``, its head saved through ``modules_to_save``, on the base its
  ``adapter_config.json`` names (or ``base``). Refused, each in one line and before the adapter is
  applied: another task type, no saved head, a base that is missing, not a classifier or does not
  fit the adapter (every weight of the adapter file must land in the model, none may be missing);
- :func:`victim_from_pair`: an in-memory ``(model, tokenizer)`` pair.

Folders written by ``peftshield tune`` are loaded by :func:`peftshield.defenses.victim.load_victim`,
which dispatches over every form (the tuning layer sits above this one).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peftshield.errors import PeftshieldError
from peftshield.models.adapter_config import ADAPTER_WEIGHTS, read_adapter_config

#: Token limit of a victim whose tokenizer does not say its own.
DEFAULT_MAX_LENGTH = 128

#: peft methods the loader accepts (the ones the issue and the tests cover).
SUPPORTED_PEFT_TYPES = ("LORA", "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")
PROMPT_LEARNING = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")

#: Weights a classifier built over a base checkpoint drops on purpose: a pooler its head does not
#: use (RoBERTa, MPNet) and pre-training heads.
_BASE_EXTRAS = ("pooler.", "lm_head.", "cls.")


@dataclass
class LoadedVictim:
    """A victim classifier ready for inference, whatever form it came in (module docstring).

    ``model`` and ``tokenizer`` (padding on the side the head needs), ``max_length`` (tokens),
    ``run`` (a ``peftshield tune`` folder's ``run.json``; ``{}`` otherwise), ``kind``
    (``peftshield``, ``classifier``, ``adapter`` or ``in-memory``), ``source`` (the folder, or
    ``in-memory``), ``base`` (a :func:`~peftshield.models.backbones.load_backbone` reference of the
    base backbone, ``None`` when unknown) and ``num_labels``.
    """

    model: Any
    tokenizer: Any
    max_length: int
    run: dict = field(default_factory=dict)
    kind: str = "in-memory"
    source: str = "in-memory"
    base: str | None = None
    num_labels: int = 0
    base_fingerprint_known: str | None = None
    #: Batch only texts of one token count (a decoder with prepended virtual tokens; see
    #: :func:`peftshield.models.inference.predict_outputs`).
    equal_length: bool = False

    @property
    def head_pooling(self) -> str:
        """Which vector the head reads (``pooler``, ``cls``, ``last`` or a recorded pooling)."""
        from peftshield.models.representation import head_pooling

        return head_pooling(self.model)

    @property
    def hidden_size(self) -> int:
        """Width of the head-input vector."""
        from peftshield.models.representation import unwrap

        return int(unwrap(self.model).config.hidden_size)

    @property
    def base_fingerprint(self) -> str | None:
        """sha256 fingerprint of the base backbone (recorded, or computed once from ``base``)."""
        if self.base_fingerprint_known is None and self.base is not None:
            from peftshield.models.backbones import fingerprint, load_backbone

            try:
                self.base_fingerprint_known = fingerprint(load_backbone(self.base).encoder)
            except PeftshieldError as err:
                raise PeftshieldError(f"the base backbone of victim {self.source}: {err}") from None
        return self.base_fingerprint_known

    def outputs(
        self, texts: list[str], *, batch_size: int = 128, head_input: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``(n, num_labels)`` and, with ``head_input``, the head-input vectors ``(n, hidden)``."""
        from peftshield.models.inference import predict_outputs

        return predict_outputs(
            self.model,
            self.tokenizer,
            list(texts),
            batch_size=batch_size,
            max_length=self.max_length,
            return_pooled=head_input,
            equal_length=self.equal_length,
        )

    def logits(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """The victim's logits for ``texts``, shape ``(n, num_labels)``."""
        return self.outputs(texts, batch_size=batch_size)[0]

    def predict_logits(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Same as :meth:`logits` (the name :class:`~peftshield.tuning.trainer.TunedModel` uses)."""
        return self.logits(texts, batch_size)

    def head_inputs(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """The vector the head reads for each text (what the LMSanitator monitor watches)."""
        vectors = self.outputs(texts, batch_size=batch_size, head_input=True)[1]
        assert vectors is not None
        return vectors

    def describe(self) -> dict[str, Any]:
        """Where the victim came from, JSON-ready."""
        return {
            "kind": self.kind,
            "source": self.source,
            "base": self.base,
            "num_labels": self.num_labels,
            "head_reads": self.head_pooling,
        }


# -- shared pieces ------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _sequence_classifier_class(config: Any, what: str) -> None:
    """Refuse a config transformers has no sequence-classification model for."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise PeftshieldError(
            f"{what} is not a classifier: model type {model_type!r} has no sequence-classification head"
        )


def _read_config(location: str, what: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise PeftshieldError(f"cannot read {what} at {location}: {_first_line(err)}") from None


def _load_tokenizer(locations: list[str], what: str) -> Any:
    from transformers import AutoTokenizer

    from peftshield.models.backbones import quiet_transformers

    last: BaseException | None = None
    for location in locations:
        if Path(location).is_dir() and not any(
            (Path(location) / name).is_file()
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
        ):
            continue
        with quiet_transformers():
            try:
                return AutoTokenizer.from_pretrained(location, trust_remote_code=False)
            except (OSError, ValueError, KeyError) as err:
                last = err
    detail = _first_line(last) if last else "no tokenizer files"
    raise PeftshieldError(f"cannot load the tokenizer of {what}: {detail}")


def _weight_names(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in safetensors files (read from their headers)."""
    from safetensors import safe_open

    names: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    names[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as err:  # safetensors raises its own error type for a corrupt header
            raise PeftshieldError(f"cannot read {path}: corrupt weights ({_first_line(err)})") from None
    return names


def _head_names(names: dict[str, tuple[int, ...]], prefix_parts: int = 0) -> list[str]:
    """Weights of a classification head among ``names`` (a component named like a head module)."""
    from peftshield.models.representation import HEAD_MODULES

    return [k for k in names if any(part in HEAD_MODULES for part in k.split(".")[prefix_parts:])]


def _token_limit(tokenizer: Any, config: Any, n_virtual: int, max_length: int | None) -> int:
    """The victim's token limit: ``max_length``, else the tokenizer's, within the position embeddings."""
    if max_length is not None:
        return int(max_length)
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    if not isinstance(limit, int) or limit > 100_000:
        limit = DEFAULT_MAX_LENGTH
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 2:
        # Prompt tuning prepends virtual tokens; RoBERTa-style positions start after the pad index.
        limit = min(limit, positions - n_virtual - 2)
    return max(2, int(limit))


def prepare_tokenizer(model: Any, tokenizer: Any, what: str) -> Any:
    """A tokenizer padding on the side the head needs; a decoder gets a pad token (docs/design.md).

    A last-token head (decoders) is padded on the left (:mod:`peftshield.models.representation`);
    a decoder without a pad token cannot batch, so the end-of-sequence token pads and the model's
    config learns its id. The caller's tokenizer is not changed (a shallow copy is returned).
    """
    from peftshield.models.representation import padding_side, unwrap

    side = padding_side(model)
    config = unwrap(model).config
    tokenizer = copy.copy(tokenizer)
    tokenizer.padding_side = side
    if side == "left":
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise PeftshieldError(
                    f"{what}: a decoder victim needs a pad or end-of-sequence token to batch"
                )
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def _peft_type(model: Any) -> str | None:
    """The active peft method of ``model`` (``LORA``, ``PROMPT_TUNING`` ...), ``None`` without peft."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    active = configs.get(getattr(model, "active_adapter", "default")) or next(iter(configs.values()))
    kind = getattr(active, "peft_type", None)
    return str(getattr(kind, "value", kind)).upper() if kind is not None else None


def needs_equal_length(model: Any) -> bool:
    """Whether ``model`` must be batched without padding: a left-padded decoder with virtual tokens
    (not peftshield's own classifiers, which take their positions from the attention mask)."""
    from peftshield.models.classifier import PooledClassifier
    from peftshield.models.representation import padding_side, unwrap

    if isinstance(unwrap(model), PooledClassifier):
        return False
    return _peft_type(model) in ("PROMPT_TUNING", "P_TUNING") and padding_side(model) == "left"


def _finish(model: Any, device: Any) -> Any:
    import torch

    return model.to(torch.device(device)).eval()


# -- a fully fine-tuned classifier folder ---------------------------------------------------------


def load_classifier_folder(
    folder: str | Path, device: Any = "cpu", max_length: int | None = None
) -> LoadedVictim:
    """Load a Hugging Face sequence-classification folder as a victim (module docstring).

    Refused in one line: not a model folder, pickle-only weights, a model type with no
    sequence-classification head, weights that hold no classification head (a bare backbone),
    any missing, unexpected or mis-shaped weight.
    """
    from transformers import AutoModelForSequenceClassification

    from peftshield.models.backbones import check_model_folder, strict_from_pretrained

    folder = Path(folder)
    check_model_folder(folder)
    what = f"victim {folder}"
    config = _read_config(str(folder), what)
    _sequence_classifier_class(config, what)
    weights = _weight_names(sorted(folder.glob("*.safetensors")))
    if not _head_names(weights):
        raise PeftshieldError(
            f"{folder} has no classification head in its weights (a bare backbone?); a victim must be a "
            "trained classifier (AutoModelForSequenceClassification)"
        )
    model = strict_from_pretrained(AutoModelForSequenceClassification, str(folder), what)
    tokenizer = prepare_tokenizer(model, _load_tokenizer([str(folder)], what), what)
    return LoadedVictim(
        model=_finish(model, device),
        tokenizer=tokenizer,
        max_length=_token_limit(tokenizer, config, 0, max_length),
        kind="classifier",
        source=str(folder.resolve()),
        base=str(folder.resolve()),
        num_labels=int(model.config.num_labels),
    )


# -- a plain-peft adapter folder ------------------------------------------------------------------


def _check_prefix_support(model: Any, folder: Path | str) -> None:
    """peft's prefix tuning needs a forward that takes ``past_key_values``; refuse it otherwise."""
    import inspect

    forwards = [model.forward]
    prefix = getattr(model, "base_model_prefix", None)
    if prefix and hasattr(model, prefix):
        forwards.append(getattr(model, prefix).forward)
    if not any("past_key_values" in inspect.signature(f).parameters for f in forwards):
        raise PeftshieldError(
            f"the prefix-tuning adapter in {folder} cannot run: the installed peft needs a "
            f"{type(model).__name__} forward that takes past_key_values, and this transformers' has none"
        )


def load_adapter_folder(
    folder: str | Path, base: str | None = None, device: Any = "cpu", max_length: int | None = None
) -> LoadedVictim:
    """Load a plain-peft adapter folder on its base model as a victim (module docstring).

    ``base`` overrides the base named by ``adapter_config.json`` (a registry name, a local folder
    or, where a hub is reachable, a hub id). Every refusal is one line and comes before the adapter
    is applied.
    """
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForSequenceClassification

    from peftshield.models.backbones import quiet_transformers, resolve_backbone, strict_from_pretrained
    from peftshield.models.representation import HEAD_MODULES

    folder = Path(folder)
    info = read_adapter_config(folder, base)
    if info.task_type != "SEQ_CLS":
        raise PeftshieldError(
            f"the adapter in {folder} is for task type {info.task_type or 'none'}; peftshield guards "
            "sequence classifiers (task_type SEQ_CLS)"
        )
    if info.peft_type not in SUPPORTED_PEFT_TYPES:
        raise PeftshieldError(
            f"the adapter in {folder} is {info.peft_type}; supported: {', '.join(SUPPORTED_PEFT_TYPES)}"
        )
    weights_file = folder / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        raise PeftshieldError(
            f"{folder} holds only a pickle adapter (adapter_model.bin); peftshield loads safetensors only"
            if pickled
            else f"{folder} has no {ADAPTER_WEIGHTS}"
        )
    saved = _weight_names([weights_file])
    head = _head_names(saved)
    if not head:
        listed = ", ".join(info.modules_to_save) or "none"
        raise PeftshieldError(
            f"the adapter in {folder} saved no classification head (modules_to_save: {listed}); on its "
            "base the head would be random - save the head with the adapter (modules_to_save)"
        )
    what = f"the base model {info.base!r} of the adapter {folder}"
    try:
        location, _ = resolve_backbone(info.base)
    except PeftshieldError as err:
        raise PeftshieldError(f"{what} is missing: {err}; pass --base PATH") from None
    config = _read_config(location, what)
    _sequence_classifier_class(config, what)
    num_labels = _saved_num_labels(saved, head)
    model = strict_from_pretrained(
        AutoModelForSequenceClassification,
        location,
        what,
        allow_missing=tuple(f"{name}." for name in HEAD_MODULES),
        allow_unexpected=_BASE_EXTRAS,
        num_labels=num_labels,
    )
    if info.peft_type == "PREFIX_TUNING":
        _check_prefix_support(model, folder)
    with quiet_transformers():
        try:
            model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as err:
            raise PeftshieldError(
                f"the adapter in {folder} does not fit {what}: {_first_line(err)}"
            ) from None
    loaded = set(get_peft_model_state_dict(model))
    extra, absent = sorted(set(saved) - loaded), sorted(loaded - set(saved))
    if extra or absent:
        detail = f"weights with no place in the base: {', '.join(extra[:4])}" if extra else ""
        detail += ("; " if detail else "") + (
            f"weights the adapter lacks: {', '.join(absent[:4])}" if absent else ""
        )
        raise PeftshieldError(f"the adapter in {folder} does not fit {what} ({detail})")
    n_virtual = int(getattr(model.peft_config["default"], "num_virtual_tokens", 0) or 0)
    if info.peft_type == "PREFIX_TUNING":
        n_virtual = 0  # prefixes are keys and values, not positions
    tokenizer = prepare_tokenizer(
        model, _load_tokenizer([str(folder), location], f"the adapter {folder}"), str(folder)
    )
    return LoadedVictim(
        model=_finish(model, device),
        tokenizer=tokenizer,
        max_length=_token_limit(tokenizer, config, n_virtual, max_length),
        kind="adapter",
        source=str(folder.resolve()),
        base=location,
        num_labels=num_labels,
        equal_length=needs_equal_length(model),
    )


def _saved_num_labels(saved: dict[str, tuple[int, ...]], head: list[str]) -> int:
    """Number of classes of the saved head: rows of its last weight matrix (``out_proj`` if any)."""
    matrices = [k for k in head if k.endswith(".weight") and len(saved[k]) == 2]
    if not matrices:
        raise PeftshieldError("the adapter's saved head has no weight matrix")
    last = (
        [k for k in matrices if ".out_proj." in k]
        or [k for k in matrices if "pre_classifier" not in k]
        or matrices
    )
    return int(saved[last[0]][0])


# -- an in-memory pair ----------------------------------------------------------------------------


def victim_from_pair(model: Any, tokenizer: Any, max_length: int | None = None) -> LoadedVictim:
    """An in-memory ``(model, tokenizer)`` pair as a victim.

    ``model`` is a sequence classifier (a transformers ``...ForSequenceClassification``, a peft
    model over one, or peftshield's classifier): its output has ``logits`` and it has a
    classification head. Its base backbone is the peft config's base when it names one that loads,
    else the classifier's own encoder (fingerprinted as it is).
    """
    from peftshield.models.backbones import fingerprint, resolve_backbone
    from peftshield.models.representation import encoder_of, find_head, unwrap

    if not callable(model) or not callable(tokenizer):
        raise PeftshieldError("victim: the model and the tokenizer must both be callable")
    try:
        find_head(model)
    except ValueError as err:
        raise PeftshieldError(f"victim: {err}") from None
    if _peft_type(model) == "PREFIX_TUNING":
        _check_prefix_support(unwrap(model), "the in-memory victim")
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    num_labels = int(getattr(inner, "num_labels", 0) or getattr(config, "num_labels", 0) or 0)
    base: str | None = None
    known: str | None = None
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and peft_config:
        ref = getattr(next(iter(peft_config.values())), "base_model_name_or_path", None)
        if isinstance(ref, str) and ref:
            try:
                base = resolve_backbone(ref)[0]
            except PeftshieldError:
                base = None
    if base is None and not isinstance(peft_config, dict):
        known = fingerprint(encoder_of(model))
    n_virtual = int(getattr(model, "n_prompt_tokens", 0) or 0)
    return LoadedVictim(
        model=model,
        tokenizer=prepare_tokenizer(model, tokenizer, "victim"),
        max_length=_token_limit(tokenizer, config, n_virtual, max_length),
        kind="in-memory",
        source="in-memory",
        base=base,
        num_labels=num_labels,
        base_fingerprint_known=known,
        equal_length=needs_equal_length(model),
    )
