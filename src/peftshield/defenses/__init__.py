"""Input-level defences: the detector contract, PSIM, and guarded inference.

Importing this package loads no model and no heavy library (torch is imported when a detector is
fitted, scored or loaded).
"""

from peftshield.defenses.base import (
    DetectionTable,
    Detector,
    NotFittedError,
    TruncationWarning,
    load_detector,
    register_detector,
)
from peftshield.defenses.guard import Guard, GuardDecision, GuardedBatch
from peftshield.defenses.psim import PSIMDetector

__all__ = [
    "DetectionTable",
    "Detector",
    "Guard",
    "GuardDecision",
    "GuardedBatch",
    "NotFittedError",
    "PSIMDetector",
    "TruncationWarning",
    "load_detector",
    "register_detector",
]
