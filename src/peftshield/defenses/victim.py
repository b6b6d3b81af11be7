"""Detectors that query the victim classifier itself (STRIP, RAP, ONION).

PSIM and the LMSanitator monitor carry a model of their own. The classic input-level baselines do
not: STRIP perturbs an input and watches how the *victim's* prediction moves (Gao et al. 2021),
RAP inserts a learned word and measures the drop of the *victim's* protected-class probability
(Yang et al., EMNLP 2021), ONION asks the victim again after removing outlier words (Qi et al.,
EMNLP 2021). :class:`VictimDetector` is what they share:

- the ``victim`` parameter: any form :func:`load_victim` accepts - a folder written by
  ``peftshield tune``, a plain-peft adapter folder (``base`` overrides its base model), a Hugging
  Face sequence-classification folder, a loaded :class:`~peftshield.tuning.trainer.TunedModel` or
  :class:`~peftshield.tuning.trainer.TuneResult`, or an in-memory ``(model, tokenizer)`` pair; a
  detector built on an in-memory victim can be used but not saved;
- two fingerprints: ``backbone_fingerprint_`` (the victim's base backbone, recorded in its
  ``run.json`` or computed from its base; the guard compares it with its own victim's) and
  ``victim_fingerprint_``, a sha256 over every weight of the victim (adapter and head included):
  a saved detector reloaded beside another victim, even one tuned on the same backbone, is refused,
  because its threshold (and RAP's learned word) belongs to the victim it was fitted on;
- the victim's logits in batches (:meth:`VictimDetector.victim_logits`), with the shared
  truncation warning;
- the clean data: validated, then split (seeded) into the part the detector learns from and the
  part held out to calibrate its threshold (:meth:`VictimDetector._split_clean`);
- persistence: ``detector.json`` records the victim's folder (not a copy); loading takes
  ``victim=`` to use an already-loaded victim (the guard passes its own) or a moved folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from peftshield.data.records import Example
from peftshield.defenses.base import Detector, check_held_out, check_texts, on_device, warn_truncation
from peftshield.errors import PeftshieldError
from peftshield.models.victims import DEFAULT_MAX_LENGTH, LoadedVictim
from peftshield.utils.validate import require_int_at_least

__all__ = ["DEFAULT_MAX_LENGTH", "LoadedVictim", "VictimDetector", "load_victim"]


def load_victim(
    victim: Any, device: str = "cpu", max_length: int | None = None, *, base: str | None = None
) -> LoadedVictim:
    """Turn any accepted ``victim`` form into a :class:`LoadedVictim` (docs/design.md, "The artifacts
    users bring").

    Forms: a folder written by ``peftshield tune`` (it has ``run.json``), a plain-peft adapter
    folder (``adapter_config.json``; ``base`` overrides its base model), a Hugging Face
    sequence-classification folder (``config.json``), a loaded
    :class:`~peftshield.tuning.trainer.TunedModel` or :class:`~peftshield.tuning.trainer.TuneResult`,
    an in-memory ``(model, tokenizer)`` pair, or a :class:`LoadedVictim` (returned as it is). A
    folder is loaded on ``device``; ``max_length`` replaces the victim's token limit.
    """
    from peftshield.models.victims import load_adapter_folder, load_classifier_folder, victim_from_pair
    from peftshield.utils.device import resolve_device

    if isinstance(victim, LoadedVictim):
        return victim if max_length is None else dataclasses.replace(victim, max_length=int(max_length))
    if isinstance(victim, str | Path):
        from peftshield.models.adapter_config import is_adapter_folder
        from peftshield.tuning.trainer import RUN_FILE, load_tuned

        folder = Path(victim)
        if not folder.is_dir():
            raise PeftshieldError(f"victim not found: {folder} is not a folder")
        torch_device = resolve_device(device)
        if (folder / RUN_FILE).is_file():
            tuned = load_tuned(folder, device=torch_device, backbone=base)
            return _from_tuned(tuned, str(folder.resolve()), max_length)
        if is_adapter_folder(folder):
            return load_adapter_folder(folder, base=base, device=torch_device, max_length=max_length)
        if (folder / "config.json").is_file():
            return load_classifier_folder(folder, device=torch_device, max_length=max_length)
        raise PeftshieldError(
            f"{folder} is not a victim: it has no run.json (peftshield tune), adapter_config.json (a peft "
            "adapter) or config.json (a Hugging Face classifier)"
        )
    if isinstance(victim, tuple | list) and len(victim) == 2:
        return victim_from_pair(victim[0], victim[1], max_length)
    if hasattr(victim, "model") and hasattr(victim, "tokenizer"):
        return _from_tuned(victim, "in-memory", max_length)
    raise PeftshieldError(
        "victim must be a tuned-model, peft adapter or Hugging Face classifier folder, a loaded TunedModel / "
        f"TuneResult or a (model, tokenizer) pair, got {type(victim).__name__}"
    )


def _from_tuned(tuned: Any, source: str, max_length: int | None) -> LoadedVictim:
    """A peftshield victim (:class:`TunedModel` or :class:`TuneResult`) as a :class:`LoadedVictim`."""
    run = dict(getattr(tuned, "run", None) or {})
    config = getattr(tuned, "config", None)  # a TuneResult carries its method config
    limit = max_length or getattr(tuned, "max_length", None) or getattr(config, "max_length", None)
    if not run and getattr(tuned, "backbone_fingerprint", None):
        run = {"backbone": {"fingerprint": tuned.backbone_fingerprint}}
    record = run.get("backbone") or {}
    backbone = getattr(tuned, "backbone", None)
    base = record.get("ref") or getattr(backbone, "location", None)
    num_labels = run.get("num_labels") or getattr(tuned, "num_labels", None)
    if num_labels is None:
        from peftshield.models.representation import unwrap

        num_labels = getattr(unwrap(tuned.model), "num_labels", 0)
    if not callable(tuned.model) or not callable(tuned.tokenizer):
        raise PeftshieldError("victim: the model and the tokenizer must both be callable")
    return LoadedVictim(
        model=tuned.model,
        tokenizer=tuned.tokenizer,
        max_length=int(limit or DEFAULT_MAX_LENGTH),
        run=run,
        kind="peftshield",
        source=source,
        base=base,
        num_labels=int(num_labels),
        base_fingerprint_known=record.get("fingerprint"),
    )


def recorded_fingerprint(victim: LoadedVictim) -> str | None:
    """The fingerprint of the victim's base backbone (recorded or computed; ``None`` if unknown)."""
    return victim.base_fingerprint


def weights_fingerprint(model: Any) -> str:
    """A sha256 over every weight of the victim (base, adapter and head) — its identity."""
    from peftshield.models.backbones import fingerprint

    return fingerprint(model)


def clean_texts(clean: Sequence[Example] | Sequence[str], what: str = "clean texts") -> list[str]:
    """The texts of ``clean`` (strings or :class:`Example` records), validated."""
    if clean is None or isinstance(clean, str):
        return check_texts(clean, what)
    return check_texts([getattr(x, "text", x) for x in clean], what)


def split_held_out(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``texts`` (seeded) into the part a detector learns from and the calibration part."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    n_cal = int(round(fraction * len(texts)))
    held = set(order[:n_cal].tolist())
    learn = [t for i, t in enumerate(texts) if i not in held]
    return learn, [texts[i] for i in sorted(held)]


class VictimDetector(Detector):
    """Base of detectors that score inputs with the victim classifier (STRIP, RAP, ONION).

    Subclasses store ``victim``, ``device``, ``batch_size``, ``max_length``,
    ``calibration_fraction`` and ``seed`` among their parameters, take their clean texts apart
    with :meth:`_split_clean`, call :meth:`_attach_victim` and use :meth:`victim_logits` to query
    the victim. Fitted attributes added here: ``victim_fingerprint_`` (weights of the victim) and
    ``victim_`` (the loaded victim; never saved).
    """

    _fitted_attributes: ClassVar[tuple[str, ...]] = (*Detector._fitted_attributes, "victim_fingerprint_")

    victim: Any
    device: str
    batch_size: int
    max_length: int | None
    calibration_fraction: float
    seed: int
    base: str | None

    def check_params(self) -> None:
        """Validate the shared parameters (threshold policy, batch size, token limit, held-out split)."""
        super().check_params()
        require_int_at_least("", "max_length", self.max_length, 2, optional=True)
        check_held_out(self.threshold, self.calibration_fraction)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise PeftshieldError(f"seed must be an integer, got {self.seed!r}")

    def _split_clean(self, clean: Sequence[Example] | Sequence[str]) -> tuple[list[str], list[str]]:
        """Check the parameters, then split the clean texts into the learned part and the calibration part.

        ``clean``: defender-owned clean texts (or :class:`Example` records; labels unused); a
        seeded ``calibration_fraction`` of them is held out for the threshold.
        """
        self.check_params()
        texts = clean_texts(clean)
        return split_held_out(texts, float(self.calibration_fraction), int(self.seed))

    # -- the victim ------------------------------------------------------------------------------

    def _attach_victim(self, victim: Any = None) -> LoadedVictim:
        """Load the victim (``self.victim`` unless another is given) and record its fingerprints."""
        loaded = load_victim(
            self.victim if victim is None else victim,
            self.device,
            self.max_length,
            base=getattr(self, "base", None),
        )
        self.victim_ = loaded
        self.backbone_fingerprint_ = recorded_fingerprint(loaded)
        self.victim_fingerprint_ = weights_fingerprint(loaded.model)
        return loaded

    def _loaded_victim(self) -> LoadedVictim:
        """The loaded victim (also while ``fit`` is still running)."""
        if not hasattr(self, "victim_"):
            raise PeftshieldError(
                f"this {self.name} detector has no victim loaded: fit it or load it with load_detector"
            )
        return self.victim_

    def _check_victim(self) -> LoadedVictim:
        self.check_fitted()
        return self._loaded_victim()

    def _warn_truncation(self, texts: Sequence[str]) -> None:
        """Warn once if some ``texts`` exceed the victim's token limit (checked before perturbing)."""
        victim = self._check_victim()
        warn_truncation(victim.tokenizer, texts, victim.max_length, self.name)

    def victim_logits(self, texts: Sequence[str], *, warn: bool = True) -> np.ndarray:
        """The victim's logits for ``texts`` (sorted-length batches of ``batch_size``)."""
        if warn:
            self._warn_truncation(texts)
        return self._check_victim().logits(list(texts), batch_size=int(self.batch_size))

    # -- persistence -----------------------------------------------------------------------------

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Save as a detector folder; the victim must be a folder path (recorded, not copied)."""
        if not isinstance(self.victim, str | Path):
            raise PeftshieldError(
                f"a {self.name} detector built on an in-memory victim cannot be saved; build it with "
                "the victim's folder path (peftshield tune --out)"
            )
        self.victim = str(Path(self.victim).resolve())
        return super().save(folder, overwrite=overwrite)

    @classmethod
    def _from_record(
        cls,
        record: dict[str, Any],
        folder: Path,
        *,
        device: str | None = None,
        victim: Any = None,
    ) -> Self:
        """Reload a saved detector and its victim; refuse a victim with other weights.

        ``victim`` replaces the recorded folder: a moved copy, or a victim already loaded (the guard
        passes its own, so the weights are loaded once). ``device`` defaults to the CPU.
        """
        detector = super()._from_record(on_device(record, device), folder)
        expected = getattr(detector, "victim_fingerprint_", None)
        try:
            loaded = load_victim(
                victim if victim is not None else detector.victim,
                detector.device,
                base=getattr(detector, "base", None),
            )
        except PeftshieldError as err:
            raise PeftshieldError(f"{cls.name} detector {folder}: {err}") from None
        got = weights_fingerprint(loaded.model)
        if expected and got != expected:
            raise PeftshieldError(
                f"the {cls.name} detector in {folder} was fitted on another victim (weights fingerprint "
                f"{expected[:12]} vs {got[:12]}); fit it again on this victim"
            )
        if detector.max_length is not None:
            loaded.max_length = int(detector.max_length)
        detector.victim_ = loaded
        detector._restore_state(folder)
        return detector

    def _restore_state(self, folder: Path) -> None:
        """Read the weights written by :meth:`_save_state` (nothing for a JSON-only state)."""
        return None
