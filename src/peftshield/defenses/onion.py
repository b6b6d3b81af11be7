"""ONION: delete the words whose removal makes a text much more fluent (Qi et al., EMNLP 2021).

*ONION: A Simple and Effective Defense Against Textual Backdoor Attacks* (arXiv 2011.10369), §3.
A rare-word trigger ("cf", "mn") is an outlier in otherwise fluent text, so a language model finds
the text far less perplexing without it. For a text of words ``w_1 … w_n`` with perplexity ``p_0``
and perplexity ``p_i`` once ``w_i`` is removed, the suspicion of ``w_i`` is ``f_i = p_0 − p_i``;
every word with ``f_i`` above a bar is removed before the victim predicts. ONION is a *correction*
defence: nothing is rejected, the victim classifies the cleaned text.

Here (docs/design.md "Contracts"): :class:`ONIONDetector` follows the shared detector contract, and

- :meth:`ONIONDetector.sanitize` is the correction (``text -> (clean_text, removed_words)``);
  :func:`sanitized_predictions` runs a victim on the cleaned texts and :func:`evaluate_onion`
  reports CACC / ASR before and after with :mod:`peftshield.evaluation.metrics`;
- the detection score of a text is its LARGEST word suspicion ``max_i f_i``. Why: it is exactly the
  statistic ONION compares with its bar, so with one threshold for both uses a text is flagged
  precisely when :meth:`~ONIONDetector.sanitize` removes a word from it, and calibrating the
  threshold at a target FRR on clean texts bounds the share of clean texts ONION alters. (The
  paper uses ONION only for correction and defines no text-level score.)
- A one-word text has no leave-one-out variant (removing its word leaves nothing to score); its
  word is not scored, never removed, and the text's score is 0.0 ("no evidence"). Sanitising
  never empties a text: when every scored word is above the bar, the least suspicious one stays.
- Perplexity is ``exp`` of the mean negative log-likelihood of the text's tokens, each predicted
  from a start token (the LM's ``<|endoftext|>``, else BOS, see
  :func:`peftshield.models.causal_lm.start_token_id`) and the tokens before it; padding is masked.
  Words are whitespace-separated tokens (``str.split``); the cleaned text joins the kept words
  with single spaces.

Cost: a text of ``n`` words needs its own perplexity and ``n`` leave-one-out perplexities.
:func:`word_suspicions` packs the variants of all the texts of a call (64 texts at a time) into
one list, drops duplicates, sorts it by length and runs it through the LM in batches of
``batch_size`` sequences, so a call makes about ``sum(n_i + 1) / batch_size`` forward passes with
little padding; and each variant runs only from the deleted word on, reusing its text's cached
keys and values for the words before it (:func:`peftshield.models.perplexity.shared_prefix_nll`),
which about halves the tokens the LM processes. Texts longer than ``max_length`` tokens are scored
on their longest word prefix that fits (a :class:`~peftshield.defenses.base.TruncationWarning`
says so); later words are kept unscored.

Measured (one torch thread on a shared, loaded 2-core CPU, so the numbers are pessimistic):
SmolLM2 on 32 ``movies`` snippets (17.8 words, 23 tokens on average) runs at 0.57-0.79 texts/s
with the shared prefix and 0.36-0.39 texts/s without (batch 16-32 alike; 64 is slower); the tiny
test Llama runs 500-700 template texts/s either way (its forward pass is too cheap for the
prefix reuse to pay off). On 32 snippets with "cf" inserted at a random position, SmolLM2 gave
"cf" the top suspicion in 29 of them; AUROC of the score against 32 clean snippets 0.87. At the
fixed bar 0, ONION altered 91 % of the clean snippets (2.6 words removed on average, 3.6 from the
triggered ones): OpenBackdoor's bar is costly with this LM; calibrate it (``fit`` warns).

Where the paper, its code and this implementation differ:

- LM: the paper uses GPT-2 (its released ``experiments/gptlm.py`` loads ``gpt2-large``);
  OpenBackdoor's ``ONIONDefender`` uses GPT-2 small (``gpt2``); ours defaults to SmolLM2-135M-
  Instruct (the only causal LM available offline, docs/design.md), dequantised from Q4_1. Perplexity
  scales differ between LMs, so bars do not transfer between them.
- Bar: the paper's own rule for choosing it could not be checked here (UNVERIFIED). The released
  ``test_defense.py`` sweeps ``bar`` over ``range(-100, 0)`` and removes a word when
  ``p_i − p_0 <= bar`` (that is ``f_i >= −bar``, bars 1…100 in our sign), reporting every bar on
  the test sets. OpenBackdoor removes a word when ``f_i >= bar`` with ``bar = 0`` by default (a
  TODO there says the threshold should come from clean data). Ours: ``f_i > threshold`` (strict,
  the convention of every peftshield detector), ``threshold=0.0`` by default (OpenBackdoor's bar)
  or ``"calibrated"``: the clean-score quantile at ``target_frr``.
- The released ``test_defense.py`` never scores the last space-separated token of a sentence and
  takes the perplexity with that token removed as the "whole sentence" perplexity (its data end
  in a separate punctuation token); ours scores every word against the whole text.
- Neither reference code prepends a start token, so the first token is never predicted and
  removing the first word changes which token goes unscored; ours scores every token.
- OpenBackdoor batches the ``n + 1`` variants of ONE text (32 per pass) and right-pads them with
  EOS, but its loss averages over the padding too, so a variant's perplexity depends on the other
  variants in its batch; ours masks padding (batched and unbatched scores agree, tested). Its
  ``lower()`` call is a no-op (the loop variable is reassigned), it truncates at 96 tokens, and
  it drops texts of at most one word from the corrected data (the data set shrinks); ours keeps
  them unchanged. thunlp/ONION scores one sentence per pass.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from peftshield.defenses.base import Detector, TruncationWarning, check_texts, on_device
from peftshield.errors import PeftshieldError
from peftshield.utils.validate import require_int_at_least

#: OpenBackdoor's default bar (``ONIONDefender(threshold=0)``).
DEFAULT_BAR = 0.0
#: Longest text scored, in LM tokens including the start token (OpenBackdoor truncates at 96).
DEFAULT_MAX_LENGTH = 128
#: ``fit`` warns when a fixed bar alters more than this share of the clean texts.
MAX_QUIET_FRR = 0.2


@dataclass(frozen=True)
class WordSuspicion:
    """ONION's view of one text: its words, their suspicions ``f_i = p_0 − p_i`` and the perplexities.

    ``suspicion`` and ``removal_perplexity`` have one entry per word, NaN where the word was not
    scored (a one-word text, words beyond the token limit). ``perplexity`` is ``p_0`` (NaN when
    nothing of the text could be scored).
    """

    text: str
    words: tuple[str, ...]
    suspicion: np.ndarray
    perplexity: float
    removal_perplexity: np.ndarray

    @property
    def n_scored(self) -> int:
        """Number of words that have a suspicion."""
        return int(np.count_nonzero(~np.isnan(self.suspicion)))

    @property
    def score(self) -> float:
        """Detection score: the largest word suspicion, 0.0 when no word was scored."""
        return float(np.nanmax(self.suspicion)) if self.n_scored else 0.0

    def removed_positions(self, bar: float) -> np.ndarray:
        """Positions of the words ONION removes at ``bar`` (``f_i > bar``); never every word."""
        scored = ~np.isnan(self.suspicion)
        above = np.flatnonzero(scored & (np.nan_to_num(self.suspicion, nan=-np.inf) > bar))
        if above.size and above.size == len(self.words):
            # Removing every word leaves no input; keep the least suspicious one.
            above = np.delete(above, int(np.argmin(self.suspicion[above])))
        return above

    def sanitized(self, bar: float) -> tuple[str, list[str]]:
        """The text without the words above ``bar``, and those words in text order."""
        drop = set(self.removed_positions(bar).tolist())
        kept = [w for i, w in enumerate(self.words) if i not in drop]
        return " ".join(kept), [self.words[i] for i in sorted(drop)]


# -- perplexity and suspicions ----------------------------------------------------------------------

#: Texts handled per group in :func:`word_suspicions` (bounds the memory of the cached prefixes).
TEXTS_PER_GROUP = 64


def _perplexity(nll_sum: float, count: int) -> float:
    return math.exp(nll_sum / count) if count > 0 else float("nan")


def _token_limit(lm: Any, max_length: int) -> int:
    """Text tokens allowed after the start token."""
    limit = int(max_length)
    if lm.max_positions:
        limit = min(limit, lm.max_positions)
    return limit - 1


def _encode(lm: Any, strings: Sequence[str]) -> list[list[int]]:
    """Token ids of each string, without special tokens (the start token is added by the callers)."""
    if not strings:
        return []
    return [list(ids) for ids in lm.tokenizer(list(strings), add_special_tokens=False)["input_ids"]]


def perplexities(
    lm: Any, texts: Sequence[str], *, batch_size: int = 32, max_length: int = DEFAULT_MAX_LENGTH
) -> np.ndarray:
    """Perplexity of each whole text under ``lm`` (ONION §3's ``p_0``), batched.

    ``exp`` of the mean NLL of the text's tokens (truncated to ``max_length`` tokens with the start
    token), each predicted from the start token and the tokens before it. NaN for a text with no
    token.
    """
    from peftshield.models.perplexity import sequence_nll

    limit = _token_limit(lm, max_length)
    sequences = [[lm.start_token_id, *ids[:limit]] for ids in _encode(lm, list(texts))]
    sums, counts = sequence_nll(lm, sequences, batch_size=batch_size)
    return np.array([_perplexity(s, c) for s, c in zip(sums, counts, strict=True)])


def _words_that_fit(lm: Any, words: list[str], limit: int) -> int:
    """The largest k such that the first k words take at most ``limit`` tokens."""
    prefixes = [" ".join(words[:k]) for k in range(1, len(words) + 1)]
    fits = [len(ids) <= limit for ids in _encode(lm, prefixes)]
    return next((k for k in range(len(words), 0, -1) if fits[k - 1]), 0)


def word_suspicions(
    lm: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = DEFAULT_MAX_LENGTH,
    share_prefix: bool = True,
    progress: bool | None = False,
) -> list[WordSuspicion]:
    """ONION's word suspicions (§3, ``f_i = p_0 − p_i``) for every text, in few batched LM passes.

    ``lm`` is a :class:`~peftshield.models.causal_lm.CausalLM`. The texts are handled in groups of
    :data:`TEXTS_PER_GROUP`; in each group the whole texts and all their leave-one-word-out
    variants are tokenised in one call, de-duplicated and scored together, with
    :func:`peftshield.models.perplexity.shared_prefix_nll` (``share_prefix``, about half the LM
    work) or :func:`~peftshield.models.perplexity.sequence_nll`. See the module docstring for
    one-word and over-long texts. ``progress``: a bar over the groups (``None``: on a terminal).
    """
    texts = list(texts)
    limit = _token_limit(lm, max_length)
    words = [text.split() for text in texts]
    n_keep = [len(w) for w in words]
    full = _encode(lm, [" ".join(w) for w in words])
    truncated = [i for i, ids in enumerate(full) if len(ids) > limit]
    for i in truncated:
        n_keep[i] = _words_that_fit(lm, words[i], limit)
    if truncated:
        longest = max(len(full[i]) for i in truncated)
        warnings.warn(
            TruncationWarning(
                f"onion: {len(truncated)} of {len(texts)} texts are longer than {limit + 1} tokens "
                f"(the longest has {longest + 1}); only their first words that fit were scored, and "
                "a trigger beyond them is never removed",
                n=len(truncated),
                total=len(texts),
                limit=limit + 1,
            ),
            stacklevel=2,
        )
    groups = range(0, len(texts), TEXTS_PER_GROUP)
    if progress is not False:  # None: a bar only on a terminal (tqdm's disable=None)
        from tqdm.auto import tqdm

        groups = tqdm(groups, desc="onion", unit="group", disable=None if progress is None else False)
    out: list[WordSuspicion] = []
    for start in groups:
        stop = start + TEXTS_PER_GROUP
        out += _group_suspicions(
            lm, texts[start:stop], words[start:stop], n_keep[start:stop], batch_size, share_prefix
        )
    return out


def _group_suspicions(
    lm: Any,
    texts: list[str],
    words: list[list[str]],
    n_keep: list[int],
    batch_size: int,
    share_prefix: bool,
) -> list[WordSuspicion]:
    from peftshield.models.perplexity import sequence_nll, shared_prefix_nll

    # Per text: the scored part (the whole text unless truncated) and, with two words or more,
    # one variant per word with that word removed.
    base_strings = [" ".join(w[:k]) for w, k in zip(words, n_keep, strict=True)]
    variant_strings = [
        [" ".join(w[:j] + w[j + 1 : k]) for j in range(k)] if k >= 2 else []
        for w, k in zip(words, n_keep, strict=True)
    ]
    flat = [v for vs in variant_strings for v in vs]
    encoded = _encode(lm, base_strings + flat)
    start = lm.start_token_id
    # Identical sequences (repeated words, repeated texts, a lower-casing tokenizer) run once.
    bases: dict[tuple[int, ...], int] = {}
    variants: dict[tuple[int, ...], tuple[int, int]] = {}  # ids -> (variant slot, base slot)
    plan: list[tuple[int, list[int]]] = []
    cursor = len(base_strings)
    for t, k in enumerate(n_keep):
        b = bases.setdefault((start, *encoded[t]), len(bases)) if k else -1
        slots = []
        for ids in encoded[cursor : cursor + len(variant_strings[t])]:
            slots.append(variants.setdefault((start, *ids), (len(variants), b))[0])
        cursor += len(variant_strings[t])
        plan.append((b, slots))
    base_seqs = list(bases)
    variant_seqs = list(variants)
    if share_prefix:
        bs, bc, vs, vc = shared_prefix_nll(
            lm, base_seqs, [(variants[v][1], v) for v in variant_seqs], batch_size=batch_size
        )
    else:
        sums, counts = sequence_nll(lm, base_seqs + variant_seqs, batch_size=batch_size)
        nb = len(base_seqs)
        bs, bc, vs, vc = sums[:nb], counts[:nb], sums[nb:], counts[nb:]
    base_ppl = [_perplexity(s, c) for s, c in zip(bs, bc, strict=True)]
    variant_ppl = np.array([_perplexity(s, c) for s, c in zip(vs, vc, strict=True)])
    out = []
    for text, w, (b, slots) in zip(texts, words, plan, strict=True):
        suspicion = np.full(len(w), np.nan)
        removal = np.full(len(w), np.nan)
        p0 = base_ppl[b] if b >= 0 else float("nan")
        if slots and not math.isnan(p0):
            removal[: len(slots)] = variant_ppl[slots]
            suspicion[: len(slots)] = p0 - removal[: len(slots)]
        out.append(WordSuspicion(text, tuple(w), suspicion, p0, removal))
    return out


# -- the detector -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SanitizedText:
    """ONION's correction of one text: the cleaned text, the removed words and the text's score."""

    original: str
    text: str
    removed: tuple[str, ...]
    score: float
    flagged: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "text": self.text,
            "removed": list(self.removed),
            "score": self.score,
            "flagged": self.flagged,
        }


class ONIONDetector(Detector):
    """ONION (Qi et al., EMNLP 2021, §3) as a correction defence and a detector.

    Parameters (stored as given):

    - ``lm``: the causal LM — ``"smollm2"`` (default), a local causal-LM folder, a hub id, or a
      loaded :class:`~peftshield.models.causal_lm.CausalLM` (saved by its ``ref``).
    - ``threshold``: the bar, a number (default 0.0, OpenBackdoor's) or ``"calibrated"``: the
      clean-score quantile at ``target_frr`` (at most that share of clean texts gets a word
      removed). Words with suspicion ``> threshold_`` are removed; a text is flagged when its
      largest suspicion is ``> threshold_``.
    - ``device``, ``batch_size`` (sequences per LM pass), ``max_length`` (tokens per text,
      including the start token), ``share_prefix`` (reuse each text's cached prefix for its
      variants, :func:`peftshield.models.perplexity.shared_prefix_nll`; ``False`` runs every
      variant in full, for LMs whose cache cannot be fed back).

    Fitted attributes: ``threshold_``, ``backbone_fingerprint_`` (``None``: ONION works beside any
    victim), ``lm_ref_``, ``lm_location_``, ``lm_fingerprint_`` (checked on load),
    ``calibration_frr_``, ``n_calibration_``, ``clean_score_mean_``, and ``lm_`` (not saved).
    """

    name: ClassVar[str] = "onion"
    score_kind: ClassVar[str | None] = None
    _fitted_attributes: ClassVar[tuple[str, ...]] = (
        *Detector._fitted_attributes,
        "lm_ref_",
        "lm_location_",
        "lm_fingerprint_",
        "clean_score_mean_",
    )

    def __init__(
        self,
        lm: Any = "smollm2",
        threshold: float | str = DEFAULT_BAR,
        target_frr: float = 0.05,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = DEFAULT_MAX_LENGTH,
        share_prefix: bool = True,
    ) -> None:
        self.lm = lm
        self.threshold = threshold
        self.target_frr = target_frr
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.share_prefix = share_prefix

    # -- parameters --------------------------------------------------------------------------------

    def check_params(self) -> None:
        """Validate the parameters before the LM is loaded."""
        from peftshield.models.causal_lm import CausalLM

        super().check_params()
        if not isinstance(self.lm, str | Path | CausalLM):
            raise PeftshieldError(
                "lm must be 'smollm2', a model folder, a hub id or a loaded CausalLM, "
                f"got {type(self.lm).__name__}"
            )
        require_int_at_least("", "max_length", self.max_length, 3)
        if not isinstance(self.share_prefix, bool):
            raise PeftshieldError(f"share_prefix must be true or false, got {self.share_prefix!r}")

    def _load_lm(self, lm: Any = None) -> Any:
        from peftshield.models.causal_lm import CausalLM, load_causal_lm
        from peftshield.utils.device import resolve_device

        lm = self.lm if lm is None else lm
        if isinstance(lm, CausalLM):
            return lm
        if isinstance(lm, str | Path):
            return load_causal_lm(str(lm), device=resolve_device(self.device))
        raise PeftshieldError(f"lm must be a name, a folder or a loaded CausalLM, got {type(lm).__name__}")

    # -- fit ---------------------------------------------------------------------------------------

    def fit(self, clean: Sequence[Any] | None = None, *, progress: bool | None = False) -> Self:
        """Load the LM and set the bar on ``clean`` texts (strings or :class:`Example` records).

        With ``threshold="calibrated"`` the clean texts set it (their score quantile at
        ``target_frr``); with a fixed bar they only measure its clean FRR (``calibration_frr_``,
        the share of clean texts ONION alters) and may be omitted.
        """
        self.check_params()
        items = [] if clean is None else list(clean)
        texts = check_texts([getattr(x, "text", x) for x in items], "clean texts") if items else []
        if self.threshold == "calibrated" and not texts:
            raise PeftshieldError("a calibrated threshold needs clean texts")
        lm = self._load_lm()
        self.lm_ = lm
        self.lm_ref_ = str(lm.ref)
        self.lm_location_ = str(lm.location)
        self.lm_fingerprint_ = lm.fingerprint
        self.backbone_fingerprint_ = None
        scores = None
        if texts:
            scores = np.array([s.score for s in self._suspicions(texts, progress=progress)])
        self._set_threshold(scores)
        self.clean_score_mean_ = None if scores is None else float(scores.mean())
        frr = self.calibration_frr_
        if self.threshold != "calibrated" and frr is not None and frr > MAX_QUIET_FRR:
            warnings.warn(
                f"onion: the fixed bar {self.threshold_:g} removes words from {100 * frr:.0f}% of the "
                f"clean texts (their mean score is {self.clean_score_mean_:.3g}); calibrate it instead "
                "(threshold='calibrated', --target-frr)",
                stacklevel=2,
            )
        return self

    # -- scoring and correction --------------------------------------------------------------------

    def _check_lm(self) -> None:
        self.check_fitted()
        if not hasattr(self, "lm_"):
            raise PeftshieldError(
                "this ONION detector has no LM loaded: fit it or load it with load_detector"
            )

    def _suspicions(self, texts: list[str], progress: bool | None = False) -> list[WordSuspicion]:
        return word_suspicions(
            self.lm_,
            texts,
            batch_size=int(self.batch_size),
            max_length=int(self.max_length),
            share_prefix=bool(self.share_prefix),
            progress=progress,
        )

    def suspicions(self, texts: Sequence[str], *, progress: bool | None = False) -> list[WordSuspicion]:
        """Word suspicions and perplexities of each text (ONION §3)."""
        self._check_lm()
        return self._suspicions(check_texts(texts), progress=progress)

    def _score(self, texts: list[str]) -> np.ndarray:
        """Largest word suspicion per text (0.0 for a text with no scored word)."""
        self._check_lm()
        return np.array([s.score for s in self._suspicions(texts)], dtype=float)

    def sanitize_many(self, texts: Sequence[str], *, progress: bool | None = False) -> list[SanitizedText]:
        """ONION's correction of each text: the words above the bar removed (one batched LM run)."""
        scored = self.suspicions(texts, progress=progress)
        bar = float(self.threshold_)
        out = []
        for s in scored:
            text, removed = s.sanitized(bar)
            out.append(SanitizedText(s.text, text, tuple(removed), s.score, s.score > bar))
        return out

    def sanitize(self, text: str) -> tuple[str, list[str]]:
        """Return ``(clean_text, removed_words)`` for one text (ONION §3's correction)."""
        if not isinstance(text, str):
            raise PeftshieldError(f"sanitize takes one string, got {type(text).__name__}")
        result = self.sanitize_many([text])[0]
        return result.text, list(result.removed)

    # -- persistence -------------------------------------------------------------------------------

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Save as a detector folder (``detector.json`` only): the LM is recorded by reference.

        A loaded :class:`~peftshield.models.causal_lm.CausalLM` parameter is replaced by its ``ref``;
        the LM's fingerprint is recorded and checked when the detector is loaded.
        """
        from peftshield.models.causal_lm import CausalLM

        if isinstance(self.lm, CausalLM):
            self.lm = str(self.lm.ref)
        elif isinstance(self.lm, Path):
            self.lm = str(self.lm)
        return super().save(folder, overwrite=overwrite)

    @classmethod
    def _from_record(
        cls,
        record: dict[str, Any],
        folder: Path,
        *,
        device: str | None = None,
        lm: Any = None,
    ) -> Self:
        """Reload a saved ONION detector and its LM; refuse an LM whose weights differ from the fitted one.

        ``lm`` replaces the recorded LM reference (a moved folder); ``device`` defaults to the CPU.
        """
        detector = super()._from_record(on_device(record, device), folder)
        loaded = detector._load_lm(lm)
        expected = getattr(detector, "lm_fingerprint_", None)
        if expected and loaded.fingerprint != expected:
            raise PeftshieldError(
                f"the ONION detector in {folder} was fitted with another LM than {loaded.ref!r} "
                f"(fingerprint {expected[:12]} vs {loaded.fingerprint[:12]})"
            )
        detector.lm_ = loaded
        return detector


# -- defended evaluation (a correction defence) ----------------------------------------------------


@dataclass(frozen=True)
class SanitizedBatch:
    """A victim's predictions on ONION-cleaned texts, with what ONION did and what it cost.

    ``texts`` are the cleaned texts the victim saw, ``removed`` the words taken from each,
    ``scores`` the detection scores and ``flags`` whether a word was removed; ``pred`` the
    victim's labels; ``onion_seconds`` / ``victim_seconds`` the wall time of the two stages.
    """

    texts: list[str]
    removed: list[tuple[str, ...]]
    scores: np.ndarray
    flags: np.ndarray
    pred: np.ndarray
    onion_seconds: float
    victim_seconds: float


def _victim_labels(victim: Any, texts: list[str], batch_size: int) -> np.ndarray:
    if not hasattr(victim, "predict_logits"):
        raise PeftshieldError(
            "victim must be a loaded tuned model (peftshield.tuning.trainer.load_tuned), "
            f"got {type(victim).__name__}"
        )
    return np.asarray(victim.predict_logits(texts, batch_size=batch_size)).argmax(axis=-1)


def sanitized_predictions(
    victim: Any, onion: ONIONDetector, texts: Sequence[str], *, batch_size: int = 128, progress: bool = False
) -> SanitizedBatch:
    """The victim's labels on ONION-sanitised ``texts`` (ONION §3 as a correction defence).

    ``victim`` is a :class:`~peftshield.tuning.trainer.TunedModel` (anything with
    ``predict_logits(texts, batch_size)``). Defended CACC is then
    ``metrics.accuracy(batch.pred, labels)`` on clean texts, and defended ASR
    ``metrics.attack_success_rate(batch.pred, labels, target)`` on triggered ones: nothing is
    rejected, so the plain metrics apply.
    """
    texts = check_texts(texts)
    start = time.perf_counter()
    cleaned = onion.sanitize_many(texts, progress=progress)
    onion_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pred = _victim_labels(victim, [c.text for c in cleaned], batch_size)
    victim_seconds = time.perf_counter() - start
    return SanitizedBatch(
        texts=[c.text for c in cleaned],
        removed=[c.removed for c in cleaned],
        scores=np.array([c.score for c in cleaned], dtype=float),
        flags=np.array([c.flagged for c in cleaned], dtype=bool),
        pred=pred,
        onion_seconds=onion_seconds,
        victim_seconds=victim_seconds,
    )


def evaluate_onion(
    victim: Any,
    onion: ONIONDetector,
    clean: Sequence[Any],
    triggered: Sequence[Any],
    target: int | None,
    *,
    n_triggers: int = 1,
    batch_size: int = 128,
) -> dict[str, Any]:
    """CACC / ASR before and after ONION, its detection quality and its cost (docs/design.md row keys).

    ``clean`` and ``triggered`` are :class:`~peftshield.data.records.Example` lists with TRUE
    labels (build the triggered ones with
    :func:`peftshield.evaluation.defended.triggered_examples`). With a ``target`` the ASR follows
    the PSIM / OpenBackdoor convention (``asr``, ``defended_asr``); with ``target=None`` the
    LMSanitator one (``asr_lms``, ``defended_asr_lms``), for which ``triggered`` must hold
    ``n_triggers`` blocks of the whole clean set in the clean order. The defended ASR of a
    correction defence compares the victim's label on the cleaned triggered text with the target
    (or, LMSanitator convention, with its label on the uncleaned clean text).

    Returns ``cacc``, ``asr``/``asr_lms``, ``defended_cacc``, ``defended_asr``/``defended_asr_lms``,
    ``frr``, ``far``, ``precision``, ``recall``, ``f1`` (at ``threshold``), ``auroc``,
    ``mean_removed_clean`` / ``mean_removed_triggered`` (words removed per text), ``seconds``
    (ONION and the victim on both sets) and ``overhead_ratio`` (that time over the undefended
    victim's time on the same texts).
    """
    from peftshield.evaluation import metrics as m

    clean, triggered = list(clean), list(triggered)
    if not clean or not triggered:
        raise PeftshieldError("evaluate_onion needs clean and triggered examples")
    y_c = np.array([e.label for e in clean])
    y_t = np.array([e.label for e in triggered])
    texts_c = [e.text for e in clean]
    texts_t = [e.text for e in triggered]
    start = time.perf_counter()
    pred_c = _victim_labels(victim, texts_c, batch_size)
    pred_t = _victim_labels(victim, texts_t, batch_size)
    undefended_seconds = time.perf_counter() - start
    sc = sanitized_predictions(victim, onion, texts_c, batch_size=batch_size)
    st = sanitized_predictions(victim, onion, texts_t, batch_size=batch_size)
    row: dict[str, Any] = {"cacc": m.accuracy(pred_c, y_c), "defended_cacc": m.accuracy(sc.pred, y_c)}
    if target is not None:
        row["asr"] = m.attack_success_rate(pred_t, y_t, target)
        row["defended_asr"] = m.corrected_asr(pred_c, y_c, st.pred, y_t, target)
    else:
        if len(y_t) != n_triggers * len(y_c) or not np.array_equal(y_t, np.tile(y_c, n_triggers)):
            raise PeftshieldError(
                "the LMSanitator ASR needs every clean example triggered once per trigger, in the clean "
                f"order ({len(y_c)} clean, {len(y_t)} triggered, {n_triggers} trigger(s))"
            )
        row["asr_lms"] = m.attack_success_rate_lms(pred_c, y_c, pred_t.reshape(n_triggers, -1))
        row["defended_asr_lms"] = m.corrected_asr(pred_c, y_c, st.pred, y_t, None, n_triggers)
    threshold = float(onion.threshold_)
    detection = m.detection_metrics(sc.scores, st.scores, threshold)
    for key in ("frr", "far", "precision", "recall", "f1"):
        row[key] = detection[key]
    row["auroc"] = m.auroc(sc.scores, st.scores)
    row["threshold"] = threshold
    row["mean_removed_clean"] = float(np.mean([len(r) for r in sc.removed]))
    row["mean_removed_triggered"] = float(np.mean([len(r) for r in st.removed]))
    seconds = sc.onion_seconds + sc.victim_seconds + st.onion_seconds + st.victim_seconds
    row["seconds"] = seconds
    row["overhead_ratio"] = seconds / undefended_seconds if undefended_seconds > 0 else None
    row["n_clean"] = len(clean)
    row["n_triggered"] = len(triggered)
    return row
