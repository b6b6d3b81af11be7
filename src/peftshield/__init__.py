"""peftshield: defend parameter-efficient fine-tuning against weight-poisoning backdoors.

The package implements the PSIM defence (Zhao et al., NAACL Findings 2024) and LMSanitator
(Wei et al., NDSS 2024), the classic input-level baselines, the weight-poisoning attacks they
defend against, and the measurements that compare them. Importing it has no side effects and
imports nothing heavy: the public names below are resolved on first use (module ``__getattr__``).

Public API (docs/design.md):

- victims and guarded inference: :func:`load_victim` (a ``peftshield tune`` folder, a plain-peft
  adapter folder, a Hugging Face classifier folder or an in-memory ``(model, tokenizer)`` pair),
  :class:`Guard`;
- detectors: :class:`PSIMDetector`, :class:`PVMonitor`, :class:`STRIPDetector`,
  :class:`RAPDetector`, :class:`ONIONDetector`, :func:`load_detector`;
- the model scan: :func:`scan`, :class:`ScanResult`;
- data, tuning and attacks: :func:`load_splits`, :func:`tune`, :func:`poison`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> "module:attribute", imported on first access.
_PUBLIC: dict[str, str] = {
    "scan": "peftshield.defenses.lmsanitator.scan:scan",
    "ScanResult": "peftshield.defenses.lmsanitator.scan:ScanResult",
    "Guard": "peftshield.defenses.guard:Guard",
    "PSIMDetector": "peftshield.defenses.psim:PSIMDetector",
    "PVMonitor": "peftshield.defenses.lmsanitator.monitor:PVMonitor",
    "STRIPDetector": "peftshield.defenses.strip:STRIPDetector",
    "RAPDetector": "peftshield.defenses.rap:RAPDetector",
    "ONIONDetector": "peftshield.defenses.onion:ONIONDetector",
    "load_victim": "peftshield.defenses.victim:load_victim",
    "load_detector": "peftshield.defenses.base:load_detector",
    "load_splits": "peftshield.data.corpora:load_splits",
    "tune": "peftshield.tuning.trainer:tune",
    "poison": "peftshield.attacks.poison:poison",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562), so ``import peftshield`` stays cheap."""
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'peftshield' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
