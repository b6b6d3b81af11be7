"""Typed records for labelled text (docs/design.md: typed records, not positional tuples)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


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
