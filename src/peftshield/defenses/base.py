"""The input-detector contract shared by every defence (docs/design.md: scikit-learn style detectors).

A detector answers "is this input carrying a trigger?" with a score per text (higher = more
suspicious) and a threshold. The contract follows scikit-learn's estimator rules:

- the constructor stores its parameters and does nothing else (no loading, no validation that
  needs data), so ``get_params`` can rebuild an unfitted copy;
- ``fit(clean_data, ...) -> self`` learns what the detector needs and sets the attributes that end
  in ``_``: at least ``threshold_`` and, for detectors that depend on a backbone,
  ``backbone_fingerprint_`` (see :func:`peftshield.models.backbones.fingerprint`);
- ``score(texts) -> np.ndarray`` and ``predict(texts) -> np.ndarray[bool]`` with
  ``predict(texts) == score(texts) > threshold_`` (strictly greater, the convention of
  :mod:`peftshield.evaluation.metrics`).

Threshold policy, shared by all detectors: a fixed number (the papers' values, e.g. PSIM's 0.7,
Zhao et al. 2024 §3; LMSanitator's 0.8) or ``"calibrated"``: the score at a target false-rejection
rate on clean held-out texts, computed with
:func:`peftshield.evaluation.metrics.calibrate_threshold` (OpenBackdoor's ``frr`` convention).
Calibration never sees poisoned data.

A fitted detector is saved as a folder holding ``detector.json`` (type, parameters, fitted
attributes, provenance) and its weights in safetensors form, written atomically. :func:`load_detector`
reads any registered detector type back.
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Self

import numpy as np

from peftshield.errors import PeftshieldError
from peftshield.utils.validate import non_finite_path, require_positive

DETECTOR_FILE = "detector.json"
DETECTOR_FORMAT = 1
CALIBRATED = "calibrated"

# Detector types that load_detector can read, as "module:Class" so that nothing heavy is imported
# until a folder of that type is actually loaded. Other defences add theirs with register_detector.
_REGISTRY: dict[str, str] = {
    "psim": "peftshield.defenses.psim:PSIMDetector",
    "lmsanitator": "peftshield.defenses.lmsanitator.monitor:PVMonitor",
    "strip": "peftshield.defenses.strip:STRIPDetector",
    "rap": "peftshield.defenses.rap:RAPDetector",
    "onion": "peftshield.defenses.onion:ONIONDetector",
}


class NotFittedError(PeftshieldError):
    """A detector was used before ``fit`` (or ``load_detector``) gave it its fitted attributes."""


class TruncationWarning(UserWarning):
    """Some texts were longer than a model's token limit and were truncated before scoring.

    ``n`` texts out of ``total`` exceeded ``limit`` tokens; the guard merges the warnings of its
    models into one.
    """

    def __init__(self, message: str, n: int = 0, total: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.n, self.total, self.limit = n, total, limit


class DetectionTable(NamedTuple):
    """One row per input (cleanlab style: ``is_<name>`` flag and ``<name>_score``) and a summary."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def register_detector(name: str, target: str | type[Detector]) -> None:
    """Register a detector type for :func:`load_detector` (a class or a lazy ``"module:Class"``)."""
    if not name or name != name.lower() or name in _REGISTRY:
        raise ValueError(f"cannot register detector {name!r}: empty, not lower case, or already registered")
    _REGISTRY[name] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def registered_detectors() -> dict[str, str]:
    """Every registered detector type, ``name -> "module:Class"``: the built-ins, then in registration order.

    The one list the grid, ``peftshield baseline fit --defense`` and the report read: a defence is
    one file plus one :func:`register_detector` call.
    """
    return dict(_REGISTRY)


def adopt_registrations(registry: dict[str, str]) -> None:
    """Register every entry of ``registry`` (from :func:`registered_detectors`) not known here.

    A worker process calls it with its driver's registry, so that a detector registered in the
    driver (a user's own defence) can be fitted and loaded in the worker too.
    """
    for name, target in registry.items():
        _REGISTRY.setdefault(name, target)


def detector_class(name: str) -> type[Detector]:
    """The registered detector class for a ``detector.json`` type name."""
    if name not in _REGISTRY:
        raise PeftshieldError(f"unknown detector type {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    module, _, attr = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """Validate a list of input texts: a non-empty sequence of non-empty strings."""
    if isinstance(texts, str):
        raise PeftshieldError(f"{what} must be a list of strings, got a single string")
    if not isinstance(texts, Sequence) and not isinstance(texts, np.ndarray):
        raise PeftshieldError(f"{what} must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise PeftshieldError(f"no {what} to score (the input list is empty)")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise PeftshieldError(f"{what}[{i}] is a {type(text).__name__}, not a string")
        if not text.strip():
            raise PeftshieldError(f"{what}[{i}] is empty")
    return texts


def check_threshold_policy(threshold: Any, target_frr: Any) -> None:
    """Validate the shared threshold parameters (a finite number or ``"calibrated"``; FRR in (0, 1))."""
    if isinstance(threshold, str):
        if threshold != CALIBRATED:
            raise PeftshieldError(f"threshold must be a number or {CALIBRATED!r}, got {threshold!r}")
    elif isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number):
        raise PeftshieldError(f"threshold must be a number or {CALIBRATED!r}, got {threshold!r}")
    elif not math.isfinite(float(threshold)):
        raise PeftshieldError(f"threshold must be finite, got {threshold!r}")
    if isinstance(target_frr, bool) or not isinstance(target_frr, int | float | np.number):
        raise PeftshieldError(f"target_frr must be a number, got {target_frr!r}")
    if not 0.0 < float(target_frr) < 1.0:
        raise PeftshieldError(f"target_frr must lie strictly between 0 and 1, got {target_frr!r}")


def check_held_out(threshold: Any, calibration_fraction: Any) -> None:
    """Validate ``calibration_fraction`` (the share of clean data held out to set the threshold).

    It must lie in ``[0, 1)``, and above 0 when the threshold is calibrated (a calibrated threshold
    needs held-out clean texts; a fixed one only reports its clean FRR on them).
    """
    if (
        isinstance(calibration_fraction, bool)
        or not isinstance(calibration_fraction, int | float)
        or not 0.0 <= calibration_fraction < 1.0
    ):
        raise PeftshieldError(f"calibration_fraction must lie in [0, 1), got {calibration_fraction!r}")
    if threshold == CALIBRATED and calibration_fraction <= 0.0:
        raise PeftshieldError("a calibrated threshold needs held-out clean texts: calibration_fraction > 0")


def on_device(record: dict[str, Any], device: str | None, default: str | None = "cpu") -> dict[str, Any]:
    """A copy of a ``detector.json`` record whose ``device`` parameter is where this process runs.

    The recorded device is where the detector was fitted; a loader takes ``device`` (``None``:
    ``default``, the CPU unless the detector keeps its recorded device with ``default=None``).
    """
    params = dict(record["params"])
    if device is not None:
        params["device"] = device
    elif default is not None:
        params["device"] = default
    return {**record, "params": params}


def warn_truncation(tokenizer: Any, texts: Sequence[str], max_length: int, who: str) -> int:
    """Warn once (one :class:`TruncationWarning`) if some texts exceed ``max_length`` tokens.

    Returns how many texts are truncated. Counts include the special tokens the model adds.
    """
    # This check replaces the tokenizer's own "sequence length is longer than ..." log line, which
    # says nothing about truncation and would repeat in every length sort; mark it as shown.
    shown = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(shown, dict):
        shown["sequence-length-is-longer-than-the-specified-maximum"] = True
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    n = sum(length > max_length for length in lengths)
    if n:
        warnings.warn(
            TruncationWarning(
                f"{who}: {n} of {len(texts)} texts are longer than {max_length} tokens and were truncated "
                f"(the longest has {max(lengths)}); a trigger beyond the limit is not seen",
                n=n,
                total=len(texts),
                limit=max_length,
            ),
            stacklevel=3,
        )
    return n


class Detector(ABC):
    """Base of all input detectors: the scikit-learn contract plus the shared threshold policy.

    Subclasses set ``name`` (the ``detector.json`` type and the column prefix in tables), take
    ``threshold`` and ``target_frr`` constructor parameters, implement :meth:`fit` (which must call
    :meth:`_set_threshold` with scores of clean held-out texts, or with ``None`` when the threshold
    is fixed and no held-out data exists) and :meth:`_score`, and, to be saved, :meth:`_save_state`
    and :meth:`_from_record`.
    """

    name: ClassVar[str] = "detector"
    # What the scores are, when they live in [0, 1] (a fixed threshold outside it is a mistake).
    score_kind: ClassVar[str | None] = None
    #: Attributes (ending in ``_``) written to ``detector.json`` and restored on load.
    _fitted_attributes: ClassVar[tuple[str, ...]] = (
        "threshold_",
        "backbone_fingerprint_",
        "calibration_frr_",
        "n_calibration_",
    )

    threshold: float | str
    target_frr: float

    # -- parameters (scikit-learn style) ----------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind not in skip]

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, as given (``type(self)(**get_params())`` is an unfitted copy)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def check_params(self) -> None:
        """Validate the parameters without touching data (``fit`` calls it first; the CLI earlier)."""
        check_threshold_policy(self.threshold, self.target_frr)
        if (
            self.score_kind
            and not isinstance(self.threshold, str)
            and not 0.0 <= float(self.threshold) <= 1.0
        ):
            raise PeftshieldError(
                f"{self.name} scores are {self.score_kind}: threshold must be in [0, 1], got {self.threshold}"
            )
        require_positive("", "batch_size", getattr(self, "batch_size", 1), integer=True)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -- the contract -------------------------------------------------------------------------------

    @abstractmethod
    def fit(self, clean: Any, *args: Any, **kwargs: Any) -> Self:
        """Learn from clean (defender-owned) data; set ``threshold_`` and the other ``_`` attributes."""

    @abstractmethod
    def _score(self, texts: list[str]) -> np.ndarray:
        """Scores of validated texts, shape ``(n,)``, higher = more suspicious."""

    def is_fitted(self) -> bool:
        """Whether ``fit`` (or loading) has set ``threshold_``."""
        return hasattr(self, "threshold_")

    def check_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless the detector is fitted."""
        if not self.is_fitted():
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(clean_data) or load_detector(folder)"
            )

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Suspicion score per text, shape ``(n,)``; higher = more likely to carry a trigger."""
        self.check_fitted()
        return np.asarray(self._score(check_texts(texts)), dtype=float)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Boolean flag per text: ``score(texts) > threshold_``."""
        return self.decide(self.score(texts))

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Apply the fitted threshold to scores already computed (``scores > threshold_``)."""
        self.check_fitted()
        return np.asarray(scores, dtype=float) > self.threshold_

    def check_backbone(self, fingerprint: str | None, what: str = "the model") -> None:
        """Refuse to work beside a model built on another backbone than the one fitted on.

        ``fingerprint`` is the backbone fingerprint recorded by the other artifact (``None`` when
        unknown: nothing to check). Detectors without a backbone have ``backbone_fingerprint_``
        ``None`` and accept any.
        """
        self.check_fitted()
        mine = getattr(self, "backbone_fingerprint_", None)
        if mine and fingerprint and mine != fingerprint:
            raise PeftshieldError(
                f"the {self.name} detector was fitted on another backbone than {what} "
                f"(fingerprint {mine[:12]} vs {fingerprint[:12]}); fit the detector on {what}'s backbone"
            )

    # -- thresholds ---------------------------------------------------------------------------------

    def _set_threshold(self, clean_scores: np.ndarray | None) -> None:
        """Set ``threshold_`` by the policy; record the FRR it gives on the clean held-out scores.

        Calibrated: the score at ``target_frr`` on ``clean_scores`` (never poisoned data).
        Fixed: the given number; the held-out FRR is still recorded when scores are given, so a
        user sees at once what the paper's threshold costs on this backbone.
        """
        from peftshield.evaluation.metrics import calibrate_threshold

        scores = None if clean_scores is None else np.asarray(clean_scores, dtype=float)
        if scores is not None and not np.isfinite(scores).all():
            bad = int(np.count_nonzero(~np.isfinite(scores)))
            raise PeftshieldError(
                f"{self.name}: {bad} of {scores.size} clean scores are NaN or infinite (did the model "
                "diverge?); refusing a detector that could never reject"
            )
        if self.threshold == CALIBRATED:
            if scores is None or scores.size == 0:
                raise PeftshieldError("a calibrated threshold needs clean held-out texts")
            if math.floor(self.target_frr * scores.size + 1e-9) == 0:
                warnings.warn(
                    f"{self.name}: {scores.size} calibration texts are too few for target FRR "
                    f"{self.target_frr} (need at least {math.ceil(1 / self.target_frr)}); the threshold "
                    "is the highest clean score and rejects no calibration text",
                    stacklevel=3,
                )
            self.threshold_ = calibrate_threshold(scores, self.target_frr)
        else:
            self.threshold_ = float(self.threshold)
        if scores is not None and scores.size:
            self.calibration_frr_ = float(np.mean(scores > self.threshold_))
            self.n_calibration_ = int(scores.size)
        else:
            self.calibration_frr_ = None
            self.n_calibration_ = 0

    # -- tables ---------------------------------------------------------------------------------------

    def detection_table(self, texts: Sequence[str], poisoned: Sequence[bool] | None = None) -> DetectionTable:
        """Score ``texts`` and return one row per text plus a summary (cleanlab's issue table).

        Rows: ``index``, ``text``, ``is_<name>`` (flagged), ``<name>_score`` and, when the ground
        truth ``poisoned`` is given, ``poisoned``. Summary: ``n``, ``n_flagged``, ``flag_rate``,
        ``threshold`` and, with ``poisoned`` holding both classes, the detection metrics of
        :func:`peftshield.evaluation.metrics.detection_metrics` and ``auroc``.
        """
        from peftshield.evaluation.metrics import auroc, detection_metrics

        texts = check_texts(texts)
        scores = self.score(texts)
        flags = self.decide(scores)
        truth = None
        if poisoned is not None:
            truth = np.asarray(poisoned)
            if truth.shape != (len(texts),):
                raise PeftshieldError(f"poisoned has {truth.size} entries for {len(texts)} texts")
            if truth.dtype != bool and not np.isin(truth, (0, 1)).all():
                raise PeftshieldError("poisoned must hold booleans (or 0/1)")
            truth = truth.astype(bool)
        rows = []
        for i, (text, s, f) in enumerate(zip(texts, scores, flags, strict=True)):
            row = {"index": i, "text": text, f"is_{self.name}": bool(f), f"{self.name}_score": float(s)}
            if truth is not None:
                row["poisoned"] = bool(truth[i])
            rows.append(row)
        summary: dict[str, Any] = {
            "detector": self.name,
            "n": len(texts),
            "n_flagged": int(flags.sum()),
            "flag_rate": float(flags.mean()),
            "threshold": float(self.threshold_),
        }
        if truth is not None and truth.any() and not truth.all():
            summary.update(detection_metrics(scores[~truth], scores[truth], self.threshold_))
            summary["auroc"] = auroc(scores[~truth], scores[truth])
        return DetectionTable(rows, summary)

    # -- persistence ----------------------------------------------------------------------------------

    def fitted_attributes(self) -> dict[str, Any]:
        """The JSON-ready fitted attributes (those listed in ``_fitted_attributes`` that are set)."""
        return {k: getattr(self, k) for k in self._fitted_attributes if hasattr(self, k)}

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the fitted detector to ``folder`` atomically: ``detector.json`` plus its weights."""
        from peftshield.utils.io import atomic_dir, write_json
        from peftshield.utils.runinfo import run_metadata

        self.check_fitted()
        fitted = self.fitted_attributes()
        bad = non_finite_path(fitted)
        if bad is not None:
            raise PeftshieldError(
                f"refusing to save the {self.name} detector: its fitted {bad} is NaN or infinite"
            )
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            self._save_state(tmp)
            write_json(
                tmp / DETECTOR_FILE,
                {
                    "type": self.name,
                    "format": DETECTOR_FORMAT,
                    "params": self.get_params(),
                    "fitted": fitted,
                    "meta": run_metadata(),
                },
            )
        return Path(folder)

    def _save_state(self, folder: Path) -> None:
        """Write the detector's weights (safetensors) into the temporary ``folder``."""
        # Detectors whose whole state fits in detector.json (a threshold, a word list) write nothing.
        return None

    @classmethod
    def _from_record(cls, record: dict[str, Any], folder: Path, **kwargs: Any) -> Self:
        """Rebuild a fitted detector from its ``detector.json`` record and folder."""
        detector = cls(**record["params"])
        for key, value in record.get("fitted", {}).items():
            setattr(detector, key, value)
        return detector


def read_detector_record(folder: str | Path) -> dict[str, Any]:
    """Read and check the ``detector.json`` of a detector folder."""
    from peftshield.utils.io import read_json

    folder = Path(folder)
    if not folder.is_dir():
        raise PeftshieldError(f"not a folder: {folder}")
    if not (folder / DETECTOR_FILE).is_file():
        raise PeftshieldError(f"{folder} is not a detector folder (no {DETECTOR_FILE})")
    record = read_json(folder / DETECTOR_FILE)
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict) or "type" not in record:
        raise PeftshieldError(f"{folder / DETECTOR_FILE} is incomplete (needs type and params)")
    if record.get("format", DETECTOR_FORMAT) > DETECTOR_FORMAT:
        raise PeftshieldError(f"{folder} was written by a newer peftshield (format {record['format']})")
    return record


def load_detector(folder: str | Path, **kwargs: Any) -> Detector:
    """Load any saved detector; ``kwargs`` go to its loader (e.g. ``device``, ``backbone``)."""
    record = read_detector_record(folder)
    cls = detector_class(str(record["type"]))
    return cls._from_record(record, Path(folder), **kwargs)
