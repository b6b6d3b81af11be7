"""POR with PVs inside the clean output distribution: an adaptive attack against LMSanitator.

LMSanitator (Wei et al., NDSS 2024, its limits section) finds a task-agnostic backdoor by mining
soft triggers whose outputs are far from the clean outputs and alike across inputs, and monitors a
victim by the sign pattern of its output. An attacker who knows this picks PVs that look clean:
here each PV is the clean backbone's own pooled output for a seeded draw of clean texts
(``pv_family: clean``, :func:`peftshield.attacks.vectors.clean_output_vectors`). The scan's
distance bar then has nothing to find, and the monitor's sign test fires on clean inputs whose
outputs share the pattern; the price for the attacker is a weaker backdoor (a triggered input is
sent to wherever that clean text's output lands, not to an extreme vector). Everything else is
:class:`~peftshield.attacks.config.PORConfig`'s recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftshield.attacks.config import PORConfig, register_attack


@dataclass
class CleanPVConfig(PORConfig):
    """POR whose PVs are clean outputs of the clean backbone (``pv_family: clean``; vs LMSanitator)."""

    attack: ClassVar[str] = "por-clean-pv"
    adaptive_against: ClassVar[str] = "lmsanitator"
    pv_family: str = "clean"


register_attack(CleanPVConfig)
