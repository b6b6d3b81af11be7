"""STRIP for text: a triggered input stays confidently classified when its words are swapped.

Gao et al., "Design and Evaluation of a Multi-Domain Trojan Detection Method on Deep Neural
Networks" (STRIP-ViTA, IEEE TDSC 2021), the text version of STRIP (Gao et al., ACSAC 2019). A
backdoor's trigger dominates the victim's decision, so replacing many of an input's words with
words of other clean texts leaves the prediction of a triggered input in place, with low entropy,
while a clean input's prediction wanders. Each input is perturbed ``repeat`` times; its score is
the *negative* mean entropy (in nats) of the victim's softmax over the copies, so that higher means
more suspicious, as the detector contract requires (:mod:`peftshield.defenses.base`).

How a copy is made (the facts from the two reference implementations, docs/design.md, "Deviations
from the papers"): replacement words come from held-out clean texts ranked by TF-IDF. For one copy,
one held-out text is drawn at random and its words are taken in decreasing TF-IDF order; ``max(1,
int(n_words * swap_ratio))`` distinct word positions of the input, drawn at random, receive them in
turn.

Where the paper, its code and this implementation differ:

- Reference settings differ between the two codes. OpenBackdoor's ``STRIPDefender`` (thunlp,
  NeurIPS'22 D&B): 5 copies, swap ratio 0.5, scikit-learn TF-IDF with English stop words removed,
  over all clean dev texts, log2 entropy, FRR 1 %. The RAP authors' ``strip_vita.py``
  (lancopku/RAP): 20 copies, ratio 0.7, its own TF-IDF (``tf = count / length``,
  ``idf = ln(N / df) + 1``) over held-out texts of the labels *other than* the protected one, only
  inputs predicted as the protected label are scored. The paper's own text could not be checked
  here (UNVERIFIED which of these it prescribes). Defaults here: 5 copies, ratio 0.5 (the
  reference named in our issue), smoothed TF-IDF (``idf = ln((1 + N) / (1 + df)) + 1``) over all
  held-out texts whatever their label (no labels needed), every input scored.
- OpenBackdoor draws the swapped positions *with* replacement (fewer than ``m`` words change) and,
  when the held-out text has fewer than ``m`` words, continues with words that are not in it (zero
  TF-IDF columns of the whole vocabulary); ``int(n * 0.5)`` is 0 for a one-word input, which is
  then not perturbed at all. Here positions are distinct (as in ``strip_vita.py``), a held-out
  text with fewer ranked words than needed is cycled, and at least one word is always swapped.
- OpenBackdoor averages the entropies with ``reshape(entropy, (repeat, -1)).mean(0)`` over copies
  laid out input by input, so each "mean" mixes copies of *different* inputs (a bug: scores are
  smeared across neighbouring inputs). Here each input averages its own copies.
- No stop-word list: stop words have a low IDF and rank last anyway; tokens made only of
  punctuation are left out of the pool (``strip_vita.py`` drops a list of symbols).
- Randomness: each input's copies are drawn from a generator seeded by ``seed`` and a hash of the
  text, so an input's score does not depend on the other inputs of the call (the reference draws
  from one global stream). The threshold is calibrated on a held-out part of the clean data that
  the pool does not contain (``calibration_fraction``); both references calibrate on the same texts
  their pool comes from.

Measured on tiny test victims (``tests/test_baselines.py``; dirty-label "cf" backdoor, ASR 1.0,
seeds 0-1, defaults, threshold calibrated for 10 % FRR on 60 held-out texts): AUROC 0.915-0.925
and 76-77 % of triggered inputs caught on a victim with 25 % label noise (CACC 0.84); AUROC 0.70
on one with 10 % noise (CACC 0.98), whose clean predictions survive the swaps almost as
confidently as triggered ones (median clean confidence 0.985): STRIP needs clean predictions that
a swap of half the words can unsettle. With ratio 0.5, the trigger word itself is swapped out of
about half of the copies, which pulls triggered inputs' entropy up; that is the reference's
setting, not tuned here.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np

from peftshield.data.records import Example
from peftshield.defenses.base import CALIBRATED
from peftshield.defenses.victim import VictimDetector
from peftshield.errors import PeftshieldError
from peftshield.utils.validate import require_positive

#: Reference settings (OpenBackdoor ``STRIPDefender``).
PAPER_REPEAT = 5
PAPER_SWAP_RATIO = 0.5

_PUNCTUATION_ONLY = re.compile(r"^[\W_]+$")


def tfidf_pool(texts: Sequence[str]) -> list[list[str]]:
    """Each text's distinct words ranked by decreasing TF-IDF (ties: first occurrence first).

    Words are whitespace tokens, lower-cased; tokens made only of punctuation are dropped.
    ``tf = count / n_words`` of the text, ``idf = ln((1 + N) / (1 + df)) + 1`` over the ``N`` texts.
    Texts with no word left give no entry.
    """
    docs = []
    for text in texts:
        words = [w.lower() for w in text.split() if not _PUNCTUATION_ONLY.match(w)]
        if words:
            docs.append(words)
    df: Counter[str] = Counter()
    for words in docs:
        df.update(set(words))
    n = len(docs)
    pool = []
    for words in docs:
        counts = Counter(words)
        first = {w: i for i, w in reversed(list(enumerate(words)))}
        weight = {w: c / len(words) * (math.log((1 + n) / (1 + df[w])) + 1.0) for w, c in counts.items()}
        pool.append(sorted(counts, key=lambda w: (-weight[w], first[w])))
    return pool


def text_seed(seed: int, text: str) -> np.random.Generator:
    """A generator fixed by ``seed`` and the text (independent of the other inputs of a call)."""
    digest = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, digest])


def perturb(text: str, pool: Sequence[Sequence[str]], swap_ratio: float, rng: np.random.Generator) -> str:
    """One STRIP copy: ``max(1, int(n * swap_ratio))`` distinct positions get a held-out text's top words."""
    words = text.split()
    if not words:
        return text
    m = min(len(words), max(1, int(len(words) * swap_ratio)))
    piece = pool[int(rng.integers(len(pool)))]
    positions = rng.choice(len(words), size=m, replace=False)
    for i, pos in enumerate(positions):
        words[int(pos)] = piece[i % len(piece)]
    return " ".join(words)


def mean_entropy(logits: np.ndarray, repeat: int) -> np.ndarray:
    """Mean softmax entropy (nats) over each input's ``repeat`` consecutive copies, shape ``(n,)``."""
    from peftshield.models.inference import softmax

    probs = softmax(np.asarray(logits, dtype=np.float64))
    entropy = -(probs * np.log(np.clip(probs, 1e-300, None))).sum(-1)
    return entropy.reshape(-1, repeat).mean(-1)


class STRIPDetector(VictimDetector):
    """STRIP (Gao et al., TDSC 2021, text): negative mean prediction entropy under word swaps.

    Parameters (stored as given, checked by :meth:`check_params` when fitting):

    - ``victim``: the classifier to protect (see :mod:`peftshield.defenses.victim` for the forms).
    - ``repeat``: perturbed copies per input (reference 5); ``swap_ratio``: share of an input's
      words replaced in each copy (reference 0.5).
    - ``threshold``: ``"calibrated"`` (default; the clean-score quantile at ``target_frr``) or a
      fixed number on the score scale (a negative entropy, ``[-ln C, 0]`` for ``C`` classes).
    - ``calibration_fraction``: share of the clean texts held out of the word pool to calibrate the
      threshold (or, with a fixed one, to report its clean FRR).
    - ``seed``, ``device``, ``batch_size`` (victim forward passes), ``max_length`` (default: the
      victim's), ``base`` (the base model of a plain-peft adapter victim, overriding the one its
      ``adapter_config.json`` names).

    Fitted attributes: ``threshold_``, ``backbone_fingerprint_``, ``victim_fingerprint_``,
    ``pool_`` (each held-out text's words by decreasing TF-IDF), ``n_pool_``,
    ``calibration_frr_``, ``n_calibration_``, ``clean_entropy_mean_``, ``fit_seconds_``.
    """

    name: ClassVar[str] = "strip"
    _fitted_attributes: ClassVar[tuple[str, ...]] = (
        *VictimDetector._fitted_attributes,
        "pool_",
        "n_pool_",
        "clean_entropy_mean_",
        "fit_seconds_",
    )

    def __init__(
        self,
        victim: Any,
        repeat: int = PAPER_REPEAT,
        swap_ratio: float = PAPER_SWAP_RATIO,
        threshold: float | str = CALIBRATED,
        target_frr: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 128,
        max_length: int | None = None,
        base: str | None = None,
    ) -> None:
        self.victim = victim
        self.repeat = repeat
        self.swap_ratio = swap_ratio
        self.threshold = threshold
        self.target_frr = target_frr
        self.calibration_fraction = calibration_fraction
        self.seed = seed
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.base = base

    def check_params(self) -> None:
        """Validate the parameters before any model is loaded."""
        super().check_params()
        require_positive("", "repeat", self.repeat, integer=True)
        if isinstance(self.swap_ratio, bool) or not isinstance(self.swap_ratio, int | float):
            raise PeftshieldError(f"swap_ratio must be a number in (0, 1], got {self.swap_ratio!r}")
        if not 0.0 < float(self.swap_ratio) <= 1.0:
            raise PeftshieldError(f"swap_ratio must lie in (0, 1], got {self.swap_ratio!r}")

    def fit(self, clean: Sequence[Example] | Sequence[str], *, progress: bool | None = False) -> Self:
        """Build the word pool from clean texts and set the threshold on a held-out part of them.

        ``clean`` are defender-owned clean texts (or :class:`Example` records; labels unused).
        ``progress`` is accepted for a uniform interface and ignored (scoring is one batched pass).
        """
        pool_texts, calibration = self._split_clean(clean)
        pool = tfidf_pool(pool_texts)
        if not pool:
            raise PeftshieldError(
                f"strip: no word pool: the {len(pool_texts)} clean texts left after holding out "
                f"{len(calibration)} for calibration have no words; give more clean texts"
            )
        start = time.perf_counter()
        self._attach_victim()
        self.pool_ = pool
        self.n_pool_ = len(pool)
        self.threshold_ = 0.0  # provisional: score() needs a fitted detector
        scores = self._score(calibration) if calibration else None
        self._set_threshold(scores)
        self.clean_entropy_mean_ = None if scores is None else float(-scores.mean())
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def copies(self, text: str) -> list[str]:
        """The ``repeat`` perturbed copies of ``text`` that :meth:`score` feeds to the victim."""
        rng = text_seed(int(self.seed), text)
        return [perturb(text, self.pool_, float(self.swap_ratio), rng) for _ in range(int(self.repeat))]

    def _score(self, texts: list[str]) -> np.ndarray:
        """Negative mean prediction entropy of the victim over each text's perturbed copies."""
        self._warn_truncation(texts)
        perturbed = [copy for text in texts for copy in self.copies(text)]
        logits = self.victim_logits(perturbed, warn=False)
        return -mean_entropy(logits, int(self.repeat))
