"""The detector contract (docs/design.md: scikit-learn style), checked on every detector we ship.

Every shipped detector - PSIM, STRIP, RAP, ONION and the LMSanitator ``PVMonitor`` - plus a minimal
test detector is built on tiny in-process models and run through
:func:`peftshield.testing.check_detector` and the tests below. Add a detector to ``FACTORIES`` with a
function that builds it unfitted; every test then runs on it.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import pytest
from conftest import toy_examples
from test_psim import TRIGGER, planted

from peftshield.data.triggers import insert_trigger
from peftshield.defenses.base import Detector, NotFittedError, load_detector, register_detector
from peftshield.errors import PeftshieldError
from peftshield.testing import DetectorContractError, check_detector


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


_MODELS: dict[str, str] = {}


def tiny_victim(tmp_path_factory) -> str:
    """A tiny BERT fully fine-tuned for one epoch on toy sentiment (STRIP / RAP / monitor victim)."""
    if "victim" not in _MODELS:
        from peftshield.models.tiny import build_tiny_bert
        from peftshield.tuning.config import method_config
        from peftshield.tuning.trainer import save_tuned, tune

        root = tmp_path_factory.mktemp("contract")
        backbone = build_tiny_bert(root / "bert", seed=0, pooling="mean")
        config = method_config("full", {"epochs": 1, "batch_size": 16, "max_length": 32})
        result = tune(str(backbone), toy_examples(64, seed=5), [], config, seed=0, progress=False)
        _MODELS["victim"] = str(save_tuned(result, root / "victim"))
    return _MODELS["victim"]


def pv_file(tmp_path_factory) -> str:
    """Two random +-1 PVs as wide as the tiny victim's output, in the scan's PV file format."""
    if "pvs" not in _MODELS:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoConfig

        hidden = AutoConfig.from_pretrained(tiny_victim(tmp_path_factory)).hidden_size
        pvs = torch.where(torch.rand(2, hidden, generator=torch.Generator().manual_seed(0)) > 0.5, 1.0, -1.0)
        path = tmp_path_factory.mktemp("pvs") / "pvs.safetensors"
        save_file({"pvs": pvs}, str(path))
        _MODELS["pvs"] = str(path)
    return _MODELS["pvs"]


def tiny_lm(tmp_path_factory) -> str:
    """An untrained tiny Llama (ONION's perplexity model)."""
    if "lm" not in _MODELS:
        from peftshield.models.tiny_lm import build_tiny_llama

        _MODELS["lm"] = str(build_tiny_llama(tmp_path_factory.mktemp("lm") / "llama", seed=0))
    return _MODELS["lm"]


def _psim(threshold, tmp_path_factory):
    from peftshield.defenses.psim import PSIMDetector

    return PSIMDetector(planted(tmp_path_factory), threshold=threshold, target_frr=0.1)


def _strip(threshold, tmp_path_factory):
    from peftshield.defenses.strip import STRIPDetector

    return STRIPDetector(tiny_victim(tmp_path_factory), threshold=threshold, target_frr=0.1, repeat=2)


def _rap(threshold, tmp_path_factory):
    from peftshield.defenses.rap import RAPDetector

    return RAPDetector(
        tiny_victim(tmp_path_factory), rap_word="mn", epochs=1, threshold=threshold, target_frr=0.1
    )


def _onion(threshold, tmp_path_factory):
    from peftshield.defenses.onion import ONIONDetector

    return ONIONDetector(lm=tiny_lm(tmp_path_factory), threshold=threshold, target_frr=0.1, max_length=24)


def _monitor(threshold, tmp_path_factory):
    from peftshield.defenses.lmsanitator.monitor import PVMonitor

    return PVMonitor(
        tiny_victim(tmp_path_factory), pv_file(tmp_path_factory), threshold=threshold, target_frr=0.1
    )


FACTORIES = {
    "wordcount": lambda threshold, _: WordCountDetector(threshold=threshold),
    "psim": _psim,
    "strip": _strip,
    "rap": _rap,
    "onion": _onion,
    "lmsanitator": _monitor,
}

CLEAN = [e.text for e in toy_examples(200, seed=31)]
TEXTS = [e.text for e in toy_examples(30, seed=8)] + ["cf the movie cf was good"]


def _triggered(n: int = 30) -> list[str]:
    return [e.text for e in insert_trigger(toy_examples(n, seed=9), TRIGGER, seed=4)]


#: Detectors whose tiny test model carries a backdoor the detector must see (the others are
#: built on untrained or unpoisoned tiny models, where "higher = more suspicious" cannot be tested).
SEES_THE_TRIGGER = {"wordcount", "psim"}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_every_shipped_detector_passes_check_detector(kind, tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = check_detector(
            lambda: FACTORIES[kind]("calibrated", tmp_path_factory),
            CLEAN,
            texts=TEXTS,
            triggered=_triggered() if kind in SEES_THE_TRIGGER else None,
        )
    assert fitted.is_fitted() and fitted.name == kind


def test_check_detector_names_the_broken_rule():
    """The check is not a rubber stamp: each planted defect is reported by its rule."""

    class SetsStateEarly(WordCountDetector):
        def __init__(self, words: str = "cf mn", threshold=0.5, target_frr: float = 0.05):
            super().__init__(words, threshold, target_frr)
            self.vocabulary_ = words.split()

    class NaNScores(WordCountDetector):
        def _score(self, texts):
            return np.full(len(texts), np.nan)

    class PredictsEverything(WordCountDetector):
        def predict(self, texts):
            return np.ones(len(self.score(texts)), dtype=bool)

    class RenamesParameters(WordCountDetector):
        def __init__(self, words: str = "cf mn", threshold=0.5, target_frr: float = 0.05):
            super().__init__(words + " zz", threshold, target_frr)

    class LowerIsSuspicious(WordCountDetector):
        def _score(self, texts):
            return -super()._score(texts)

    cases = [
        (SetsStateEarly, "calibrated", "the constructor sets no fitted attribute"),
        (NaNScores, 0.5, "scores are finite"),  # calibration itself refuses NaN scores
        (PredictsEverything, "calibrated", r"predict\(texts\) == score\(texts\) > threshold_"),
        (RenamesParameters, "calibrated", "is an equal unfitted copy"),
        (LowerIsSuspicious, "calibrated", "higher = more suspicious"),
    ]
    for cls, threshold, rule in cases:
        with pytest.raises(DetectorContractError, match=rule):
            check_detector(lambda cls=cls, t=threshold: cls(threshold=t), CLEAN, triggered=_triggered())
    check_detector(lambda: WordCountDetector(threshold="calibrated"), CLEAN, triggered=_triggered())


def test_detector_base_class_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        Detector()  # type: ignore[abstract]

    class NoScore(Detector):
        def fit(self, clean):
            return self

    with pytest.raises(TypeError, match="abstract"):
        NoScore()  # type: ignore[abstract]


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
            _FITTED[request.param] = (detector, detector.fit(CLEAN))
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
