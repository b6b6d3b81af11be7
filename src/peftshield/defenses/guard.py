"""Guarded inference: a victim classifier behind one or more input detectors.

This is how PSIM is deployed (Zhao et al., NAACL Findings 2024, §3): every input goes through the
detector; a flagged input is rejected, the others get the victim's label. Several detectors can be
stacked (PSIM and the LMSanitator monitor, say): an input is rejected when any of them fires, and
the decision says which ones did.

Cost: each model makes one batched pass over all the texts, sorted by length
(:func:`peftshield.models.inference.predict_outputs`), so the overhead over undefended inference is
one forward pass per detector — the least a detector with its own PEFT module allows, since its
virtual tokens or adapters change every hidden state and nothing can be shared with the victim's
pass. With ``victim_on_rejected=False`` the victim skips the rejected texts.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peftshield.defenses.base import Detector, TruncationWarning, check_texts, warn_truncation
from peftshield.errors import PeftshieldError


@dataclass(frozen=True)
class GuardDecision:
    """The guard's answer for one text (PSIM §3: reject flagged inputs, label the others).

    ``label`` is the victim's label, or ``None`` when the text is rejected; ``reasons`` names the
    detectors that fired; ``scores`` holds every detector's score; ``victim_label`` is the victim's
    prediction even for a rejected text when it was computed (``None`` otherwise), which the
    defended metrics need.
    """

    label: int | None
    rejected: bool
    reasons: tuple[str, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)
    victim_label: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``label`` null when rejected)."""
        return {
            "label": self.label,
            "rejected": self.rejected,
            "reasons": list(self.reasons),
            "scores": dict(self.scores),
        }


@dataclass(frozen=True)
class GuardedBatch:
    """Array form of the guard's work on a list of texts (what the metrics read).

    ``victim_pred`` holds the victim's labels (``-1`` where the victim was skipped), ``scores``
    and ``flags`` one array per detector, ``rejected`` their union.
    """

    victim_pred: np.ndarray
    scores: dict[str, np.ndarray]
    flags: dict[str, np.ndarray]
    rejected: np.ndarray
    thresholds: dict[str, float]

    def decisions(self) -> list[GuardDecision]:
        """One :class:`GuardDecision` per text."""
        out = []
        names = list(self.scores)
        for i in range(len(self.rejected)):
            pred = int(self.victim_pred[i])
            victim = pred if pred >= 0 else None
            rejected = bool(self.rejected[i])
            out.append(
                GuardDecision(
                    label=None if rejected else victim,
                    rejected=rejected,
                    reasons=tuple(n for n in names if self.flags[n][i]),
                    scores={n: float(self.scores[n][i]) for n in names},
                    victim_label=victim,
                )
            )
        return out


def _name_detectors(detectors: Any) -> dict[str, Detector]:
    if isinstance(detectors, Detector):
        detectors = [detectors]
    if isinstance(detectors, Mapping):
        named = dict(detectors)
    else:
        named = {}
        for det in detectors:
            base, k = getattr(det, "name", "detector"), 2
            key = base
            while key in named:  # two PSIM modules become psim and psim_2
                key, k = f"{base}_{k}", k + 1
            named[key] = det
    if not named:
        raise PeftshieldError("a guard needs at least one detector")
    for key, det in named.items():
        if not isinstance(det, Detector):
            raise PeftshieldError(f"guard detector {key!r} is a {type(det).__name__}, not a Detector")
        det.check_fitted()
    return named


def _loader_takes_victim(folder: str | Path) -> bool:
    """Whether the detector type saved in ``folder`` is loaded with a ``victim`` (it queries one)."""
    import inspect

    from peftshield.defenses.base import detector_class, read_detector_record

    loader = detector_class(str(read_detector_record(folder)["type"]))._from_record
    return "victim" in inspect.signature(loader).parameters


class Guard:
    """A victim classifier plus detectors; rejects inputs any detector flags (PSIM §3 deployment).

    ``victim`` is any form :func:`peftshield.defenses.victim.load_victim` accepts: a folder
    written by ``peftshield tune``, a plain-peft adapter folder (``base`` overrides the base model
    its ``adapter_config.json`` names), a Hugging Face sequence-classification folder, a loaded
    :class:`~peftshield.tuning.trainer.TunedModel`, an in-memory ``(model, tokenizer)`` pair or a
    :class:`~peftshield.models.victims.LoadedVictim`. ``detectors`` is one fitted
    :class:`~peftshield.defenses.base.Detector`, a list (named after each detector's ``name``,
    repeats numbered) or a ``{name: detector}`` mapping. A detector fitted on another backbone than
    the victim's base is refused (fingerprints compared), unless ``check_backbone=False``.
    """

    def __init__(
        self,
        victim: Any,
        detectors: Detector | Sequence[Detector] | Mapping[str, Detector],
        *,
        batch_size: int = 128,
        check_backbone: bool = True,
        device: str = "cpu",
        base: str | None = None,
    ) -> None:
        from peftshield.defenses.victim import load_victim

        self.victim = load_victim(victim, device, base=base)
        self.detectors = _name_detectors(detectors)
        self.batch_size = batch_size
        if check_backbone:
            recorded = self.victim.base_fingerprint
            for det in self.detectors.values():
                det.check_backbone(recorded, what="the victim")

    @classmethod
    def from_folders(
        cls,
        victim: Any,
        detectors: Sequence[str | Path],
        *,
        device: str = "cpu",
        batch_size: int = 128,
        base: str | None = None,
    ) -> Guard:
        """Load a victim (any form, see the class) and detector folders, then build the guard."""
        from peftshield.defenses.base import load_detector
        from peftshield.defenses.victim import load_victim
        from peftshield.utils.device import resolve_device

        if not detectors:
            raise PeftshieldError("a guard needs at least one detector folder")
        torch_device = resolve_device(device)
        loaded_victim = load_victim(victim, str(torch_device), base=base)
        loaded = []
        for folder in detectors:
            # Detectors that query the victim (STRIP, RAP, the LMSanitator monitor) get the guard's
            # own, already-loaded victim: loaded once, and their loader checks it is theirs.
            shared = {"victim": loaded_victim} if _loader_takes_victim(folder) else {}
            loaded.append(load_detector(folder, device=str(torch_device), **shared))
        return cls(loaded_victim, loaded, batch_size=batch_size)

    def thresholds(self) -> dict[str, float]:
        """Each detector's fitted threshold."""
        return {name: float(det.threshold_) for name, det in self.detectors.items()}

    def _victim_pred(self, texts: list[str]) -> np.ndarray:
        warn_truncation(self.victim.tokenizer, texts, self.victim.max_length, "victim")
        return self.victim.logits(texts, batch_size=self.batch_size).argmax(axis=-1)

    def run(self, texts: Sequence[str], *, victim_on_rejected: bool = True) -> GuardedBatch:
        """Score ``texts`` with every detector and classify them with the victim, in batches.

        ``victim_on_rejected=False`` runs the victim only on the texts no detector flagged (the
        others get ``-1``), which saves the victim's pass on rejected inputs. Texts longer than a
        model's limit are truncated and one :class:`~peftshield.defenses.base.TruncationWarning`
        says so for the whole call.
        """
        texts = check_texts(texts)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncationWarning)
            scores = {name: det.score(texts) for name, det in self.detectors.items()}
            flags = {name: self.detectors[name].decide(s) for name, s in scores.items()}
            rejected = np.zeros(len(texts), dtype=bool)
            for f in flags.values():
                rejected |= f
            pred = np.full(len(texts), -1, dtype=np.int64)
            todo = np.arange(len(texts)) if victim_on_rejected else np.flatnonzero(~rejected)
            if todo.size:
                pred[todo] = self._victim_pred([texts[i] for i in todo])
        self._rewarn(caught, len(texts))
        return GuardedBatch(
            victim_pred=pred, scores=scores, flags=flags, rejected=rejected, thresholds=self.thresholds()
        )

    @staticmethod
    def _rewarn(caught: list[warnings.WarningMessage], total: int) -> None:
        """Pass other warnings on; merge the truncation warnings of all models into one."""
        truncations = []
        for w in caught:
            if isinstance(w.message, TruncationWarning):
                truncations.append(w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if truncations:
            worst = max(truncations, key=lambda m: m.n)
            limit = min(m.limit for m in truncations)
            warnings.warn(
                TruncationWarning(
                    f"guard: {worst.n} of {total} texts are longer than the models' token limit "
                    f"({limit}) and were truncated; a trigger beyond the limit is not seen",
                    n=worst.n,
                    total=total,
                    limit=limit,
                ),
                stacklevel=3,
            )

    def predict(self, texts: Sequence[str], *, victim_on_rejected: bool = False) -> list[GuardDecision]:
        """A label or a rejection (with the detectors that fired and all scores) per text."""
        return self.run(texts, victim_on_rejected=victim_on_rejected).decisions()
