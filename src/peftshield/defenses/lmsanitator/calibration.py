"""Threshold calibration of the PV filter on CLEAN backbones (LMSanitator stage 2, ours).

The reference (Wei et al., NDSS 2024, §IV-B) fixes its filter thresholds per backbone family in
its scripts; here :func:`calibrate_thresholds` runs the miner (:mod:`.mining`) on backbones known
to be clean and sets the diversity-gap rule of :class:`.filtering.FilterThresholds` just below the
closest any clean attempt came (docs/design.md, "Deviations from the papers"). It sits above both
:mod:`.mining` and :mod:`.filtering`, which therefore do not import each other in a cycle.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from peftshield.errors import PeftshieldError
from peftshield.models.backbones import LoadedBackbone, load_backbone
from peftshield.utils.validate import require_positive

from .filtering import FilterThresholds
from .mining import MiningConfig, PVMiner


@dataclass
class CalibrationResult:
    """Thresholds set from clean backbones, and what each clean backbone reached."""

    thresholds: FilterThresholds
    per_backbone: list[dict[str, Any]]
    largest_distance: float
    smallest_gap: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``peftshield scan --thresholds`` reads its ``thresholds`` entry)."""
        return {
            "thresholds": self.thresholds.to_dict(),
            "largest_distance": self.largest_distance,
            "smallest_gap": self.smallest_gap,
            "per_backbone": self.per_backbone,
        }


def calibrate_thresholds(
    clean_backbones: Sequence[Any],
    texts: Sequence[str],
    *,
    config: Any = None,
    attempts: int = 5,
    margin: float = 0.5,
    base: FilterThresholds | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    on_attempt: Callable[[str, dict], None] | None = None,
) -> CalibrationResult:
    """Set ``max_gap`` from how far mining collapses CLEAN backbones (never the models under test).

    On each clean backbone (a reference for :func:`~peftshield.models.backbones.load_backbone`
    or a loaded backbone) ``attempts`` mining attempts run for their full ``config.steps`` steps
    with early acceptance and abandonment disabled - longer than any attempt of a scan runs. The
    smallest entropy gap any of them reached, by its final candidate (held-out batch) or at any
    step (training batch), is the closest a clean backbone came to looking backdoored; the new
    ``max_gap`` is ``margin`` x that gap (default: half), so no clean attempt seen would pass.

    Only the gap is calibrated. It is what separates the two cases on ``minilm``: after 40 steps a
    clean backbone's smallest gap was 0.036 (distance 9-10) while a briefly POR-poisoned one was at
    0.017 after 6 steps and 0.004 after 26 (distance 16). The distance rule stays the reference's
    "far enough" test with its documented default (``base.min_distance``): raising it to clear the
    clean distances too would also reject weakly planted PVs. The largest clean distance is
    reported beside it. ``max_overlap``, ``range_factor`` and ``range_mode`` stay as in ``base``.
    The reference has no calibration: its thresholds are fixed per backbone family in its scripts.
    """
    if not clean_backbones:
        raise PeftshieldError("calibrate_thresholds needs at least one clean backbone")
    if not 0 < margin <= 1:
        raise PeftshieldError(f"margin must be in (0, 1], got {margin!r}")
    require_positive("", "attempts", attempts, integer=True)
    base = base or FilterThresholds()
    config = config or MiningConfig()
    rows: list[dict[str, Any]] = []
    far, collapsed = 0.0, math.inf
    for i, ref in enumerate(clean_backbones):
        backbone = ref if isinstance(ref, LoadedBackbone) else load_backbone(str(ref))
        miner = PVMiner(
            backbone.encoder,
            backbone.tokenizer,
            backbone.pooling,
            texts,
            config,
            base,
            device=device,
            seed=seed + i,
        )
        records = []
        try:
            for attempt in range(attempts):
                result = miner.attempt(attempt, accept_early=False)
                record, cand = result.record, result.candidate
                trace_far = max((t["distance"] for t in record.trace), default=0.0)
                trace_gap = min((t["gap"] for t in record.trace), default=math.inf)
                row = record.to_dict() | {"trace": None, "max_distance": trace_far, "min_gap": trace_gap}
                records.append(row)
                far = max(far, trace_far, cand.distance if cand is not None else 0.0)
                collapsed = min(collapsed, trace_gap, cand.gap if cand is not None else math.inf)
                if on_attempt is not None:
                    on_attempt(backbone.ref, row)
        finally:
            miner.close()
        rows.append({"backbone": backbone.ref, "attempts": records})
    if not (far > 0 and math.isfinite(collapsed) and collapsed > 0):
        raise PeftshieldError("calibration: the clean mining attempts produced no usable measurement")
    thresholds = dataclasses.replace(
        base,
        max_gap=margin * collapsed,
        source=(
            f"calibrated on {len(clean_backbones)} clean backbone(s) x {attempts} attempt(s) of "
            f"{config.steps} steps: largest distance {far:.4g}, smallest gap {collapsed:.4g}, "
            f"margin {margin:g}"
        ),
    )
    return CalibrationResult(
        thresholds=thresholds, per_backbone=rows, largest_distance=far, smallest_gap=collapsed
    )
