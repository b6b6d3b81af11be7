"""The detector contract (docs/design.md: scikit-learn style), checked on every detector we ship.

Add a detector to ``FACTORIES`` with a function that builds it unfitted and the clean data to
fit it on; every test below then runs on it.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import pytest
from conftest import toy_examples
from test_psim import planted

from peftshield.defenses.base import Detector, NotFittedError, load_detector, register_detector
from peftshield.errors import PeftshieldError


class WordCountDetector(Detector):
    """A minimal detector (score = share of rare words) that exercises the base class alone."""

    name: ClassVar[str] = "wordcount"

    def __init__(self, words: str = "cf mn", threshold=0.5, target_frr: float = 0.05):
        self.words = words
        self.threshold = threshold
        self.target_frr = target_frr

    def fit(self, clean):
        self.check_params()
        texts = [getattr(x, "text", x) for x in clean]
        self.backbone_fingerprint_ = None
        # Every clean text is held out: this detector learns nothing but its threshold.
        self._set_threshold(self._score(texts))
        return self

    def _score(self, texts):
        # A tiny jitter by length keeps the clean scores distinct (no ties at the calibration cut).
        return np.array(
            [sum(w in self.words.split() for w in t.split()) / len(t.split()) + 1e-3 * len(t) for t in texts]
        )


try:
    register_detector("wordcount", WordCountDetector)
except ValueError:  # already registered by an earlier import of this module
    pass


def _wordcount(threshold):
    return WordCountDetector(threshold=threshold)


def _psim(threshold, tmp_path_factory):
    from peftshield.defenses.psim import PSIMDetector

    return PSIMDetector(planted(tmp_path_factory), threshold=threshold, target_frr=0.1)


FACTORIES = {
    "wordcount": lambda threshold, _: _wordcount(threshold),
    "psim": _psim,
}


_FITTED: dict[str, tuple[Detector, Detector]] = {}


@pytest.fixture(params=sorted(FACTORIES))
def make(request, tmp_path_factory):
    def build(threshold=0.7):
        return FACTORIES[request.param](threshold, tmp_path_factory)

    return build


@pytest.fixture(params=sorted(FACTORIES))
def fitted(request, tmp_path_factory) -> tuple[Detector, Detector]:
    """(the detector, what its fit returned), fitted once per type with a calibrated threshold."""
    if request.param not in _FITTED:
        detector = FACTORIES[request.param]("calibrated", tmp_path_factory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _FITTED[request.param] = (detector, detector.fit(toy_examples(200, seed=31)))
    return _FITTED[request.param]


def test_constructor_stores_parameters_only(make):
    detector = make()
    params = detector.get_params()
    assert params["threshold"] == 0.7
    clone = type(detector)(**params)
    assert clone.get_params() == params
    assert not [k for k in vars(detector) if k.endswith("_")], "no fitted attribute before fit"
    assert not detector.is_fitted()


def test_unfitted_detector_says_so(make):
    detector = make()
    for call in (detector.score, detector.predict, detector.detection_table):
        with pytest.raises(NotFittedError, match="not fitted"):
            call(["the movie was good"])
    with pytest.raises(NotFittedError):
        detector.save("never-written")


def test_fit_returns_self_and_sets_underscore_attributes(fitted):
    detector, returned = fitted
    assert returned is detector
    assert detector.is_fitted() and isinstance(detector.threshold_, float)
    assert hasattr(detector, "backbone_fingerprint_")
    fitted = detector.fitted_attributes()
    assert all(k.endswith("_") for k in fitted) and "threshold_" in fitted


def test_predict_is_score_above_threshold(fitted):
    detector = fitted[0]
    texts = [e.text for e in toy_examples(30, seed=8)] + ["cf the movie cf was good"]
    scores = detector.score(texts)
    assert scores.shape == (len(texts),) and scores.dtype == float
    flags = detector.predict(texts)
    assert flags.dtype == bool
    np.testing.assert_array_equal(flags, scores > detector.threshold_)
    with pytest.raises(PeftshieldError, match="empty"):
        detector.score([])
    with pytest.raises(PeftshieldError, match="single string"):
        detector.score("one text")


def test_calibrated_threshold_respects_the_target_frr(fitted):
    detector = fitted[0]
    assert detector.calibration_frr_ <= detector.target_frr
    assert detector.n_calibration_ > 0


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_target_frr_outside_the_open_interval_is_refused(make, bad):
    detector = make(threshold="calibrated")
    detector.target_frr = bad
    with pytest.raises(PeftshieldError, match="target_frr"):
        detector.fit(toy_examples(20))


def test_detection_table_rows_and_summary(fitted):
    detector = fitted[0]
    texts = ["the movie was good", "the film was bad", "cf the movie was good mn", "mn cf"]
    rows, summary = detector.detection_table(texts, poisoned=[False, False, True, True])
    name = detector.name
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert set(rows[0]) == {"index", "text", f"is_{name}", f"{name}_score", "poisoned"}
    assert [r[f"is_{name}"] for r in rows] == detector.predict(texts).tolist()
    assert summary["n"] == 4 and summary["threshold"] == detector.threshold_
    assert {"frr", "far", "precision", "recall", "f1", "auroc"} <= set(summary)
    rows, summary = detector.detection_table(texts)
    assert "poisoned" not in rows[0] and "auroc" not in summary


def test_save_and_load_round_trip(fitted, tmp_path):
    detector = fitted[0]
    folder = detector.save(tmp_path / "detector")
    loaded = load_detector(folder)
    assert type(loaded) is type(detector) and loaded.get_params() == detector.get_params()
    for key in ("threshold_", "backbone_fingerprint_", "calibration_frr_", "n_calibration_"):
        assert getattr(loaded, key) == getattr(detector, key)
    texts = [e.text for e in toy_examples(10, seed=2)]
    np.testing.assert_allclose(loaded.score(texts), detector.score(texts), atol=1e-6)


def test_a_folder_that_is_not_a_detector_is_refused(tmp_path):
    with pytest.raises(PeftshieldError, match="not a folder"):
        load_detector(tmp_path / "missing")
    with pytest.raises(PeftshieldError, match="no detector.json"):
        load_detector(tmp_path)
    (tmp_path / "detector.json").write_text('{"type": "nosuch", "params": {}}')
    with pytest.raises(PeftshieldError, match="unknown detector type"):
        load_detector(tmp_path)
