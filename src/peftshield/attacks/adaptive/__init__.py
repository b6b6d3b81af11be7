"""Adaptive attacks: backdoors shaped by an attacker who knows the defence (issue 13, item 6).

Both papers name adaptive attackers in their limits sections (PSIM: an attacker who keeps the
poisoned model's confidence on triggered inputs moderate; LMSanitator: many PVs, PVs near the
clean output distribution, an intermediate-layer backdoor, an input-dependent trigger). Each
adaptive attack is one file here, registered with
:func:`peftshield.attacks.config.register_attack` like every other attack, and names the defence
it targets in ``adaptive_against`` so that the grid labels its rows ``adaptive: <defence>``:

- :mod:`.capped_confidence`: BadNets trained towards a moderate target confidence (against PSIM);
- :mod:`.clean_pvs`: POR whose PVs are the clean backbone's own outputs (against LMSanitator).

Importing this package registers them; :mod:`peftshield.attacks.config` does so at its end. No
torch at import.
"""

from peftshield.attacks.adaptive import capped_confidence, clean_pvs  # noqa: F401  (registrations)
