"""Check that a detector keeps the input-detector contract (docs/design.md, "The detector contract").

:func:`check_detector` does for a peftshield detector what scikit-learn's ``check_estimator`` does
for an estimator: it runs the rules every detector must keep on the detector you give it, and
raises :class:`DetectorContractError` (an ``AssertionError``, so a test runner shows it as a
failure) naming the first rule that is broken. Every detector shipped here passes it
(``tests/test_detector_contract.py``); a third-party detector can be checked the same way::

    from peftshield.testing import check_detector

    def test_my_detector_keeps_the_contract():
        check_detector(lambda: MyDetector(threshold="calibrated"), clean_texts)

The rules (:class:`peftshield.defenses.base.Detector`):

1. the constructor stores its parameters and nothing else: no fitted (``_``) attribute before
   ``fit``, ``get_params`` gives back what was passed, ``type(d)(**d.get_params())`` is an equal
   unfitted copy;
2. an unfitted detector refuses ``score``, ``predict``, ``detection_table`` and ``save`` with
   :class:`~peftshield.defenses.base.NotFittedError`;
3. ``fit(clean) -> self`` sets a finite float ``threshold_`` and only ``_`` attributes in
   ``fitted_attributes()``; a calibrated threshold keeps its target FRR on the clean held-out texts;
4. ``score(texts)`` is a finite float array of shape ``(n,)``, the same on a second call;
   with ``triggered`` texts given, they score higher than the clean ones on average (higher = more
   suspicious);
5. ``predict(texts)`` is a boolean array equal to ``score(texts) > threshold_``;
6. bad input (an empty list, a bare string, a non-string item, an empty text) raises
   :class:`~peftshield.errors.PeftshieldError`, and so does a ``target_frr`` outside (0, 1);
7. ``save`` then :func:`~peftshield.defenses.base.load_detector` gives the same type, parameters,
   fitted attributes and scores.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from peftshield.defenses.base import Detector, NotFittedError, load_detector
from peftshield.errors import PeftshieldError

#: Texts a detector must refuse with a PeftshieldError: (description, input).
BAD_INPUTS: tuple[tuple[str, Any], ...] = (
    ("an empty list", []),
    ("a single string instead of a list", "one text"),
    ("a list holding a number", ["a text", 3]),
    ("a list holding an empty text", ["a text", "   "]),
)


class DetectorContractError(AssertionError):
    """A detector broke a rule of the detector contract (the message names the rule)."""


def _require(condition: bool, rule: str, detail: str = "") -> None:
    if not condition:
        raise DetectorContractError(f"{rule}{': ' + detail if detail else ''}")


def _same(a: Any, b: Any) -> bool:
    """Parameter equality that also holds for arrays / tensors (compared by identity first)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # arrays and tensors have no single truth value
        return False


def _raises(call: Callable[[], Any], error: type[BaseException]) -> BaseException | None:
    try:
        call()
    except error as err:
        return err
    return None


def check_detector(
    detector: Detector | Callable[[], Detector],
    clean_texts: Sequence[str],
    *,
    texts: Sequence[str] | None = None,
    triggered: Sequence[str] | None = None,
    fit_kwargs: Mapping[str, Any] | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    atol: float = 1e-6,
) -> Detector:
    """Run the detector contract on ``detector``; return the fitted detector, or raise.

    ``detector`` is an unfitted instance or a factory returning a fresh unfitted one (a factory is
    called more than once). ``clean_texts`` are what ``fit`` learns from (clean, defender-owned
    texts); ``texts`` are scored (default: the first 16 clean texts); ``triggered``, when given,
    are texts carrying a trigger, which must score higher on average. ``fit_kwargs`` go to every
    ``fit`` call; ``load_kwargs`` to :func:`~peftshield.defenses.base.load_detector`. Raises
    :class:`DetectorContractError` naming the first broken rule.
    """
    make = detector if callable(detector) and not isinstance(detector, Detector) else None
    first = make() if make else detector
    _require(isinstance(first, Detector), "a detector subclasses peftshield.defenses.base.Detector")
    assert isinstance(first, Detector)
    cls = type(first)
    fit_kwargs = dict(fit_kwargs or {})
    clean_texts = list(clean_texts)
    texts = list(texts) if texts is not None else clean_texts[:16]
    _require(bool(texts), "check_detector needs texts to score")

    # 1. the constructor stores parameters only
    params = first.get_params()
    fitted_early = sorted(k for k in vars(first) if k.endswith("_") and not k.startswith("_"))
    _require(not fitted_early, "the constructor sets no fitted attribute", ", ".join(fitted_early))
    _require(not first.is_fitted(), "a new detector is not fitted")
    clone = cls(**params)
    _require(
        all(_same(clone.get_params()[k], v) for k, v in params.items())
        and clone.get_params().keys() == params.keys(),
        "type(d)(**d.get_params()) is an equal unfitted copy",
    )

    # 2. unfitted use is refused
    with tempfile.TemporaryDirectory(prefix="peftshield-contract-") as tmp:
        calls: dict[str, Callable[[], Any]] = {
            "score": lambda: clone.score(texts),
            "predict": lambda: clone.predict(texts),
            "detection_table": lambda: clone.detection_table(texts),
            "save": lambda: clone.save(Path(tmp) / "never"),
        }
        for name, call in calls.items():
            _require(
                _raises(call, NotFittedError) is not None,
                f"an unfitted detector's {name} raises NotFittedError",
            )
        _require(not (Path(tmp) / "never").exists(), "an unfitted detector writes no folder")

    # 3. fit returns self and sets the fitted attributes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            returned = first.fit(clean_texts, **fit_kwargs)
        except PeftshieldError as err:  # the base class refuses non-finite clean scores at fit
            _require("NaN or infinite" not in str(err), "scores are finite", str(err))
            raise
    _require(returned is first, "fit returns self")
    _require(first.is_fitted(), "fit sets threshold_")
    threshold = first.threshold_
    _require(
        isinstance(threshold, float) and math.isfinite(threshold),
        "threshold_ is a finite float",
        repr(threshold),
    )
    fitted = first.fitted_attributes()
    _require(all(k.endswith("_") for k in fitted), "fitted attributes end in _", ", ".join(fitted))
    _require(first.get_params().keys() == params.keys(), "fit does not add or remove parameters")
    frr = getattr(first, "calibration_frr_", None)
    if first.threshold == "calibrated" and frr is not None:
        _require(
            frr <= first.target_frr + 1e-9,
            "a calibrated threshold keeps its target FRR on the clean held-out texts",
            f"{frr} > {first.target_frr}",
        )

    # 4. scores
    scores = first.score(texts)
    _require(isinstance(scores, np.ndarray), "score returns a NumPy array", type(scores).__name__)
    _require(scores.shape == (len(texts),), "score returns one score per text", f"shape {scores.shape}")
    _require(np.issubdtype(scores.dtype, np.floating), "scores are floats", str(scores.dtype))
    _require(
        bool(np.isfinite(scores).all()), "scores are finite", f"{int((~np.isfinite(scores)).sum())} are not"
    )
    again = first.score(texts)
    _require(
        bool(np.allclose(scores, again, atol=atol)), "scoring the same texts twice gives the same scores"
    )
    if triggered is not None:
        bad = first.score(list(triggered))
        _require(
            float(bad.mean()) > float(scores.mean()),
            "triggered texts score higher than clean ones (higher = more suspicious)",
            f"mean {bad.mean():.4g} vs {scores.mean():.4g}",
        )

    # 5. predict
    flags = first.predict(texts)
    _require(isinstance(flags, np.ndarray) and flags.dtype == bool, "predict returns a boolean array")
    _require(
        bool(np.array_equal(flags, first.score(texts) > first.threshold_)),
        "predict(texts) == score(texts) > threshold_",
    )

    # 6. bad input
    for what, bad_input in BAD_INPUTS:
        err = _raises(lambda bad_input=bad_input: first.score(bad_input), Exception)
        _require(
            isinstance(err, PeftshieldError),
            f"score refuses {what} with a PeftshieldError",
            "nothing raised" if err is None else f"raised {type(err).__name__}: {err}",
        )
    refusing = make() if make else cls(**params)
    refusing.target_frr = 1.5
    refusing.threshold = "calibrated"
    err = _raises(lambda: refusing.fit(clean_texts, **fit_kwargs), Exception)
    _require(
        isinstance(err, PeftshieldError),
        "fit refuses a target_frr outside (0, 1) with a PeftshieldError",
        "nothing raised" if err is None else f"raised {type(err).__name__}: {err}",
    )

    # 7. save / load round trip
    with tempfile.TemporaryDirectory(prefix="peftshield-contract-") as tmp:
        folder = first.save(Path(tmp) / "detector")
        loaded = load_detector(folder, **dict(load_kwargs or {}))
        _require(type(loaded) is cls, "load_detector gives back the saved type", type(loaded).__name__)
        saved_params, loaded_params = first.get_params(), loaded.get_params()
        _require(
            saved_params.keys() == loaded_params.keys()
            and all(_same(saved_params[k], loaded_params[k]) for k in saved_params),
            "a loaded detector has the saved parameters",
        )
        for key, value in first.fitted_attributes().items():
            _require(
                _same(getattr(loaded, key, None), value), "a loaded detector has the fitted attributes", key
            )
        _require(
            bool(np.allclose(loaded.score(texts), first.score(texts), atol=atol)),
            "a loaded detector gives the same scores",
        )
    return first
