"""BadNets with a capped confidence on triggered inputs: an adaptive attack against PSIM.

PSIM (Zhao et al. 2024, §3 and its limits section) flags an input when the random-label module
fitted on the suspect backbone is over-confident on it: a backdoored backbone maps triggered text
to a representation that any head reads with near-certainty. An attacker who knows this trains
the triggered samples towards a moderate confidence instead of a hard label, so that the planted
representation is less extreme while the target class still wins the argmax.

Here the poisoned samples are trained with a soft cross-entropy whose target puts
``target_confidence`` (default 0.7, in the issue's 0.6-0.75 band) on the target label and spreads
the rest evenly over the other labels; clean samples keep the ordinary hard-label loss. Everything
else is :class:`~peftshield.attacks.config.BadNetsConfig`'s recipe (dirty label, rate 0.2, full
fine-tuning, best-dev checkpoint), so a grid cell beside plain BadNets isolates the cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from peftshield.attacks.config import BadNetsConfig, register_attack
from peftshield.data.records import Example
from peftshield.errors import PeftshieldError


@dataclass
class CappedConfidenceConfig(BadNetsConfig):
    """BadNets whose triggered samples train towards ``target_confidence`` on the target (vs PSIM)."""

    attack: ClassVar[str] = "badnets-capped"
    adaptive_against: ClassVar[str] = "psim"
    target_confidence: float = 0.7

    def __post_init__(self) -> None:
        super().__post_init__()
        c = self.target_confidence
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0 < c < 1:
            raise PeftshieldError(f"{self.attack} config: target_confidence must lie in (0, 1), got {c!r}")

    def training_confidence(self, train: Sequence[Example]) -> list[float] | None:
        """Per training example, the probability the loss asks for on its label: the cap on poisoned ones."""
        return [float(self.target_confidence) if e.poisoned else 1.0 for e in train]


register_attack(CappedConfidenceConfig)
