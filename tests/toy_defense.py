"""A toy defence in one file plus one registration (issue 16): the grid, ``baseline fit`` and the
report must pick it up from the detector registry with no other edit anywhere.

Score: the share of a text's words never seen in the clean texts it was fitted on (a rare-word
trigger such as BadNets' "cf" is unseen in clean data). Not a real defence: a test fixture.
"""

from __future__ import annotations

import random
from typing import ClassVar, Self

import numpy as np

from peftshield.defenses.base import Detector, check_held_out, check_texts, register_detector


class ToyDetector(Detector):
    """Toy (tests only): the share of a text's words that the clean fitting texts never used."""

    name: ClassVar[str] = "toy"
    score_kind: ClassVar[str | None] = "a share of words"
    _fitted_attributes = (*Detector._fitted_attributes, "vocabulary_")

    def __init__(
        self,
        threshold="calibrated",
        target_frr: float = 0.05,
        calibration_fraction: float = 0.3,
        seed: int = 0,
    ):
        self.threshold = threshold
        self.target_frr = target_frr
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def fit(self, clean, progress=None) -> Self:
        self.check_params()
        check_held_out(self.threshold, self.calibration_fraction)
        texts = check_texts([getattr(x, "text", x) for x in clean], "clean texts")
        order = list(range(len(texts)))
        random.Random(self.seed).shuffle(order)
        n_held = int(round(self.calibration_fraction * len(texts)))
        held = [texts[i] for i in order[:n_held]]
        self.vocabulary_ = sorted({w for i in order[n_held:] for w in texts[i].lower().split()})
        self.backbone_fingerprint_ = None
        self._set_threshold(self._score(held) if held else None)
        return self

    def _score(self, texts: list[str]) -> np.ndarray:
        known = set(self.vocabulary_)
        return np.array([np.mean([w not in known for w in t.lower().split()]) for t in texts], dtype=float)


register_detector("toy", ToyDetector)
