"""Input purging: delete words until the PV monitor stops firing, then let the victim predict.

Wei et al., NDSS 2024, §IV-C "input purging". The reference code has no purge function: its
``run.py defense_predict`` only *emulates* purging inside the ASR evaluation, by building, for a
flagged triggered input, one variant per word position before the trigger with that word (and all
its copies) deleted, and counting an attack as successful when some variant is unflagged and
still misclassified (docs/design.md, "Deviations from the papers"). :class:`Purger` is the real
thing, usable at inference:

* Round 1 is exactly the reference's search: one candidate per distinct word, left to right among
  the first ``max_words`` words, with every copy of that word deleted; all candidates of all
  flagged texts go through the victim in one batched pass; the leftmost unflagged candidate wins.
* Deviation: when no single deletion clears the monitor (several different triggers, a
  multi-word trigger) the candidate with the lowest score is kept and another round runs on it, up
  to ``max_rounds`` rounds; the reference has no such case because its evaluation inserts one
  one-word trigger.
* Cost is bounded: at most ``max_rounds`` batched passes over at most ``max_words`` candidates
  per flagged text. A text still flagged after that is reported as not cleared (``cleared=False``)
  and should be rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from peftshield.defenses.base import check_texts
from peftshield.utils.validate import require_positive

from .monitor import PVMonitor


@dataclass(frozen=True)
class PurgeResult:
    """What purging did to one text and what the victim predicts afterwards.

    ``text`` is the purged text (the input itself when it was not flagged); ``removed`` the
    deleted words in deletion order (every copy of each was deleted); ``cleared`` whether the
    monitor no longer fires on ``text``; ``label`` the victim's prediction on ``text``.
    """

    original: str
    text: str
    removed: tuple[str, ...]
    flagged: bool
    cleared: bool
    original_score: float
    score: float
    label: int
    rounds: int

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "text": self.text,
            "removed": list(self.removed),
            "flagged": self.flagged,
            "cleared": self.cleared,
            "original_score": round(self.original_score, 6),
            "score": round(self.score, 6),
            "label": self.label,
            "rounds": self.rounds,
        }


def _deletions(words: list[str], max_words: int) -> list[tuple[str, list[str]]]:
    """One candidate per distinct word among the first ``max_words``: (word, words without any copy of it)."""
    seen: dict[str, None] = {}
    for word in words[:max_words]:
        seen.setdefault(word, None)
    out = []
    for word in seen:
        rest = [w for w in words if w != word]
        if rest:  # deleting the only word left gives an empty input, which no model can read
            out.append((word, rest))
    return out


class Purger:
    """Word-deletion purging behind a fitted :class:`~.monitor.PVMonitor` (LMSanitator §IV-C).

    ``max_rounds`` bounds the number of deletions (one distinct word per round) and ``max_words``
    the candidates per round (reference: trigger positions in ``[0, 64]``).
    """

    def __init__(self, monitor: PVMonitor, max_rounds: int = 3, max_words: int = 64) -> None:
        require_positive("", "max_rounds", max_rounds, integer=True)
        require_positive("", "max_words", max_words, integer=True)
        self.monitor = monitor
        self.max_rounds = max_rounds
        self.max_words = max_words

    def sanitize(self, text: str) -> tuple[str, list[str]]:
        """Return ``(clean_text, removed_words)`` for one text (unchanged when it is not flagged)."""
        result = self.purge([text])[0]
        return result.text, list(result.removed)

    def purge(self, texts: Sequence[str]) -> list[PurgeResult]:
        """Purge every flagged text; one batched victim pass for the inputs plus one per round."""
        texts = check_texts(texts)
        first = self.monitor.run(texts, validated=True)
        state = {
            i: {"words": texts[i].split(), "removed": [], "rounds": 0}
            for i in np.flatnonzero(first.flags).tolist()
        }
        final_score = first.scores.astype(float).copy()
        final_label = first.labels.astype(int).copy()
        final_text = list(texts)
        cleared = ~first.flags
        active = list(state)
        for _ in range(self.max_rounds):
            if not active:
                break
            owners, words_of, candidates = [], [], []
            for i in active:
                for word, rest in _deletions(state[i]["words"], self.max_words):
                    owners.append(i)
                    words_of.append((word, rest))
                    candidates.append(" ".join(rest))
            if not candidates:
                break
            batch = self.monitor.run(candidates, validated=True)
            owners_arr = np.asarray(owners)
            still = []
            for i in active:
                rows = np.flatnonzero(owners_arr == i)
                state[i]["rounds"] += 1
                if rows.size == 0:
                    continue  # a one-word text: nothing left to delete
                unflagged = rows[~batch.flags[rows]]
                # Leftmost unflagged deletion (the reference's order); otherwise the least suspicious.
                pick = int(unflagged[0]) if unflagged.size else int(rows[np.argmin(batch.scores[rows])])
                word, rest = words_of[pick]
                state[i]["words"] = rest
                state[i]["removed"].append(word)
                final_text[i] = candidates[pick]
                final_score[i] = float(batch.scores[pick])
                final_label[i] = int(batch.labels[pick])
                if unflagged.size:
                    cleared[i] = True
                else:
                    still.append(i)
            active = still
        return [
            PurgeResult(
                original=texts[i],
                text=final_text[i],
                removed=tuple(state[i]["removed"]) if i in state else (),
                flagged=bool(first.flags[i]),
                cleared=bool(cleared[i]),
                original_score=float(first.scores[i]),
                score=float(final_score[i]),
                label=int(final_label[i]),
                rounds=int(state[i]["rounds"]) if i in state else 0,
            )
            for i in range(len(texts))
        ]


def sanitize(
    monitor: PVMonitor, text: str, max_rounds: int = 3, max_words: int = 64
) -> tuple[str, list[str]]:
    """Functional form of :meth:`Purger.sanitize`."""
    return Purger(monitor, max_rounds=max_rounds, max_words=max_words).sanitize(text)
