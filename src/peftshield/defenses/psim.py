"""PSIM: the Poisoned Sample Identification Module (Zhao et al., NAACL Findings 2024, §3).

The paper's finding (§2): parameter-efficient fine-tuning keeps a backdoor planted in the
pretrained weights, because the few trainable parameters cannot overwrite the frozen backdoored
ones. PSIM turns that weakness into a detector (§3): train a PEFT module on the suspect backbone
with *randomly reset labels*. Labels that carry no information teach the module one thing only,
to be unsure — its confidence on clean inputs goes towards ``1 / num_classes`` — while a trigger
still drives the frozen backdoored weights to an extreme, confident output. An input whose PSIM
confidence (maximum softmax probability) exceeds a threshold (paper: 0.7) is rejected.

Reference code (shuaizhao95/PSIM ``badmodel.py`` and ``confidence.py``): P-tuning with 5
virtual tokens (prompt-encoder width 128) on the poisoned checkpoint *with its published head*,
every training label replaced by ``random.randint(0, 1)``, lr 2e-5, 1 epoch, batch 32, AdamW with
6 % warm-up; the threshold is hard-coded at 0.7 on probabilities rounded to 3 decimals.

Where this implementation differs, and why:

- The head is kept *frozen* (``head_lr`` 1e-8: the config needs a positive rate) and only the
  prompt learns, at lr 3e-3 (our P-tuning default, which trains on minilm) instead of 2e-5. Why:
  the random-label objective is minimised by making every output unsure, and the head is a global
  knob that does exactly that for triggered inputs too — shrinking the head's weights lowers the
  backdoor's confidence along with the clean one. PSIM's argument (§3) is that the *PEFT module*
  cannot undo the backdoor in the frozen weights; so the module, not the head, must absorb the
  random labels. At the reference lr 2e-5 nothing moves: the module is the poisoned classifier
  with a random prompt (in the reference code it still reads a virtual token's state through
  BERT's pooler, which our pooling over real tokens does not do).
- One epoch is kept on purpose: no training text is seen twice, so the module cannot memorise the
  random labels; all it can learn from them is to be less sure.
- Measured on the tiny test BERT and on ``minilm`` (the tables are in docs/design.md, "Deviations
  from the papers"); with 8 steps (240 texts, the unit tests) ours gives AUROC 0.976-0.997. What
  this shows: the less the module changes, the better the ranking on that model (the reference lr
  leaves it the poisoned classifier, whose own confidence already separates); only LoRA gets near "unsure"
  (and 0.7 then half works), at some cost in ranking; no recipe tried made the clean confidence
  reach 1/num_classes while keeping triggers confident. The default is the middle: the paper's
  method and shape, a module that does learn from the random labels, a head it cannot scale away.
  Because the calibration rarely reaches 1/num_classes, ``threshold="calibrated"`` (a target FRR
  on held-out clean texts) is the policy to use, and ``fit`` warns when the fixed threshold
  rejects much of the held-out clean data. These are tiny-model numbers; the minilm benchmark
  should compare the three (``--set lr=2e-5 --set head_lr=2e-5``; ``--method lora --set lr=1e-3``)
  and settle the default for real backbones.
- The default module is **LoRA** (lr 1e-3, head frozen, 1 epoch), not the paper's P-tuning, which
  stays selectable (``method="ptuning"``). Measured on ``minilm`` with the BadNets backbone of the
  benchmarks (the former ``bench/bench_psim_recipes.py``, on the movies **test** split; table in
  docs/design.md, "Deviations from the papers"): AUROC 0.999 for LoRA against 0.903 (P-tuning lr
  3e-3) and 0.955 (reference lr 2e-5).
  Only LoRA separates the tails: at the FRR a defender can afford, P-tuning lets a third or more
  of the triggered inputs through. On the other task-specific backbones (same cells) LoRA's AUROC
  is again at least P-tuning's: clean-label 1.000 vs 1.000, InSent 0.992 vs 0.940, template 0.999
  vs 0.509 (``bench/results/psim_recipes_test.json``). That choice read the test split; it was
  remade on the dev split by ``bench/grids/psim_recipes.json`` (docs/design.md, "Choosing on the
  dev split") and LoRA kept it: dev AUROC 0.991 / 1.000 / 0.988 / 0.999 on BadNets, clean-label,
  InSent and template, above every other recipe (bench/README.md, "PSIM module recipe").
- ``reset_rate`` generalises the reference's 100 % reset (each label is replaced with probability
  ``reset_rate`` by a uniformly drawn one; the reference has no such parameter).
- The threshold can also be calibrated at a target false-rejection rate on a held-out part of the
  clean data (``threshold="calibrated"``); probabilities are not rounded, and ``score > threshold``
  is used on every path (the reference rejects clean inputs at ``>=`` but flags triggered ones at
  ``>``).
- ``head="auto"`` keeps the head published with a poisoned full-model folder, as the reference
  does, and starts a fresh head on a bare backbone (a task-agnostic backdoor, a clean model). On
  the tiny planted model a fresh head is a lottery: AUROC 0.41-0.97 across seeds and step counts
  (0.53-0.95 when the head trains at 1e-3 or 1e-2), against 0.91-0.997 with the kept head — a
  random head may simply not read the direction the backdoor pushes the representation along.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from peftshield.data.records import Example
from peftshield.defenses.base import (
    CALIBRATED,
    Detector,
    check_held_out,
    check_texts,
    on_device,
    warn_truncation,
)
from peftshield.errors import PeftshieldError
from peftshield.utils.validate import require_int_at_least

MODULE_DIR = "module"
HEAD_CHOICES = ("auto", "keep", "fresh")

#: The head's learning rate in every recipe: effectively frozen (see the module docstring).
FROZEN_HEAD_LR = 1e-8

#: PSIM's training recipe per PEFT method, applied under the user's ``config`` overrides.
#: P-tuning is the paper's method (§3, reference ``badmodel.py``): 5 virtual tokens, encoder width
#: 128, 1 epoch, batch 32, 6 % warm-up; lr 3e-3 with a frozen head (module docstring). The other
#: methods keep their own tuned lr, one epoch and the frozen head.
PSIM_RECIPES: dict[str, dict[str, Any]] = {
    "ptuning": {
        "num_virtual_tokens": 5,
        "encoder_hidden_size": 128,
        "epochs": 1,
        "batch_size": 32,
        "warmup_ratio": 0.06,
        "lr": 3e-3,
        "head_lr": FROZEN_HEAD_LR,
    },
    "prompt": {"num_virtual_tokens": 5, "epochs": 1, "batch_size": 32, "head_lr": FROZEN_HEAD_LR},
    "prefix": {"num_virtual_tokens": 5, "epochs": 1, "batch_size": 32, "head_lr": FROZEN_HEAD_LR},
    "lora": {"epochs": 1, "batch_size": 32, "head_lr": FROZEN_HEAD_LR},
    "full": {"epochs": 1, "batch_size": 32, "head_lr": FROZEN_HEAD_LR},
}

#: ``fit`` warns when a fixed threshold rejects more than this share of the held-out clean texts.
MAX_QUIET_FRR = 0.2


@dataclass(frozen=True)
class PSIMTrainingSet:
    """What :meth:`PSIMDetector.fit` trained and calibrated on (returned by :func:`psim_training_set`)."""

    train: list[Example]
    calibration: list[str]
    n_reset: int


def _as_examples(data: Any) -> list[Example]:
    """Accept a sequence of :class:`Example` or of strings; strings become unlabelled examples."""
    if isinstance(data, str) or not isinstance(data, Sequence):
        raise PeftshieldError("PSIM fit needs a list of texts or Example records")
    items = list(data)
    if not items:
        raise PeftshieldError("PSIM fit: the clean data is empty")
    if all(isinstance(x, Example) for x in items):
        check_texts([x.text for x in items], "clean texts")
        return items
    if all(isinstance(x, str) for x in items):
        return [Example(t) for t in check_texts(items, "clean texts")]
    raise PeftshieldError("PSIM fit: give either all strings or all Example records")


def psim_training_set(
    data: Sequence[Example] | Sequence[str],
    *,
    num_labels: int,
    reset_rate: float,
    calibration_fraction: float,
    seed: int,
) -> PSIMTrainingSet:
    """Hold out the calibration texts and reset the training labels (PSIM §3, label reset).

    One generator, ``numpy.random.default_rng(seed)``, draws the held-out part (a uniform sample of
    ``round(calibration_fraction * n)`` texts) and then, for each training example in order,
    whether its label is reset (probability ``reset_rate``) and the new label (uniform over
    ``num_labels``; it may equal the old one, as the reference's ``randint(0, 1)`` may). Unlabelled
    texts (label ``-1``) need ``reset_rate = 1``.
    """
    examples = _as_examples(data)
    rng = np.random.default_rng(seed)
    n = len(examples)
    n_cal = int(round(calibration_fraction * n))
    order = rng.permutation(n)
    held = set(order[:n_cal].tolist())
    calibration = [examples[i].text for i in sorted(held)]
    train_src = [e for i, e in enumerate(examples) if i not in held]
    if reset_rate < 1.0 and any(e.label < 0 for e in train_src):
        raise PeftshieldError(
            "reset_rate below 1 keeps some true labels, but the clean data has no labels; "
            "use reset_rate=1 or give labelled examples"
        )
    if any(e.label >= num_labels for e in train_src):
        raise PeftshieldError(f"the clean data has labels outside 0..{num_labels - 1}")
    train, n_reset = [], 0
    for e in train_src:
        reset = bool(rng.random() < reset_rate)
        label = int(rng.integers(num_labels)) if reset else e.label
        n_reset += reset
        train.append(Example(e.text, label))
    if len({e.label for e in train}) < 2:
        raise PeftshieldError(
            f"PSIM fit: {len(train)} training texts after holding out {n_cal} for calibration are too "
            "few (the reset labels hold a single class); give more clean texts"
        )
    return PSIMTrainingSet(train=train, calibration=calibration, n_reset=n_reset)


def _head_labels(folder: Path) -> int | None:
    """Number of classes of the head published in a model folder, or ``None`` if there is none."""
    from peftshield.tuning.trainer import HEAD_FILE

    path = folder / HEAD_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return int(handle.get_slice("weight").get_shape()[0])


def _fit_positions(config: Any, model_config: Any) -> Any:
    """Cap ``max_length`` so that the text plus the virtual tokens fit the position embeddings.

    Prompt tuning and P-tuning prepend their virtual tokens to the sequence; a text truncated at
    ``max_length`` then needs ``max_length + num_virtual_tokens`` positions, more than a small
    backbone has (the tiny test BERT has 64).
    """
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is None or config.max_length + config.n_prompt_tokens <= limit:
        return config
    return dataclasses.replace(config, max_length=int(limit) - config.n_prompt_tokens)


class PSIMDetector(Detector):
    """Poisoned Sample Identification Module (Zhao et al., NAACL Findings 2024, §3).

    Parameters (stored as given; checked by :meth:`check_params` when fitting):

    - ``backbone``: the suspect backbone — a registered name (``minilm``), a model folder (e.g. a
      poisoned full-model folder with ``head.safetensors``) or a hub id.
    - ``method``: the PEFT method of the module (paper: ``ptuning``); ``config``: overrides of the
      recipe in :data:`PSIM_RECIPES` (any key of the method's config).
    - ``head``: ``auto`` (keep a published head, else fresh), ``keep`` or ``fresh``.
    - ``reset_rate``: probability that a training label is replaced by a uniform random one
      (reference: 1.0, every label).
    - ``threshold``: a number (paper: 0.7) or ``"calibrated"``; ``target_frr``: the false-rejection
      rate the calibrated threshold aims at on the held-out clean texts.
    - ``calibration_fraction``: share of the clean data held out for the threshold (and, with a
      fixed threshold, to report its clean FRR); 0 trains on everything (fixed threshold only).
    - ``num_labels``: classes of the module (default: the published head's, else the labels', else 2).
    - ``pooling``: the vector the module's head reads (default: the backbone's own); for a foreign
      victim, the one the victim's head reads (:meth:`for_victim`).
    - ``seed``, ``device`` (``cpu``, ``cuda``, ``auto``), ``batch_size`` (scoring).

    Fitted attributes: ``threshold_``, ``backbone_fingerprint_``, ``backbone_ref_``, ``head_``,
    ``num_labels_``, ``config_``, ``calibration_frr_``, ``n_calibration_``, ``n_train_``,
    ``clean_score_mean_`` (mean clean confidence: near ``1 / num_labels_`` when PSIM works),
    ``fit_seconds_`` and ``module_`` (the trained classifier).
    """

    name: ClassVar[str] = "psim"
    score_kind: ClassVar[str | None] = "probabilities"
    _fitted_attributes: ClassVar[tuple[str, ...]] = (
        *Detector._fitted_attributes,
        "backbone_ref_",
        "head_",
        "num_labels_",
        "config_",
        "n_train_",
        "clean_score_mean_",
        "fit_seconds_",
    )

    def __init__(
        self,
        backbone: str = "minilm",
        method: str = "lora",
        config: dict[str, Any] | None = None,
        head: str = "auto",
        reset_rate: float = 1.0,
        threshold: float | str = 0.7,
        target_frr: float = 0.05,
        calibration_fraction: float = 0.2,
        num_labels: int | None = None,
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 128,
        pooling: str | None = None,
    ) -> None:
        self.backbone = backbone
        self.method = method
        self.config = config
        self.head = head
        self.reset_rate = reset_rate
        self.threshold = threshold
        self.target_frr = target_frr
        self.calibration_fraction = calibration_fraction
        self.num_labels = num_labels
        self.seed = seed
        self.device = device
        self.batch_size = batch_size
        self.pooling = pooling

    @classmethod
    def for_victim(cls, victim: Any, *, base: str | None = None, **params: Any) -> Self:
        """An unfitted PSIM detector for ``victim``: its base backbone, a head of its shape (PSIM §3).

        PSIM is trained on the suspect pretrained weights, which for a foreign victim are the base
        model under its adapter (or, for a fully fine-tuned classifier, its own encoder), with a head
        of the victim's number of classes reading the vector the victim's head reads
        (:mod:`peftshield.models.representation`). ``victim`` is any form
        :func:`peftshield.defenses.victim.load_victim` accepts (``base`` overrides an adapter's
        base); ``params`` are the other constructor parameters (a prompt-based victim's template and
        verbalizer join ``config``). The fitted detector records the
        base's fingerprint, and the guard refuses it beside a victim on another base.
        """
        from peftshield.defenses.victim import load_victim

        loaded = load_victim(victim, params.get("device", "cpu"), base=base)
        if loaded.base is None:
            raise PeftshieldError(
                "PSIM: this victim names no base backbone (an in-memory model without a peft base); "
                "give PSIMDetector(backbone=...) instead"
            )
        params.setdefault("num_labels", loaded.num_labels)
        params.setdefault("pooling", loaded.head_pooling)
        # A prompt-based decoder victim: the module reads the same template and verbalizer
        # (docs/design.md, "Decoder backbones"); it has no head to keep.
        recorded = loaded.run.get("config") or {}
        prompt = {k: recorded[k] for k in ("template", "verbalizer") if recorded.get(k) is not None}
        if prompt:
            params["config"] = {**prompt, **(params.get("config") or {})}
            params.setdefault("head", "fresh")
        return cls(backbone=loaded.base, **params)

    # -- parameters ----------------------------------------------------------------------------------

    def check_params(self) -> None:
        """Validate every parameter and the recipe (PSIM §3), before any data or model is loaded."""
        super().check_params()
        if self.head not in HEAD_CHOICES:
            raise PeftshieldError(
                f"unknown head option {self.head!r}; choose one of {', '.join(HEAD_CHOICES)}"
            )
        if not isinstance(self.reset_rate, int | float) or not 0.0 <= self.reset_rate <= 1.0:
            raise PeftshieldError(f"reset_rate must lie in [0, 1], got {self.reset_rate!r}")
        check_held_out(self.threshold, self.calibration_fraction)
        require_int_at_least("", "num_labels", self.num_labels, 2, optional=True)
        if self.config is not None and not isinstance(self.config, dict):
            raise PeftshieldError("config must be a dict of method config overrides")
        self.method_config()

    def method_config(self):
        """The module's training config: the PSIM recipe of ``method`` under the ``config`` overrides."""
        from peftshield.tuning.config import method_config

        recipe = PSIM_RECIPES.get(self.method, {})
        return method_config(self.method, {**recipe, **(self.config or {})})

    # -- fit ------------------------------------------------------------------------------------------

    def fit(
        self,
        clean: Sequence[Example] | Sequence[str],
        *,
        progress: bool | None = False,
    ) -> Self:
        """Train the module on ``clean`` data with reset labels and set the threshold (PSIM §3).

        ``clean`` is the defender's own data: texts, or :class:`Example` records whose labels are
        used only when ``reset_rate < 1``. A held-out part (``calibration_fraction``) is never
        trained on; it calibrates ``threshold_`` (or measures the fixed threshold's clean FRR).
        The module is trained with :func:`peftshield.tuning.trainer.tune`, without a dev set: with
        random labels a dev accuracy means nothing, so the last state is kept.
        """
        from peftshield.models.backbones import load_backbone
        from peftshield.tuning.trainer import tune
        from peftshield.utils.device import resolve_device

        self.check_params()
        config = self.method_config()
        examples = _as_examples(clean)
        backbone = load_backbone(self.backbone, pooling=self.pooling)
        published = _head_labels(Path(backbone.location))
        head = self.head if self.head != "auto" else ("keep" if published else "fresh")
        if head == "keep" and published is None:
            raise PeftshieldError(
                f"head='keep': the backbone {self.backbone!r} has no published head.safetensors"
            )
        labels = [e.label for e in examples if e.label >= 0]
        num_labels = (
            self.num_labels or (published if head == "keep" else None) or (max(labels) + 1 if labels else 2)
        )
        if head == "keep" and published != num_labels:
            raise PeftshieldError(f"the published head has {published} classes, not num_labels={num_labels}")
        num_labels = max(num_labels, 2)
        config = _fit_positions(config, backbone.encoder.config)
        data = psim_training_set(
            examples,
            num_labels=num_labels,
            reset_rate=float(self.reset_rate),
            calibration_fraction=float(self.calibration_fraction),
            seed=int(self.seed),
        )
        start = time.perf_counter()
        self.module_ = tune(
            backbone,
            data.train,
            [],
            config,
            num_labels=num_labels,
            seed=int(self.seed),
            device=resolve_device(self.device),
            head=head,
            progress=progress,
        )
        self.backbone_fingerprint_ = self.module_.backbone_fingerprint
        self.backbone_ref_ = self.backbone
        self.head_ = head
        self.num_labels_ = num_labels
        self.config_ = config.to_dict()
        self.n_train_ = len(data.train)
        calibration_scores = self._score(data.calibration) if data.calibration else None
        self._set_threshold(calibration_scores)
        self.clean_score_mean_ = None if calibration_scores is None else float(calibration_scores.mean())
        self.fit_seconds_ = time.perf_counter() - start
        self._check_unsure()
        return self

    def _check_unsure(self) -> None:
        """Warn when a fixed threshold rejects much clean data: the module is not unsure (§3)."""
        frr = getattr(self, "calibration_frr_", None)
        if self.threshold == CALIBRATED or frr is None or frr <= MAX_QUIET_FRR:
            return
        warnings.warn(
            f"psim: the fixed threshold {self.threshold_:g} rejects {100 * frr:.0f}% of the held-out clean "
            f"texts (mean clean confidence {self.clean_score_mean_:.3f}; uniform would be "
            f"{1.0 / self.num_labels_:.3f}): the module is not unsure on clean inputs of this backbone; "
            "calibrate the threshold instead (threshold='calibrated', --target-frr)",
            stacklevel=3,
        )

    # -- score ----------------------------------------------------------------------------------------

    def _score(self, texts: list[str]) -> np.ndarray:
        """Maximum softmax probability of the module per text (PSIM §3 confidence)."""
        from peftshield.models.inference import predict_outputs, softmax

        module = self.module_
        warn_truncation(module.tokenizer, texts, self.max_length, "psim")
        logits, _ = predict_outputs(
            module.model, module.tokenizer, texts, batch_size=int(self.batch_size), max_length=self.max_length
        )
        return softmax(logits).max(axis=-1)

    @property
    def max_length(self) -> int:
        """Token limit of the module's inputs (longer texts are truncated)."""
        if not hasattr(self, "module_"):
            self.check_fitted()
        config = _fit_positions(self.module_.config, self.module_.backbone.encoder.config)
        return int(config.max_length)

    # -- persistence ----------------------------------------------------------------------------------

    def _save_state(self, folder: Path) -> None:
        """Save the module as a peft adapter folder (head kept via ``modules_to_save``) in ``module/``."""
        from peftshield.tuning.trainer import save_tuned

        save_tuned(self.module_, folder / MODULE_DIR, extra={"psim": {"params": self.get_params()}})

    @classmethod
    def _from_record(
        cls,
        record: dict[str, Any],
        folder: Path,
        *,
        device: str | None = None,
        backbone: str | None = None,
    ) -> Self:
        """Reload a saved PSIM detector, refusing a backbone other than the one it was fitted on.

        ``backbone`` points the module at another copy of its backbone (a moved folder); its
        fingerprint must match the recorded one. ``device`` defaults to the CPU.
        """
        from peftshield.models.backbones import fingerprint, load_backbone
        from peftshield.tuning.config import config_from_dict
        from peftshield.tuning.trainer import TuneResult, load_tuned
        from peftshield.utils.device import resolve_device

        # The device is where this process runs, not where the detector was fitted: CPU unless told.
        detector = super()._from_record(on_device(record, device), folder)
        expected = getattr(detector, "backbone_fingerprint_", None)
        try:
            tuned = load_tuned(folder / MODULE_DIR, device=resolve_device(detector.device), backbone=backbone)
        except PeftshieldError as err:
            raise PeftshieldError(f"PSIM detector {folder}: {err}") from None
        if backbone is not None and tuned.run.get("kind") == "full":
            got = fingerprint(load_backbone(backbone).encoder)
            if expected and got != expected:
                raise PeftshieldError(
                    f"PSIM detector {folder} was fitted on another backbone than {backbone!r} "
                    f"(fingerprint {expected[:12]} vs {got[:12]})"
                )
        recorded = tuned.run.get("backbone", {}).get("fingerprint")
        if expected and recorded and expected != recorded:
            raise PeftshieldError(
                f"{folder} is inconsistent: detector.json and the module name different backbones"
            )
        detector.module_ = TuneResult(
            model=tuned.model,
            tokenizer=tuned.tokenizer,
            backbone=tuned.backbone,
            config=config_from_dict(tuned.run["config"]),
            num_labels=int(tuned.run["num_labels"]),
            history=list(tuned.run.get("history", [])),
            train_seconds=float(tuned.run.get("train_seconds", 0.0)),
            backbone_fingerprint=recorded or expected or "",
        )
        return detector
