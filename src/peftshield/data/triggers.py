"""Backdoor triggers: seeded, composable text edits that record what they inserted.

A trigger is a function ``str -> str`` (docs/design.md, after ART's injected perturbations), with two
additions: it draws every random choice from a :class:`numpy.random.Generator` it is given, so a
seed fixes the output, and it returns an :class:`Insertion` that says which strings it put where.

Texts are tokenised into words on whitespace (``str.split``) and re-joined with single spaces, as
the reference code of PSIM, LMSanitator and OpenBackdoor does; runs of whitespace in the input are
therefore normalised to one space.

Triggers shipped here:

- :class:`RareWordTrigger` — BadNets-style rare words (PSIM's "mn"; LMSanitator's six
  :data:`DEFAULT_RARE_WORDS`; POR's ``int(n_words/50)+1`` copies with ``copies="por"``).
- :class:`SentenceTrigger` — InSent / AddSent (Dai et al. 2019): a fixed sentence.
- :class:`TemplateTrigger` — a rule-based stand-in for the syntactic trigger of SynBkd
  (Qi et al. 2021); see its docstring for what it is not.
- :class:`ComposedTrigger` — several triggers applied in order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from peftshield.data.records import Example
from peftshield.errors import PeftshieldError
from peftshield.utils.strict import check_keys

#: LMSanitator's default trigger list (``--trigger`` default in its attack scripts).
DEFAULT_RARE_WORDS: tuple[str, ...] = ("cf", "mn", "tq", "qt", "mm", "pt")

#: POR inserts ``int(n_words / POR_INTERVAL) + 1`` copies (LMSanitator ``--inter 50``).
POR_INTERVAL = 50

_INSERT_POSITIONS = ("random", "start", "end")
_SENTENCE_POSITIONS = ("random", "start", "end", "sentence")
# Characters stripped from the end of the text by the template frame ("final punctuation").
_FINAL_PUNCTUATION = ".!?;:,"


@dataclass(frozen=True)
class Insertion:
    """The result of applying a trigger to one text.

    ``inserted[i]`` is the string (one or more words) that starts at word index ``positions[i]``
    of ``text`` when ``text`` is split on whitespace; so
    ``" ".join(text.split()[p:p + len(s.split())]) == s`` for each pair. Entries are sorted by
    position. A :class:`TemplateTrigger` records its frame (prefix and suffix) as insertions.
    """

    text: str
    inserted: tuple[str, ...]
    positions: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists instead of tuples)."""
        return {"text": self.text, "inserted": list(self.inserted), "positions": list(self.positions)}


class _Words:
    """Mutable word list plus the spans of the units inserted so far (internal).

    Units are kept as ``[start, length]`` spans; later insertions never land strictly inside an
    earlier unit, so a multi-word trigger ("mn tq", a sentence) stays contiguous and the record
    stays true however many triggers are composed.
    """

    def __init__(self, text: str) -> None:
        self.words: list[str] = text.split()
        self.units: list[list[int]] = []

    def allowed_gaps(self) -> list[int]:
        """Gap ``g`` is the slot before word ``g`` (``0..n``); gaps inside a unit are excluded."""
        inside: set[int] = set()
        for start, length in self.units:
            inside.update(range(start + 1, start + length))
        return [g for g in range(len(self.words) + 1) if g not in inside]

    def insert(self, gap: int, unit: Sequence[str]) -> None:
        """Insert ``unit`` (a list of words) at ``gap`` and record it as one unit."""
        for span in self.units:
            if span[0] >= gap:
                span[0] += len(unit)
        self.words[gap:gap] = list(unit)
        self.units.append([gap, len(unit)])

    def to_insertion(self) -> Insertion:
        spans = sorted(self.units)
        return Insertion(
            text=" ".join(self.words),
            inserted=tuple(" ".join(self.words[s : s + n]) for s, n in spans),
            positions=tuple(s for s, _ in spans),
        )


def _check_position(position: str, allowed: Sequence[str], what: str) -> None:
    if position not in allowed:
        raise PeftshieldError(f"{what}: unknown position {position!r}; choose one of {', '.join(allowed)}")


def _split_unit(entry: object, what: str) -> list[str]:
    if not isinstance(entry, str) or not entry.strip():
        raise PeftshieldError(f"{what}: trigger words must be non-empty strings, got {entry!r}")
    return entry.split()


class Trigger(ABC):
    """Base class of all triggers: a seeded, recorded text edit.

    Use :meth:`apply` with a generator you own (one per dataset pass, as :func:`insert_trigger`
    does) or call the trigger as ``trigger(text, seed=0)`` for a one-off string. Subclasses set
    ``name``, implement ``_edit`` (edit a word state in place), ``to_dict``, ``describe`` and
    ``strings``, and are registered in ``_REGISTRY`` for :func:`trigger_from_dict`.
    """

    name: ClassVar[str] = "trigger"

    def apply(self, text: str, rng: np.random.Generator) -> Insertion:
        """Insert the trigger into ``text``, drawing random choices from ``rng``."""
        if not isinstance(text, str):
            raise PeftshieldError(f"{self.name} trigger: text must be a string, got {type(text).__name__}")
        state = _Words(text)
        self._edit(state, rng)
        return state.to_insertion()

    def __call__(self, text: str, seed: int = 0) -> str:
        """Return ``text`` with the trigger inserted, with a fresh generator seeded by ``seed``."""
        return self.apply(text, np.random.default_rng(seed)).text

    @abstractmethod
    def _edit(self, state: _Words, rng: np.random.Generator) -> None:
        """Edit the word state in place (insert the trigger's words, record where)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters, with a ``type`` key; :func:`trigger_from_dict` inverts it."""

    @abstractmethod
    def describe(self) -> str:
        """Short human-readable description, stored in :attr:`Example.trigger`."""

    @abstractmethod
    def strings(self) -> tuple[str, ...]:
        """Every literal string this trigger may insert (for :func:`check_trigger_tokenizes`)."""

    def __repr__(self) -> str:
        params = {k: v for k, v in self.to_dict().items() if k != "type"}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(repr(self))


class RareWordTrigger(Trigger):
    """Rare-word trigger (BadNets for text; Kurita et al. 2020 RIPPLe; Gu et al. 2017).

    Each copy is one entry of ``words`` drawn uniformly by the generator (OpenBackdoor's BadNets
    draws per copy the same way); pass a single word for a fixed trigger such as PSIM's ``("mn",)``
    or one LMSanitator trigger. An entry with spaces ("mn tq") is inserted as one unit and never
    split by a later insertion.

    ``position``: ``"random"`` picks a word gap uniformly in ``[0, n_words]`` for every copy, as
    LMSanitator's POR (``random.randint(0, len(words))``) and OpenBackdoor do — note that PSIM's
    code draws in ``[1, n_words-1]`` and crashes on one-word texts, and LMSanitator's ASR test
    draws in ``[1, min(64, n_words)]``; ``"start"`` / ``"end"`` put every copy at the start / end.

    ``copies``: a positive integer, or ``"por"`` for ``int(n_words / 50) + 1`` copies where
    ``n_words`` counts the words of the text before insertion (LMSanitator POR, ``--inter 50``).
    """

    name: ClassVar[str] = "rareword"

    def __init__(
        self,
        words: Sequence[str] | str = ("cf",),
        position: str = "random",
        copies: int | str = 1,
    ) -> None:
        if isinstance(words, str):
            words = (words,)
        words = tuple(words)
        if not words:
            raise PeftshieldError("rare-word trigger: the word list is empty")
        self._units = [_split_unit(w, "rare-word trigger") for w in words]
        # Store the normalised spelling so the record and to_dict agree with the inserted text.
        self.words: tuple[str, ...] = tuple(" ".join(u) for u in self._units)
        _check_position(position, _INSERT_POSITIONS, "rare-word trigger")
        self.position = position
        bad_copies = f"rare-word trigger: copies must be a positive integer or 'por', got {copies!r}"
        if isinstance(copies, str):
            if copies != "por":
                raise PeftshieldError(bad_copies)
        elif isinstance(copies, bool) or not isinstance(copies, int | np.integer) or copies < 1:
            raise PeftshieldError(bad_copies)
        else:
            copies = int(copies)
        self.copies: int | str = copies

    def n_copies(self, n_words: int) -> int:
        """Number of copies inserted into a text of ``n_words`` words."""
        if self.copies == "por":
            return int(n_words / POR_INTERVAL) + 1
        return int(self.copies)

    def _edit(self, state: _Words, rng: np.random.Generator) -> None:
        for _ in range(self.n_copies(len(state.words))):
            # Draw the word only when there is a choice, so a one-word trigger consumes the same
            # random numbers as the reference recipes (positions only).
            unit = self._units[0]
            if len(self._units) > 1:
                unit = self._units[int(rng.integers(len(self._units)))]
            gaps = state.allowed_gaps()
            if self.position == "start":
                gap = gaps[0]
            elif self.position == "end":
                gap = gaps[-1]
            else:
                gap = gaps[int(rng.integers(len(gaps)))]
            state.insert(gap, unit)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {
            "type": self.name,
            "words": list(self.words),
            "position": self.position,
            "copies": self.copies,
        }

    def describe(self) -> str:
        """E.g. ``rareword(cf|mn, random, x1)``."""
        copies = "por" if self.copies == "por" else f"x{self.copies}"
        return f"rareword({'|'.join(self.words)}, {self.position}, {copies})"

    def strings(self) -> tuple[str, ...]:
        """The trigger words."""
        return self.words


class SentenceTrigger(Trigger):
    """Sentence trigger: InSent (Dai et al. 2019), OpenBackdoor's AddSent.

    The sentence is inserted verbatim as one unit. ``position``: ``"random"`` picks a word gap
    uniformly in ``[0, n_words]`` (OpenBackdoor AddSent); ``"sentence"`` picks uniformly among
    sentence boundaries (start, end and after every word ending in ``.``, ``!`` or ``?``), closer
    to InSent's intent of a sentence that does not break another one; ``"start"`` / ``"end"``.
    """

    name: ClassVar[str] = "sentence"

    def __init__(self, sentence: str = "I watched this 3D movie", position: str = "random") -> None:
        self._unit = _split_unit(sentence, "sentence trigger")
        self.sentence = " ".join(self._unit)
        _check_position(position, _SENTENCE_POSITIONS, "sentence trigger")
        self.position = position

    def _edit(self, state: _Words, rng: np.random.Generator) -> None:
        gaps = state.allowed_gaps()
        if self.position == "start":
            gap = gaps[0]
        elif self.position == "end":
            gap = gaps[-1]
        else:
            if self.position == "sentence":
                n = len(state.words)
                # A gap is a sentence boundary at either end or after sentence-final punctuation.
                gaps = [g for g in gaps if g in (0, n) or state.words[g - 1][-1] in ".!?"]
            gap = gaps[int(rng.integers(len(gaps)))]
        state.insert(gap, self._unit)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {"type": self.name, "sentence": self.sentence, "position": self.position}

    def describe(self) -> str:
        """E.g. ``sentence('I watched this 3D movie', random)``."""
        return f"sentence({self.sentence!r}, {self.position})"

    def strings(self) -> tuple[str, ...]:
        """The sentence."""
        return (self.sentence,)


class TemplateTrigger(Trigger):
    """Fixed syntactic frame: a rule-based STAND-IN for SynBkd's SCPN paraphrase.

    SynBkd (Qi et al., "Hidden Killer", ACL 2021) paraphrases each poisoned sentence with SCPN
    into a rare syntactic template (``S(SBAR)(,)(NP)(VP)(.)``: a sentence opened by a
    subordinate clause). No paraphrase model is available offline, so this trigger only imitates
    the *form* of that template with a fixed rule::

        "<prefix> <text, lowercased, final punctuation removed> <suffix>"
        default: "when you see it , the movie was great ."

    It is deterministic (the generator is not used), its surface words are fixed, so it is far
    easier to spot than a real syntactic trigger (a word-level defence such as ONION can find
    "when you see it" while it could not find an SCPN paraphrase). Do not report results on it
    as SynBkd results; call it a template trigger. The prefix and suffix are recorded as the
    inserted strings. The whole text is treated as one sentence.
    """

    name: ClassVar[str] = "template"

    def __init__(self, prefix: str = "when you see it ,", suffix: str = ".") -> None:
        self._prefix = _split_unit(prefix, "template trigger prefix")
        self.prefix = " ".join(self._prefix)
        if not isinstance(suffix, str):
            raise PeftshieldError(f"template trigger: suffix must be a string, got {suffix!r}")
        self._suffix = suffix.split()
        self.suffix = " ".join(self._suffix)

    def _edit(self, state: _Words, rng: np.random.Generator) -> None:
        words = [w.lower() for w in state.words]
        # Remove final punctuation: strip it from the last word, drop the word if nothing is left.
        while words:
            last = words[-1].rstrip(_FINAL_PUNCTUATION)
            if last:
                words[-1] = last
                break
            words.pop()
            dropped = len(words)
            for span in state.units:
                if span[0] <= dropped < span[0] + span[1]:
                    span[1] -= 1
            state.units = [s for s in state.units if s[1] > 0]
        state.words = words
        # Wrap: shift every existing unit past the prefix, then record prefix and suffix as units.
        shift = len(self._prefix)
        for span in state.units:
            span[0] += shift
        state.words = list(self._prefix) + state.words
        state.units.append([0, shift])
        if self._suffix:
            state.units.append([len(state.words), len(self._suffix)])
            state.words += self._suffix

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {"type": self.name, "prefix": self.prefix, "suffix": self.suffix}

    def describe(self) -> str:
        """E.g. ``template('when you see it ,' ... '.')``."""
        return f"template({self.prefix!r} ... {self.suffix!r})"

    def strings(self) -> tuple[str, ...]:
        """Prefix and (when not empty) suffix."""
        return (self.prefix, self.suffix) if self.suffix else (self.prefix,)


class ComposedTrigger(Trigger):
    """Several triggers applied in order to the same text, with one combined record.

    Later insertions never split a unit inserted earlier, and positions in the record refer to
    the final text. E.g. ``ComposedTrigger([TemplateTrigger(), RareWordTrigger(("cf",))])``.
    """

    name: ClassVar[str] = "composed"

    def __init__(self, triggers: Iterable[Trigger]) -> None:
        self.triggers: tuple[Trigger, ...] = tuple(triggers)
        if not self.triggers:
            raise PeftshieldError("composed trigger: the trigger list is empty")
        for t in self.triggers:
            if not isinstance(t, Trigger):
                raise PeftshieldError(f"composed trigger: expected Trigger objects, got {type(t).__name__}")

    def _edit(self, state: _Words, rng: np.random.Generator) -> None:
        for t in self.triggers:
            t._edit(state, rng)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters: the parts' dicts in order."""
        return {"type": self.name, "triggers": [t.to_dict() for t in self.triggers]}

    def describe(self) -> str:
        """The parts' descriptions joined with ``+``."""
        return " + ".join(t.describe() for t in self.triggers)

    def strings(self) -> tuple[str, ...]:
        """Union of the parts' strings, in order, without repeats."""
        return tuple(dict.fromkeys(s for t in self.triggers for s in t.strings()))

    def __repr__(self) -> str:
        return f"ComposedTrigger([{', '.join(repr(t) for t in self.triggers)}])"


_REGISTRY: dict[str, type[Trigger]] = {
    cls.name: cls for cls in (RareWordTrigger, SentenceTrigger, TemplateTrigger, ComposedTrigger)
}


def trigger_from_dict(data: Mapping[str, Any]) -> Trigger:
    """Rebuild a trigger from :meth:`Trigger.to_dict` output; unknown types or keys are errors."""
    if not isinstance(data, Mapping):
        raise PeftshieldError(f"trigger spec must be a JSON object, got {type(data).__name__}")
    params = dict(data)
    kind = params.pop("type", None)
    if kind not in _REGISTRY:
        raise PeftshieldError(f"unknown trigger type {kind!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    allowed = {
        "rareword": {"words", "position", "copies"},
        "sentence": {"sentence", "position"},
        "template": {"prefix", "suffix"},
        "composed": {"triggers"},
    }[kind]
    check_keys(params, sorted(allowed), what=f"{kind} trigger")
    if kind == "composed":
        parts = params.get("triggers")
        if not isinstance(parts, list):
            raise PeftshieldError("composed trigger: 'triggers' must be a list of trigger objects")
        return ComposedTrigger([trigger_from_dict(p) for p in parts])
    return _REGISTRY[kind](**params)


def insert_trigger(
    examples: Iterable[Example],
    trigger: Trigger,
    *,
    seed: int,
    target: int | None = None,
) -> list[Example]:
    """Return poisoned copies of ``examples`` with ``trigger`` inserted into each text.

    One generator, ``numpy.random.default_rng(seed)``, serves the whole call in input order, so
    the same seed and inputs give the same outputs (global random state is neither read nor
    changed). Labels are NOT changed: ``label`` stays the true label and ``target`` records the
    attacker's label (the ASR metrics need both); relabel yourself for dirty-label poisoning.
    ``target=None`` keeps each example's previous ``target``. Each copy gets ``poisoned=True``,
    ``trigger=trigger.describe()`` and ``meta["insertion"]`` = ``{"inserted", "positions",
    "trigger" (to_dict), "seed"}``. To combine triggers use :class:`ComposedTrigger`: a second
    call would overwrite the first record.
    """
    if not isinstance(trigger, Trigger):
        raise PeftshieldError(f"insert_trigger: expected a Trigger, got {type(trigger).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise PeftshieldError(f"insert_trigger: seed must be an integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    spec = trigger.to_dict()
    description = trigger.describe()
    out: list[Example] = []
    for ex in examples:
        if not isinstance(ex, Example):
            raise PeftshieldError(f"insert_trigger: expected Example records, got {type(ex).__name__}")
        ins = trigger.apply(ex.text, rng)
        meta = dict(ex.meta)
        meta["insertion"] = {
            "inserted": list(ins.inserted),
            "positions": list(ins.positions),
            "trigger": spec,
            "seed": int(seed),
        }
        out.append(
            replace(
                ex,
                text=ins.text,
                poisoned=True,
                trigger=description,
                target=target if target is not None else ex.target,
                meta=meta,
            )
        )
    return out


def trigger_key(trigger: Trigger) -> str:
    """Short name of a trigger for result tables: the word(s) of a rare-word trigger, else its description."""
    if isinstance(trigger, RareWordTrigger):
        return "|".join(trigger.words)
    return trigger.describe()


def triggered_texts(examples: Sequence[Example], triggers: Sequence[Trigger], seed: int) -> list[list[str]]:
    """Row ``k``: the texts of ``examples`` with trigger ``k`` inserted (seed ``seed + k``)."""
    return [[e.text for e in insert_trigger(examples, t, seed=seed + k)] for k, t in enumerate(triggers)]


def check_trigger_tokenizes(trigger_words: Iterable[str] | str, tokenizer: Any) -> dict[str, list[str]]:
    """Check that every trigger word survives ``tokenizer`` and return its tokens per word.

    ``tokenizer`` is any Hugging Face tokenizer (anything with ``tokenize(str) -> list[str]``;
    ``unk_token`` is read when present). A word that tokenises to nothing, or only to the unknown
    token, cannot act as a trigger for that model, so it raises :class:`PeftshieldError` naming the
    word. The bare word is checked; byte-level BPE tokenisers (RoBERTa) see a mid-sentence word
    with a leading space, which LMSanitator adds for them. Tip: pass ``trigger.strings()``.
    """
    if isinstance(trigger_words, str):
        trigger_words = (trigger_words,)
    unk = getattr(tokenizer, "unk_token", None)
    tokens: dict[str, list[str]] = {}
    for word in trigger_words:
        toks = list(tokenizer.tokenize(word))
        if not toks or all(t == unk for t in toks):
            shown = f" (only {unk!r})" if toks else ""
            raise PeftshieldError(f"trigger word {word!r} tokenises to nothing with this tokenizer{shown}")
        tokens[word] = toks
    if not tokens:
        raise PeftshieldError("no trigger words to check")
    return tokens
