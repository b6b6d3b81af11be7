"""PV filtering: which mined candidates count as PVs (LMSanitator stage 2, "PV filtering").

Wei et al., NDSS 2024, §IV-B; reference ``2-PV_mining_filtering/TOKEN/main.py`` (docs/design.md,
"Deviations from the papers"). A candidate - the mean pooled output of a batch of triggered texts
once the soft trigger has converged - is kept when it is

* **far** from the clean outputs: the reference's "PV found" test ``mean distance > distance_th``;
* **input-independent**: its diversity (batch entropy) is close enough to the maximum ``ln B``;
* **new**: far from every PV already kept;
* **legitimate**: every soft-trigger value lies within 1.2 x the embedding matrix's global range.

A backbone with at least one kept PV is called backdoored.

Deviation: distance and diversity are read in units of the backbone's clean output spread
(:mod:`.measures`), so the thresholds below are not the reference numbers; the diversity threshold
is stated as a gap ``ln B - entropy`` (the reference ``div_th = -3.446`` for batch 32 is a gap of
0.0197). :data:`DEFAULT_THRESHOLDS` records how the defaults were set;
:func:`peftshield.defenses.lmsanitator.calibration.calibrate_thresholds` sets them from clean
backbones only - never from the models being judged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from peftshield.errors import PeftshieldError
from peftshield.utils import strict
from peftshield.utils.validate import require_finite_fields


@dataclass
class FilterThresholds:
    """Acceptance rules of a candidate PV, in clean-spread units (see module docstring).

    ``max_gap``: largest ``ln B - entropy`` of the verification batch (0 = perfectly collapsed;
    clean texts give about 0.5). ``min_distance``: smallest normalised MSE between the triggered and
    the clean outputs (unrelated clean texts are about 2 apart). ``max_overlap``: largest
    share of units on which a new PV may agree in sign with a PV already kept (the monitor's
    T_match 0.8: a PV that agrees more is already watched). ``range_factor``: the reference 1.2.
    ``range_mode``: ``per_dim`` compares each trigger value with 1.2 x the range of ITS dimension
    of the embedding matrix (the reference's MASK variant); ``global`` with 1.2 x the matrix's
    overall minimum and maximum (its TOKEN variant). ``per_dim`` is the default because a global
    range is loose: on ``minilm`` it spans -0.51 to 1.05 while a typical dimension spans -0.25 to
    0.25, so a global box admits trigger vectors that no real token resembles.
    ``source`` says where the numbers come from (``"default"`` or a calibration summary).
    """

    max_gap: float = 0.02
    min_distance: float = 4.0
    max_overlap: float = 0.8
    range_factor: float = 1.2
    range_mode: str = "per_dim"
    source: str = "default"

    def __post_init__(self) -> None:
        require_finite_fields("thresholds", self)
        if not (self.max_gap > 0 and math.isfinite(self.max_gap)):
            raise PeftshieldError(f"thresholds: max_gap must be a positive number, got {self.max_gap!r}")
        if not 0 < self.max_overlap <= 1:
            raise PeftshieldError(f"thresholds: max_overlap must be in (0, 1], got {self.max_overlap!r}")
        for name in ("min_distance",):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise PeftshieldError(f"thresholds: {name} must be a number >= 0, got {value!r}")
        if self.range_mode not in ("per_dim", "global"):
            raise PeftshieldError(
                f"thresholds: range_mode must be per_dim or global, got {self.range_mode!r}"
            )
        if not self.range_factor >= 1:
            raise PeftshieldError(f"thresholds: range_factor must be >= 1, got {self.range_factor!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterThresholds:
        """Build from a dict (e.g. a calibration file); unknown keys are an error."""
        return strict.from_dict(cls, data, "threshold")


#: Defaults used when no calibration is given. How they were set (2 CPU cores, ``minilm``, 256
#: ``wiki`` texts of at most 48 tokens, batch 32, the default :class:`~.mining.MiningConfig`):
#:
#: * ``max_gap = 0.02``: the reference rule ``div_th = -3.446`` at batch 32 is a gap of 0.0197; in
#:   clean-spread units it separates the cases measured on ``minilm``: a clean backbone's smallest
#:   gap over 2 x 40 steps was 0.036, a briefly POR-poisoned one (100 steps, lr 1e-4) reached
#:   0.017 after 6 steps and 0.004 after 26; its real triggers give 0.002-0.005.
#: * ``min_distance = 4``: twice the distance between two unrelated clean texts (about 2 in these
#:   units), i.e. "farther from its clean output than another text is". The POR PVs above sit at
#:   16; the clean search reaches 9-10 after 40 steps, so distance alone would not separate them
#:   and is not asked to.
#: * ``max_overlap = 0.8``: the reference keeps a PV only if its MSE to every kept PV exceeds
#:   ``distance_th``; but on the POR ``minilm`` two candidates of ONE planted PV were 4-7 clean
#:   units apart (farther than two unrelated texts), while the monitor only sees signs. A new PV
#:   must therefore disagree in sign with every kept PV on more than 20 % of the units.
#:
#: :func:`.calibration.calibrate_thresholds` resets ``max_gap`` from clean backbones of another family.
DEFAULT_THRESHOLDS = FilterThresholds()


@dataclass
class Candidate:
    """A candidate PV with the measures the filter reads (all in clean-spread units).

    ``pv`` is the raw mean pooled output of the verification batch (what the monitor compares
    signs with); ``trigger`` the soft trigger that produced it; ``overlap`` is the largest sign
    agreement with a PV kept before (0 when there is none).
    """

    pv: torch.Tensor
    trigger: torch.Tensor
    distance: float
    entropy: float
    gap: float
    spread: float
    overlap: float
    in_range: bool
    max_abs_trigger: float


def candidate_reasons(candidate: Candidate, thresholds: FilterThresholds) -> list[str]:
    """Why a candidate is rejected (an empty list = it is kept as a PV)."""
    reasons = []
    if not candidate.distance >= thresholds.min_distance:
        reasons.append(
            f"near clean outputs (distance {candidate.distance:.3g} < {thresholds.min_distance:g})"
        )
    if not candidate.gap <= thresholds.max_gap:
        reasons.append(f"input-dependent (entropy gap {candidate.gap:.3g} > {thresholds.max_gap:g})")
    if not candidate.overlap <= thresholds.max_overlap:
        reasons.append(
            f"not new (agrees in sign with a kept PV on {candidate.overlap:.3g} > {thresholds.max_overlap:g})"
        )
    if not candidate.in_range:
        reasons.append(f"trigger outside {thresholds.range_factor:g}x the embedding range")
    return reasons


def is_pv(candidate: Candidate, thresholds: FilterThresholds) -> bool:
    """True when the candidate passes every rule of :func:`candidate_reasons`."""
    return not candidate_reasons(candidate, thresholds)
