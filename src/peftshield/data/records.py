"""Typed records for labelled text (docs/design.md: typed records, not positional tuples)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from peftshield.errors import PeftshieldError


@dataclass(frozen=True)
class Example:
    """One labelled text, with its poison provenance where it applies.

    ``label`` is an integer class index (``-1`` for unlabelled text such as the ``wiki`` corpus).
    ``poisoned`` marks an example that carries a trigger; ``trigger`` records what was inserted
    and ``target`` the label the attacker wants (``None`` when not poisoned).
    """

    text: str
    label: int = -1
    poisoned: bool = False
    trigger: str | None = None
    target: int | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def with_text(self, text: str) -> Example:
        """Return a copy with another text and the same label and provenance."""
        return replace(self, text=text)


@dataclass(frozen=True)
class Splits:
    """Deterministic train / dev / test splits of one corpus."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        """Number of examples in each split."""
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}


def check_dense_labels(labels: Iterable[int], source: str, n_labels: int | None = None) -> int:
    """Check integer class labels and return the number of classes ``K``.

    Without ``n_labels`` the labels must be exactly ``0..K-1`` with every class present: labels
    ``{0, 1, 5}`` are a numbering mistake, not a six-class task (a head of 1,000,001 outputs for a
    label 1,000,000 is a memory bomb). With ``n_labels`` (an explicit label mapping: named classes,
    a recorded model) a class may be absent, but every label must lie in ``0..n_labels-1``.
    """
    classes = sorted(set(labels))
    if not classes:
        raise PeftshieldError(f"{source}: no labels")
    if classes[0] < 0:
        raise PeftshieldError(f"{source}: label {classes[0]} is negative; labels are 0..K-1")
    if n_labels is not None:
        if classes[-1] >= n_labels:
            raise PeftshieldError(f"{source}: label {classes[-1]} is out of range for {n_labels} labels")
        return n_labels
    if classes[-1] != len(classes) - 1:
        present = set(classes)
        missing = [i for i in range(len(classes) + 3) if i not in present][:3]
        shown = ", ".join(map(str, missing)) + (" ..." if classes[-1] - len(classes) + 1 > 3 else "")
        raise PeftshieldError(
            f"{source}: integer labels must be 0..K-1 with every class present; found {len(classes)} "
            f"classes up to {classes[-1]}, missing {shown} (renumber them, or give class names as text)"
        )
    return len(classes)
