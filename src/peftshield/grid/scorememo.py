"""Per-text score memo for defences whose score does not depend on the victim (ONION).

ONION's suspicion of a text comes from a causal LM alone (Qi et al., EMNLP 2021, §3): the same
text gets the same score beside every victim, and it is by far the costliest detector of the grid
(about a second per text on a CPU against a few milliseconds for the victim). Every cell of a
corpus sees the same clean test texts, and the cells of one attack see the same triggered texts
(:mod:`peftshield.grid.evaluate`), so without a memo a grid scores most texts many times over.

:class:`ScoreMemo` keeps, per fitted defence (the key of its defence stage, so a change of LM or
parameter is a different memo), ``{sha256(text): [score, seconds, cleaned]}`` in
``DIR/artifacts/scores/<key>.json``, where ``cleaned`` is what a correction defence hands the
victim instead of the text (ONION's text without the words above its bar, from the same LM pass;
null for a pure detector). A cell computes only the texts the memo lacks, in chunks saved as they
finish (a killed run keeps every finished chunk), and reads the rest.

Timing stays honest: ``seconds`` is what the text cost when it was scored (its chunk's wall time
shared evenly over the chunk), and the cell's guarded time adds those seconds for every text it
reads, memoised or not, so a cell's overhead ratio is the one a deployment would pay, not the
near-zero cost of a lookup.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from peftshield.grid.cache import ARTIFACTS_DIR, LOCKS_DIR, file_lock

SCORES_DIR = "scores"
#: Texts scored between two saves of the memo (a killed run loses at most one chunk).
CHUNK = 64


def text_key(text: str) -> str:
    """The memo's key of a text: its SHA-256 (hex, first 24 characters)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class ScoreMemo:
    """Scores of one fitted, victim-independent defence, shared by every cell of a results folder."""

    def __init__(self, results: str | Path, defense_key: str) -> None:
        root = Path(results) / ARTIFACTS_DIR
        self.path = root / SCORES_DIR / f"{defense_key}.json"
        self.lock = root / LOCKS_DIR / f"scores-{defense_key}.lock"

    def _read(self) -> dict[str, list[Any]]:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:  # cannot happen with atomic writes; start over rather than fail
            return {}

    def _merge(self, new: dict[str, list[Any]]) -> None:
        """Add ``new`` entries under the memo's lock (another worker may have added its own)."""
        from peftshield.utils.io import write_json

        with file_lock(self.lock):
            table = self._read()
            table.update(new)
            write_json(self.path, table)

    def lookup(
        self, texts: Sequence[str], compute: Callable[[list[str]], tuple[np.ndarray, list[str] | None]]
    ) -> tuple[np.ndarray, list[str] | None, float]:
        """``(scores, cleaned texts or None, seconds they cost)``: memoised texts are read, others computed.

        ``compute(texts)`` returns the defence's scores and, for a correction defence, the cleaned
        texts (else ``None``); each distinct missing text is computed once, CHUNK texts at a time,
        and the memo is saved after every chunk.
        """
        keys = [text_key(t) for t in texts]
        table = self._read()
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in table and key not in missing:
                missing[key] = text
        pending = list(missing.items())
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start : start + CHUNK]
            began = time.perf_counter()
            values, cleaned = compute([text for _, text in chunk])
            each = (time.perf_counter() - began) / len(chunk)
            fixed = cleaned if cleaned is not None else [None] * len(chunk)
            new = {
                key: [float(v), each, c]
                for (key, _), v, c in zip(chunk, np.asarray(values, dtype=float), fixed, strict=True)
            }
            self._merge(new)
            table.update(new)
        found = np.array([table[k][0] for k in keys], dtype=float)
        seconds = float(sum(table[k][1] for k in keys))
        texts_out = [table[k][2] for k in keys]
        return found, (None if any(t is None for t in texts_out) else texts_out), seconds
